"""Intervals and paired comparisons (SPEC §13): the Wilson interval covers a known rate at its
nominal level, McNemar's exact test gives the textbook answer on a hand-made table, and the
bootstrap of a detector's AUC resamples whole images."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evaluation import stats


def test_wilson_interval_covers_a_known_rate_at_its_nominal_level():
    rng = np.random.default_rng(0)
    for p, n in ((0.5, 100), (0.1, 40), (0.9, 300)):
        hits = 0
        for _ in range(1000):
            k = rng.binomial(n, p)
            lo, hi = stats.wilson(k, n)
            hits += lo <= p <= hi
        assert 0.93 <= hits / 1000 <= 0.97, (p, n, hits)
    lo, hi = stats.wilson(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3   # the +-.10 of SPEC §13
    assert stats.wilson(0, 0) is None
    assert stats.rate_interval(np.array([True, False, False, False])) == stats.wilson(1, 4)


def test_mcnemar_exact_gives_the_textbook_answer():
    # 10 images only A defends, 2 only B, 30 both, 8 neither: the exact two-sided p is
    # 2 x P(X <= 2), X ~ Bin(12, 1/2) = 2 x (1 + 12 + 66) / 4096
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)
    c = stats.paired(a, b)
    assert c["a_only"] == 10 and c["b_only"] == 2 and c["n"] == 50
    assert c["p_mcnemar"] == pytest.approx(2 * 79 / 4096)
    assert c["difference"] == pytest.approx(0.16)
    assert c["interval"][0] > 0 and c["claim"] == "a > b"
    assert "a margin" in stats.claim_text(c, "A", "B")
    # the same rate on different images is no margin
    even = stats.paired(np.array([True, False] * 20), np.array([False, True] * 20))
    assert even["p_mcnemar"] == 1.0 and even["claim"] == "not distinguishable"
    assert "not distinguishable on 40 images" in stats.claim_text(even, "A", "B")
    # few discordant images: the bootstrap interval alone would exclude zero, the exact test
    # does not reject -- no margin is claimed
    few = stats.paired(np.r_[np.ones(4, bool), np.zeros(996, bool)], np.zeros(1000, bool))
    assert few["p_mcnemar"] == pytest.approx(0.125) and few["claim"] == "not distinguishable"
    # identical answers: no discordant pair, nothing to claim
    same = stats.paired(a, a)
    assert same["interval"] == [0.0, 0.0] and same["claim"] == "not distinguishable"
    with pytest.raises(ValueError, match="same images"):
        stats.paired(a, b[:-1])


def test_paired_bootstrap_interval_covers_the_difference():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(100):
        both = rng.random(200) < 0.4
        a = both | (rng.random(200) < 0.15)
        b = both | (rng.random(200) < 0.05)
        lo, hi = stats.paired(a, b, seed=trial)["interval"]
        # the true difference: P(a) - P(b) = .6 * (.15 - .05) = .06
        hits += lo <= 0.06 <= hi
    assert hits >= 88


def test_auc_of_a_bootstrap_resample_is_the_roc_auc_of_those_images():
    rng = np.random.default_rng(2)
    benign, attacked = rng.normal(0, 1, 30), rng.normal(0.8, 1, 30)
    benign[3] = attacked[5]                       # a tie counts one half
    wins = stats.pair_wins(benign, attacked)
    for _ in range(5):
        idx = rng.integers(0, 30, 30)
        labels = np.r_[np.zeros(30), np.ones(30)]
        expected = roc_auc_score(labels, np.r_[benign[idx], attacked[idx]])
        assert wins[np.ix_(idx, idx)].mean() == pytest.approx(expected)
    iv = stats.detection_intervals(benign, attacked, seed=0)
    full = roc_auc_score(np.r_[np.zeros(30), np.ones(30)], np.r_[benign, attacked])
    assert iv["auc"][0] < full < iv["auc"][1] and iv["auc"][1] - iv["auc"][0] > 0.05
    assert 0 <= iv["tpr_at_5fpr"][0] <= iv["tpr_at_5fpr"][1] <= 1
    assert stats.detection_intervals(benign, attacked, seed=0) == iv, "seeded"
    separated = stats.detection_intervals(np.zeros(10), np.ones(10))
    assert separated["auc"] == [1.0, 1.0]
