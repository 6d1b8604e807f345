"""Intervals on every number a run reports, and paired comparisons (SPEC §13).

* A rate over n images (accuracy, defended rate, evasion, a worst case) carries its 95%
  **Wilson** interval (:func:`wilson`; scipy's ``binomtest(...).proportion_ci``): n = 100 and
  p = .5 give about ±.10.
* A detector's AUC and TPR at a fixed FPR carry a **bootstrap over images** (:func:`image_
  bootstrap`): the images are resampled, each with its benign and its attacked version (the
  detection set pairs them), and the statistic recomputed; the percentile interval.
* A claim that defense A beats defense B on the same images is a **paired** comparison
  (:func:`paired`): McNemar's exact test on the images where exactly one of them holds (a
  two-sided binomial test of the discordant pairs, scipy's ``binomtest``) and a paired
  bootstrap interval of the difference of the two rates (scipy's ``bootstrap`` with
  ``paired=True``).  A margin is claimed only when that interval excludes zero *and* the
  exact test rejects "no difference" at the same level (``"claim"``); otherwise the two are
  "not distinguishable on n images".

Every resampling is seeded, so a rerun gives the same intervals.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
from scipy import stats

#: Confidence level of every interval.
LEVEL = 0.95
#: Resamples of a bootstrap interval (seeded).
RESAMPLES = 1000


def wilson(successes: int, n: int, level: float = LEVEL) -> Optional[list]:
    """``[low, high]`` of the Wilson interval of ``successes`` of ``n`` (None for n = 0)."""
    if n == 0:
        return None
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level,
                                                             method="wilson")
    return [float(ci.low), float(ci.high)]


def rate_interval(flags) -> Optional[list]:
    """The Wilson interval of the share of true values of the bool array ``flags``."""
    flags = np.asarray(flags, bool)
    return wilson(int(flags.sum()), flags.size)


def image_bootstrap(statistic: Callable[[np.ndarray], float], n_images: int,
                    seed: int = 0, level: float = LEVEL,
                    resamples: int = RESAMPLES) -> Optional[list]:
    """Percentile interval of ``statistic(images)`` over bootstrap resamples of ``n_images``
    images (scipy's ``bootstrap``; ``images`` are int indices drawn with replacement), None
    for fewer than two images or a statistic undefined on some resample."""
    if n_images < 2:
        return None
    res = stats.bootstrap((np.arange(n_images),), statistic, vectorized=False,
                          n_resamples=resamples, confidence_level=level, method="percentile",
                          rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return None if not (np.isfinite(low) and np.isfinite(high)) else [low, high]


def detection_intervals(benign: np.ndarray, attacked: np.ndarray, max_fpr: float = 0.05,
                        seed: int = 0) -> Dict[str, Optional[list]]:
    """Bootstrap intervals of a detector's AUC and TPR at ``max_fpr`` benign FPR on a
    detection set of image pairs: ``benign[i]`` and ``attacked[i]`` are the scores of image
    i's benign and attacked versions (higher = more suspicious); the images are resampled,
    each with both of its scores."""
    from evaluation.metrics import tpr_at_fpr
    benign, attacked = np.asarray(benign, np.float64), np.asarray(attacked, np.float64)
    wins = pair_wins(benign, attacked)
    labels = np.r_[np.zeros(len(benign)), np.ones(len(attacked))]

    def auc(idx):
        return float(wins[np.ix_(idx, idx)].mean())

    def tpr(idx):
        return tpr_at_fpr(labels, np.r_[benign[idx], attacked[idx]], max_fpr)

    return {"auc": image_bootstrap(auc, len(benign), seed),
            "tpr_at_%dfpr" % round(100 * max_fpr): image_bootstrap(tpr, len(benign), seed)}


def pair_wins(benign: np.ndarray, attacked: np.ndarray) -> np.ndarray:
    """``[n, n]``: 1 where image i's attacked score ranks above image j's benign one, 1/2 on
    a tie: the mean over any multiset of images is the AUC of their scores (Mann-Whitney),
    so a bootstrap resample's AUC is one indexed mean."""
    a, b = np.asarray(attacked, np.float64)[:, None], np.asarray(benign, np.float64)[None, :]
    return (a > b) + 0.5 * (a == b)


def paired(a, b, seed: int = 0, level: float = LEVEL) -> Dict:
    """Defense A against defense B on the same images: ``a``, ``b`` bool ``[n]`` (the image
    defended by each).

    Returns:
        ``{"n", "a_rate", "b_rate", "difference", "interval", "a_only", "b_only",
        "p_mcnemar", "claim"}``: the two rates, their difference A - B with its paired bootstrap
        interval, the discordant counts, McNemar's exact two-sided p-value, and the claim
        the numbers allow -- ``"a > b"``, ``"a < b"`` (the interval excludes zero) or
        ``"not distinguishable"``.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired comparison: a and b must be two bool arrays over the same "
                         "images, got shapes %s and %s" % (a.shape, b.shape))
    n = int(a.size)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    diff = float(np.mean(a) - np.mean(b)) if n else None
    interval = None
    if discordant == 0 and n:
        interval = [0.0, 0.0]        # the two agree on every image: no difference to claim
    elif n > 1:
        res = stats.bootstrap((a.astype(float), b.astype(float)),
                              lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
                              paired=True, vectorized=True, n_resamples=RESAMPLES,
                              confidence_level=level, method="percentile",
                              rng=np.random.default_rng(seed))
        interval = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    # a margin needs both: the interval of the difference excludes zero and the exact test
    # rejects "no difference" (with few discordant images the percentile bootstrap alone
    # covers less than its level)
    claim = "not distinguishable"
    if interval is not None and p < 1.0 - level:
        if interval[0] > 0:
            claim = "a > b"
        elif interval[1] < 0:
            claim = "a < b"
    return {"n": n, "a_rate": float(np.mean(a)) if n else None,
            "b_rate": float(np.mean(b)) if n else None, "difference": diff,
            "interval": interval, "a_only": a_only, "b_only": b_only, "p_mcnemar": p,
            "claim": claim}


def claim_text(comparison: Dict, a: str, b: str) -> str:
    """One line for a paired comparison (:func:`paired`), e.g. ``"unmask:k=robust:m=at .47 vs
    at .37: +.10 [+.01, +.19], McNemar p = .04 -- a margin"``."""
    c = comparison
    if c["n"] == 0:
        return "%s vs %s: no images" % (a, b)
    lo, hi = c["interval"]
    verdict = ("a margin" if c["claim"] != "not distinguishable"
               else "not distinguishable on %d images" % c["n"])
    return "%s %.2f vs %s %.2f: %+.2f [%+.2f, %+.2f], McNemar p = %.3g -- %s" % (
        a, c["a_rate"], b, c["b_rate"], c["difference"], lo, hi, c["p_mcnemar"], verdict)


def worst_of(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Per image, defended under every one of ``rows`` (bool arrays over the same images)."""
    return np.all(np.stack([np.asarray(r, bool) for r in rows]), axis=0)
