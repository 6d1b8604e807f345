"""The bench: every defense on the same images and the same attack vectors, for one (class set,
architecture) -- the paper's Table IV, Fig. 4, Fig. 5 and the defense comparison.

Steps (each resumable): load the class set's images; train or load M (and the AT model when
``at`` is among the defenses); fit every defense (UnMask: extractor and threshold on validation
images; PCA on training images; noise: its amplitude on validation images); run each attack
vector once per attacked model on the test images; ask every defense about the benign and the
attacked images; write ``results/<code>/<arch>/`` (metrics.json, table_iv.md, table_iii.md,
bench.md/.csv, bench.png/pdf, roc.png/pdf, fig4.png/pdf, summary.txt).

Threat model (paper): gray-box -- an attack sees the classifier (M, or the AT model for AT),
never the defense around it; every result row says so in its ``threat_model`` field.

Caches in ``<out>/vectors/`` (each written atomically with a fingerprint of everything it
depends on; reused only when the fingerprint matches, so a changed setting recomputes and an
interrupted run resumes):

* ``attacks/<model>/<split>-<attack>_<eps>.npz`` -- attacked images, clean and adversarial
  predictions of the attacked model (a universal perturbation is fitted once on the training
  images and kept beside it as ``...-<attack>_<eps>.fit.npz``);
* ``defenses/<defense>/<image set>.json`` -- a defense's observation of an image set (M's labels,
  K's part sets, labels after a transform, ...).  Adding a defense to a finished run computes
  only its observations; no attack runs again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import zipfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import tfcompat
from attacks import PAPER_ATTACK_VECTORS, compile_attack, get_attack, resolve_config, run_attack
from attacks.engine import AdaptiveEngine, EngineResult, EngineSettings, convergence
from data.classset import load_split
from data.fileio import (atomic_path, file_digest, read_cached_json, write_json_atomic,
                         write_problem)
from data.knowledge import PART_IDS, ClassSet
from defense import report
from defense.adversarial_training import AT_EPS, at_checkpoint_dir, train_adversarial
from defense.adaptive import check_gradient_mode
from defense.base import (ADAPTIVE, GRAY_BOX, REJECTED, TRANSFER, AdaptiveOptions, Defense,
                          FitContext, ImageSet, model_predictions)
from defense.defenses import DEFAULT_DEFENSES, build_defense
from defense.extractors import OracleExtractor
from defense.metrics import accuracy, detection_set, evaluate_detection, tpr_at_fpr
from defense.threats import DEFENSE_AWARE, Goal, Threat
from models import DEFAULT_ARCH
from models.classifier import build_classifier
from models.distribute import is_chief, make_strategy
from models.progress import Eta
from models.train_classifier import TrainConfig, train_classifier
from mrcnn_config import get_config

tf, keras = tfcompat.import_tf()


@dataclasses.dataclass
class EvalConfig:
    """Settings of one evaluation run (validated names come from ``main.py``)."""
    class_set: ClassSet
    data_dir: str = os.path.join("data", "unmask")
    arch: str = DEFAULT_ARCH
    input_size: int = 96
    weights: Optional[str] = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    adv_train: bool = False
    at_eps: float = AT_EPS
    extractor: Optional[str] = None      # "k", "oracle" or None (K if trained, else oracle)
    k_weights: str = "last"              # K checkpoint: "last" (newest in k_log_dir) or a path
    k_config: str = "synthetic"          # K's configuration (main.py --k-config)
    k_log_dir: str = os.path.join("logs", "model_k")
    threshold: Optional[float] = None    # None: chosen on validation for target_fpr
    target_fpr: float = 0.1
    mode: str = "flagged"
    vectors: Sequence[Tuple[str, float]] = tuple(PAPER_ATTACK_VECTORS)
    defenses: Optional[Sequence[str]] = None   # None: none, unmask (+ at with adv_train)
    trajectory_table: bool = False       # also the seed-003 table of the trajectory detector
    detection_set: str = "original"      # "original" (the UnMask code) or "strict" (M(x) = y too)
    threats: Sequence[str] = (GRAY_BOX,)  # add "adaptive" for defense-aware attacks
    # the defense-aware attacks (SPEC §11): steps of each run, restart rounds, target classes
    # tried where the attack needs them (None: all C - 1), how a detector's two gradients
    # combine (None: each defense's default) and EOT draws through a random transform
    adaptive_steps: int = 100
    adaptive_restarts: int = 2
    adaptive_targets: Optional[int] = None
    adaptive_gradient: Optional[str] = None
    eot_samples: int = 20
    adaptive_batch: int = 100            # images per adaptive batch (K's fixed cost per run
    #                                      is shared by more images; the unit of resuming)
    k_transfer: Optional[str] = None       # surrogate K checkpoint for threat "transfer"
    n_test: Optional[int] = None
    attack_batch: int = 50
    seed: int = 0
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    progress: bool = True
    distribute: str = "none"             # M's, AT's and the trajectory detector's training:
    #                                      none, mirrored, multi-worker
    shards: int = 1                      # image shards per attack vector (grid work units);
    #                                      the merged records equal the unsharded ones

    def __post_init__(self):
        if self.defenses is None:
            self.defenses = tuple(DEFAULT_DEFENSES) + (("at",) if self.adv_train else ())
        self.defenses = tuple(self.defenses)
        if "at" in self.defenses:
            self.adv_train = True
        elif self.adv_train:
            self.defenses = self.defenses + ("at",)
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError("shards must be an integer >= 1, got %r" % (self.shards,))
        self.threats = tuple(Threat.parse(t) for t in self.threats)
        self.engine_settings()                   # validates the adaptive settings
        if self.adaptive_gradient is not None:
            check_gradient_mode(self.adaptive_gradient)

    def engine_settings(self) -> EngineSettings:
        """How the adaptive engine runs the defense-aware attacks."""
        return EngineSettings(steps=self.adaptive_steps, restarts=self.adaptive_restarts,
                              max_targets=self.adaptive_targets)

    def adaptive_options(self) -> AdaptiveOptions:
        return AdaptiveOptions(gradient=self.adaptive_gradient, eot_samples=self.eot_samples)

    @property
    def out_dir(self) -> str:
        return os.path.join(self.results_dir, self.class_set.code_name, self.arch)

    @property
    def m_dir(self) -> str:
        """M's folder: class set, architecture, input size and every training setting that
        differs from the original recipe (``TrainConfig.folder_suffix``), so M trained with
        another ``--lr`` or ``--seed`` never reuses (or overwrites) another setting's."""
        return os.path.join(self.checkpoint_dir, "model_m", self.class_set.code_name,
                            "%s_%d%s%s" % (self.arch, self.input_size,
                                           self.train.folder_suffix(),
                                           "_imagenet" if self.weights else ""))


# ----------------------------------------------------------------------------- stages

def load_data(cfg: EvalConfig, log: Callable) -> Dict:
    """uint8 arrays and labels of the three splits (test limited to ``n_test``, balanced)."""
    splits = {s: load_split(cfg.data_dir, cfg.class_set, s) for s in ("train", "val", "test")}
    splits["test"] = splits["test"].subset(cfg.n_test, seed=cfg.seed)
    data = {"splits": splits}
    for name, split in splits.items():
        data["x_" + name] = split.arrays(cfg.input_size)
        data["y_" + name] = split.labels
    log("%s (%s): %d train, %d val, %d test images at %dx%d"
        % (cfg.class_set.paper_name, cfg.class_set.code_name, len(splits["train"]),
           len(splits["val"]), len(splits["test"]), cfg.input_size, cfg.input_size))
    return data


class WorkerDone(Exception):
    """Raised on a non-chief worker of a multi-worker run once training is done."""


def get_models(cfg: EvalConfig, data: Dict, log: Callable):
    """M (trained or loaded) and the AT model (or None)."""
    n = len(cfg.class_set.classes)
    strategy = make_strategy(cfg.distribute)
    with (strategy.scope() if strategy is not None else contextlib.nullcontext()):
        m = build_classifier(cfg.arch, n, cfg.input_size, weights=cfg.weights, seed=cfg.seed)
    log("model M: %s -> %s%s" % (cfg.arch, cfg.m_dir, "" if strategy is None else
                                 " (%s, %d replicas)" % (cfg.distribute,
                                                         strategy.num_replicas_in_sync)))
    train_classifier(m, data["x_train"], data["y_train"], data["x_val"], data["y_val"],
                     cfg.m_dir, cfg.train, log=log, progress=cfg.progress, strategy=strategy)
    at = None
    if cfg.adv_train:
        at = train_adversarial(cfg.arch, n, cfg.input_size, data,
                               at_checkpoint_dir(cfg.m_dir, cfg.at_eps), cfg.train,
                               eps=cfg.at_eps, log=log, progress=cfg.progress,
                               strategy=strategy)
    if strategy is not None:
        # the evaluation runs in this process alone (under multi-worker the other workers stop
        # below): plain copies, whose predictions wait on no other replica or worker.
        # Reading the mirrored weights is a collective, so every worker makes its copies.
        m = _single_device_copy(cfg, m, n)
        at = None if at is None else _single_device_copy(cfg, at, n)
    if not is_chief(strategy):
        raise WorkerDone("this worker's share of the training is done; the chief (worker 0) "
                         "evaluates and writes the results")
    return m, at


def _single_device_copy(cfg: EvalConfig, model, n: int):
    """``model`` (trained under a tf.distribute strategy) rebuilt outside it with the same
    weights."""
    copy = build_classifier(cfg.arch, n, cfg.input_size, weights=None, seed=cfg.seed)
    copy.set_weights(model.get_weights())
    return copy


def make_extractors(cfg: EvalConfig, data: Dict, log: Callable):
    """(kind, extractor for validation images, extractor for test images)."""
    kind = cfg.extractor or _auto_extractor(cfg, log)
    if kind == "oracle":
        ex = {}
        for split in ("val", "test"):
            path = data["splits"][split].parts_file
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    "the oracle extractor needs the ground-truth parts file %s (the synthetic "
                    "data set writes it; real data has none): use --extractor k" % path)
            ex[split] = OracleExtractor.from_coco(path)
        log("extractor: ORACLE (ground-truth parts; the ceiling of a perfect K)")
        return kind, ex["val"], ex["test"]
    from models.mrcnn import PartExtractor  # imported only when K is used

    k = PartExtractor.from_checkpoint(cfg.k_weights, get_config(cfg.k_config),
                                      model_dir=cfg.k_log_dir)
    log("extractor: K (Mask R-CNN parts model %s)" % getattr(k, "checkpoint", cfg.k_weights))
    return kind, k, k


def _auto_extractor(cfg: EvalConfig, log: Callable) -> str:
    try:
        from models.mrcnn import find_k_checkpoint
        found = find_k_checkpoint(cfg.k_log_dir, config=get_config(cfg.k_config))
    except FileNotFoundError:
        found = None
    if found:
        return "k"
    log("no trained K found (train it with `python main.py --model K`): using the ORACLE "
        "extractor (ground-truth parts), the ceiling of UnMask with a perfect K")
    return "oracle"


def _array_digest(*arrays: np.ndarray) -> str:
    """Digest of array contents (the decoded images themselves, so replaced images under the
    same file names, or another data folder, are noticed)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str:
    return file_digest(path, "sha1")[:16]


#: Bumped when the adaptive attacks' algorithm changes (their saved records are recomputed;
#: 3: the adaptive engine -- every registry attack, restarts, target classes, two goals).
ADAPTIVE_VERSION = 3

#: Bumped when the content or meaning of a saved record changes, so old records are recomputed
#: (3: one record per attacked model with its images; observations per defense).
RECORD_VERSION = 3


def fingerprint(cfg: EvalConfig, data: Dict) -> Dict:
    """What every saved record of this run depends on (M's weights, the test images, ...)."""
    return {"version": RECORD_VERSION, "class_set": cfg.class_set.code_name, "arch": cfg.arch,
            "size": cfg.input_size, "seed": cfg.seed, "test_keys": hashlib.sha1(
                "\n".join(data["splits"]["test"].keys).encode()).hexdigest()[:16],
            "test_images": _array_digest(data["x_test"], data["y_test"]),
            "m": _file_digest(os.path.join(cfg.m_dir, "best.h5"))}


def vector_fingerprint(cfg: EvalConfig, fp: Dict, name: str, eps: float) -> Dict:
    """``fp`` plus what one attack vector's outcome depends on: its fully resolved
    configuration (steps, step size, random start, ... as the registry fills them in), the
    version of the attack's code and the attack batch size (random starts are seeded per
    batch)."""
    version = get_attack(name).version
    return dict(fp, attack=name, eps=eps, attack_config=resolve_config(name, eps).as_dict(),
                attack_batch=cfg.attack_batch,
                **({"attack_version": version} if version != 1 else {}))


def eps_tag(eps: float) -> str:
    """An exact, canonical text of ``eps`` for file names and record keys: ``%g`` when that
    reads back as the same float (8, 300, 0.5), else the shortest exact repr (8.0000001), so
    two budgets never share a saved record."""
    short = "%g" % float(eps)
    return short if float(short) == float(eps) else repr(float(eps))


def _safe(text: str) -> str:
    """A file-name-safe version of a label (``downsample:0.75`` -> ``downsample-0.75``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True)


# ----------------------------------------------------------------------------- the bench

class Bench:
    """Image sets, attack records and defense observations of one run, computed once and
    cached (in memory and on disk)."""

    def __init__(self, cfg: EvalConfig, data: Dict, models: Dict, log: Callable):
        self.cfg = cfg
        self.data = data
        self.models = models
        self.log = log
        self.fp = fingerprint(cfg, data)
        self.digests = {"m": self.fp["m"]}
        if "at" in models:
            self.digests["at"] = _file_digest(
                os.path.join(at_checkpoint_dir(cfg.m_dir, cfg.at_eps), "best.h5"))
        self.vectors_dir = os.path.join(cfg.out_dir, "vectors")
        self.attack_info: Dict[str, Dict] = {}
        #: (threat, goal, defense, attack, eps) -> convergence, cost and per-image success of
        #: an adaptive record (the attacker's own verdicts)
        self.adaptive_info: Dict[Tuple, Dict] = {}
        self._sets: Dict[Tuple, ImageSet] = {}
        self._obs: Dict[Tuple, Dict] = {}
        #: the observation and adaptive-attack files this bench wrote or reused (a defense
        #: work unit's outputs; the gray-box attack records are the attack units')
        self.touched: set = set()

    # ---------------------------------------------------------------- image sets
    def images(self, split: str) -> ImageSet:
        """Benign images of ``split``; M's (and AT's) predictions are computed once."""
        key = ("benign", split)
        if key not in self._sets:
            x = self.data["x_" + split].astype(np.float32) / 255.0
            preds = {}
            if split != "train":
                preds = {m: model_predictions(model, x, 32 if m == "m" else 128)
                         for m, model in self.models.items()}
            if split == "test":
                fp = dict(self.fp, images="benign", split=split)
            else:   # what the training / validation images are, whatever the test subset
                fp = {k: v for k, v in self.fp.items() if not k.startswith("test_")}
                fp.update(images="benign", split=split, contents=_array_digest(
                    self.data["x_" + split], self.data["y_" + split]))
            self._sets[key] = ImageSet(
                name="benign-" + split, split=split, x=x,
                keys=list(self.data["splits"][split].keys), labels=self.data["y_" + split],
                preds=preds, fingerprint=fp)
        return self._sets[key]

    def record_path(self, model: str, name: str, eps: float, split: str = "test") -> str:
        """File of the attack record of (``model``, vector, ``split``)."""
        return os.path.join(self.vectors_dir, "attacks", model,
                            "%s-%s_%s.npz" % (split, name, eps_tag(eps)))

    def attacked(self, model: str, name: str, eps: float, split: str = "test") -> ImageSet:
        """``split``'s images attacked on ``model`` by ``name`` at ``eps`` (cached npz)."""
        key = (model, name, float(eps), split)
        if key in self._sets:
            return self._sets[key]
        benign = self.images(split)
        vfp = self._vector_fp(model, name, eps, split)
        path = self.record_path(model, name, eps, split)
        rec = _read_npz(path, vfp, self.log, {"x_adv": 4, "pred_adv": 1, "fit_info": 0},
                        len(benign))
        if rec is None and self.cfg.shards > 1 and not get_attack(name).universal:
            rec = self._merge_shards(model, name, eps, split, benign, vfp, path)
        if rec is None:
            rec = self._run_attack(model, name, eps, benign, vfp, path)
        else:
            self.log("%s on %s, eps=%g (%s): reusing %s" % (name, model, eps, split, path))
        info = json.loads(str(rec["fit_info"])) if "fit_info" in rec else None
        if info is not None:        # a universal perturbation's fit, a composite's stages
            self.attack_info["%s/%s_%s" % (model, name, eps_tag(eps))] = info
        self._sets[key] = ImageSet(
            name="%s/%s-%s_%s" % (model, split, name, eps_tag(eps)), split=split,
            x=rec["x_adv"],
            keys=benign.keys, labels=benign.labels, preds={model: rec["pred_adv"]},
            fingerprint=vfp)
        return self._sets[key]

    # ---------------------------------------------------------------- image shards
    def shard_path(self, model: str, name: str, eps: float, shard: int, shards: int,
                   split: str = "test") -> str:
        """File of shard ``shard`` (0-based) of ``shards`` of an attack record."""
        return (self.record_path(model, name, eps, split)[:-len(".npz")]
                + ".shard-%dof%d.npz" % (shard + 1, shards))

    def attack_shard(self, model: str, name: str, eps: float, shard: int, shards: int,
                     split: str = "test") -> str:
        """Attack shard ``shard`` of ``shards`` of ``split``'s images (cached npz); returns
        its file.

        The images are split at attack-batch boundaries (:func:`shard_bounds`) and every
        batch keeps the seed it has in the whole run, so the shards, merged by
        :meth:`attacked`, equal the unsharded record bit for bit.  Universal attacks are not
        sharded (their perturbation is fitted once on the training images).
        """
        if get_attack(name).universal:
            raise ValueError("%s is a universal attack: it runs as one unit, not in shards"
                             % name)
        benign = self.images(split)
        first, begin, end = shard_bounds(len(benign), self.cfg.attack_batch, shard, shards)
        vfp = self._vector_fp(model, name, eps, split)
        path = self.shard_path(model, name, eps, shard, shards, split)
        if self._read_shard(path, vfp, shard, shards, end - begin) is not None:
            return path
        start = time.time()
        whole = _read_npz(self.record_path(model, name, eps, split), vfp, self.log,
                          {"x_adv": 4, "pred_adv": 1}, len(benign))
        if whole is not None:       # the unsharded record exists: its rows are the shard
            x_adv, pred_adv, pred_clean = (whole[k][begin:end]
                                           for k in ("x_adv", "pred_adv", "pred_clean"))
        elif end > begin:
            res = compile_attack(self.models[model], name, eps).run(
                benign.x[begin:end], benign.labels[begin:end],
                batch_size=self.cfg.attack_batch, seed=self.cfg.seed,
                progress=self.cfg.progress, first_batch=first)
            x_adv, pred_adv, pred_clean = res.x_adv, res.pred_adv, res.pred_clean
        else:       # more shards than attack batches: this one holds no image
            x_adv = np.zeros((0,) + benign.x.shape[1:], np.float32)
            pred_adv = pred_clean = np.zeros(0, np.int64)
        _write_npz(path, {"x_adv": x_adv, "pred_adv": pred_adv, "pred_clean": pred_clean,
                          "keys": np.asarray(benign.keys[begin:end], dtype=str),
                          "fingerprint": _canonical(dict(vfp, shard=[shard, shards])),
                          "seconds": round(time.time() - start, 1)})
        self.log("%s on %s, eps=%g (%s), shard %d of %d (images %d-%d): %.0f s" % (
            name, model, eps, split, shard + 1, shards, begin, end - 1, time.time() - start))
        return path

    def _vector_fp(self, model: str, name: str, eps: float, split: str) -> Dict:
        return vector_fingerprint(self.cfg, dict(self.fp, model=model,
                                                 model_digest=self.digests[model], split=split),
                                  name, eps)

    def _read_shard(self, path: str, vfp: Dict, shard: int, shards: int,
                    n: int) -> Optional[Dict]:
        """Shard ``shard`` of ``shards`` of the vector ``vfp`` when saved whole, else None."""
        return _read_npz(path, dict(vfp, shard=[shard, shards]), self.log,
                         {"x_adv": 4, "pred_adv": 1, "keys": 1}, n)

    def _merge_shards(self, model, name, eps, split, benign, vfp, path) -> Optional[Dict]:
        """The whole record from its ``cfg.shards`` shards (None when one is missing): rows
        put in the image set's order by image id, every id exactly once, written as the
        unsharded run would have written it."""
        shards, parts = self.cfg.shards, []
        for shard in range(shards):
            _, begin, end = shard_bounds(len(benign), self.cfg.attack_batch, shard, shards)
            part = self._read_shard(self.shard_path(model, name, eps, shard, shards, split),
                                    vfp, shard, shards, end - begin)
            if part is None:
                self.log("%s on %s, eps=%g (%s): shard %d of %d is missing, so this process "
                         "attacks every image itself (the grid's attack units make the shards)"
                         % (name, model, eps, split, shard + 1, shards))
                return None
            parts.append(part)
        keys = [str(k) for p in parts for k in p["keys"]]
        row = {k: i for i, k in enumerate(keys)}
        if len(row) != len(keys) or sorted(row) != sorted(benign.keys):
            raise ValueError("the shards of %s do not hold each image of %s exactly once: "
                             "delete them to attack again" % (path, benign.name))
        order = np.array([row[k] for k in benign.keys])
        rec = {"x_adv": np.concatenate([p["x_adv"] for p in parts])[order],
               "pred_adv": np.concatenate([p["pred_adv"] for p in parts])[order],
               "pred_clean": np.concatenate([p["pred_clean"] for p in parts])[order],
               "fingerprint": _canonical(vfp), "fit_info": "null",
               "seconds": round(sum(float(p["seconds"]) for p in parts), 1)}
        _write_npz(path, rec)
        self.log("%s on %s, eps=%g (%s): merged %d shards -> %s" % (name, model, eps, split,
                                                                    shards, path))
        return rec

    def _run_attack(self, model, name, eps, benign, vfp, path) -> Dict:
        start = time.time()
        kw = dict(eps=eps, batch_size=self.cfg.attack_batch, seed=self.cfg.seed,
                  progress=self.cfg.progress)
        fit_info = "null"
        if get_attack(name).universal:
            compiled = compile_attack(self.models[model], name, eps)
            uap = self._universal_perturbation(model, name, eps, compiled, vfp, path)
            fit_info = json.dumps(uap)
            res = compiled.run(benign.x, benign.labels, batch_size=kw["batch_size"],
                               seed=kw["seed"], progress=kw["progress"])
        elif get_attack(name).stages is not None:       # a composite: its parts are kept
            compiled = compile_attack(self.models[model], name, eps)
            res = compiled.run(benign.x, benign.labels, batch_size=kw["batch_size"],
                               seed=kw["seed"], progress=kw["progress"])
            fit_info = json.dumps(compiled.stage_report())
        else:
            res = run_attack(self.models[model], benign.x, benign.labels, name, **kw)
        rec = {"x_adv": res.x_adv, "pred_adv": res.pred_adv, "pred_clean": res.pred_clean,
               "fingerprint": _canonical(vfp), "fit_info": fit_info,
               "seconds": round(time.time() - start, 1)}
        _write_npz(path, rec)
        self.log("%s on %s, eps=%g (%s): accuracy %.3f (%.0f s)" % (
            name, model, eps, benign.split, res.adv_accuracy, rec["seconds"]))
        return rec

    def _universal_perturbation(self, model, name, eps, compiled, vfp, path) -> Dict:
        """Fit (or reload) a universal perturbation on the training images; returns its info
        and leaves it set in ``compiled``."""
        fit_path = path[:-len(".npz")] + ".fit.npz"
        rec = _read_npz(fit_path, vfp, self.log, {"v": 3})
        if rec is not None:
            compiled.set_perturbation(rec["v"])
            return json.loads(str(rec["info"]))
        info = compiled.fit(self.images("train").x, seed=self.cfg.seed,
                            progress=self.cfg.progress)
        out = {"fooling_rate": float(info.fooling_rate), "passes": int(info.passes),
               "pass_rates": [float(r) for r in getattr(info, "pass_rates", ())],
               "n_images": int(info.n_images), "split": "train"}
        _write_npz(fit_path, {"v": np.asarray(info.v, np.float32), "info": json.dumps(out),
                              "fingerprint": _canonical(vfp)})
        self.log("%s eps=%g: universal perturbation fooling rate %.3f on %d training images "
                 "(%d passes)" % (name, eps, out["fooling_rate"], out["n_images"],
                                  out["passes"]))
        return out

    def adaptive(self, defense: Defense, name: str, eps: float, threat: Threat = ADAPTIVE,
                 goal: Goal = Goal.WRONG) -> ImageSet:
        """The test images attacked by ``defense``'s adaptive target (``threat`` transfer:
        through its surrogate) for ``goal``, with vector (``name``, ``eps``)'s attack run by
        the adaptive engine (:mod:`attacks.engine`; cached npz per defense, threat, vector and
        goal, and per image batch while it runs, so an interrupted run resumes where it
        stopped with the same numbers)."""
        key = (threat, goal, defense.label, name, float(eps))
        if key in self._sets:
            return self._sets[key]
        benign = self.images("test")
        fp = self._adaptive_fp(defense, name, eps, threat, goal)
        path = os.path.join(self.vectors_dir, str(threat), _safe(defense.label),
                            "test-%s_%s.%s.npz" % (name, eps_tag(eps), goal))
        self.touched.add(path)
        rec = _read_npz(path, fp, self.log, {"x_adv": 4, "pred_adv": 1, "success": 1,
                                             "first_step": 2}, len(benign))
        if rec is None:
            rec = self._run_adaptive(defense, name, eps, threat, goal, benign, fp, path)
        else:
            self.log("%s %s on %s, eps=%g [%s]: reusing %s" % (threat, name, defense.label, eps,
                                                               goal, path))
        self._sets[key] = ImageSet(
            name="%s-%s/test-%s_%s.%s" % (threat, defense.label, name, eps_tag(eps), goal),
            split="test", x=rec["x_adv"], keys=benign.keys, labels=benign.labels,
            preds={"m": rec["pred_adv"]}, fingerprint=fp)
        self.adaptive_info[key] = {k: json.loads(str(rec[k])) for k in ("convergence", "cost")}
        self.adaptive_info[key]["success"] = rec["success"]
        return self._sets[key]

    def _adaptive_fp(self, defense: Defense, name: str, eps: float, threat: Threat,
                     goal: Goal) -> Dict:
        cfg = self.cfg
        return dict(vector_fingerprint(cfg, dict(self.fp, model="m", split="test"), name, eps),
                    adaptive_version=ADAPTIVE_VERSION, defense=defense.fingerprint(),
                    decision=defense.params(), threat=str(threat), goal=str(goal),
                    engine=dataclasses.asdict(cfg.engine_settings()),
                    adaptive_batch=cfg.adaptive_batch,
                    options=dataclasses.asdict(cfg.adaptive_options()),
                    surrogate=(_file_digest(cfg.k_transfer) if threat == TRANSFER else None))

    def _run_adaptive(self, defense, name, eps, threat, goal, benign, fp, path) -> Dict:
        cfg = self.cfg
        start = time.time()
        target = defense.attack_target(threat, goal, cfg.adaptive_options())
        engine = AdaptiveEngine(resolve_config(name, eps), target, cfg.engine_settings(),
                                seed=cfg.seed)
        batches = -(-len(benign) // cfg.adaptive_batch)
        done = self._adaptive_batches(path, fp, batches)
        eta = Eta(batches, done=len(done))

        def save(i, part: EngineResult):
            _write_npz(_batch_path(path, i), dict(_engine_arrays(part), fingerprint=_canonical(
                dict(fp, batch=i))))
            timing = eta.step()
            if cfg.progress:
                self.log("%s %s on %s, eps=%g [%s]: batch %d of %d, goal reached on %d of %d "
                         "(%s)" % (threat, name, defense.label, eps, goal, i + 1, batches,
                                   int(part.success.sum()), len(part.success), timing))

        res = engine.run(benign.x, benign.labels, batch_size=cfg.adaptive_batch, done=done,
                         on_batch=save)
        settings = cfg.engine_settings()
        conv = convergence(res.first_step, settings.steps)
        cost = {"evaluations_per_image": float(np.mean(res.evaluations)),
                "seconds": round(time.time() - start, 1), "runs": _run_summary(res.runs)}
        rec = dict(_engine_arrays(res), pred_adv=model_predictions(self.models["m"], res.x_adv),
                   fingerprint=_canonical(fp), seconds=cost["seconds"],
                   convergence=json.dumps(conv), cost=json.dumps(cost))
        _write_npz(path, rec)
        for i in range(batches):
            if os.path.isfile(_batch_path(path, i)):
                os.remove(_batch_path(path, i))
        self.log("%s %s on %s, eps=%g [%s]: goal reached on %.3f of the images, %s (%.0f s, "
                 "%.0f evaluations per image)" % (
                     threat, name, defense.label, eps, goal, float(np.mean(res.success)),
                     "converged" if conv["converged"] else "NOT CONVERGED: " + conv["why"],
                     cost["seconds"], cost["evaluations_per_image"]))
        return rec

    def _adaptive_batches(self, path: str, fp: Dict, batches: int) -> Dict[int, EngineResult]:
        """The image batches of an interrupted adaptive run already saved (same fingerprint)."""
        done = {}
        for i in range(batches):
            rec = _read_npz(_batch_path(path, i), dict(fp, batch=i), self.log,
                            {"x_adv": 4, "success": 1, "first_step": 2})
            if rec is not None:
                done[i] = EngineResult(x_adv=rec["x_adv"], success=rec["success"],
                                       first_step=rec["first_step"],
                                       evaluations=rec["evaluations"],
                                       runs=json.loads(str(rec["runs"])),
                                       seconds=float(rec["seconds"]))
        if done:
            self.log("%s: resuming after %d of %d batches" % (path, len(done), batches))
        return done

    # ---------------------------------------------------------------- observations
    def observe(self, defense: Defense, images: ImageSet) -> Dict[str, List]:
        """``defense.observe(images)``, cached under both fingerprints."""
        fp = {"images": images.fingerprint, "defense": defense.fingerprint()}
        key = (defense.label, images.name)
        cached = self._obs.get(key)
        if cached is not None and cached[0] == _canonical(fp):
            return cached[1]
        path = os.path.join(self.vectors_dir, "defenses", _safe(defense.label),
                            _safe(images.name.replace("/", "__")) + ".json")
        self.touched.add(path)
        obs = None
        if os.path.isfile(path):
            rec = read_cached_json(path, self.log)
            if isinstance(rec, dict) and rec.get("fingerprint") == json.loads(_canonical(fp)):
                obs = rec.get("observation")
                problem = _observation_problem(obs, len(images))
                if problem:
                    self.log("cache file %s is damaged (%s): recomputed" % (path, problem))
                    obs = None
            elif isinstance(rec, dict):
                self.log("%s was made by another %s (its settings or fitted state differ): "
                         "recomputed" % (path, defense.label))
        if obs is None:
            obs = defense.observe(images)
            write_json_atomic(path, {"fingerprint": fp, "observation": obs})
        self._obs[key] = (_canonical(fp), obs)
        return obs

    def fit_context(self, make_extractors_fn: Callable) -> FitContext:
        cfg = self.cfg
        return FitContext(
            models=self.models, class_set=cfg.class_set, seed=cfg.seed,
            target_fpr=cfg.target_fpr, threshold=cfg.threshold, log=self.log,
            images=self.images, attacked=self.attacked, observe=self.observe,
            settings={"mode": cfg.mode, "extractors": make_extractors_fn, "arch": cfg.arch,
                      "m_dir": cfg.m_dir, "m_digest": self.fp["m"],
                      "trajectory_cache": trajectory_cache(cfg),
                      "at": ({"eps": cfg.at_eps, "checkpoint_digest": self.digests.get("at")}
                             if "at" in self.models else {}),
                      "transfer_k": self._transfer_k if cfg.k_transfer else None,
                      # the trajectory detector trains under --distribute mirrored; with
                      # multi-worker only the chief is still here, so it trains on one device
                      "strategy": (make_strategy(cfg.distribute)
                                   if cfg.distribute == "mirrored" else None)})

    def _transfer_k(self):
        """The surrogate K of the transfer threat (built when first needed)."""
        from models.mrcnn import PartExtractor
        return PartExtractor.from_checkpoint(self.cfg.k_transfer, get_config(self.cfg.k_config),
                                             model_dir=self.cfg.k_log_dir)


def _batch_path(path: str, batch: int) -> str:
    """File of one image batch of an adaptive record while it is being computed."""
    return path[:-len(".npz")] + ".batch-%04d.npz" % batch


def _engine_arrays(res: EngineResult) -> Dict:
    return {"x_adv": res.x_adv, "success": res.success, "first_step": res.first_step,
            "evaluations": res.evaluations, "runs": json.dumps(res.runs),
            "seconds": round(res.seconds, 1)}


def _run_summary(runs: Sequence[Dict]) -> List[Dict]:
    """What the engine ran, summed over batches: per (restart, stage attack, target rank) the
    images attacked and those reaching the goal."""
    out: Dict[Tuple, Dict] = {}
    for r in runs:
        key = (r["restart"], r["stage"], r["attack"], r["target_rank"])
        row = out.setdefault(key, {"restart": r["restart"], "stage": r["stage"],
                                   "attack": r["attack"], "target_rank": r["target_rank"],
                                   "images": 0, "reached": 0})
        row["images"] += r["images"]
        row["reached"] += r["reached"]
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1], -1 if k[3] is None
                                                       else k[3]))]


def trajectory_cache(cfg: EvalConfig) -> Tuple[str, ...]:
    """Folders of the trajectory detector's cache, the one it writes first: beside M's
    checkpoint, or -- when the checkpoint folder cannot be written (trained models on a
    read-only share) -- in the run's results, still reading what is cached beside M."""
    beside_m = cfg.m_dir.rstrip(os.sep) + "_trajectory"
    if write_problem(beside_m, "--checkpoint-dir") is None:
        return (beside_m,)
    return (os.path.join(cfg.out_dir, "vectors", "trajectory"), beside_m)


def shard_bounds(n: int, batch: int, shard: int, shards: int) -> Tuple[int, int, int]:
    """``(first batch index, first image, end image)`` of shard ``shard`` (0-based) of
    ``shards`` over ``n`` images attacked in batches of ``batch``: the ``ceil(n / batch)``
    batches are split into ``shards`` contiguous runs as even as possible (a shard may be
    empty when there are fewer batches than shards)."""
    if not 0 <= shard < shards:
        raise ValueError("shard %d is not one of 0..%d" % (shard, shards - 1))
    batches = -(-n // batch)
    first, last = batches * shard // shards, batches * (shard + 1) // shards
    return first, min(first * batch, n), min(last * batch, n)


def _read_npz(path: str, fp: Dict, log: Optional[Callable[[str], None]] = None,
              expect: Optional[Dict[str, int]] = None, n: Optional[int] = None
              ) -> Optional[Dict]:
    """The arrays of a saved record when its fingerprint matches ``fp``, else None.

    A damaged record -- unreadable, without a fingerprint, missing a key of ``expect``
    (key -> number of dimensions) or with another rank, or whose arrays in ``expect`` do not
    hold ``n`` rows -- is named in the log and treated as missing: the caller recomputes it
    and writes it anew (it is a cache of a deterministic computation, so nothing is lost).
    """
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["fingerprint"])) != json.loads(_canonical(fp)):
                return None
            rec = {k: f[k] for k in f.files}
        problem = _record_problem(rec, expect or {}, n)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = str(e).strip("'\"") or type(e).__name__
    if problem is None:
        return rec
    (log or print)("saved record %s is damaged (%s): recomputed" % (path, problem))
    return None


def _observation_problem(obs: Any, n: int) -> Optional[str]:
    """Why a cached observation cannot be used (None when it can): it must map names to
    lists of one entry per image, and part sets may hold only the 44 part names."""
    if not isinstance(obs, dict):
        return "not an object"
    for key, values in obs.items():
        if not isinstance(values, list) or len(values) != n:
            return "%r does not hold one entry per image (%d)" % (key, n)
    for i, parts in enumerate(obs.get("parts", [])):
        if not isinstance(parts, list):
            return "parts[%d] is not a list" % i
        unknown = [p for p in parts if p not in PART_IDS]
        if unknown:
            return "parts[%d] holds unknown part names %s" % (i, unknown[:3])
    return None


def _record_problem(rec: Dict, expect: Dict[str, int], n: Optional[int]) -> Optional[str]:
    for key, ndim in expect.items():
        if key not in rec:
            return "no array %r" % key
        if rec[key].ndim != ndim:
            return "%r has %d dimensions, not %d" % (key, rec[key].ndim, ndim)
        if n is not None and ndim > 0 and len(rec[key]) != n:
            return "%r holds %d rows for %d images" % (key, len(rec[key]), n)
    return None


def _write_npz(path: str, arrays: Dict) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})


# ----------------------------------------------------------------------------- results

def _robustness(adv: Optional[float], clean: Optional[float]) -> Optional[float]:
    """Seed 004's robustness: accuracy under attack / clean accuracy (None when clean is 0)."""
    if adv is None or not clean:
        return None
    return float(adv) / float(clean)


def adaptive_vectors(vectors) -> Tuple[List[Tuple[str, float]], Dict[str, str]]:
    """The vectors the adaptive engine runs (per-image attacks), and why the others are not
    run adaptively (vector label -> reason): a universal perturbation is one image-agnostic
    ``v`` fitted on M, and ``ga`` attacks random classes by design (the engine picks its
    targets itself) -- each is refused by the engine with that reason, never replaced by
    another attack."""
    run, skipped = [], {}
    for name, eps in vectors:
        spec = get_attack(name)
        if spec.universal:
            skipped["%s_%s" % (name, eps_tag(eps))] = (
                "a universal perturbation is one image-agnostic v fitted on M; there is no "
                "per-image attack through the defense to adapt")
        elif spec.targeting == "always":
            skipped["%s_%s" % (name, eps_tag(eps))] = (
                "attacks random target classes by design; the adaptive engine chooses its own "
                "targets (see the pgd/apgd rows)")
        else:
            run.append((name, eps))
    return run, skipped


def _runs_of(bench: Bench, defense: Defense, vectors) -> Tuple[List[Tuple], Dict]:
    """(threat, goal, attack, eps) of every row of ``defense``, and the notes on the
    defense-aware threats it has no attack for."""
    runs = [(GRAY_BOX, None, name, eps) for name, eps in vectors]
    notes: Dict[str, Any] = {}
    adaptive, skipped = adaptive_vectors(vectors)
    for threat in DEFENSE_AWARE:
        if threat not in bench.cfg.threats:
            continue
        reason = defense.no_adaptive_reason(threat)
        if reason is not None:
            notes[str(threat)] = reason
            continue
        if skipped:
            notes["skipped"] = skipped
        runs += [(threat, goal, name, eps) for name, eps in adaptive
                 for goal in defense.adaptive_goals()]
    return runs, notes


def _detector_rates(ds, threshold: float) -> Dict:
    """AUC and TPR at the operating threshold and at 5% / 10% benign FPR of a detection
    set (None where it holds no successful attack)."""
    det = evaluate_detection(ds, threshold)
    out = {"auc": det.auc, "tpr": det.tpr, "fpr": det.fpr, "tpr_at_5fpr": None,
           "tpr_at_10fpr": None}
    if ds.n_successful:
        out["tpr_at_5fpr"] = tpr_at_fpr(ds.labels, ds.scores, 0.05)
        out["tpr_at_10fpr"] = tpr_at_fpr(ds.labels, ds.scores, 0.10)
    return out


def _adaptive_fields(bench: Bench, defense: Defense, threat, goal, name, eps,
                     a_out) -> Dict:
    """Convergence, cost and agreement of an adaptive row: the engine's trace and whether the
    real evaluation agrees with the attacker's verdicts (the transfer attacker judges by its
    surrogate, so only the adaptive threat must agree)."""
    info = bench.adaptive_info[(threat, goal, defense.label, name, float(eps))]
    y = bench.images("test").labels
    if goal == Goal.WRONG:
        real = (a_out.pred != y) & (a_out.pred != REJECTED)
    else:
        real = (bench.adaptive(defense, name, eps, threat, goal).preds["m"] != y) & ~a_out.flags
    agree = float(np.mean(real == info["success"]))
    if threat == ADAPTIVE and agree < 0.98:
        bench.log("WARNING: %s %s eps=%g [%s]: the real evaluation agrees with the attack's own "
                  "verdicts on only %.1f%% of the images (K's or M's answers differ between "
                  "the attack and the evaluation)" % (defense.label, name, eps, goal,
                                                      100 * agree))
    return {"convergence": info["convergence"], "cost": info["cost"], "agreement": agree}


def defense_results(bench: Bench, defense: Defense, vectors) -> Dict:
    """One defense's block of ``metrics.json`` plus its ROC data per vector: the gray-box rows
    (in ``vectors`` order), then the defense-aware rows (adaptive, transfer) per vector and
    goal where the defense has an attack for them, and the per-image worst case over every
    attack tried."""
    benign = bench.images("test")
    y = benign.labels
    model = defense.attacked_model()
    b_out = defense.decide(bench.observe(defense, benign))
    clean = accuracy(b_out.pred, y)
    rows, curves, defended = [], {}, []
    runs, notes = _runs_of(bench, defense, vectors)
    eta = Eta(len(runs) + 1, done=1)
    for threat, goal, name, eps in runs:
        adv = (bench.attacked(model, name, eps, "test") if threat == GRAY_BOX
               else bench.adaptive(defense, name, eps, threat, goal))
        a_out = defense.decide(bench.observe(defense, adv))
        timing = eta.step()
        if bench.cfg.progress:
            bench.log("%s: %d of %d image sets judged, %s (%s)" % (
                defense.label, eta.done, eta.total, adv.name, timing))
        rows.append(_row(bench, defense, threat, goal, name, eps, adv, a_out, b_out, curves))
        defended.append((a_out.pred == y) | (a_out.pred == REJECTED))
    block = {"kind": "detector" if defense.detector else "classifier",
             "attacked_model": model, "params": defense.params(),
             "benign": {"acc": clean}, "attacks": rows}
    if defended:
        worst = np.all(np.stack(defended), axis=0)
        block["worst_case"] = {"defended": float(np.mean(worst)), "attacks": len(defended),
                               "threat_models": sorted({r["threat_model"] for r in rows})}
    if notes:
        block["adaptive"] = notes
    return {"block": block, "curves": curves, "benign_pred": b_out.pred}


def _row(bench, defense, threat, goal, name, eps, adv, a_out, b_out, curves) -> Dict:
    """One result row of a defense (see ``metrics.json`` in the README)."""
    y = bench.images("test").labels
    model = defense.attacked_model()
    acc = accuracy(a_out.pred, y)
    stopped = (a_out.pred == y) | (a_out.pred == REJECTED)
    fooled = adv.preds[model] != y
    evaded = fooled & ~a_out.flags if defense.detector else a_out.pred != y
    clean = accuracy(b_out.pred, y)
    row = {"attack": name, "eps": report.eps_value(eps), "threat_model": str(threat),
           "goal": None if goal is None else str(goal), "acc": acc,
           "defended": float(np.mean(stopped)), "evasion": float(np.mean(evaded)),
           "robustness": _robustness(acc, clean), "auc": None, "tpr": None, "fpr": None,
           "tpr_at_5fpr": None, "tpr_at_10fpr": None}
    ds = detection_set(b_out.score if defense.detector else np.zeros(len(y)),
                       a_out.score if defense.detector else np.zeros(len(y)), y,
                       bench.images("test").preds[model], adv.preds[model],
                       require_benign_correct=bench.cfg.detection_set == "strict")
    row.update(n_attacked=ds.n_attacked, n_successful=ds.n_successful)
    if defense.detector:
        row.update(_detector_rates(ds, defense.threshold))
        if ds.n_successful:
            label = report.attack_label(name, eps) + ("" if threat == GRAY_BOX else
                                                      " [%s, %s]" % (threat, goal))
            curves[label] = report.roc_curve_for(defense.label, ds.labels, ds.scores)
    if threat != GRAY_BOX:
        row.update(_adaptive_fields(bench, defense, threat, goal, name, eps, a_out))
    return row


def table_iv_fields(bench: Bench, results: Dict[str, Dict], vectors) -> Tuple[Dict, List]:
    """The paper's Table IV fields (None / AT / UM) from the defenses' results."""
    y = bench.images("test").labels

    def acc_of(label, i=None):
        if label not in results:
            return None
        block = results[label]["block"]
        return block["benign"]["acc"] if i is None else block["attacks"][i]["acc"]

    benign = {"acc_none": accuracy(bench.images("test").preds["m"], y),
              "acc_at": acc_of("at"), "acc_um": acc_of("unmask")}
    entries = []
    for i, (name, eps) in enumerate(vectors):
        adv = bench.attacked("m", name, eps, "test")
        ds = detection_set(np.zeros(len(y)), np.zeros(len(y)), y,
                           bench.images("test").preds["m"], adv.preds["m"],
                           require_benign_correct=bench.cfg.detection_set == "strict")
        um = results["unmask"]["block"]["attacks"][i] if "unmask" in results else {}
        entries.append(report.attack_entry(
            name, eps, acc_none=accuracy(adv.preds["m"], y), acc_at=acc_of("at", i),
            acc_um=um.get("acc"), auc=um.get("auc"), tpr=um.get("tpr"), fpr=um.get("fpr"),
            n_attacked=ds.n_attacked, n_successful=ds.n_successful))
    return benign, entries


# ----------------------------------------------------------------------------- run

def open_bench(cfg: EvalConfig, log: Callable[[str], None] = print,
               labels: Optional[Sequence[str]] = None):
    """Data, models (trained or loaded), the :class:`Bench` and the fitted defenses of a run
    (``labels``: the defenses to fit, default ``cfg.defenses``).

    Returns:
        ``(bench, ctx, defenses, extractor_kind)``; ``extractor_kind["kind"]`` names the
        part extractor once an UnMask defense made it.
    """
    tf.random.set_seed(cfg.seed)
    defenses = [build_defense(label) for label in (cfg.defenses if labels is None
                                                   else labels)]
    data = load_data(cfg, log)
    m, at = get_models(cfg, data, log)
    models = {"m": m}
    if at is not None:
        models["at"] = at
    bench = Bench(cfg, data, models, log)
    extractor_kind = {}

    def extractors():
        """Made once, shared by every UnMask variant of the run."""
        if "made" not in extractor_kind:
            kind, ex_val, ex_test = make_extractors(cfg, data, log)
            if kind == "k":
                k_ckpt = getattr(ex_test, "checkpoint", None)
                digest = _file_digest(k_ckpt) if k_ckpt else None
            else:   # the oracle's answers are its parts files: a re-annotation recomputes
                digest = "+".join(_file_digest(data["splits"][s].parts_file)
                                  for s in ("val", "test"))
            extractor_kind.update(kind=kind, made=(kind, ex_val, ex_test, digest))
        return extractor_kind["made"]

    ctx = bench.fit_context(extractors)
    for d in defenses:
        d.fit(ctx)
        log("defense %s: %s" % (d.label, _short_params(d.params())))
    return bench, ctx, defenses, extractor_kind


def run_defense(cfg: EvalConfig, label: str, log: Callable[[str], None] = print) -> List[str]:
    """One defense of a run on its own (a grid work unit): fit it, attack it (its adaptive
    attacks) and record its observations of the benign and attacked test images in the
    run's caches, which :func:`run_evaluation` then reuses.  Returns those files (written
    now or reused), sorted."""
    bench, _, defenses, _ = open_bench(cfg, log, [label])
    defense_results(bench, defenses[0], list(cfg.vectors))
    return sorted(bench.touched)


def run_evaluation(cfg: EvalConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the whole bench; returns the metrics (also written to ``cfg.out_dir``)."""
    start = time.time()
    bench, ctx, defenses, extractor_kind = open_bench(cfg, log)
    models = bench.models
    vectors = list(cfg.vectors)
    eta = Eta(len(vectors) * len(models))
    for name, eps in vectors:                 # every defense's gray-box attacks, once
        for model in sorted(models):
            bench.attacked(model, name, eps, "test")
            timing = eta.step()
            if cfg.progress:
                log("attacks: %d of %d done (%s)" % (eta.done, eta.total, timing))
    results = {d.label: defense_results(bench, d, vectors) for d in defenses}
    benign, entries = table_iv_fields(bench, results, vectors)
    um = results.get("unmask", {}).get("block", {}).get("params", {})
    metrics = report.make_metrics(
        cfg.class_set.code_name, cfg.arch, extractor_kind.get("kind"), um.get("threshold"),
        um.get("mode", cfg.mode), cfg.seed, benign, entries,
        defenses={label: r["block"] for label, r in results.items()},
        attack_info=bench.attack_info or None, detection_set=cfg.detection_set,
        adaptive_settings=_adaptive_settings(cfg))
    curves: Dict[str, List] = {}
    for r in results.values():
        for vector, curve in r["curves"].items():
            curves.setdefault(vector, []).append(curve)
    paths = report.write_report(cfg.out_dir, metrics, roc_curves=curves)
    if cfg.trajectory_table:
        from defense import trajectory_table
        table = trajectory_table.seed_table(ctx, bench.images("test"), log)
        paths.update(trajectory_table.write_table(cfg.out_dir, table))
        log(trajectory_table.table_markdown(table))
    for path in report.remove_stale_reports(cfg.out_dir, paths.values()):
        log("removed %s: an earlier run's report that this run does not write" % path)
    from defense import page        # last: the page reads what the run wrote
    paths["page"] = page.write_run_page(cfg, log)
    log(report.summary_text(metrics))
    log("wrote %s (%.0f s)" % (", ".join(sorted(paths.values())), time.time() - start))
    return metrics


def _adaptive_settings(cfg: EvalConfig) -> Optional[Dict]:
    """How the defense-aware attacks of a run were made (None when none was asked for)."""
    if not any(t in cfg.threats for t in DEFENSE_AWARE):
        return None
    return dict(dataclasses.asdict(cfg.engine_settings()),
                **dataclasses.asdict(cfg.adaptive_options()), batch=cfg.adaptive_batch)


def _short_params(params: Dict) -> str:
    return ", ".join("%s=%s" % (k, v) for k, v in params.items() if k != "grid") or "-"
