"""tf.distribute strategies for training M, adversarial training and the trajectory detector.

``make_strategy(kind)`` (``main.py --distribute``):

``"none"``
    the default: one device, no strategy object (``None``).
``"mirrored"``
    :class:`tf.distribute.MirroredStrategy` over the local GPUs (one replica per GPU, memory
    growth switched on so several processes can share a GPU); on a machine without a GPU over
    the logical CPU devices, which is what the tests use (``split_cpu(2)`` first).
``"multi-worker"``
    :class:`tf.distribute.MultiWorkerMirroredStrategy` over the hosts listed in the
    ``TF_CONFIG`` environment variable (``{"cluster": {"worker": ["host1:port", ...]},
    "task": {"type": "worker", "index": i}}``): every host runs the same command with its own
    ``task.index``; worker 0 (the chief) writes the checkpoints, the others read them.

How a step is distributed (:mod:`models.train_classifier`): every worker draws the same
global batch (the data order is a function of seed and epoch), each replica takes its slice
of it by its global replica id, the loss is averaged over the *global* batch and the
gradients are summed across replicas, so a step equals the single-device step on the same
batch up to float summation order (BatchNorm statistics are per replica, as Keras does).

Model K cannot be distributed this way (SPEC §9): it lives in its own TF1 graph and session.
K scales by one process per GPU instead.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

import tfcompat

tf, keras = tfcompat.import_tf()

KINDS = ("none", "mirrored", "multi-worker")


def split_cpu(n: int) -> None:
    """Make ``n`` logical CPU devices of the physical CPU (before TensorFlow's runtime starts:
    the first thing a process does), so MirroredStrategy can be exercised without GPUs."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(int(n))])


def _gpu_memory_growth() -> list:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:     # the runtime is already initialised: leave it as it is
            pass
    return gpus


_STRATEGIES = {}


def make_strategy(kind: str = "none") -> Optional["tf.distribute.Strategy"]:
    """The strategy of ``kind`` (see the module docstring); None for ``"none"``.  One per
    process and kind: M, AT and the trajectory detector of a run share it (a process can
    only join one multi-worker cluster).

    Raises:
        ValueError: an unknown kind, or ``"multi-worker"`` without a usable ``TF_CONFIG``.
    """
    if kind not in KINDS:
        raise ValueError("distribution strategy must be one of %s, got %r" % (KINDS, kind))
    if kind == "none":
        return None
    if kind not in _STRATEGIES:
        gpus = _gpu_memory_growth()
        if kind == "mirrored":
            devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
            _STRATEGIES[kind] = tf.distribute.MirroredStrategy(devices=devices)
        else:
            check_tf_config(os.environ.get("TF_CONFIG"))
            _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGIES[kind]


def global_batch_step(strategy, replica_fn):
    """``step(*tensors)`` running ``replica_fn`` on one *global* batch under ``strategy``.

    Every worker holds the same batch (``tensors``, rows = examples); replica ``r`` of ``n``
    takes rows ``[r B / n, (r + 1) B / n)`` by its global replica id and calls
    ``replica_fn(*its_rows, global_size)`` with ``global_size = B`` (float32 scalar), which
    should return sums over its rows divided as it likes by ``B`` (a loss averaged over the
    global batch, a count) and apply its own gradients (the optimizer sums them across
    replicas).  ``step`` returns the outputs summed over all replicas.

    Raises:
        ValueError: a batch with fewer rows than replicas.
    """
    total = tf.distribute.ReduceOp.SUM

    @tf.function
    def distributed(*args):
        out = strategy.run(replica_fn, args=args)
        return tf.nest.map_structure(lambda t: strategy.reduce(total, t, axis=None), out)

    def step(*tensors):
        b, n = int(tensors[0].shape[0]), strategy.num_replicas_in_sync
        if b < n:
            raise ValueError("a batch of %d examples cannot be split over %d replicas"
                             % (b, n))
        bounds = [int(v) for v in np.linspace(0, b, n + 1).astype(int)]

        def shard(t):
            return strategy.experimental_distribute_values_from_function(
                lambda ctx: t[bounds[ctx.replica_id_in_sync_group]:
                              bounds[ctx.replica_id_in_sync_group + 1]])
        return distributed(*[shard(t) for t in tensors], tf.constant(float(b)))
    return step


def check_tf_config(text: Optional[str]) -> dict:
    """Parse and check ``TF_CONFIG`` for the multi-worker strategy (ValueError saying what
    is missing)."""
    if not text:
        raise ValueError("the multi-worker strategy needs the TF_CONFIG environment variable, "
                         "e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
                         "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
                         "on the first host (index 1 on the second)")
    try:
        cfg = json.loads(text)
        workers = cfg["cluster"]["worker"]
        index = int(cfg["task"]["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError("TF_CONFIG is not usable (%s): it needs cluster.worker (a list of "
                         "host:port) and task.index" % (e,)) from None
    if not isinstance(workers, list) or not workers or not 0 <= index < len(workers):
        raise ValueError("TF_CONFIG: task.index %r is not an index of cluster.worker %r"
                         % (index, workers))
    return cfg


def is_chief(strategy) -> bool:
    """True unless ``strategy`` is multi-worker and this process is not worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None):
        return True
    jobs = resolver.cluster_spec().as_dict()
    if not jobs:
        return True
    if "chief" in jobs:                  # TensorFlow's rule: a "chief" job is the chief
        return resolver.task_type == "chief"
    return resolver.task_type in (None, "worker") and resolver.task_id in (None, 0)


def all_agree(strategy, value: int) -> bool:
    """True when ``value`` is the same on every replica of ``strategy`` (every worker); a
    collective, so it is also a barrier between the workers.  True without a strategy."""
    if strategy is None:
        return True
    v = float(value)
    per_replica = strategy.run(lambda: tf.constant([v, v * v], tf.float64))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    n = float(strategy.num_replicas_in_sync)
    return abs(total[1] / n - (total[0] / n) ** 2) < 1e-9


def num_replicas(strategy) -> int:
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)
