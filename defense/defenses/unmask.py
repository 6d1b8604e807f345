"""``unmask``: UnMask (paper Algorithm 1) as a bench defense -- a detector that also rectifies.

Observation: M's prediction and K's part set of every image (the expensive part: K runs).
Decision: ``d = 1 - Jaccard(K(x), V[M(x)])`` is the suspicion score; flagged iff ``d >= t``;
the final label is Algorithm 1's (rectified where flagged in mode ``flagged``, every image in
mode ``all``; -1 = no class).  ``t`` is chosen on the benign validation images for the run's
target false-positive rate unless the user gives it.

``unmask:reject`` is the detector alone: a flagged image is rejected (-1) instead of
rectified -- the same rule as the other detectors of the bench (e.g. ``trajectory``), so the two
can be compared on equal terms (the bench's ``defended`` column counts a rejection as stopped).
``unmask:confident`` rectifies only where K's parts vouch for the rectified class -- its own
distance ``1 - Jaccard(K(x), V[z])`` is below ``t``, the test M's answer had to pass -- and
rejects the other flagged images: the rectification an attacker forges with K alone (the
``k-only`` route, :mod:`defense.routes`) must then make a class's parts *agree* with K's set,
not merely beat the others.

Hardened variants (SPEC section 12) take their models as ``key=value`` parameters, joined by
``:`` with each other and with ``reject`` or ``confident``: ``unmask:k=robust`` (the
adversarially trained K of ``main.py --model K --adv-train``), ``unmask:m=at`` (the
adversarially trained classifier of ``--adv-train`` in M's place), ``unmask:k=robust:m=at``
(both).  Each variant is its own bench row with its own threshold chosen on validation at
the run's FPR; its gray-box attacker attacks the classifier it holds (the AT model for
``m=at``).  ``input=random`` puts a random resize and
pad (:class:`~defense.transforms.ResizePadTransform`) in front of K -- M sees the image as it
is -- with one draw per image set (seeded by its name); its adaptive attack is EOT over
the run's EOT draws, 20 per step (:class:`~defense.adaptive.RandomizedUnMaskTarget`).

The extractor (K, or the ground-truth oracle, the ceiling of a perfect K) is made by the
evaluation (``ctx.extractors``), which also says which one runs and why.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from data.knowledge import CLASS_PARTS
from defense.base import Defense, ImageSet, Outcome
from defense.routes import UNMASK_ROUTES, unmask_routes
from defense.threats import Goal, Threat
from defense.thresholds import choose_threshold
from defense.unmask import UnMask, distances

#: Bumped when the content or meaning of a cached observation changes.
OBSERVATION_VERSION = 3


#: The parameters of ``unmask:...``: name -> (choices, default); the first choice is the
#: default.  ``response`` may also be given bare (``unmask:reject``).
PARAMETERS = {
    # what a flagged image gets: re-classified, rejected, or re-classified where K's parts
    # vouch for the new class (else rejected)
    "response": ("rectify", "reject", "confident"),
    "k": ("standard", "robust"),           # the part extractor: the standard or the robust K
    "m": ("m", "at"),                      # the classifier: M or the adversarially trained one
    "input": ("fixed", "random"),          # K's input: the image, or a random resize and pad
}

#: Smallest side kept by the random resize of ``input=random`` (a share of the image's).
RANDOM_INPUT_MIN_SCALE = 0.85


def parse_value(value) -> Dict[str, str]:
    """``unmask``'s parameter text (``"k=robust:m=at"``, ``"reject"``, None) -> every
    parameter's value; ValueError naming the text, the parameter and its choices."""
    chosen = {name: choices[0] for name, choices in PARAMETERS.items()}
    if value is None:
        return chosen
    seen = set()
    for item in str(value).split(":"):
        name, sep, choice = item.strip().lower().partition("=")
        if not sep:                                 # a bare value: the response
            if name.strip() in PARAMETERS:
                raise ValueError("defense unmask:%s: %s needs a value, e.g. %s=%s"
                                 % (value, name.strip(), name.strip(),
                                    PARAMETERS[name.strip()][-1]))
            name, choice = "response", name
        name, choice = name.strip(), choice.strip()
        if name not in PARAMETERS:
            raise ValueError("defense unmask:%s: unknown parameter %r; give any of %s as "
                             "name=value joined by ':' (e.g. unmask:k=robust:m=at)"
                             % (value, name, ", ".join(PARAMETERS)))
        if choice not in PARAMETERS[name]:
            raise ValueError("defense unmask:%s: %s must be one of %s, got %r"
                             % (value, name, ", ".join(PARAMETERS[name]), choice))
        if name in seen:
            raise ValueError("defense unmask:%s: %s is given twice" % (value, name))
        seen.add(name)
        chosen[name] = choice
    return chosen


class UnMaskDefense(Defense):
    name = "unmask"
    detector = True
    PARAM = ("response, models and K input: reject or confident, k=robust, m=at, input=random "
             "(joined by ':')")
    RESPONSES = PARAMETERS["response"]

    def __init__(self, value=None):
        chosen = parse_value(value)
        self.response = chosen["response"]
        #: "standard" or "robust": which trained K extracts the parts
        self.k = chosen["k"]
        #: key of the classifier in the run's models ("m" or "at")
        self.m_key = chosen["m"]
        self.input = chosen["input"]
        self._randomizer = None
        if self.input == "random":
            from defense.transforms import ResizePadTransform
            self._randomizer = ResizePadTransform(RANDOM_INPUT_MIN_SCALE)
        self._eot_seed = 0
        self._m_digest = None
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

    def ignored_parameters(self, extractor: str) -> Optional[str]:
        """With the oracle as its extractor (a standard K's place: ``k=robust`` always runs
        the robust K) a randomized input changes nothing: the oracle reads each image's
        annotated parts, never K's input."""
        if extractor != "oracle" or self.k != "standard" or self.input != "random":
            return None
        return ("input=random does nothing with the oracle extractor, which reads each "
                "image's annotated parts and runs no K: the row would repeat %s's; use "
                "--extractor k, or leave input=random out" % _label_without(self,
                                                                            ["input=random"]))

    def transfer_surrogate(self) -> str:
        """The transfer attacker's surrogate mirrors the defense: a robust K of another seed
        for the variants holding the robust K."""
        return "robust" if self.k == "robust" else "standard"

    def fit(self, ctx) -> None:
        if ctx.extractors is None:
            raise ValueError("defense unmask needs the run's part extractors "
                             "(FitContext.extractors)")
        if self.m_key not in ctx.models:
            raise ValueError("defense %s needs the adversarially trained classifier: run with "
                             "--adv-train (it trains or loads the AT model)" % self.label)
        self.mode = ctx.mode
        self._eot_seed = ctx.seed
        self._transfer_k = (ctx.transfer_k_robust if self.transfer_surrogate() == "robust"
                            else ctx.transfer_k)
        made = ctx.extractors(self.k)
        self.kind, ex_val, ex_test, self._k_digest = made
        ignored = self.ignored_parameters(self.kind)
        if ignored:          # the run chose the oracle: refuse before any attack runs
            raise ValueError("defense %s: %s" % (self.label, ignored))
        self._extractor = {"val": ex_val, "test": ex_test}
        m = self._m = ctx.models[self.m_key]
        if self.m_key == "at":
            self._m_digest = ctx.at.checkpoint_digest if ctx.at is not None else None
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
        self.k, self.m_key = params.get("k", "standard"), params.get("m", "m")
        self.input = params.get("input", "fixed")
        self.mode = params.get("mode") or "flagged"
        self._um = UnMask(_NotLoaded(self.kind), _NotLoaded(self.kind), CLASS_PARTS, classes,
                          self.threshold, mode=self.mode)
        return self

    def value_text(self, value) -> Optional[str]:
        """The canonical parameter text of a label (:meth:`Defense.value_text`): the
        parameters that differ from their default, in :data:`PARAMETERS` order, so
        ``unmask:m=at:k=robust`` and ``unmask:k=robust:m=at`` are one defense."""
        chosen = {"response": self.response, "k": self.k, "m": self.m_key,
                  "input": self.input}
        parts = [(choice if name == "response" else "%s=%s" % (name, choice))
                 for name, choice in chosen.items() if choice != PARAMETERS[name][0]]
        return ":".join(parts) or None

    def attacked_model(self) -> str:
        """The gray-box attacker attacks the classifier this UnMask holds."""
        return self.m_key

    def params(self) -> Dict:
        # the plain UnMask's record is as it was; a hardened variant names its models
        variant = {name: value for name, value in (("k", self.k), ("m", self.m_key),
                                                   ("input", self.input))
                   if value != PARAMETERS[name][0]}
        if self._randomizer is not None:
            variant["input_transform"] = self._randomizer.params()
        return dict({"extractor": self.kind, "response": self.response,
                     "mode": self.mode if self.response != "reject" else None,
                     "threshold": self.threshold}, **variant, **self._chosen)

    def fingerprint(self) -> Dict:
        # what an observation (M's labels, K's part sets) depends on: not t, not the mode;
        # the robust K has its own digest, the AT classifier is named with its digest
        out = {"defense": self.name, "version": OBSERVATION_VERSION, "extractor": self.kind,
               "k": self._k_digest}
        if self.m_key != "m":
            out["m"] = [self.m_key, self._m_digest]
        if self._randomizer is not None:
            out["input"] = dict(self._randomizer.params(), name=self._randomizer.name)
        return out

    def k_input(self, images: ImageSet) -> np.ndarray:
        """What K sees of ``images``: the images, or one random resize and pad of each
        (``input=random``), drawn from the set's own seed (the same set, the same draws)."""
        if self._randomizer is None:
            return images.x
        return self._randomizer(images.x, seed=images.seed)

    def observe(self, images: ImageSet) -> Dict[str, List]:
        um = self._ums[images.split]
        pred = images.preds.get(self.m_key)
        if pred is None:
            pred = um.predict(images.x)
        parts = um.extract(self.k_input(images), keys=list(images.keys))
        return {"pred": np.asarray(pred, np.int64).tolist(), "parts": [sorted(p) for p in parts]}

    threats = (Threat.GRAY_BOX, Threat.ADAPTIVE, Threat.TRANSFER)

    ROUTES = UNMASK_ROUTES

    def adaptive_routes(self, goal):
        """The routes of Algorithm 1's decision rule to ``goal`` (:mod:`defense.routes`): a
        rectifying UnMask's wrong answer can also come from K alone (its flag rectifies M's
        right answer to the forged class)."""
        return unmask_routes(goal, self.response)

    def adaptive_goals(self):
        """Rectifying UnMask (also ``confident``): "wrong answer" (the rectified answer wrong,
        not "no class") and "undetected" (M fooled, not flagged) are different events, each
        with its own run.  Rejecting UnMask: the same event (a flagged image is rejected), one
        run."""
        return (Goal.WRONG,) if self.response == "reject" else (Goal.WRONG, Goal.UNDETECTED)

    def no_adaptive_reason(self, threat):
        if self.kind == "oracle":
            return ("none: the oracle's parts do not depend on the pixels, so only M can be "
                    "attacked, as the gray-box attack does")
        if threat == Threat.TRANSFER and self._transfer_k is None:
            if self.transfer_surrogate() == "robust":
                return ("none: no robust surrogate K (--k-transfer-robust, a robust K trained "
                        "with another seed) was given")
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
        common = dict(mode=options.gradient or adaptive.DEFAULT_GRADIENT["unmask"],
                      routes=self.chosen_routes(goal, options))
        if self._randomizer is not None:
            return adaptive.RandomizedUnMaskTarget(
                self._m, scorer, self._um.class_parts_list, judge, self._randomizer,
                samples=options.eot_samples, seed=self._eot_seed, **common)
        return adaptive.UnMaskTarget(self._m, scorer, self._um.class_parts_list, judge,
                                     **common)

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
        """The defended answer of a ProtectResult: the rectified class (``rectify``); -1 for
        a flagged image (``reject``); the rectified class where its own distance is below
        ``t``, else -1 (``confident``)."""
        if self.response == "reject":
            return np.asarray(np.where(res.flags, -1, res.preds), np.int64)
        final = np.asarray(res.final, np.int64)
        if self.response == "rectify":
            return final
        # an unflagged answer passed the test already (in mode "all" the best class's
        # distance is at most M's): only the flagged ones are checked
        flagged = np.asarray(res.flags, bool)
        kept = ~flagged
        kept[flagged] = vouched([res.parts[i] for i in np.flatnonzero(flagged)],
                                final[flagged], self._um.class_parts_list, res.threshold)
        return np.where(kept, final, -1).astype(np.int64)

    def _final(self, preds, part_sets) -> np.ndarray:
        return self._answer(self._um.decide(preds, part_sets))

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        res = self.protect(observation)
        return Outcome(pred=self._answer(res), score=res.distances, flags=res.flags)


def vouched(part_sets, answers, class_parts_list, threshold: float) -> np.ndarray:
    """bool ``[N]``: K's part set vouches for each answer (a class >= 0 whose distance
    ``1 - Jaccard(parts, V[answer])`` is below ``threshold``; -1, no class, never)."""
    answers = np.asarray(answers, np.int64)
    ok = answers >= 0
    out = np.zeros(len(answers), bool)
    if ok.any():
        rows = np.flatnonzero(ok)
        d = distances([part_sets[i] for i in rows], answers[rows], class_parts_list)
        out[rows] = d < threshold
    return out


def _label_without(defense: "UnMaskDefense", ignored) -> str:
    """The label of ``defense`` without the parameters in ``ignored``."""
    kept = [p for p in defense.label.split(":")[1:] if p not in ignored]
    return ":".join(["unmask"] + kept)


class _NotLoaded:
    """Stands in for M and K in an UnMask defense restored from a finished run's records."""

    def __init__(self, kind):
        self.kind = kind

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("this UnMask defense was restored from a finished run's records: it "
                           "decides on saved observations, M and K are not loaded")

    __call__ = extract = _refuse
