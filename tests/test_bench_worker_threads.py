"""The worker-threads bench: its identity check and its refusals (the timed run itself needs
the trained models and the whole machine: bench/results/worker_threads.json)."""
import numpy as np
import pytest

from benchmods import load


@pytest.fixture(scope="module")
def bench():
    return load("bench_worker_threads")


def test_identical_means_every_output_bit_for_bit(bench):
    a = {"k_loss": np.array([1.0, 2.0]), "k_grad": np.zeros((2, 3)), "m_grad": np.ones(3)}
    assert bench.same(a, {k: v.copy() for k, v in a.items()})
    b = dict(a, k_grad=np.full((2, 3), np.nextafter(0.0, 1.0)))   # the smallest difference
    assert not bench.same(a, b)


def test_it_refuses_one_worker_and_pools_the_user_set(bench, monkeypatch):
    with pytest.raises(SystemExit, match="at least 2"):
        bench.main(["--workers", "1"])
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "2")
    with pytest.raises(SystemExit, match="unset TF_NUM_INTRAOP_THREADS"):
        bench.main(["--workers", "2"])
