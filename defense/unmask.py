"""UnMask detection and rectification (paper Algorithm 1) on part *sets*.

Notation (paper §III): M is the protected classifier, K the part extractor, V the class-feature
map (class -> expected parts).  For one image with extracted part set ``F = K(x)`` and M's
prediction ``c = M(x)``:

* similarity ``s = jaccard(F, V[c])``, distance ``d = 1 - s`` (computed as
  ``|F △ V[c]| / |F ∪ V[c]|`` so that ``d`` is the correctly rounded fraction and the
  boundary ``d == t`` is exact, see :func:`jaccard_distance`);
* detection: the image is **flagged** as adversarial iff ``d >= t`` (``t`` = threshold in [0, 1]);
* rectification: ``best = argmax_k jaccard(F, V[k])`` over the classes of the class set
  (the paper prints "argmin"; that is a typo).

Two rectification modes (say which one a result uses; ``metrics.json`` records it):

* ``"flagged"`` (paper, Algorithm 1): only flagged images are re-classified; an unflagged image
  keeps M's prediction.
* ``"all"`` (original code): every image is re-classified by the rule, whatever its flag.

Documented decisions (not stated by the paper):

* **Ties** in the argmax, mode ``"all"`` (the original code): the first best class in class-set
  order wins (its strict ``>`` scan), whatever M predicted.  Mode ``"flagged"`` (this project's
  rule, documented as such): M's own prediction wins if it is among the tied best classes,
  otherwise the lowest class index (the order of M's outputs).  Deterministic, and it never
  moves a flagged image away from M's answer when the parts cannot tell the classes apart.
* **No evidence** — every class has similarity 0 (in particular when K finds no part,
  ``F`` empty): the rectified class is :data:`NO_CLASS` (-1, "no class"), counted as wrong by
  :func:`evaluation.metrics.accuracy`.  This is the original code's rule for mode ``"all"`` and we
  apply it to flagged images in mode ``"flagged"`` too.  With ``F`` empty, ``s = 0`` and
  ``d = 1``, so the image is flagged for every ``t <= 1``.

Arrays: part sets are ``list[frozenset[str]]`` of length N; predictions and final classes are
``int64 [N]`` class indices into ``classes`` (M's output order); scores and distances are
``float64 [N]``; flags are ``bool [N]``.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional,
                    Sequence, Tuple)

import numpy as np

from data.images import check_images as check_image_batch
from models.inference import inference_fn

#: Rectified class meaning "no class has any part in common with the extracted parts".
NO_CLASS = -1


class Mode(str, enum.Enum):
    """Which images are re-classified by the part rule (see module docstring)."""
    FLAGGED = "flagged"
    ALL = "all"


def as_mode(mode: Any) -> Mode:
    """Convert ``"flagged"``/``"all"`` (or a :class:`Mode`) to a :class:`Mode`.

    Raises:
        ValueError: naming the valid modes, for anything else.
    """
    if isinstance(mode, Mode):
        return mode
    try:
        return Mode(str(mode).strip().lower())
    except ValueError:
        raise ValueError("mode must be one of %s, got %r"
                         % (", ".join(repr(m.value) for m in Mode), mode)) from None


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """Return ``threshold`` as a float; ValueError unless it is a finite number in [0, 1]."""
    if isinstance(threshold, bool):
        raise ValueError("%s must be a number in [0, 1], got %r" % (name, threshold))
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError("%s must be a number in [0, 1], got %r" % (name, threshold)) from None
    if not 0.0 <= t <= 1.0:
        raise ValueError("%s must be in [0, 1] (image flagged iff distance d >= threshold), got %r"
                         % (name, threshold))
    return t


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """Jaccard similarity ``|a ∩ b| / |a ∪ b|`` of two sets; 0.0 when both are empty."""
    a, b = frozenset(a), frozenset(b)
    union = len(a | b)
    if union == 0:
        return 0.0
    return len(a & b) / union


def jaccard_distance(a: Iterable[str], b: Iterable[str]) -> float:
    """``d = 1 - jaccard(a, b)``, computed as ``|a △ b| / |a ∪ b|`` (1.0 when both are empty).

    Same value in exact arithmetic, but this is the correctly rounded float of the fraction, so
    the boundary ``d == t`` is exact for thresholds such as 0.2 (``1 - 4/5`` in floats is
    0.19999999999999996, which would escape ``d >= 0.2``).
    """
    a, b = frozenset(a), frozenset(b)
    union = len(a | b)
    if union == 0:
        return 1.0
    return len(a ^ b) / union


def _as_part_sets(part_sets: Sequence[Iterable[str]], name: str = "part_sets"
                  ) -> List[FrozenSet[str]]:
    """Each entry as a frozenset of part names; ValueError if an entry is a bare string."""
    out = []
    for i, parts in enumerate(part_sets):
        if isinstance(parts, (str, bytes)):
            raise ValueError("%s[%d] is the string %r; pass a set of part names such as "
                             "frozenset({%r})" % (name, i, parts, parts))
        out.append(frozenset(parts))
    return out


def _as_class_parts_list(class_parts_list: Sequence[Iterable[str]]) -> List[FrozenSet[str]]:
    """Class-feature sets in class-index order; ValueError when empty."""
    sets = _as_part_sets(class_parts_list, "class_parts_list")
    if not sets:
        raise ValueError("class_parts_list is empty; pass one part set per class of M")
    return sets


def _as_preds(preds: Any, n: int, n_classes: int) -> np.ndarray:
    """Predictions as int64 [n]; ValueError on length mismatch or out-of-range class index."""
    arr = np.asarray(preds)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError("preds must be a 1-D array with one class index per part set (%d), "
                         "got shape %s" % (n, arr.shape))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("preds must hold integer class indices, got dtype %s" % arr.dtype)
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError("preds must be class indices in [0, %d), got values in [%d, %d]"
                         % (n_classes, arr.min(), arr.max()))
    return arr


def similarities(parts: Iterable[str], class_parts_list: Sequence[Iterable[str]]) -> np.ndarray:
    """Jaccard similarity of one part set with every class: float64 [C]."""
    f = frozenset(parts)
    return np.array([jaccard(f, v) for v in class_parts_list], dtype=np.float64)


def best_class(parts: Iterable[str], class_parts_list: Sequence[Iterable[str]],
               pred: Optional[int] = None) -> int:
    """Rectified class of one image: ``argmax_k jaccard(parts, V[k])`` (see module rules).

    Ties go to ``pred`` (M's prediction) when it is among the best, else to the lowest index;
    returns :data:`NO_CLASS` when the best similarity is 0 (e.g. no part detected).
    """
    sims = similarities(parts, class_parts_list)
    best = sims.max()
    if best <= 0.0:
        return NO_CLASS
    tied = np.flatnonzero(sims == best)
    if pred is not None and int(pred) in tied:
        return int(pred)
    return int(tied[0])


def scores(part_sets: Sequence[Iterable[str]], preds: Any,
           class_parts_list: Sequence[Iterable[str]]) -> np.ndarray:
    """Similarity ``s_i = jaccard(F_i, V[preds_i])`` for each image: float64 [N].

    Args:
        part_sets: N extracted part sets.
        preds: int [N], M's predicted class indices into ``class_parts_list``.
        class_parts_list: C expected part sets, in M's output order.
    """
    sets = _as_part_sets(part_sets)
    classes = _as_class_parts_list(class_parts_list)
    p = _as_preds(preds, len(sets), len(classes))
    return np.array([jaccard(f, classes[c]) for f, c in zip(sets, p)], dtype=np.float64)


def distances(part_sets: Sequence[Iterable[str]], preds: Any,
              class_parts_list: Sequence[Iterable[str]]) -> np.ndarray:
    """Distance ``d_i = 1 - s_i`` for each image: float64 [N] (higher = more suspicious).

    Computed with :func:`jaccard_distance` (correctly rounded; see there).
    """
    sets = _as_part_sets(part_sets)
    classes = _as_class_parts_list(class_parts_list)
    p = _as_preds(preds, len(sets), len(classes))
    return np.array([jaccard_distance(f, classes[c]) for f, c in zip(sets, p)],
                    dtype=np.float64)


def detect(dist: Any, threshold: float) -> np.ndarray:
    """Flags: bool [N], True (adversarial) iff ``dist >= threshold`` (Algorithm 1)."""
    t = check_threshold(threshold)
    return np.asarray(dist, dtype=np.float64) >= t


def rectify(part_sets: Sequence[Iterable[str]], class_parts_list: Sequence[Iterable[str]],
            preds: Any, mode: Any, flags: Any = None) -> np.ndarray:
    """Final class of each image: int64 [N], :data:`NO_CLASS` (-1) = no class.

    Args:
        part_sets: N extracted part sets.
        class_parts_list: C expected part sets in M's output order.
        preds: int [N], M's predictions.
        mode: ``"flagged"`` (re-classify only where ``flags`` is True; needs ``flags``) or
            ``"all"`` (re-classify every image; ``flags`` ignored).
        flags: bool [N], the detection flags (``d >= t``), required for mode ``"flagged"``.
    """
    m = as_mode(mode)
    sets = _as_part_sets(part_sets)
    classes = _as_class_parts_list(class_parts_list)
    p = _as_preds(preds, len(sets), len(classes))
    if m is Mode.FLAGGED:
        if flags is None:
            raise ValueError("rectify(mode='flagged') needs flags (bool [N], d >= t); compute "
                             "them with detect(distances(...), threshold)")
        f = np.asarray(flags)
        if f.shape != (len(sets),) or f.dtype != np.bool_:
            raise ValueError("flags must be a bool array of shape (%d,), got %s %s"
                             % (len(sets), f.dtype, f.shape))
    else:
        f = np.ones(len(sets), dtype=bool)
    out = p.copy()
    for i in np.flatnonzero(f):
        out[i] = best_class(sets[i], classes, pred=p[i] if m is Mode.FLAGGED else None)
    return out


@dataclasses.dataclass(frozen=True)
class Decision:
    """Algorithm 1 on one image: similarity, distance, flag and final class (-1 = no class)."""
    score: float
    distance: float
    flagged: bool
    final: int


def algorithm1(parts: Iterable[str], pred: int, class_parts_list: Sequence[Iterable[str]],
               threshold: float, mode: Any = Mode.FLAGGED) -> Decision:
    """Algorithm 1 for a single image (see module docstring for the tie / no-part rules)."""
    t = check_threshold(threshold)
    m = as_mode(mode)
    classes = _as_class_parts_list(class_parts_list)
    c = int(_as_preds([pred], 1, len(classes))[0])
    s = jaccard(parts, classes[c])
    d = jaccard_distance(parts, classes[c])
    flagged = d >= t
    if m is Mode.ALL or flagged:
        final = best_class(parts, classes, pred=c if m is Mode.FLAGGED else None)
    else:
        final = c
    return Decision(score=s, distance=d, flagged=bool(flagged), final=final)


@dataclasses.dataclass
class ProtectResult:
    """Per-image output of :meth:`UnMask.protect` (all arrays have length N).

    Attributes:
        preds: int64 [N], M's predictions (index into ``classes``).
        parts: N frozensets of extracted part names.
        scores: float64 [N], Jaccard similarity with ``V[preds]``.
        distances: float64 [N], ``1 - scores`` (see :func:`jaccard_distance`).
        flags: bool [N], True = flagged as adversarial (``distances >= threshold``).
        final: int64 [N], UnMask's class (-1 = no class, counted wrong).
        classes: class names in M's output order; ``threshold``, ``mode``, ``extractor_kind``
            record how the result was made.
    """
    preds: np.ndarray
    parts: List[FrozenSet[str]]
    scores: np.ndarray
    distances: np.ndarray
    flags: np.ndarray
    final: np.ndarray
    classes: Tuple[str, ...]
    threshold: float
    mode: str
    extractor_kind: str = "unknown"

    def __len__(self) -> int:
        return int(self.preds.shape[0])

    def records(self) -> List[Dict[str, Any]]:
        """One plain dict per image (JSON-friendly; parts sorted)."""
        return [{"pred": int(self.preds[i]), "parts": sorted(self.parts[i]),
                 "score": float(self.scores[i]), "distance": float(self.distances[i]),
                 "flagged": bool(self.flags[i]), "final": int(self.final[i])}
                for i in range(len(self))]

    def final_names(self) -> List[Optional[str]]:
        """Final class names (None for no class)."""
        return [None if c == NO_CLASS else self.classes[c] for c in self.final]


def _check_class_parts(class_parts: Mapping[str, Iterable[str]], classes: Sequence[str]
                       ) -> Tuple[Tuple[str, ...], List[FrozenSet[str]]]:
    """Validate the class order and the class-feature map; returns (classes, V in that order)."""
    if isinstance(classes, str):
        raise ValueError("classes must be a sequence of class names, got the string %r" % classes)
    names = tuple(classes)
    if not names:
        raise ValueError("classes is empty; pass the class names in the order of M's outputs")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError("classes contains duplicates: %s" % ", ".join(dup))
    missing = [c for c in names if c not in class_parts]
    if missing:
        raise ValueError("class_parts has no expected parts for class(es) %s; it has: %s"
                         % (", ".join(missing), ", ".join(sorted(class_parts))))
    return names, _as_part_sets([class_parts[c] for c in names], "class_parts")


def check_images(images: Any, name: str = "images") -> np.ndarray:
    """Images as float32 [B, H, W, 3] in [0, 1] (B = 0 allowed): the project's one rule,
    :func:`data.images.check_images` (no TensorFlow: checking images loads none)."""
    return check_image_batch(images, name, empty_ok=True)


class UnMask:
    """UnMask around a classifier M and a part extractor K.

    Args:
        model: callable mapping float32 [B, H, W, 3] in [0, 1] to logits or probabilities
            [B, C] (a Keras model, or any function); the prediction is the argmax.
        extractor: object with ``extract(images, keys) -> list[frozenset[str]]`` and a ``kind``
            attribute (``"k"`` for Mask R-CNN, ``"oracle"`` for ground truth), see
            :mod:`defense.extractors`.
        class_parts: class name -> expected part names (V), e.g. ``data.knowledge.CLASS_PARTS``.
        classes: class names in the order of M's outputs (e.g. ``ClassSet.classes``).
        threshold: t in [0, 1]; flagged iff ``d >= t``.
        mode: ``"flagged"`` (paper) or ``"all"`` (original code), see module docstring.
    """

    def __init__(self, model: Callable[[np.ndarray], Any], extractor: Any,
                 class_parts: Mapping[str, Iterable[str]], classes: Sequence[str],
                 threshold: float, mode: Any = Mode.FLAGGED):
        if not callable(model):
            raise ValueError("model must be callable (a Keras model or a function mapping "
                             "[B, H, W, 3] images to [B, C] scores), got %r" % type(model))
        if not callable(getattr(extractor, "extract", None)):
            raise ValueError("extractor must have a method extract(images, keys) -> "
                             "list[frozenset[str]], got %r" % type(extractor))
        self.model = model
        self.extractor = extractor
        self.classes, self.class_parts_list = _check_class_parts(class_parts, classes)
        self.threshold = check_threshold(threshold)
        self.mode = as_mode(mode)

    @property
    def extractor_kind(self) -> str:
        """``"k"``, ``"oracle"`` or ``"unknown"`` (label every result with it)."""
        return str(getattr(self.extractor, "kind", "unknown"))

    def predict(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """M's predictions: int64 [N] (argmax of the model output, batched)."""
        x = check_images(images)
        batch_size = _check_batch_size(batch_size)
        out = [self._predict_batch(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        out = inference_fn(self.model)(batch)
        out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        if out.ndim != 2 or out.shape != (len(batch), len(self.classes)):
            raise ValueError("model output must have shape [B, C] = [%d, %d] (C = len(classes)),"
                             " got %s" % (len(batch), len(self.classes), out.shape))
        return np.argmax(out, axis=1).astype(np.int64)

    def extract(self, images: Any, keys: Optional[Sequence[str]] = None,
                batch_size: int = 32) -> List[FrozenSet[str]]:
        """K's part sets: N frozensets (batched; ``keys`` sliced alongside the images)."""
        x = check_images(images)
        batch_size = _check_batch_size(batch_size)
        keys = _check_keys(keys, len(x))
        parts: List[FrozenSet[str]] = []
        for i in range(0, len(x), batch_size):
            k = None if keys is None else keys[i:i + batch_size]
            got = self.extractor.extract(x[i:i + batch_size], k)
            if len(got) != len(x[i:i + batch_size]):
                raise ValueError("extractor returned %d part sets for a batch of %d images"
                                 % (len(got), len(x[i:i + batch_size])))
            parts.extend(_as_part_sets(got, "extractor output"))
        return parts

    def decide(self, preds: Any, part_sets: Sequence[Iterable[str]]) -> ProtectResult:
        """Algorithm 1 on precomputed M predictions (int [N]) and K part sets (N sets).

        Lets an evaluation run M and K once and then try several thresholds or modes.
        """
        sets = _as_part_sets(part_sets)
        p = _as_preds(preds, len(sets), len(self.classes))
        s = scores(sets, p, self.class_parts_list)
        d = distances(sets, p, self.class_parts_list)
        flags = d >= self.threshold
        final = rectify(sets, self.class_parts_list, p, self.mode, flags=flags)
        return ProtectResult(preds=p, parts=sets, scores=s, distances=d, flags=flags,
                             final=final, classes=self.classes, threshold=self.threshold,
                             mode=self.mode.value, extractor_kind=self.extractor_kind)

    def protect(self, images: Any, keys: Optional[Sequence[str]] = None,
                batch_size: int = 32) -> ProtectResult:
        """Run M and K on ``images`` (float [N, H, W, 3] in [0, 1]) and apply Algorithm 1.

        ``keys`` (N strings, e.g. image paths) are passed to the extractor; the oracle
        extractor needs them.
        """
        x = check_images(images)
        keys = _check_keys(keys, len(x))
        preds = self.predict(x, batch_size=batch_size)
        parts = self.extract(x, keys=keys, batch_size=batch_size)
        return self.decide(preds, parts)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError("batch_size must be a positive integer, got %r" % (batch_size,))
    return int(batch_size)


def _check_keys(keys: Optional[Sequence[str]], n: int) -> Optional[List[str]]:
    if keys is None:
        return None
    if isinstance(keys, str):
        raise ValueError("keys must be a sequence of N strings, got the string %r" % keys)
    keys = list(keys)
    if len(keys) != n:
        raise ValueError("keys has %d entries but there are %d images; pass one key per image"
                         % (len(keys), n))
    return [str(k) for k in keys]
