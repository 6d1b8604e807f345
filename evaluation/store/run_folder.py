"""A finished run's folder read back, for its page: ``metrics.json``, ``run.json`` and the
records under ``vectors/`` -- found by the fingerprints they hold, not by their file names.

``run.json`` (written at the end of every run,
:func:`evaluation.report.writer.write_run_file`) holds what the page needs beyond the metrics:
the run's configuration, the data folder, M's input size, the test images (keys relative to
the class set's test folder, labels, and the SHA-1 of each image as M saw it: uint8 [S, S, 3]
after resizing, so a regenerated data folder is noticed) and, for runs with K, the checkpoint
K was loaded from::

    {"version": 1, "config": {...EvalConfig...}, "data_dir": "data/unmask", "input_size": 96,
     "test": {"keys": ["car/car_00001.jpg", ...], "labels": [1, ...], "sha1": ["9f2a...", ...]},
     "k": {"config": "synthetic", "checkpoint": "logs/model_k/.../mask_rcnn_parts_0024.h5"}
          | null}

Nothing here raises for a damaged record: :class:`RunFolder` collects one message per
unusable file in :attr:`RunFolder.problems`, naming it, and answers as if it were missing.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from data.classset import load_split
from data.fileio import file_digest
from data.images import load_resized
from data.knowledge import get_class_set
from evaluation.schema import validate_metrics
from evaluation.store.records import Field, record_problem, safe_name

RUN_FILE = "run.json"
RUN_VERSION = 1
#: Threat-model folders of ``vectors/`` holding a defense's own attacked images.
DEFENSE_AWARE = ("adaptive", "transfer")


def image_digest(pixels: np.ndarray) -> str:
    """SHA-1 (16 hex digits) of one uint8 image [S, S, 3] as M saw it."""
    return hashlib.sha1(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()[:16]


def _k_checkpoint(cfg) -> Optional[str]:
    """The checkpoint the run's K was loaded from (None when it cannot be found now)."""
    from models.mrcnn.model import resolve_checkpoint
    from mrcnn_config import get_config

    k_cfg = get_config(cfg.k_config)
    try:
        return resolve_checkpoint(cfg.k_weights, cfg.k_log_dir, k_cfg.NAME, k_cfg)
    except FileNotFoundError:
        return None


def describe_run(cfg, metrics: Dict[str, Any]) -> Dict[str, Any]:
    """``run.json``'s content for an evaluation config (:class:`~evaluation.config.EvalConfig`) and
    the metrics it produced (module docstring)."""
    split = load_split(cfg.data_dir, cfg.class_set, "test").subset(cfg.n_test, seed=cfg.seed)
    config = dataclasses.asdict(cfg)
    config["class_set"] = cfg.class_set.code_name
    k = None
    if metrics.get("extractor") == "k":
        k = {"config": cfg.k_config, "checkpoint": _k_checkpoint(cfg)}
    return {"version": RUN_VERSION, "config": json.loads(json.dumps(config, default=str)),
            "data_dir": cfg.data_dir, "input_size": int(cfg.input_size),
            "test": {"keys": list(split.keys), "labels": [int(v) for v in split.labels],
                     "sha1": [image_digest(load_resized(p, cfg.input_size))
                              for p in split.paths]},
            "k": k}


@dataclasses.dataclass(frozen=True)
class Record:
    """One saved attack record: ``path``, its ``fingerprint`` and the folder it is in
    (``vectors/<kind>/<folder>/``: ``kind`` "attacks" with the attacked model's folder, or a
    threat model with the defense's folder)."""
    path: str
    kind: str
    folder: str
    fingerprint: Dict[str, Any]

    def is_vector(self, attack: str, eps: float) -> bool:
        fp = self.fingerprint
        return fp.get("attack") == attack and float(fp.get("eps", -1)) == float(eps)


class RunFolder:
    """Read-only view of ``path`` (a run's output folder).

    Attributes:
        metrics: the validated ``metrics.json`` (ValueError / FileNotFoundError naming the
            file when it is missing or invalid: there is no page without it).
        run: ``run.json`` (None when missing or damaged; the problem is recorded).
        problems: one message per unusable file, naming it (relative to ``path``).
    """

    def __init__(self, path: str):
        self.path = path
        self.problems: List[str] = []
        metrics_path = os.path.join(path, "metrics.json")
        if not os.path.isfile(metrics_path):
            raise FileNotFoundError("%s has no metrics.json: is it the folder of a finished "
                                    "run (results/<code>/<arch>)?" % path)
        try:
            with open(metrics_path, encoding="utf-8") as f:
                self.metrics = validate_metrics(json.load(f))
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise ValueError("%s is not a valid metrics file: %s" % (metrics_path, e)) from None
        self.classes = get_class_set(self.metrics["class_set"]).classes
        self.run = self._read_run()
        self._records: Optional[List[Record]] = None
        self._damaged: List[Tuple[str, str]] = []
        self._observations: Dict[str, List[Tuple[str, str, Dict]]] = {}

    def rel(self, path: str) -> str:
        """``path`` relative to the run folder (how the page names files)."""
        return os.path.relpath(path, self.path)

    def _problem(self, path: str, why: str) -> str:
        message = "%s is damaged (%s)" % (self.rel(path), why)
        if message not in self.problems:
            self.problems.append(message)
        return message

    def _read_run(self) -> Optional[Dict]:
        path = os.path.join(self.path, RUN_FILE)
        if not os.path.isfile(path):
            self.problems.append("%s is missing (runs write it since the report page exists): "
                                 "run the evaluation again to get the gallery; it reuses every "
                                 "saved record" % RUN_FILE)
            return None
        try:
            with open(path, encoding="utf-8") as f:
                run = json.load(f)
            test = run["test"]
            if not len(test["keys"]) == len(test["labels"]) == len(test["sha1"]):
                raise ValueError("test keys, labels and sha1 differ in length")
            return run
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._problem(path, str(e) or type(e).__name__)
            return None

    # ---------------------------------------------------------------- attack records
    def records(self) -> List[Record]:
        """Every readable attack record (gray-box per attacked model, adaptive and transfer
        per defense), sorted by path; unreadable ones are recorded as problems."""
        if self._records is None:
            self._records = []
            for kind in ("attacks",) + DEFENSE_AWARE:
                pattern = os.path.join(self.path, "vectors", kind, "*", "test-*.npz")
                for path in sorted(glob.glob(pattern)):
                    if path.endswith(".fit.npz") or ".shard-" in path or ".batch-" in path:
                        continue
                    rec = self._read_fingerprint(path, kind)
                    if rec is not None:
                        self._records.append(rec)
        return self._records

    def _read_fingerprint(self, path: str, kind: str) -> Optional[Record]:
        try:
            with np.load(path, allow_pickle=False) as f:
                fp = json.loads(str(f["fingerprint"]))
            if not isinstance(fp, dict):
                raise ValueError("its fingerprint is not an object")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            self._damaged.append((path, self._problem(path, str(e).strip("'\"") or
                                                      type(e).__name__)))
            return None
        return Record(path, kind, os.path.basename(os.path.dirname(path)), fp)

    def record(self, kind: str, folder: str, attack: str, eps: float,
               goal: Optional[str] = None) -> Optional[Record]:
        """The record of a vector in ``vectors/<kind>/<folder>/`` (a defense-aware one: of the
        attack run for ``goal``); None when there is none."""
        for rec in self.records():
            if (rec.kind == kind and rec.folder == folder and rec.is_vector(attack, eps)
                    and rec.fingerprint.get("goal") == goal):
                return rec
        return None

    def damaged(self, kind: str, folder: str, attack: str) -> List[str]:
        """Messages of the damaged records of ``attack`` in ``vectors/<kind>/<folder>/``."""
        self.records()
        where = os.path.join(self.path, "vectors", kind, folder, "test-%s_" % attack)
        return [message for path, message in self._damaged if path.startswith(where)]

    def arrays(self, rec: Record) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """``(x_adv float32 [N, S, S, 3], pred_adv int64 [N])`` of a record, N being the run's
        test images; None (and a problem) when the record cannot be used."""
        n = self.n_test
        try:
            with np.load(rec.path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            x, pred = arrays["x_adv"], arrays["pred_adv"]
            if x.ndim != 4 or pred.ndim != 1 or len(x) != len(pred):
                raise ValueError("x_adv %s and pred_adv %s do not fit together"
                                 % (x.shape, pred.shape))
            if n is not None and len(x) != n:
                raise ValueError("%d images, the run has %d test images" % (len(x), n))
            # the record proves its content, and holds the run's classes only
            problem = record_problem(arrays, {"x_adv": Field(4, "images"),
                                              "pred_adv": Field(1, "classes")},
                                     classes=len(self.classes), digest_required=False)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            self._problem(rec.path, str(e).strip("'\"") or type(e).__name__)
            return None
        return x.astype(np.float32), pred.astype(np.int64)

    # ---------------------------------------------------------------- observations
    def _defense_observations(self, label: str) -> List[Tuple[str, str, Dict]]:
        """``(file, image set name, record)`` of every readable observation of ``label``."""
        if label not in self._observations:
            out = []
            folder = os.path.join(self.path, "vectors", "defenses", safe_name(label))
            for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
                try:
                    with open(path, encoding="utf-8") as f:
                        rec = json.load(f)
                    if not isinstance(rec.get("observation"), dict) or \
                            not isinstance(rec.get("fingerprint", {}).get("images"), dict):
                        raise ValueError("no observation with its image set's fingerprint")
                except (OSError, ValueError, AttributeError) as e:
                    self._problem(path, str(e) or type(e).__name__)
                    continue
                name = os.path.basename(path)[:-len(".json")].replace("__", "/")
                out.append((path, name, rec))
            self._observations[label] = out
        return self._observations[label]

    def observation(self, label: str, images: Optional[Dict] = None
                    ) -> Optional[Tuple[str, Dict[str, List]]]:
        """``(image set name, observation)`` of defense ``label`` on the image set whose
        fingerprint is ``images`` (None: the benign test images); None when it has none, or
        when its lists do not hold one entry per test image (a problem then names it)."""
        for path, name, rec in self._defense_observations(label):
            fp = rec["fingerprint"]["images"]
            hit = (fp.get("images") == "benign" and fp.get("split") == "test"
                   if images is None else fp == images)
            if not hit:
                continue
            obs = rec["observation"]
            if any(not isinstance(v, list) or len(v) != self.n_test for v in obs.values()):
                self._problem(path, "its lists do not hold one entry per test image")
                return None
            return name, obs
        return None

    # ---------------------------------------------------------------- test images
    @property
    def n_test(self) -> Optional[int]:
        return None if self.run is None else len(self.run["test"]["keys"])

    def labels(self) -> Optional[np.ndarray]:
        return None if self.run is None else np.asarray(self.run["test"]["labels"], np.int64)

    def clean_images(self, rows) -> Dict[int, np.ndarray]:
        """Row index -> uint8 [S, S, 3] clean test image, for the ``rows`` whose image is still
        in the data folder as it was during the run (else a problem says why)."""
        if self.run is None:
            return {}
        test, size = self.run["test"], int(self.run["input_size"])
        try:
            split = load_split(self.run["data_dir"], self.metrics["class_set"], "test")
        except (OSError, ValueError) as e:
            self.problems.append("clean test images unavailable (%s): the gallery shows the "
                                 "attacked images only" % e)
            return {}
        paths = dict(zip(split.keys, split.paths))
        out = {}
        for i in rows:
            key = test["keys"][i]
            pixels = load_resized(paths[key], size) if key in paths else None
            if pixels is None or image_digest(pixels) != test["sha1"][i]:
                self.problems.append("test image %s is %s in %s since the run: its clean "
                                     "image is not shown" % (key, "missing" if pixels is None
                                                             else "changed",
                                                             self.run["data_dir"]))
                continue
            out[i] = pixels
        return out

    def parts_file(self) -> Optional[str]:
        """The ground-truth parts (COCO) of the class set's test images, when there is one."""
        if self.run is None:
            return None
        path = os.path.join(self.run["data_dir"], self.metrics["class_set"], "test_parts.json")
        return path if os.path.isfile(path) else None

    def k_checkpoint(self) -> Optional[str]:
        """K's checkpoint when it is still the one the run used (its digest is the one the
        run's UnMask observations record), else None with a problem saying why."""
        k = (self.run or {}).get("k") or {}
        path = k.get("checkpoint")
        if not path or not os.path.isfile(path):
            self.problems.append("K's checkpoint %s is not there: its detections are not drawn "
                                 "(the part names K found are listed)" % (path or "(unknown)"))
            return None
        want = {rec["fingerprint"].get("defense", {}).get("k")
                for label, block in self.metrics.get("defenses", {}).items()
                if label.startswith("unmask") and not block.get("params", {}).get("k")
                for _, _, rec in self._defense_observations(label)} - {None}
        if want and file_digest(path, "sha1")[:16] not in want:
            self.problems.append("K's checkpoint %s changed since the run: its detections are "
                                 "not drawn (the part names K found are listed)" % path)
            return None
        return path
