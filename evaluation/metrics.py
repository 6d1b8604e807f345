"""Detection and defense metrics of UnMask and the other defenses.

* ROC / AUC over a score where higher = more adversarial (UnMask's distance d), computed by
  scikit-learn (``roc_curve``, ``auc``, ``roc_auc_score``): images with equal scores enter the
  curve together (one point per distinct score), so a tie between a positive and a negative
  contributes a diagonal segment, i.e. half credit, to the AUC.
* Rates at a threshold use Algorithm 1's rule: ``score >= t`` is positive (flagged).
* Accuracies count the "no class" answer (-1) as wrong.
* Detection set-up at contamination 0.5 (paper §IV-B): the successfully attacked images
  (label 1, adversarial distance) plus their benign counterparts (label 0, benign distance).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import numpy as np


def _binary_labels(labels: Any, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("%s must be a non-empty 1-D array, got shape %s" % (name, y.shape))
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("%s must be 0 (benign) / 1 (adversarial), got values %s"
                         % (name, np.unique(y)[:10]))
    return y.astype(np.int64)


def _scores_like(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError("%s must have shape (%d,) like the labels, got %s" % (name, n, s.shape))
    if not np.all(np.isfinite(s)):
        raise ValueError("%s contains NaN or infinite values" % name)
    return s


def _check_both_classes(y: np.ndarray) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("ROC needs both labels 0 and 1; got only label %d (%d images)"
                         % (y[0], y.size))


def roc_curve(labels: Any, scores: Any, drop_intermediate: bool = True
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, float64 arrays of equal length
    (``sklearn.metrics.roc_curve`` with 1 = adversarial).

    ``thresholds`` are decreasing: the first is +inf (nothing flagged, point (0, 0)), then each
    distinct score; point i is the rates of the rule ``score >= thresholds[i]``.  With
    ``drop_intermediate`` the points lying on a straight segment between their neighbours are
    removed.  Raises ValueError when only one label is present (where scikit-learn warns and
    returns NaN).
    """
    from sklearn import metrics as skm

    y = _binary_labels(labels)
    s = _scores_like(scores, y.size)
    _check_both_classes(y)
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=drop_intermediate)
    return (fpr.astype(np.float64), tpr.astype(np.float64),
            thresholds.astype(np.float64))


def auc(x: Any, y: Any) -> float:
    """Area under a curve by the trapezoidal rule (``sklearn.metrics.auc``); ``x`` must be
    monotonic."""
    from sklearn import metrics as skm

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError("auc needs two 1-D arrays of equal length >= 2, got %s and %s"
                         % (x.shape, y.shape))
    dx = np.diff(x)
    if not (np.all(dx >= 0) or np.all(dx <= 0)):
        raise ValueError("auc: x is neither increasing nor decreasing")
    return float(skm.auc(x, y))


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``)."""
    from sklearn import metrics as skm

    y = _binary_labels(labels)
    s = _scores_like(scores, y.size)
    _check_both_classes(y)
    return float(skm.roc_auc_score(y, s))


def rates_at_threshold(labels: Any, scores: Any, threshold: float) -> Tuple[float, float]:
    """``(tpr, fpr)`` of the rule ``score >= threshold`` is positive (Algorithm 1)."""
    y = _binary_labels(labels)
    s = _scores_like(scores, y.size)
    _check_both_classes(y)
    flagged = s >= float(threshold)
    tpr = float(np.mean(flagged[y == 1]))
    fpr = float(np.mean(flagged[y == 0]))
    return tpr, fpr


def tpr_at_fpr(labels: Any, scores: Any, max_fpr: float) -> float:
    """The detection rate at a benign false-positive rate of at most ``max_fpr``: the highest
    TPR of a rule ``score >= t`` whose FPR on the benign images (label 0) is ``<= max_fpr``
    (a point of the full ROC curve, no interpolation; the literature's "TPR at 5% FPR")."""
    if not 0.0 <= float(max_fpr) <= 1.0:
        raise ValueError("max_fpr must be in [0, 1], got %r" % (max_fpr,))
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.max(tpr[fpr <= float(max_fpr) + 1e-12]))


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of ``pred == labels`` (int [N] each); -1 ("no class") never equals a label."""
    p = np.asarray(pred)
    y = np.asarray(labels)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError("accuracy needs two non-empty 1-D arrays of equal length, got %s and %s"
                         % (p.shape, y.shape))
    if np.any(y < 0):
        raise ValueError("labels must be class indices >= 0; -1 is reserved for 'no class'")
    return float(np.mean(p.astype(np.int64) == y.astype(np.int64)))


@dataclasses.dataclass(frozen=True)
class DetectionSet:
    """Contamination-0.5 detection data of one attack (paper §IV-B, Table III).

    Attributes:
        labels: int64 [2k], 1 for the k successfully attacked images, then 0 for their k
            benign counterparts.
        scores: float64 [2k], the matching distances d (adversarial, then benign).
        index: int64 [k], positions (in the evaluated images) of the successful attacks.
        n_attacked: number of images attacked.
        n_successful: k.
    """
    labels: np.ndarray
    scores: np.ndarray
    index: np.ndarray
    n_attacked: int
    n_successful: int

    @property
    def n_images(self) -> int:
        """Images in the detection evaluation, 2k (the figure Table III reports)."""
        return int(self.labels.size)


#: Which images enter a detection set: ``original`` (the UnMask code, the paper's Table III:
#: every image with M(x_adv) != y, and its benign version) or ``strict`` (this project's
#: earlier rule: additionally M(x) == y, so that the attack caused the error).
DETECTION_SETS = ("original", "strict")
DEFAULT_DETECTION_SET = "original"


def check_detection_set(rule: Any) -> str:
    """``rule`` as one of :data:`DETECTION_SETS`; ValueError naming them otherwise."""
    r = str(rule).strip().lower()
    if r not in DETECTION_SETS:
        raise ValueError("detection set must be one of %s, got %r"
                         % (", ".join(DETECTION_SETS), rule))
    return r


def successful_attacks(labels: Any, benign_pred: Any, adv_pred: Any,
                       require_benign_correct: bool = False) -> np.ndarray:
    """bool [N]: the attack succeeded on image i.

    Success means M misclassifies the adversarial image (``adv_pred != label``), the original
    code's rule; with ``require_benign_correct`` (the ``strict`` detection set) M must also have
    been right on the benign image, so that it is the attack that caused the error.
    """
    y = np.asarray(labels)
    b = np.asarray(benign_pred)
    a = np.asarray(adv_pred)
    if not (y.ndim == 1 and y.shape == b.shape == a.shape):
        raise ValueError("labels, benign_pred and adv_pred must be 1-D of equal length, got "
                         "%s, %s, %s" % (y.shape, b.shape, a.shape))
    ok = a != y
    if require_benign_correct:
        ok &= b == y
    return ok


def detection_set(benign_d: Any, adv_d: Any, labels: Any, benign_pred: Any, adv_pred: Any,
                  require_benign_correct: bool = False) -> DetectionSet:
    """Build the contamination-0.5 set of one attack from per-image arrays of length N.

    Args:
        benign_d, adv_d: float [N], UnMask distances of the benign and attacked images.
        labels: int [N], true classes; benign_pred, adv_pred: int [N], M's predictions.
        require_benign_correct: see :func:`successful_attacks`.
    """
    ok = successful_attacks(labels, benign_pred, adv_pred, require_benign_correct)
    n = ok.size
    b = _scores_like(benign_d, n, "benign_d")
    a = _scores_like(adv_d, n, "adv_d")
    idx = np.flatnonzero(ok)
    k = idx.size
    y = np.concatenate([np.ones(k, dtype=np.int64), np.zeros(k, dtype=np.int64)])
    s = np.concatenate([a[idx], b[idx]])
    return DetectionSet(labels=y, scores=s, index=idx.astype(np.int64), n_attacked=int(n),
                        n_successful=int(k))


@dataclasses.dataclass(frozen=True)
class DetectionResult:
    """AUC and rates at the operating threshold of one detection set (None when k = 0)."""
    auc: Any
    tpr: Any
    fpr: Any
    n_attacked: int
    n_successful: int


def evaluate_detection(ds: DetectionSet, threshold: float) -> DetectionResult:
    """AUC over all thresholds and (TPR, FPR) at ``threshold`` of a :class:`DetectionSet`.

    With no successful attack (k = 0) the rates are undefined and returned as None.
    """
    if ds.n_successful == 0:
        return DetectionResult(None, None, None, ds.n_attacked, 0)
    tpr, fpr = rates_at_threshold(ds.labels, ds.scores, threshold)
    return DetectionResult(auc=roc_auc(ds.labels, ds.scores), tpr=tpr, fpr=fpr,
                           n_attacked=ds.n_attacked, n_successful=ds.n_successful)


def _check_at_pred(at_pred: Any, n: int) -> Any:
    if at_pred is None:
        return None
    p = np.asarray(at_pred)
    if p.shape != (n,):
        raise ValueError("at_pred must have shape (%d,) like the labels, got %s" % (n, p.shape))
    return p


def benign_summary(labels: Any, benign: Any, at_pred: Any = None) -> dict:
    """``metrics.json`` ``benign`` block from a benign :class:`~defense.unmask.ProtectResult`.

    Args:
        labels: int [N] true classes.
        benign: result of ``UnMask.protect`` on the benign images (uses ``preds``, ``final``).
        at_pred: int [N], the adversarially trained model's predictions, or None (no AT model).
    """
    y = np.asarray(labels)
    at = _check_at_pred(at_pred, y.size)
    return {"acc_none": accuracy(benign.preds, y),
            "acc_at": None if at is None else accuracy(at, y),
            "acc_um": accuracy(benign.final, y)}


def attack_summary(labels: Any, benign: Any, adversarial: Any, at_pred: Any = None,
                   require_benign_correct: bool = False) -> dict:
    """Accuracies (contamination 1) and detection (contamination 0.5) of one attack.

    Args:
        labels: int [N] true classes.
        benign, adversarial: ``UnMask.protect`` results on the benign images and on their
            attacked versions (same order, same threshold); uses ``preds``, ``distances``,
            ``final`` and ``threshold``.
        at_pred: int [N], the AT model's predictions on *its own* attacked images, or None.
        require_benign_correct: see :func:`successful_attacks`.
    Returns:
        dict with ``acc_none, acc_at, acc_um, auc, tpr, fpr, n_attacked, n_successful`` (the
        keys of a ``metrics.json`` attack entry besides ``attack`` and ``eps``).
    """
    y = np.asarray(labels)
    if float(benign.threshold) != float(adversarial.threshold):
        raise ValueError("benign and adversarial results use different thresholds (%g, %g)"
                         % (benign.threshold, adversarial.threshold))
    at = _check_at_pred(at_pred, y.size)
    ds = detection_set(benign.distances, adversarial.distances, y, benign.preds,
                       adversarial.preds, require_benign_correct)
    det = evaluate_detection(ds, float(adversarial.threshold))
    return {"acc_none": accuracy(adversarial.preds, y),
            "acc_at": None if at is None else accuracy(at, y),
            "acc_um": accuracy(adversarial.final, y),
            "auc": det.auc, "tpr": det.tpr, "fpr": det.fpr,
            "n_attacked": det.n_attacked, "n_successful": det.n_successful}
