"""The paper's evaluation of UnMask for one (class set, architecture): Table IV, Fig. 4, Fig. 5.

Steps (each resumable): load the class set's images; train or load M (and the AT baseline when
asked); choose the extractor (K, or the ground-truth *oracle*, the ceiling of a perfect K);
choose the detection threshold on validation images for a target false-positive rate; run
each attack vector on the test images; apply Algorithm 1 to benign and attacked images; write
``results/<code>/<arch>/`` (metrics.json, table_iv.md, roc.png/pdf, fig4.png/pdf,
summary.txt).

Threat model (paper): gray-box -- the attacks see M (and AT sees its own attacks), never K.
The per-vector outcome (M's and AT's predictions, extracted part sets) is saved in
``vectors/`` as soon as a vector is done, with a fingerprint of everything it depends on, so
an interrupted run resumes from the vectors already saved and a changed setting recomputes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import tfcompat
from attacks import PAPER_ATTACK_VECTORS, resolve_config, run_attack
from data.classset import load_split
from data.fileio import read_json, write_json_atomic
from data.knowledge import CLASS_PARTS, ClassSet
from defense import report
from defense.adversarial_training import AT_EPS, at_checkpoint_dir, train_adversarial
from defense.extractors import OracleExtractor
from defense.metrics import attack_summary, benign_summary
from defense.thresholds import choose_threshold
from defense.unmask import UnMask
from models import DEFAULT_ARCH
from models.classifier import build_classifier
from models.train_classifier import TrainConfig, predict_labels, train_classifier
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
    n_test: Optional[int] = None
    attack_batch: int = 50
    seed: int = 0
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    progress: bool = True

    @property
    def out_dir(self) -> str:
        return os.path.join(self.results_dir, self.class_set.code_name, self.arch)

    @property
    def m_dir(self) -> str:
        return os.path.join(self.checkpoint_dir, "model_m", self.class_set.code_name,
                            "%s_%d" % (self.arch, self.input_size))


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


def get_models(cfg: EvalConfig, data: Dict, log: Callable):
    """M (trained or loaded) and the AT model (or None)."""
    n = len(cfg.class_set.classes)
    m = build_classifier(cfg.arch, n, cfg.input_size, weights=cfg.weights, seed=cfg.seed)
    log("model M: %s -> %s" % (cfg.arch, cfg.m_dir))
    train_classifier(m, data["x_train"], data["y_train"], data["x_val"], data["y_val"],
                     cfg.m_dir, cfg.train, log=log, progress=cfg.progress)
    at = None
    if cfg.adv_train:
        at = train_adversarial(cfg.arch, n, cfg.input_size, data,
                               at_checkpoint_dir(cfg.m_dir, cfg.at_eps), cfg.train,
                               eps=cfg.at_eps, log=log, progress=cfg.progress)
    return m, at


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


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


#: Bumped when the content or meaning of a saved vector changes, so old records are recomputed
#: (2: K's part sets of attacked images no longer come from a key-only cache).
RECORD_VERSION = 2


def fingerprint(cfg: EvalConfig, kind: str, data: Dict, extractor=None) -> Dict:
    """Everything a saved vector depends on; a saved vector is reused only if it matches."""
    k_ckpt = getattr(extractor, "checkpoint", None) if kind == "k" else None
    return {"version": RECORD_VERSION, "class_set": cfg.class_set.code_name, "arch": cfg.arch,
            "size": cfg.input_size, "seed": cfg.seed, "extractor": kind,
            "k": _file_digest(k_ckpt) if k_ckpt else None, "test_keys": hashlib.sha1(
                "\n".join(data["splits"]["test"].keys).encode()).hexdigest()[:16],
            "m": _file_digest(os.path.join(cfg.m_dir, "best.h5")),
            "at": (_file_digest(os.path.join(at_checkpoint_dir(cfg.m_dir, cfg.at_eps),
                                             "best.h5")) if cfg.adv_train else None)}


def vector_fingerprint(cfg: EvalConfig, fp: Dict, name: str, eps: float) -> Dict:
    """``fp`` plus what one attack vector's outcome depends on: its fully resolved
    configuration (steps, step size, random start, ... as the registry fills them in) and the
    attack batch size (random starts are seeded per batch)."""
    return dict(fp, attack=name, eps=eps, attack_config=resolve_config(name, eps).as_dict(),
                attack_batch=cfg.attack_batch)


def _cached(path: str, fp: Dict) -> Optional[Dict]:
    if os.path.isfile(path):
        rec = read_json(path)
        if rec.get("fingerprint") == fp:
            return rec
    return None


def _parts_json(sets: List[frozenset]) -> List[List[str]]:
    return [sorted(s) for s in sets]


def benign_record(cfg, unmask_val, unmask_test, at, data, fp, log) -> Dict:
    """M/AT predictions and parts of the benign validation and test images (cached)."""
    path = os.path.join(cfg.out_dir, "vectors", "benign.json")
    rec = _cached(path, fp)
    if rec is None:
        rec = {"fingerprint": fp}
        for split, um in (("val", unmask_val), ("test", unmask_test)):
            x = data["x_" + split].astype(np.float32) / 255.0
            rec[split] = {"pred": um.predict(x).tolist(), "parts": _parts_json(
                um.extract(x, keys=data["splits"][split].keys))}
        rec["test"]["at_pred"] = (predict_labels(at, data["x_test"]).tolist()
                                  if at is not None else None)
        write_json_atomic(path, rec)
    else:
        log("benign predictions: reusing %s" % path)
    return rec


def vector_record(cfg, name, eps, m, at, unmask_test, data, fp, log) -> Dict:
    """Attack M (and AT) with one vector; M's/AT's predictions and K's parts (cached)."""
    path = os.path.join(cfg.out_dir, "vectors", "%s_%g.json" % (name, eps))
    vfp = vector_fingerprint(cfg, fp, name, eps)
    rec = _cached(path, vfp)
    if rec is not None:
        log("%s eps=%g: reusing %s" % (name, eps, path))
        return rec
    x = data["x_test"].astype(np.float32) / 255.0
    y = data["y_test"]
    start = time.time()
    res = run_attack(m, x, y, name, eps=eps, batch_size=cfg.attack_batch, seed=cfg.seed,
                     progress=cfg.progress)
    parts = unmask_test.extract(res.x_adv, keys=data["splits"]["test"].keys)
    at_pred = None
    if at is not None:
        at_pred = run_attack(at, x, y, name, eps=eps, batch_size=cfg.attack_batch,
                             seed=cfg.seed, progress=cfg.progress).pred_adv.tolist()
    rec = {"fingerprint": vfp, "pred_adv": res.pred_adv.tolist(),
           "parts": _parts_json(parts), "at_pred": at_pred,
           "seconds": round(time.time() - start, 1)}
    write_json_atomic(path, rec)
    log("%s eps=%g: M accuracy %.3f (%.0f s)" % (name, eps, res.adv_accuracy, rec["seconds"]))
    return rec


# ----------------------------------------------------------------------------- run

def run_evaluation(cfg: EvalConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the whole evaluation; returns the metrics (also written to ``cfg.out_dir``)."""
    start = time.time()
    tf.random.set_seed(cfg.seed)
    data = load_data(cfg, log)
    m, at = get_models(cfg, data, log)
    kind, ex_val, ex_test = make_extractors(cfg, data, log)
    cs = cfg.class_set
    um = {split: UnMask(m, ex, CLASS_PARTS, cs.classes, threshold=0.5, mode=cfg.mode)
          for split, ex in (("val", ex_val), ("test", ex_test))}
    fp = fingerprint(cfg, kind, data, ex_test)
    benign = benign_record(cfg, um["val"], um["test"], at, data, fp, log)
    threshold = _threshold(cfg, um["val"], benign["val"], log)
    decide = UnMask(m, ex_test, CLASS_PARTS, cs.classes, threshold, mode=cfg.mode).decide
    y = data["y_test"]
    benign_res = decide(benign["test"]["pred"], benign["test"]["parts"])
    entries, curves = [], {}
    for name, eps in cfg.vectors:
        rec = vector_record(cfg, name, eps, m, at, um["test"], data, fp, log)
        adv_res = decide(rec["pred_adv"], rec["parts"])
        summ = attack_summary(y, benign_res, adv_res, at_pred=rec["at_pred"])
        entries.append(report.attack_entry(name, eps, **summ))
        if summ["n_successful"]:
            curves[report.attack_label(name, eps)] = _roc(name, eps, y, benign_res, adv_res)
    metrics = report.make_metrics(cs.code_name, cfg.arch, kind, threshold, cfg.mode, cfg.seed,
                                  benign_summary(y, benign_res, benign["test"]["at_pred"]),
                                  entries)
    paths = report.write_report(cfg.out_dir, metrics, roc_curves=curves)
    log(report.summary_text(metrics))
    log("wrote %s (%.0f s)" % (", ".join(sorted(paths.values())), time.time() - start))
    return metrics


def _threshold(cfg: EvalConfig, um_val: UnMask, val: Dict, log: Callable) -> float:
    if cfg.threshold is not None:
        log("threshold t = %.3f (given)" % cfg.threshold)
        return float(cfg.threshold)
    d = um_val.decide(val["pred"], val["parts"]).distances
    choice = choose_threshold(d, cfg.target_fpr)
    log("threshold t = %.3f chosen on %d validation images for FPR <= %.2f (validation FPR "
        "%.3f)" % (choice.threshold, len(d), cfg.target_fpr, choice.fpr))
    return float(choice.threshold)


def _roc(name, eps, y, benign_res, adv_res):
    from defense.metrics import detection_set

    ds = detection_set(benign_res.distances, adv_res.distances, y, benign_res.preds,
                       adv_res.preds)
    return report.roc_curve_for(report.attack_label(name, eps), ds.labels, ds.scores)
