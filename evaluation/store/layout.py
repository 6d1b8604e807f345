"""The adaptive store's file names and fingerprint texts (no TensorFlow here): the store
(:mod:`.adaptive_store`) writes by them and a run's status (:mod:`.adaptive_plan`) reads by
them."""
from __future__ import annotations

import json
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


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


def batch_order(labels: Sequence[int], size: int) -> List[int]:
    """The image batches (``size`` consecutive test images each) in the order they are
    attacked: the classes take turns -- the first batch of each class (by the class most of
    its images have, ties to the lower class), then the second of each, ... .

    Test sets are stored class by class, so in index order a long run attacks one class at a
    time and the batches it has finished -- what ``--status`` counts while it runs -- are a
    few classes' (on the synthetic CS5b one class held ~95% under the hardened row's attack
    and the next fell ~95%).  The order changes no number: every image is seeded by its own
    index and the record is put together in index order."""
    labels = np.asarray(labels)
    if size < 1:
        raise ValueError("batch size must be >= 1, got %d" % size)
    majority = [int(np.argmax(np.bincount(labels[b:b + size])))
                for b in range(0, len(labels), size)]
    turn, seen = [], {}
    for c in majority:
        turn.append(seen.get(c, 0))
        seen[c] = turn[-1] + 1
    return sorted(range(len(majority)), key=lambda b: (turn[b], majority[b], b))


def read_matching(path: str, fingerprint_text: str, keys: Optional[Sequence[str]] = None,
                  skip: Sequence[str] = ()) -> Optional[Dict]:
    """The arrays of the npz file at ``path`` when it holds ``fingerprint_text`` (a
    :func:`canonical` text) as its fingerprint: ``keys`` (default: all but ``skip``), read
    only then.  None when there is no such file (or it went while being read: a batch
    merged); ``{}`` when it holds another fingerprint or is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["fingerprint"])) != json.loads(fingerprint_text):
                return {}
            names = z.files if keys is None else keys
            return {k: z[k] for k in names if k not in skip}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}


def same_fingerprint(path: str, fingerprint_text: str) -> bool:
    """Whether the npz file at ``path`` holds ``fingerprint_text`` as its fingerprint -- read
    alone, without the arrays (False when the file is missing, unreadable or holds
    another)."""
    return bool(read_matching(path, fingerprint_text, keys=("fingerprint",)))
