"""The Ray executor's bookkeeping, without a Ray cluster: units that are done are not sent
again, each unit is logged when it finishes (a run of many hour-long units says where it is),
and a unit that failed every retry stops the run."""
from __future__ import annotations

import pytest

from evaluation import executors
from evaluation.units import Unit


class _FakeRay:
    """Ray's wait/get over refs that finish in a chosen order (``order``: indices)."""

    def __init__(self, order, fail=None):
        self.order, self.fail, self.sent = list(order), fail, []

    def remote(self, base, unit):
        self.sent.append(unit)
        return len(self.sent) - 1

    def wait(self, refs, num_returns=1):
        first = next(i for i in self.order if i in refs)
        self.order.remove(first)
        return [first], [r for r in refs if r != first]

    def get(self, ref):
        if ref == self.fail:
            raise RuntimeError("unit %d failed on every retry" % ref)
        return "/records/%d.npz" % ref


def _executor(fake, monkeypatch, done=()):
    ex = executors.RayExecutor.__new__(executors.RayExecutor)
    ex.ray, ex.workers = fake, 2
    ex._remote = type("R", (), {"remote": staticmethod(fake.remote)})()
    monkeypatch.setattr(executors, "absolute_paths", lambda base: base)
    monkeypatch.setattr(executors, "unit_done", lambda base, u: u.batch in done)
    monkeypatch.setattr(executors, "unit_record_path",
                        lambda base, u: "/units/%s.json" % u.name)
    return ex


def _units(n):
    return [Unit("adaptive", "a", "cs", ("pgd_linf", 8.0), defense="unmask",
                 threat="adaptive", goal="wrong", batch=i) for i in range(n)]


def test_each_unit_is_logged_when_it_finishes_and_done_units_are_not_sent(monkeypatch):
    units, lines = _units(4), []
    fake = _FakeRay(order=[2, 0, 1])
    ex = _executor(fake, monkeypatch, done={1})
    paths = ex.map(object(), units, lines.append)
    assert [u.batch for u in fake.sent] == [0, 2, 3]          # batch 1 was done already
    assert lines[0].startswith("grid: 3 of 4 units to run")
    finished = lines[1:]
    assert len(finished) == 3
    # in the order they finished (refs 2, 0, 1 = batches 3, 0, 2), counted 1..3 of 3
    assert [units[b].name in line for b, line in zip((3, 0, 2), finished)] == [True] * 3
    assert ["%d of 3" % k in line for k, line in zip((1, 2, 3), finished)] == [True] * 3
    assert "left" in finished[0] and "/records/2.npz" in finished[0]
    assert paths == ["/units/%s.json" % u.name for u in units]  # every unit, in order


def test_a_unit_that_failed_every_retry_stops_the_run(monkeypatch):
    fake = _FakeRay(order=[0, 1], fail=1)
    ex = _executor(fake, monkeypatch)
    lines = []
    with pytest.raises(RuntimeError, match="failed on every retry"):
        ex.map(object(), _units(2), lines.append)
    assert sum("done" in line for line in lines) == 1


@pytest.mark.parametrize("resources,workers", [({"CPU": 8.0}, 8), ({"CPU": 8.0, "GPU": 2.0}, 2),
                                               ({"CPU": 2.0, "GPU": 4.0}, 2)])
def test_the_workers_are_the_units_that_run_at_once(monkeypatch, resources, workers):
    """A unit takes a CPU, and a GPU where the cluster has any: a cluster of 8 CPUs and 2
    GPUs runs 2 units at once (what the run's plan records for --status)."""
    import sys
    import types

    fake = types.SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: dict(resources),
        remote=lambda **kw: (lambda fn: types.SimpleNamespace(remote=fn, options=kw)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    ex = executors.RayExecutor(address="auto")
    assert ex.workers == workers
    assert ex._remote.options["num_gpus"] == (1 if "GPU" in resources else 0)


def test_each_finished_unit_carries_the_note_of_what_is_left(monkeypatch):
    """The driver's line of each finished unit ends with ``note()`` (the run's worst case
    of what is left, read anew each time); without a note the line is unchanged."""
    notes = iter(["2.0 worker h left", None])
    lines = []
    ex = _executor(_FakeRay(order=[0, 1]), monkeypatch)
    ex.map(object(), _units(2), lines.append, note=lambda: next(notes))
    assert lines[1].endswith(" -- 2.0 worker h left")
    assert lines[2].endswith(".npz)")


def test_workers_sharing_a_machine_share_its_cores_unless_the_user_said(monkeypatch):
    for name in executors.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert executors.worker_thread_env(2, cores=2) == {
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}
    assert executors.worker_thread_env(3, cores=16)["TF_NUM_INTRAOP_THREADS"] == "5"
    assert executors.worker_thread_env(8, cores=4)["TF_NUM_INTRAOP_THREADS"] == "1"
    assert executors.worker_thread_env(1, cores=8) == {}          # one process: TF's default
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")             # the user's setting is kept
    assert executors.worker_thread_env(2, cores=2) == {"TF_NUM_INTEROP_THREADS": "2"}
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "4")
    assert executors.worker_thread_env(2, cores=2) == {}
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "")             # empty: not set
    assert executors.worker_thread_env(2, cores=2) == {
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}


def test_a_local_cluster_hands_its_workers_the_thread_pools(monkeypatch):
    """``--workers N`` starts a local cluster whose worker processes get the environment of
    :func:`executors.worker_thread_env` (a cluster joined by address is left as it is)."""
    import sys
    import types

    for name in executors.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    fake = types.SimpleNamespace(
        is_initialized=lambda: False, init=lambda **kw: calls.append(kw),
        cluster_resources=lambda: {"CPU": 2.0},
        remote=lambda **kw: (lambda fn: types.SimpleNamespace(remote=fn)))
    monkeypatch.setitem(sys.modules, "ray", fake)
    # the CPUs this process may run on, not the machine's count
    monkeypatch.setattr(executors.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3},
                        raising=False)
    monkeypatch.setattr(executors.os, "cpu_count", lambda: 16)
    executors.RayExecutor(workers=2)
    assert calls[-1]["runtime_env"] == {"env_vars": {"TF_NUM_INTRAOP_THREADS": "2",
                                                     "TF_NUM_INTEROP_THREADS": "2"}}
    executors.RayExecutor(address="auto")
    assert "runtime_env" not in calls[-1]
