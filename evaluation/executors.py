"""Executors of the grid's work units beyond this process: :class:`RayExecutor` runs the
units of a stage as Ray tasks -- ``main.py --workers N`` starts a local Ray cluster of N
workers, ``--ray-address HOST:PORT`` joins a running one.  Each Ray task is one unit in a
worker process that imports TensorFlow itself, asks for one GPU when the cluster has GPUs
(memory growth on) and is retried when its worker dies.  The tasks get absolute paths: on a
multi-machine cluster the data, results and checkpoint folders must be on a file system every
node shares.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence

from evaluation.grid import InProcess, Unit, unit_done, run_unit, unit_record_path
from models.progress import Eta


def _ray_unit(base, unit: Unit) -> str:
    """A unit in a Ray worker: TensorFlow is imported here, in the worker, with memory
    growth on its GPU (if it got one)."""
    import tfcompat
    tf, _ = tfcompat.import_tf()
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    return run_unit(base, unit, log=lambda s: print("[%s] %s" % (unit.name, s)))


#: TensorFlow's thread pools, read when it starts (its own environment variables).
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def machine_cores() -> int:
    """The CPUs this process may run on (its affinity where the OS has one; a container's CPU
    quota is not seen, as TensorFlow does not see it either)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_thread_env(workers: int, cores: Optional[int] = None) -> Dict[str, str]:
    """The thread pools of ``workers`` TensorFlow processes sharing this machine: each its
    share of the ``cores`` (default :func:`machine_cores`) for an op, at least one, and two
    ops at a time, instead of every process sizing its pools to the whole machine.  On 2
    cores, 2 workers ran an adaptive unit's passes 1.14x faster so, to the same numbers
    (``bench/bench_worker_threads.py``).  A variable the user set is kept (only the unset
    ones are given); one worker keeps TensorFlow's defaults.  (With GPUs the cores are
    still split by ``workers``, though only as many units as GPUs run at once.)"""
    if workers <= 1:
        return {}
    cores = machine_cores() if cores is None else int(cores)
    wanted = {"TF_NUM_INTRAOP_THREADS": str(max(1, cores // workers)),
              "TF_NUM_INTEROP_THREADS": "2"}
    return {k: v for k, v in wanted.items() if not os.environ.get(k)}


class RayExecutor:
    """Runs the units of a stage as Ray tasks: a local cluster of ``workers`` processes, or
    the running cluster at ``address``."""

    def __init__(self, workers: Optional[int] = None, address: Optional[str] = None,
                 max_retries: int = 3):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=True)
            else:
                # a cluster of its own ("local"), never one found on the machine: the
                # workers asked for are the workers it gets, sharing this machine's cores
                env = worker_thread_env(int(workers))
                ray.init(address="local", num_cpus=int(workers), include_dashboard=False,
                         log_to_driver=True,
                         **({"runtime_env": {"env_vars": env}} if env else {}))
        gpus = ray.cluster_resources().get("GPU", 0)
        cpus = int(ray.cluster_resources().get("CPU", workers or 1))
        # the units that run at once: a unit takes a CPU, and a GPU where there are any
        self.workers = max(1, min(cpus, int(gpus))) if gpus else cpus
        self._remote = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0,
                                  max_retries=max_retries)(_ray_unit)

    def map(self, base, units: Sequence[Unit], log: Callable[[str], None],
            note: Optional[Callable[[], Optional[str]]] = None) -> List[str]:
        """Run ``units`` (those not done yet) on the workers; each is logged as it finishes,
        with ``note()`` (e.g. the worst case of what is left) when given."""
        # the workers may run elsewhere (--ray-address): send absolute paths, which must name
        # a file system every node shares
        base = absolute_paths(base)
        pending = [u for u in units if not unit_done(base, u)]
        log("grid: %d of %d units to run on %d Ray workers"
            % (len(pending), len(units), self.workers))
        units_of = {self._remote.remote(base, u): u for u in pending}
        eta, waiting = Eta(len(pending)), list(units_of)
        while waiting:              # each unit logged when it finishes: a run can take hours
            ready, waiting = self.ray.wait(waiting, num_returns=1)
            for ref in ready:
                path = self.ray.get(ref)          # a unit that failed every retry raises here
                timing = eta.step()
                extra = note() if note is not None else None
                log("grid: %s done, %d of %d (%s; %s)%s" % (
                    units_of[ref].name, eta.done, eta.total, timing, path,
                    "" if not extra else " -- " + extra))
        return [unit_record_path(base, u) for u in units]

    def shutdown(self) -> None:
        self.ray.shutdown()


def absolute_paths(base):
    """``base`` with its folders made absolute (the same folders, named from anywhere)."""
    return dataclasses.replace(
        base, data_dir=os.path.abspath(base.data_dir),
        results_dir=os.path.abspath(base.results_dir),
        checkpoint_dir=os.path.abspath(base.checkpoint_dir),
        k_log_dir=os.path.abspath(base.k_log_dir),
        k_transfer=os.path.abspath(base.k_transfer) if base.k_transfer else None,
        m_model=os.path.abspath(base.m_model) if base.m_model else None,
        at_model=os.path.abspath(base.at_model) if base.at_model else None,
        k_robust_log_dir=os.path.abspath(base.k_robust_log_dir),
        k_robust=(base.k_robust if base.k_robust == "last"
                  else os.path.abspath(base.k_robust)),
        k_transfer_robust=(os.path.abspath(base.k_transfer_robust)
                           if base.k_transfer_robust else None))


def make_executor(workers: Optional[int] = None, address: Optional[str] = None):
    """The executor of ``--workers`` / ``--ray-address`` (:class:`InProcess` without
    either)."""
    if workers is None and not address:
        return InProcess()
    return RayExecutor(workers=workers, address=address)
