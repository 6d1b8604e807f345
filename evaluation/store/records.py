"""The records of a run and their fingerprints.

Every saved record (an attack's images, a defense's observation, an adaptive attack's batch)
is written atomically with a fingerprint of everything it depends on -- M's weights, the
images, the attack's resolved configuration, the code's version -- and is reused only when
that fingerprint matches, so a changed setting recomputes and an interrupted run resumes.
A damaged record is named in the log and treated as missing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from attacks import get_attack, resolve_config
from data.fileio import atomic_path, file_digest
from evaluation.store.layout import canonical

#: Bumped when the adaptive attacks' algorithm changes (their saved records are recomputed;
#: 3: the adaptive engine -- every registry attack, restarts, target classes, two goals;
#: 4: routes, and every (image, plan entry) seeded on its own -- full batches).
ADAPTIVE_VERSION = 4

#: Bumped when the content or meaning of a saved record changes, so old records are recomputed
#: (3: one record per attacked model with its images; observations per defense).
RECORD_VERSION = 3


def array_digest(*arrays: np.ndarray) -> str:
    """Digest of array contents (the decoded images themselves, so replaced images under the
    same file names, or another data folder, are noticed)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def short_digest(path: str) -> str:
    """SHA-1 of a file, 16 hex digits (how records name a checkpoint or a parts file)."""
    return file_digest(path, "sha1")[:16]


def safe_name(text: str) -> str:
    """A file-name-safe version of a label (``downsample:0.75`` -> ``downsample-0.75``): the
    folder a defense's records are kept in."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text)


def fingerprint(cfg, data: Dict) -> Dict:
    """What every saved record of the run ``cfg`` depends on (M's weights, the test images,
    ...)."""
    return {"version": RECORD_VERSION, "class_set": cfg.class_set.code_name, "arch": cfg.arch,
            "size": cfg.input_size, "seed": cfg.seed, "test_keys": hashlib.sha1(
                "\n".join(data["splits"]["test"].keys).encode()).hexdigest()[:16],
            "test_images": array_digest(data["x_test"], data["y_test"]),
            "m": short_digest(cfg.m_checkpoint)}


def vector_fingerprint(cfg, fp: Dict, name: str, eps: float) -> Dict:
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


@dataclasses.dataclass(frozen=True)
class Field:
    """What an array of a record must hold to be used.

    Attributes:
        ndim: its number of dimensions (0: a scalar or text).
        kind: ``"images"`` (float images in [0, 1], one per image, of the run's image shape),
            ``"classes"`` (class indices in [-1, C): -1 is "no class"), ``"bool"``,
            ``"count"`` (integers >= 0), ``"step"`` (integers >= -1: -1 = never), ``"loss"``
            (floats, -inf allowed), or ``"any"``.
        rows: one row per image of the record (its first dimension).
    """
    ndim: int
    kind: str = "any"
    rows: bool = True


#: Kinds of :class:`Field` and what a value of each must be.
_INTEGER_KINDS = {"classes": -1, "count": 0, "step": -1}


def content_digest(arrays: Dict) -> str:
    """Digest of a record's arrays (every key but the fingerprint and the digest itself, in
    sorted order, with their dtypes and shapes): what the record proves its content by."""
    h = hashlib.sha1()
    for key in sorted(k for k in arrays if k not in ("fingerprint", "content")):
        a = np.ascontiguousarray(np.asarray(arrays[key]))
        h.update(key.encode())
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_npz(path: str, fp: Dict, log: Optional[Callable[[str], None]] = None,
             expect: Optional[Dict] = None, n: Optional[int] = None,
             classes: Optional[int] = None, image_shape: Optional[tuple] = None
             ) -> Optional[Dict]:
    """The arrays of a saved record when its fingerprint matches ``fp``, else None.

    A record proves its content: its arrays must match the digest written beside them
    (:func:`write_npz`), and what the evaluation relies on is checked
    (:func:`record_problem`: ``expect`` maps a key to its number of dimensions or a
    :class:`Field`; ``n`` rows per image; class indices below ``classes``; images of
    ``image_shape`` in [0, 1]).  A damaged record -- unreadable, without a fingerprint or a
    digest, its content changed, a key missing or out of range -- is named in the log and
    treated as missing: the caller recomputes it and writes it anew (it is a cache of a
    deterministic computation, so nothing is lost).
    """
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["fingerprint"])) != json.loads(canonical(fp)):
                return None
            rec = {k: f[k] for k in f.files}
        problem = record_problem(rec, expect or {}, n, classes, image_shape)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = str(e).strip("'\"") or type(e).__name__
    if problem is None:
        return rec
    (log or print)("saved record %s is damaged (%s): recomputed" % (path, problem))
    return None


def record_problem(rec: Dict, expect: Dict, n: Optional[int] = None,
                   classes: Optional[int] = None, image_shape: Optional[tuple] = None,
                   digest_required: bool = True) -> Optional[str]:
    """Why a record cannot be used (None when it can): its digest (when it holds a
    ``fingerprint``, as every saved record does; a record of before digests is accepted
    without one when not ``digest_required``, e.g. to show an older run's page), then each
    expected array's rank, rows and values."""
    if "fingerprint" in rec:
        if "content" not in rec and digest_required:
            return "no content digest (written before records proved their content)"
        if "content" in rec and str(rec["content"]) != content_digest(rec):
            return "its content does not match its digest"
    for key, want in expect.items():
        field = want if isinstance(want, Field) else Field(int(want), rows=True)
        if key not in rec:
            return "no array %r" % key
        a = rec[key]
        if a.ndim != field.ndim:
            return "%r has %d dimensions, not %d" % (key, a.ndim, field.ndim)
        if n is not None and field.ndim > 0 and field.rows and len(a) != n:
            return "%r holds %d rows for %d images" % (key, len(a), n)
        problem = _values_problem(key, a, field.kind, classes, image_shape)
        if problem:
            return problem
    return None


def _values_problem(key: str, a: np.ndarray, kind: str, classes: Optional[int],
                    image_shape: Optional[tuple]) -> Optional[str]:
    if kind == "images":
        if not np.issubdtype(a.dtype, np.floating):
            return "%r holds %s, not float images" % (key, a.dtype)
        if image_shape is not None and tuple(a.shape[1:]) != tuple(image_shape):
            return "%r holds images of shape %s, not %s" % (key, a.shape[1:], image_shape)
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1):
            return "%r holds pixels outside [0, 1]" % key
    elif kind == "bool":
        if a.dtype != np.bool_:
            return "%r holds %s, not booleans" % (key, a.dtype)
    elif kind in _INTEGER_KINDS:
        if a.size and not np.issubdtype(a.dtype, np.integer):
            return "%r holds %s, not integers" % (key, a.dtype)
        low = _INTEGER_KINDS[kind]
        if a.size and a.min() < low:
            return "%r holds %d, below %d" % (key, a.min(), low)
        if kind == "classes" and classes is not None and a.size and a.max() >= classes:
            return "%r holds class %d of a %d-class set" % (key, a.max(), classes)
    elif kind == "loss":
        if a.size and (not np.issubdtype(a.dtype, np.floating) or np.any(np.isnan(a))):
            return "%r holds no loss values" % key
    return None


def check_record(arrays: Dict, expect: Dict, n: int, what: str, classes: Optional[int] = None,
                 image_shape: Optional[tuple] = None) -> None:
    """Refuse to write a record (a merged one) whose arrays :func:`record_problem` finds
    wrong: ValueError naming it (a result that could be silently wrong is worse than a
    crash)."""
    problem = record_problem({k: np.asarray(v) for k, v in arrays.items()
                              if k != "fingerprint"}, expect, n, classes, image_shape)
    if problem:
        raise ValueError("refusing to write %s: %s" % (what, problem))


def write_npz(path: str, arrays: Dict) -> None:
    """Write a record atomically (compressed), with the digest of its content."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    arrays["content"] = np.asarray(content_digest(arrays))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
