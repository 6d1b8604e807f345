"""The adaptive store's file names and fingerprint texts (no TensorFlow here): the store
(:mod:`.adaptive_store`) writes by them and a run's status (:mod:`.adaptive_plan`) reads by
them."""
from __future__ import annotations

import json
from typing import Dict, Tuple


def canonical(obj) -> str:
    """The text a fingerprint is compared by (JSON, keys sorted)."""
    return json.dumps(obj, sort_keys=True)


def batch_path(path: str, batch: int) -> str:
    """File of one image batch of the adaptive record at ``path`` while it is computed."""
    return path[:-len(".npz")] + ".batch-%04d.npz" % batch


def progress_path(path: str, batch: int) -> str:
    """File of the state of the image batch being attacked (rewritten every minute or so)."""
    return path[:-len(".npz")] + ".batch-%04d.progress.npz" % batch


def batch_files(path: str, batch: int) -> Tuple[str, str]:
    """The files of image batch ``batch`` of the record at ``path``: the finished batch and
    its saved state while it is being attacked."""
    return batch_path(path, batch), progress_path(path, batch)


def batch_fp(fp: Dict, batch: int, size: int) -> Dict:
    """What one image batch's files depend on: the record's fingerprint, the batch and the
    batch size (the whole record does not depend on how its images were batched: every image
    is seeded by its own index)."""
    return dict(fp, batch=batch, batch_size=size)


def progress_fp(batch_fingerprint: Dict) -> Dict:
    """What a batch's saved state depends on: the batch's, marked as a state."""
    return dict(batch_fingerprint, progress="images part-way through their plans")


def batch_fingerprint(fp: Dict, batch: int, size: int, progress: bool = False) -> str:
    """The fingerprint text of image batch ``batch`` of the record ``fp``: of its finished
    file, or (``progress``) of its saved state."""
    out = batch_fp(fp, batch, size)
    return canonical(progress_fp(out) if progress else out)
