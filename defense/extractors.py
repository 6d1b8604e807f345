"""Part extractors K for UnMask: the protocol and the ground-truth ("oracle") extractor.

Protocol: an extractor has a ``kind`` attribute (``"k"`` for the trained Mask R-CNN written
elsewhere, ``"oracle"`` for ground truth) and a method::

    extract(images: np.ndarray float [B, H, W, 3] in [0, 1], keys: Sequence[str] | None)
        -> list[frozenset[str]]     # B sets of part names (duplicates collapse)

``keys`` identify the images (for example the image file path relative to the class-set
directory); pixel-based extractors may ignore them.

:class:`OracleExtractor` ignores the pixels and returns the annotated parts of the image's key:
a perfect K that still sees the parts of the underlying object under attack.  It is the
*ceiling* of UnMask, not UnMask: every result computed with it must be labelled "oracle"
(``metrics.json`` field ``"extractor": "oracle"``; the report captions say so).
"""
from __future__ import annotations

import os
from typing import (Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Protocol, Sequence,
                    runtime_checkable)

import numpy as np

from data.coco_io import validate_coco
from data.fileio import read_json


@runtime_checkable
class Extractor(Protocol):
    """What :class:`defense.unmask.UnMask` needs from K."""
    kind: str

    def extract(self, images: np.ndarray, keys: Optional[Sequence[str]]
                ) -> List[FrozenSet[str]]:
        ...


def normalize_key(key: str) -> str:
    """Canonical form of an image key: ``/`` separators, no ``./`` or ``a/../`` segments."""
    k = str(key).replace("\\", "/")
    k = os.path.normpath(k).replace("\\", "/")
    return k


class OracleExtractor:
    """Ground-truth part sets looked up by image key; ``kind = "oracle"``.

    Args:
        parts_by_key: image key -> part names.  Keys are normalised with :func:`normalize_key`.
        source: where the mapping came from (a file name), used in error messages.

    Look-up: the exact (normalised) key first; failing that, the key's base name if exactly one
    known key has that base name (so ``"cs5-2/test/dog/1.jpg"`` finds ``"1.jpg"``).  An
    ambiguous or unknown key raises ValueError ("no ground-truth parts for image X in FILE").
    """

    kind = "oracle"

    def __init__(self, parts_by_key: Mapping[str, Iterable[str]], source: str = "<mapping>"):
        self.source = str(source)
        self._parts: Dict[str, FrozenSet[str]] = {}
        for key, parts in parts_by_key.items():
            if isinstance(parts, (str, bytes)):
                raise ValueError("parts of image %r in %s must be a set of part names, got the "
                                 "string %r" % (key, self.source, parts))
            self._parts[normalize_key(key)] = frozenset(str(p) for p in parts)
        self._by_base: Dict[str, Optional[str]] = {}
        for key in self._parts:
            base = os.path.basename(key)
            self._by_base[base] = None if base in self._by_base else key

    def __len__(self) -> int:
        return len(self._parts)

    def keys(self) -> List[str]:
        """The known (normalised) image keys, sorted."""
        return sorted(self._parts)

    def parts_of(self, key: str) -> FrozenSet[str]:
        """Ground-truth parts of one image key (see class docstring for the look-up rule)."""
        k = normalize_key(key)
        if k in self._parts:
            return self._parts[k]
        base = os.path.basename(k)
        hit = self._by_base.get(base)
        if hit is not None:
            return self._parts[hit]
        why = " (base name %r is ambiguous)" % base if base in self._by_base else ""
        raise ValueError("no ground-truth parts for image %s in %s%s; pass keys that name "
                         "images of that file" % (key, self.source, why))

    def extract(self, images: Any, keys: Optional[Sequence[str]]) -> List[FrozenSet[str]]:
        """Part sets of the images named by ``keys`` (pixels are ignored; see module doc)."""
        if keys is None:
            raise ValueError("OracleExtractor (%s) needs keys: one image key per image, e.g. "
                             "the image file names" % self.source)
        if isinstance(keys, str):
            raise ValueError("keys must be a sequence of image keys, got the string %r" % keys)
        n = len(images)
        if len(keys) != n:
            raise ValueError("OracleExtractor got %d keys for %d images" % (len(keys), n))
        return [self.parts_of(k) for k in keys]

    @classmethod
    def from_coco(cls, json_path: str) -> "OracleExtractor":
        """Build from a COCO file: image ``file_name`` -> names of its annotated categories.

        Images without annotations map to the empty set.  Raises FileNotFoundError if the file
        is missing and ValueError naming the file for a malformed structure.
        """
        obj = validate_coco(read_json(json_path), json_path)   # the 44 parts, sound geometry
        return cls(coco_parts_by_file(obj, json_path), source=json_path)


def _require_list(obj: Any, key: str, path: str) -> list:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
        raise ValueError("%s is not a COCO file: it needs a list %r" % (path, key))
    return obj[key]


def _field(entry: Any, field: str, what: str, path: str) -> Any:
    if not isinstance(entry, dict) or field not in entry:
        raise ValueError("%s: a %s entry has no %r field: %r" % (path, what, field, entry))
    return entry[field]


def coco_parts_by_file(obj: Mapping[str, Any], path: str = "<coco>") -> Dict[str, FrozenSet[str]]:
    """COCO dict -> {image file_name: frozenset(category names of its annotations)}."""
    images = _require_list(obj, "images", path)
    annotations = _require_list(obj, "annotations", path)
    categories = _require_list(obj, "categories", path)
    names = {_field(c, "id", "categories", path): str(_field(c, "name", "categories", path))
             for c in categories}
    files: Dict[Any, str] = {}
    for im in images:
        image_id = _field(im, "id", "images", path)
        fname = str(_field(im, "file_name", "images", path))
        if image_id in files:
            raise ValueError("%s: image id %r appears twice" % (path, image_id))
        files[image_id] = fname
    if len(set(files.values())) != len(files):
        raise ValueError("%s: several images share a file_name; keys would be ambiguous" % path)
    parts: Dict[str, set] = {f: set() for f in files.values()}
    for ann in annotations:
        image_id = _field(ann, "image_id", "annotations", path)
        cat = _field(ann, "category_id", "annotations", path)
        if image_id not in files:
            raise ValueError("%s: an annotation refers to unknown image id %r" % (path, image_id))
        if cat not in names:
            raise ValueError("%s: an annotation refers to unknown category id %r" % (path, cat))
        parts[files[image_id]].add(names[cat])
    return {f: frozenset(p) for f, p in parts.items()}
