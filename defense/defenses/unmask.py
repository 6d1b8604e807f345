"""``unmask``: UnMask (paper Algorithm 1) as a bench defense -- a detector that also rectifies.

Observation: M's prediction and K's part set of every image (the expensive part: K runs).
Decision: ``d = 1 - Jaccard(K(x), V[M(x)])`` is the suspicion score; flagged iff ``d >= t``;
the final label is Algorithm 1's (rectified where flagged in mode ``flagged``, every image in
mode ``all``; -1 = no class).  ``t`` is chosen on the benign validation images for the run's
target false-positive rate unless the user gives it.

``unmask:reject`` is the detector alone: a flagged image is rejected (-1) instead of
rectified -- the same rule as the other detectors of the bench (e.g. ``trajectory``), so the two
can be compared on equal terms (the bench's ``defended`` column counts a rejection as stopped).

The extractor (K, or the ground-truth oracle, the ceiling of a perfect K) is made by the
evaluation (``ctx.extractors``), which also says which one runs and why.
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from data.knowledge import CLASS_PARTS
from defense.base import Defense, ImageSet, Outcome
from defense.threats import Goal, Threat
from defense.thresholds import choose_threshold
from defense.unmask import UnMask

#: Bumped when the content or meaning of a cached observation changes.
OBSERVATION_VERSION = 3


class UnMaskDefense(Defense):
    name = "unmask"
    detector = True
    PARAM = "response"
    RESPONSES = ("rectify", "reject")

    def __init__(self, value=None):
        response = "rectify" if value is None else str(value).strip().lower()
        if response not in self.RESPONSES:
            raise ValueError("defense unmask:%s: the value is what a flagged image gets, one of "
                             "%s" % (value, ", ".join(self.RESPONSES)))
        self.response = response
        self.kind = None
        self.mode = "flagged"
        self._extractor = {}
        self._k_digest = None
        self._ums = {}
        self._um = None
        self._scorer = None
        self._transfer_scorer = None
        self._transfer_k = None
        self._m = None
        self._chosen = {}

    def fit(self, ctx) -> None:
        if ctx.extractors is None:
            raise ValueError("defense unmask needs the run's part extractors "
                             "(FitContext.extractors)")
        self.mode = ctx.mode
        self._transfer_k = ctx.transfer_k
        self.kind, ex_val, ex_test, self._k_digest = ctx.extractors()
        self._extractor = {"val": ex_val, "test": ex_test}
        m = self._m = ctx.models["m"]
        self._ums = {split: UnMask(m, ex, CLASS_PARTS, ctx.classes, threshold=0.5,
                                   mode=self.mode) for split, ex in self._extractor.items()}
        self._um = self._ums["val"]
        val = ctx.observe(self, ctx.images("val"))
        if ctx.threshold is not None:
            self.threshold = float(ctx.threshold)
            self._chosen = {"threshold_source": "given"}
            ctx.log("UnMask threshold t = %.3f (given)" % self.threshold)
        else:
            d = self._um.decide(val["pred"], val["parts"]).distances
            choice = choose_threshold(d, ctx.target_fpr)
            self.threshold = float(choice.threshold)
            self._chosen = {"threshold_source": "validation", "target_fpr": ctx.target_fpr,
                            "val_fpr": choice.fpr, "n_val": int(len(d))}
            ctx.log("UnMask threshold t = %.3f chosen on %d validation images for FPR <= %.2f "
                    "(validation FPR %.3f)" % (self.threshold, len(d), ctx.target_fpr,
                                               choice.fpr))
        self._um = UnMask(m, ex_test, CLASS_PARTS, ctx.classes, self.threshold, mode=self.mode)

    def restore(self, params: Mapping, classes, seed: int = 0) -> "UnMaskDefense":
        """Algorithm 1's decision from the recorded threshold and mode (:meth:`Defense.
        restore`): the observations hold M's labels and K's part sets, so neither model is
        loaded (the stand-ins refuse to be called)."""
        super().restore(params, classes, seed)
        self.kind = params.get("extractor")
        self.mode = params.get("mode") or "flagged"
        self._um = UnMask(_NotLoaded(self.kind), _NotLoaded(self.kind), CLASS_PARTS, classes,
                          self.threshold, mode=self.mode)
        return self

    def params(self) -> Dict:
        return dict({"extractor": self.kind, "response": self.response,
                     "mode": self.mode if self.response == "rectify" else None,
                     "threshold": self.threshold}, **self._chosen)

    def fingerprint(self) -> Dict:
        # what an observation (M's labels, K's part sets) depends on: not t, not the mode
        return {"defense": self.name, "version": OBSERVATION_VERSION, "extractor": self.kind,
                "k": self._k_digest}

    def observe(self, images: ImageSet) -> Dict[str, List]:
        um = self._ums[images.split]
        pred = images.preds.get("m")
        if pred is None:
            pred = um.predict(images.x)
        parts = um.extract(images.x, keys=list(images.keys))
        return {"pred": np.asarray(pred, np.int64).tolist(), "parts": [sorted(p) for p in parts]}

    threats = (Threat.GRAY_BOX, Threat.ADAPTIVE, Threat.TRANSFER)

    def adaptive_goals(self):
        """Rectifying UnMask: "wrong answer" (the rectified answer wrong, not "no class") and
        "undetected" (M fooled, not flagged) are different events, each with its own run.
        Rejecting UnMask: the same event (a flagged image is rejected), one run."""
        return (Goal.WRONG, Goal.UNDETECTED) if self.response == "rectify" else (Goal.WRONG,)

    def no_adaptive_reason(self, threat):
        if self.kind == "oracle":
            return ("none: the oracle's parts do not depend on the pixels, so only M can be "
                    "attacked, as the gray-box attack does")
        if threat == Threat.TRANSFER and self._transfer_k is None:
            return "none: no surrogate K (--k-transfer) was given"
        return super().no_adaptive_reason(threat)

    def attack_target(self, threat, goal, options):
        """M and K attacked together toward target classes (:class:`defense.adaptive.
        UnMaskTarget`); ``threat`` transfer: through the surrogate K of
        ``ctx.transfer_k`` (another seed), whose part sets also make the
        attacker's verdict -- the real K is only consulted by the final evaluation.  With
        the oracle extractor K's answers do not depend on the pixels: None."""
        from defense import adaptive
        if self.no_adaptive_reason(threat) is not None:
            return None
        scorer = self._part_scorer(threat)
        judge = self._judge(goal)
        return adaptive.UnMaskTarget(
            self._m, scorer, self._um.class_parts_list, judge,
            mode=options.gradient or adaptive.DEFAULT_GRADIENT["unmask"])

    def _part_scorer(self, threat):
        """K's differentiable interface (the surrogate's for the transfer threat), built once."""
        from models.mrcnn.attack_interface import PartScorer
        size = int(self._m.input_shape[1])
        if threat == Threat.TRANSFER:
            if self._transfer_scorer is None:
                self._transfer_scorer = PartScorer(self._transfer_k(), size)
            return self._transfer_scorer
        if self._scorer is None:
            self._scorer = PartScorer(self._extractor["test"], size)
        return self._scorer

    def _judge(self, goal):
        """``(pred [B], part sets, y [B]) -> bool [B]``: the goal reached, by Algorithm 1 at
        the run's threshold on M's answer and the part sets."""
        def wrong(pred, parts, y):
            final = self._final(pred, parts)
            return (final != y) & (final != -1)

        def undetected(pred, parts, y):
            return (np.asarray(pred) != y) & ~self._um.decide(pred, parts).flags
        return wrong if goal == Goal.WRONG else undetected

    def protect(self, observation: Mapping[str, List]):
        """The full :class:`~defense.unmask.ProtectResult` of an observation."""
        return self._um.decide(observation["pred"], observation["parts"])

    def _answer(self, res) -> np.ndarray:
        """The defended answer of a ProtectResult: rectified class, or -1 when rejecting."""
        pred = res.final if self.response == "rectify" else np.where(res.flags, -1, res.preds)
        return np.asarray(pred, np.int64)

    def _final(self, preds, part_sets) -> np.ndarray:
        return self._answer(self._um.decide(preds, part_sets))

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        res = self.protect(observation)
        return Outcome(pred=self._answer(res), score=res.distances, flags=res.flags)


class _NotLoaded:
    """Stands in for M and K in an UnMask defense restored from a finished run's records."""

    def __init__(self, kind):
        self.kind = kind

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("this UnMask defense was restored from a finished run's records: it "
                           "decides on saved observations, M and K are not loaded")

    __call__ = extract = _refuse
