"""``trajectory``: the seed-003 detector (Massoli et al. 2020, SPEC §6) -- the path an image
takes through M's layers, read by an LSTM -- as a bench defense beside UnMask.

Fit (all cached beside M's checkpoint in ``<m_dir>_trajectory/`` -- or in the run's results
when M's folder cannot be written, reading what is cached beside M -- fingerprinted by M's
weights):

1. **Representatives** per tap and class (medoid or centroid) from the *training* images M
   classifies correctly.
2. **Training data**: adversarials of correctly classified **training** (detector training set)
   and **validation** (detector validation set: early stopping by macro-AUC) images -- never
   test images -- made with BIM-L∞ (ε 8), BIM-L2 (ε 300), MI-FGSM (ε 8) and CW-L2 (capped at
   ε 300), each untargeted and targeted (random target), at the paper's budgets (the seed's
   ε = 0.3 was for MNIST-like data).  Only successful adversarials are kept; the split is by
   source image (train vs val images).  Their tap features are cached per attack.
3. **Detector**: LSTM(100) → Dense(1) on the [L, K] trajectories (Euclidean distance or cosine
   similarity to every class's representative), class-balanced sampling, best validation
   macro-AUC epoch kept.

As a defense: ``score`` = the detector's probability that the image is adversarial; the
threshold is chosen on the benign validation images for the run's target FPR (as UnMask's);
a flagged image is rejected (-1).  The bench reports, beside the accuracy (a rejection counts
wrong), the ``defended`` rate (right *or* rejected: the attack was stopped).

Value (``trajectory:<tokens>``, tokens joined by ``-``): ``medoid``/``centroid``,
``cosine``/``l2``, ``lstm``/``bilstm``/``mlp`` and ``nomifgsm`` (train without MI-FGSM, to
measure the detector on an attack family it never saw).  Default: ``medoid-cosine-lstm``, the
seed's best configuration.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks import resolve_config, run_attack
from data.fileio import atomic_path
from defense import trajectory as tj
from defense.base import REJECTED, Defense, ImageSet, Outcome, model_predictions
from defense.threats import Threat
from defense.thresholds import choose_threshold
from models.taps import tap_features, tap_model, tap_names

#: (group name, registry attack, eps on 0-255, targeted, extra parameters).
TRAIN_ATTACKS: Tuple[Tuple[str, str, float, bool, Dict], ...] = tuple(
    (("%s-%s" % (group, "t" if targeted else "u")), name, eps, targeted, extra)
    for targeted in (False, True)
    for group, name, eps, extra in (
        ("bim_linf", "bim", 8.0, {}),
        ("bim_l2", "bim_l2", 300.0, {}),
        ("mifgsm", "mia_linf", 8.0, {}),
        # fewer CW iterations than the registry default keep the fit within minutes on a CPU
        # (CW was 60% of the fit at 30 steps x 3 rounds; 20 x 2 finds an adversarial for
        # nearly every source at this budget, which is all the detector's data needs)
        ("cw_l2", "cw_l2", 300.0, {"steps": 20, "binary_search_steps": 2})))

#: Source images per split attacked for the training data (the first N correctly classified
#: images of a seeded permutation); ``test`` (all) only for the seed-layout table, which
#: evaluates trained detectors on held-out images.
MAX_SOURCES = {"train": 300, "val": 150, "test": None}

#: Images per batch of the training attacks (M's forward and backward passes run about 15%
#: faster per image at 200 than at 50 on a 2-core CPU; ``bench/bench_trajectory.py``).
TRAIN_ATTACK_BATCH = 200

#: Bumped when the cached training data or representatives change meaning.
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrajectoryOptions:
    representative: str = "medoid"
    metric: str = "cosine"
    detector: str = "lstm"
    without_mifgsm: bool = False

    @classmethod
    def parse(cls, value: Optional[str]) -> "TrajectoryOptions":
        out = cls()
        if value is None:
            return out
        for token in value.lower().split("-"):
            if token in tj.REPRESENTATIVE_KINDS:
                out = dataclasses.replace(out, representative=token)
            elif token in tj.METRICS:
                out = dataclasses.replace(out, metric=token)
            elif token in tj.DETECTOR_KINDS:
                out = dataclasses.replace(out, detector=token)
            elif token == "nomifgsm":
                out = dataclasses.replace(out, without_mifgsm=True)
            else:
                raise ValueError(
                    "defense trajectory:%s: unknown token %r; use tokens joined by '-' from "
                    "%s, %s, %s and nomifgsm (e.g. trajectory:centroid-l2)"
                    % (value, token, "/".join(tj.REPRESENTATIVE_KINDS), "/".join(tj.METRICS),
                       "/".join(tj.DETECTOR_KINDS)))
        return out


class TrajectoryDefense(Defense):
    name = "trajectory"
    detector = True
    reads_m_layers = True
    PARAM = "configuration"

    def __init__(self, value: Optional[str] = None):
        self.options = TrajectoryOptions.parse(value)
        self._m = None
        self._arch = None
        self._taps = None
        self._taps_logits = None
        self._reps: List[np.ndarray] = []
        self._model = None
        self._info: Dict = {}
        self._digest = None

    # ---------------------------------------------------------------- fit
    def fit(self, ctx) -> None:
        # the images first: a context without them refuses before anything is built
        train, val = ctx.images("train"), ctx.images("val")
        self._m, self._arch = ctx.models["m"], ctx.arch
        self._digest = ctx.m_digest
        self._taps = tap_model(self._m, self._arch)
        cache = self._cache = (ctx.trajectory_cache
                               or (ctx.m_dir.rstrip(os.sep) + "_trajectory",))
        self._reps = self._representatives(ctx, cache, train)
        data = {split: self._training_data(ctx, cache, images)
                for split, images in (("train", train), ("val", val))}
        self._model, history = tj.train_detector(
            *data["train"], *data["val"], kind=self.options.detector, seed=ctx.seed,
            strategy=ctx.strategy)
        self._info = {"best_epoch": history["best_epoch"],
                      "val_macro_auc": history["best_val_macro_auc"],
                      "train_seconds": round(history["seconds"], 1),
                      "n_train": int(len(data["train"][0])), "n_val": int(len(data["val"][0]))}
        ctx.log("trajectory detector (%s): validation macro-AUC %.3f at epoch %d, trained in "
                "%.0f s on %d sequences" % (self.label, history["best_val_macro_auc"],
                                            history["best_epoch"], history["seconds"],
                                            len(data["train"][0])))
        self._choose_threshold(ctx, val)

    def _representatives(self, ctx, cache: Sequence[str], train: ImageSet) -> List[np.ndarray]:
        kind = self.options.representative
        name = "representatives_%s.npz" % kind
        path = os.path.join(cache[0], name)
        meta = {"version": CACHE_VERSION, "m": self._digest, "arch": self._arch, "kind": kind,
                "taps": tap_names(self._arch), "images": train.fingerprint}
        reps = _first_cached(tj.load_representatives, cache, name, meta)
        if reps is None:
            feats = tap_features(self._m, self._arch, train.x, model=self._taps)
            right = model_predictions(self._m, train.x) == train.labels
            reps = tj.representatives([f[right] for f in feats], train.labels[right],
                                      len(ctx.classes), kind=kind)
            tj.save_representatives(path, reps, meta)
            ctx.log("trajectory: %s representatives from %d correctly classified training "
                    "images -> %s" % (kind, int(right.sum()), path))
        return reps

    def _attacks(self) -> Sequence:
        return [a for a in TRAIN_ATTACKS
                if not (self.options.without_mifgsm and a[0].startswith("mifgsm"))]

    def _sources(self, ctx, images: ImageSet) -> np.ndarray:
        right = np.flatnonzero(model_predictions(self._m, images.x) == images.labels)
        order = np.random.default_rng(ctx.seed).permutation(right)
        return np.sort(order[:MAX_SOURCES[images.split]])

    def labelled_trajectories(self, ctx, images: ImageSet):
        """``(x [N, L, K], y, groups)`` of ``images``' correctly classified natural images and
        their successful adversarials under every training attack (cached per split); used on
        held-out test images by :mod:`evaluation.report.trajectory_table`."""
        return self._training_data(ctx, self._cache, images)

    def _training_data(self, ctx, cache: Sequence[str], images: ImageSet):
        """Trajectories [N, L, K], labels and groups of one split's natural sources and their
        successful adversarials (group g = index in :data:`TRAIN_ATTACKS` + 1)."""
        src = self._sources(ctx, images)
        feats = [self._features(ctx, cache, images, src, None)]
        groups = [np.zeros(len(src), np.int64)]
        for g, attack in enumerate(TRAIN_ATTACKS, start=1):
            if attack in self._attacks():
                f = self._features(ctx, cache, images, src, attack)
                feats.append(f)
                groups.append(np.full(len(f[0]), g, np.int64))
        taps = [np.concatenate([f[i] for f in feats]) for i in range(len(feats[0]))]
        x = tj.embed(taps, self._reps, self.options.metric)
        g = np.concatenate(groups)
        if not np.any(g > 0):
            raise ValueError("trajectory: no training attack succeeded on the %d correctly "
                             "classified %s images, so the detector has no adversarial example "
                             "to learn from" % (len(src), images.split))
        return x, (g > 0).astype(np.int64), g

    def _features(self, ctx, cache: Sequence[str], images: ImageSet, src: np.ndarray, attack):
        """Tap features of the natural sources (``attack`` None) or of their successful
        adversarials under ``attack``; cached per (split, attack)."""
        tag = "natural" if attack is None else attack[0]
        file_name = "features_%s_%s.npz" % (images.split, tag)
        fp = {"version": CACHE_VERSION, "m": self._digest, "arch": self._arch,
              "images": images.fingerprint, "sources": [int(i) for i in src],
              "seed": ctx.seed, "batch": TRAIN_ATTACK_BATCH, "attack": None if attack is None else
              [attack[0], resolve_config(attack[1], attack[2], **attack[4],
                                         **({"targeted": True} if attack[3] else {})
                                         ).as_dict()]}
        feats = _first_cached(_load_features, cache, file_name, fp)
        if feats is not None:
            return feats
        x = images.x[src]
        if attack is not None:
            group, name, eps, targeted, extra = attack
            kw = dict(extra, **({"targeted": True} if targeted else {}))
            res = run_attack(self._m, x, images.labels[src], name, eps=eps,
                             batch_size=TRAIN_ATTACK_BATCH,
                             seed=ctx.seed, **kw)
            x = res.x_adv[res.success]
            ctx.log("trajectory data: %s on %d %s images, %d successful (%.0f s)"
                    % (group, len(src), images.split, len(x), res.seconds))
        feats = tap_features(self._m, self._arch, x, model=self._taps)
        _save_features(os.path.join(cache[0], file_name), fp, feats)
        return feats

    def _choose_threshold(self, ctx, val: ImageSet) -> None:
        scores = np.asarray(ctx.observe(self, val)["score"], np.float64)
        if ctx.threshold is not None:
            # a user threshold is UnMask's (a Jaccard distance): it does not transfer
            ctx.log("trajectory: --threshold is UnMask's; the detector's own threshold is "
                    "chosen for --target-fpr %.2f" % ctx.target_fpr)
        choice = choose_threshold(scores, ctx.target_fpr)
        self.threshold = float(choice.threshold)
        self._info.update(threshold_source="validation", target_fpr=ctx.target_fpr,
                          val_fpr=choice.fpr, n_val=int(len(scores)))

    # ---------------------------------------------------------------- answer
    def params(self) -> Dict:
        o = self.options
        return dict({"representative": o.representative, "metric": o.metric,
                     "detector": o.detector, "trained_without_mifgsm": o.without_mifgsm,
                     "threshold": self.threshold,
                     "train_attacks": [a[0] for a in self._attacks()],
                     "train_sources": {k: MAX_SOURCES[k] for k in ("train", "val")}},
                    **self._info)

    def fingerprint(self) -> Dict:
        o = self.options
        return {"defense": self.name, "version": CACHE_VERSION, "m": self._digest,
                "options": dataclasses.asdict(o), "detector_weights": _weights_digest(
                    self._model)}

    def trajectories(self, x: np.ndarray) -> np.ndarray:
        """[N, L, K] trajectories of float images [N, H, W, 3] in [0, 1]."""
        return tj.embed(tap_features(self._m, self._arch, x, model=self._taps), self._reps,
                        self.options.metric)

    threats = (Threat.GRAY_BOX, Threat.ADAPTIVE)

    #: A rejecting detector's one route: fool M and stay below the threshold (SPEC §13).
    ROUTES = ("evade",)

    def attack_target(self, threat, goal, options):
        """The seed's white-box attack: fool M while looking natural to the detector, through
        the taps, the trajectory embedding and the LSTM (:class:`defense.adaptive.
        TrajectoryTarget`), judged at the detector's operating threshold."""
        from defense import adaptive
        if threat != Threat.ADAPTIVE:
            return None
        if self._taps_logits is None:
            self._taps_logits = tap_model(self._m, self._arch, with_logits=True)
        reps, metric = self._reps, self.options.metric
        return adaptive.TrajectoryTarget(
            self._taps_logits, lambda taps: tj.embed_tensors(taps, reps, metric), self._model,
            self.threshold, mode=options.gradient or adaptive.DEFAULT_GRADIENT["trajectory"])

    def observe(self, images: ImageSet) -> Dict[str, List]:
        pred = images.preds.get("m")
        if pred is None:
            pred = model_predictions(self._m, images.x)
        logits = tj.detector_scores(self._model, self.trajectories(images.x))
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
        return {"pred": np.asarray(pred, np.int64).tolist(), "score": prob.tolist()}

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        score = np.asarray(observation["score"], np.float64)
        flags = score >= self.threshold
        pred = np.where(flags, REJECTED, np.asarray(observation["pred"], np.int64))
        return Outcome(pred=pred.astype(np.int64), score=score, flags=flags)


def _weights_digest(model) -> Optional[str]:
    if model is None:
        return None
    import hashlib
    h = hashlib.sha1()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _first_cached(load, folders: Sequence[str], name: str, fingerprint: Dict):
    """The first of ``<folder>/<name>`` that ``load(path, fingerprint)`` accepts (the cache
    written by this run first, then a read-only one beside M), or None."""
    for folder in folders:
        found = load(os.path.join(folder, name), fingerprint)
        if found is not None:
            return found
    return None


def _load_features(path: str, fp: Dict) -> Optional[List[np.ndarray]]:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["fingerprint"])) != json.loads(json.dumps(fp, sort_keys=True)):
                return None
            return [z["tap_%03d" % i] for i in range(int(z["num_taps"]))]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError("cached trajectory features %s are damaged (%s); delete the file to "
                         "recompute them" % (path, e)) from None


def _save_features(path: str, fp: Dict, feats: List[np.ndarray]) -> None:
    arrays = {"tap_%03d" % i: np.asarray(f, np.float32) for i, f in enumerate(feats)}
    arrays.update(num_taps=np.array(len(feats)),
                  fingerprint=np.array(json.dumps(fp, sort_keys=True)))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
