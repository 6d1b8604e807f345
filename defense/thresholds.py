"""Choosing UnMask's threshold t on validation distances (flagged iff ``d >= t``).

Rule of :func:`threshold_for_fpr`: among the candidate thresholds — the distinct benign
distances, plus the next float above the largest one (flags no benign image) — take the
*smallest* t whose benign false-positive rate ``mean(benign_d >= t)`` is ``<= target_fpr``.
Smallest t means the most images flagged, hence the highest TPR, under the FPR budget; the
achieved FPR is the largest attainable one that does not exceed the target.

Ties: distances of Jaccard scores are few distinct values and many images share them.  All
benign images with the same d are flagged together (``d >= t`` is decided per value), so the
achievable FPRs are steps; the rule picks the step at or below the target, never above it.  The
chosen t is therefore a benign distance value (or just above the largest one), which also makes
TPR/FPR at t coincide with a point of the ROC curve computed on the same scores.

Comparisons of ``count / n`` with the target use a relative tolerance of 1e-9 so that, e.g., a
target of 0.29 on 100 images allows 29 false positives despite floating-point rounding.

If no t in [0, 1] meets the target (benign images at d = 1, i.e. with no part in common with
the predicted class, exceed the budget), :func:`threshold_for_fpr` raises ValueError, or with
``on_unattainable="clip"`` returns 1.0 (the smallest-FPR threshold in [0, 1]) and
:func:`choose_threshold` reports the FPR it really gives.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

_TOL = 1e-9


def check_target_fpr(target_fpr: Any) -> float:
    """The target as a float; ValueError unless it is a number strictly inside (0, 1)."""
    if isinstance(target_fpr, bool):
        raise ValueError("target_fpr must be a number in (0, 1), got %r" % (target_fpr,))
    try:
        t = float(target_fpr)
    except (TypeError, ValueError):
        raise ValueError("target_fpr must be a number in (0, 1), got %r" % (target_fpr,)) from None
    if not 0.0 < t < 1.0:
        raise ValueError("target_fpr must be in (0, 1) (a fraction, e.g. 0.1 for 10%%), got %r"
                         % (target_fpr,))
    return t


def _check_distances(d: Any, name: str) -> np.ndarray:
    arr = np.asarray(d, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("%s must be a non-empty 1-D array of distances, got shape %s"
                         % (name, arr.shape))
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("%s must hold distances d = 1 - Jaccard in [0, 1], got range [%g, %g]"
                         % (name, np.nanmin(arr), np.nanmax(arr)))
    return arr


def _candidates(d: np.ndarray) -> np.ndarray:
    """Distinct distances ascending, then the next float above the largest (FPR 0)."""
    values = np.unique(d)
    return np.append(values, np.nextafter(values[-1], np.inf))


def threshold_for_fpr(benign_d: Any, target_fpr: float, on_unattainable: str = "raise"
                      ) -> float:
    """Smallest candidate t with ``mean(benign_d >= t) <= target_fpr`` (see module doc).

    Args:
        benign_d: float [N], distances of benign validation images.
        target_fpr: the allowed false-positive rate, in (0, 1).
        on_unattainable: ``"raise"`` (ValueError) or ``"clip"`` (return 1.0) when only a
            threshold above 1 would meet the target.
    Returns:
        t in [0, 1].
    """
    target = check_target_fpr(target_fpr)
    if on_unattainable not in ("raise", "clip"):
        raise ValueError("on_unattainable must be 'raise' or 'clip', got %r" % (on_unattainable,))
    d = _check_distances(benign_d, "benign_d")
    n = d.size
    allowed = target * n * (1.0 + _TOL)
    for t in _candidates(d):
        if np.count_nonzero(d >= t) <= allowed:
            if t <= 1.0:
                return float(t)
            break
    if on_unattainable == "clip":
        return 1.0
    at_one = float(np.mean(d >= 1.0))
    raise ValueError("no threshold in [0, 1] gives a benign FPR <= %g: %.4f of the benign "
                     "distances are >= 1 (no part in common with the predicted class); choose "
                     "target_fpr >= %.4f or pass on_unattainable='clip'" % (target, at_one, at_one))


@dataclasses.dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold with the rates it gives on the data it was chosen on."""
    threshold: float
    target_fpr: float
    fpr: float
    tpr: Optional[float]
    attainable: bool


def choose_threshold(benign_d: Any, target_fpr: float, adversarial_d: Any = None
                     ) -> ThresholdChoice:
    """:func:`threshold_for_fpr` (clipping to 1.0 if needed) plus the achieved FPR and, when
    ``adversarial_d`` (float [M]) is given, the TPR ``mean(adversarial_d >= t)``."""
    d = _check_distances(benign_d, "benign_d")
    target = check_target_fpr(target_fpr)
    t = threshold_for_fpr(d, target, on_unattainable="clip")
    fpr = float(np.mean(d >= t))
    tpr = None
    if adversarial_d is not None:
        tpr = float(np.mean(_check_distances(adversarial_d, "adversarial_d") >= t))
    return ThresholdChoice(threshold=t, target_fpr=target, fpr=fpr, tpr=tpr,
                           attainable=fpr <= target * (1.0 + _TOL))


def threshold_max_youden(benign_d: Any, adversarial_d: Any) -> float:
    """t in [0, 1] maximising ``TPR - FPR`` over the candidate thresholds (ties: smallest t).

    Candidates are the distinct distances of both sets (and the next float above the largest,
    when it is still <= 1).  Needs adversarial validation distances, unlike
    :func:`threshold_for_fpr`.
    """
    b = _check_distances(benign_d, "benign_d")
    a = _check_distances(adversarial_d, "adversarial_d")
    cands = _candidates(np.concatenate([a, b]))
    cands = cands[cands <= 1.0]
    if cands.size == 0:
        return 1.0
    j = [np.mean(a >= t) - np.mean(b >= t) for t in cands]
    return float(cands[int(np.argmax(j))])
