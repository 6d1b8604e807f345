"""The observations cache: a defense's observation of an image set (M's labels, K's part
sets, labels after a transform, ...; :meth:`defense.base.Defense.observe`), computed once and
kept in ``<out>/vectors/defenses/<defense>/<image set>.json`` under the fingerprints of the
images and of the defense.  Adding a defense to a finished run computes only its
observations; re-deciding (another threshold) computes none.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from data.fileio import read_cached_json, write_json_atomic
from data.knowledge import PART_IDS
from defense.base import Defense, ImageSet
from evaluation.store.records import canonical, safe_name


class ObservationCache:
    """``defense.observe(images)`` of one run, cached in memory and under ``folder``."""

    def __init__(self, folder: str, log: Callable[[str], None],
                 classes: Optional[int] = None):
        self.folder = folder
        self.log = log
        self.classes = classes
        #: the observation files written or reused
        self.touched: set = set()
        self._obs: Dict[Tuple, Tuple[str, Dict]] = {}

    def observe(self, defense: Defense, images: ImageSet) -> Dict[str, List]:
        """``defense.observe(images)``, cached under both fingerprints."""
        fp = {"images": images.fingerprint, "defense": defense.fingerprint()}
        key = (defense.label, images.name)
        cached = self._obs.get(key)
        if cached is not None and cached[0] == canonical(fp):
            return cached[1]
        path = os.path.join(self.folder, "defenses", safe_name(defense.label),
                            safe_name(images.name.replace("/", "__")) + ".json")
        self.touched.add(path)
        obs = None
        if os.path.isfile(path):
            rec = read_cached_json(path, self.log)
            if isinstance(rec, dict) and rec.get("fingerprint") == json.loads(canonical(fp)):
                obs = rec.get("observation")
                problem = (observation_problem(obs, len(images), self.classes)
                           if rec.get("content") == _digest(obs) else
                           "no content digest" if "content" not in rec
                           else "its content does not match its digest")
                if problem:
                    self.log("cache file %s is damaged (%s): recomputed" % (path, problem))
                    obs = None
            elif isinstance(rec, dict):
                self.log("%s was made by another %s (its settings or fitted state differ): "
                         "recomputed" % (path, defense.label))
        if obs is None:
            obs = defense.observe(images)
            write_json_atomic(path, {"fingerprint": fp, "observation": obs,
                                     "content": _digest(obs)})
        self._obs[key] = (canonical(fp), obs)
        return obs


def _digest(obs: Any) -> str:
    """What an observation file proves its content by: the SHA-1 of its canonical JSON."""
    return hashlib.sha1(canonical(obs).encode()).hexdigest()


def observation_problem(obs: Any, n: int, classes: Optional[int] = None) -> Optional[str]:
    """Why a cached observation cannot be used (None when it can): it must map names to
    lists of one entry per image, its labels must be class indices in [-1, ``classes``),
    its scores numbers, and part sets may hold only the 44 part names."""
    if not isinstance(obs, dict):
        return "not an object"
    for key, values in obs.items():
        if not isinstance(values, list) or len(values) != n:
            return "%r does not hold one entry per image (%d)" % (key, n)
    for i, label in enumerate(obs.get("pred", [])):
        if (isinstance(label, bool) or not isinstance(label, int) or label < -1
                or (classes is not None and label >= classes)):
            return "pred[%d] is %r, not a class index in [-1, %s)" % (i, label, classes)
    for i, score in enumerate(obs.get("score", [])):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
            return "score[%d] is %r, not a number" % (i, score)
    for i, parts in enumerate(obs.get("parts", [])):
        if not isinstance(parts, list):
            return "parts[%d] is not a list" % i
        unknown = [p for p in parts if p not in PART_IDS]
        if unknown:
            return "parts[%d] holds unknown part names %s" % (i, unknown[:3])
    return None
