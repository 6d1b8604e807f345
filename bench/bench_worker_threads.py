"""Workers sharing one machine: TensorFlow's default thread pools against a share of the cores
each (:func:`evaluation.executors.worker_thread_env`, what ``--workers N`` hands a local Ray
cluster), in one run on the same machine -> ``bench/results/worker_threads.json``.

``--workers`` processes (default: one per core) run at the same time what an adaptive work
unit spends its time on: K's part-set hinge and its input gradient (the robust K's session
run, its backward pass) and M's forward and backward pass (the AT model), on ``--images``
images, ``--iterations`` times after a warm-up.  Each setting is run twice, interleaved
(default, shared, default, shared), so a drift of the machine's load shows as a spread; the
processes of a round start their timed loops together, after their warm-up.  The figure is
the images all of them evaluated over the span from the first start to the last end, per
second; ``ratio`` = shared / default.  ``identical``: every process of both settings computed the same K loss, K gradient
and M gradient bit for bit (the thread pools change how fast, not what; checked for the
pools of this machine and worker count).

Needs the trained robust K and the AT model of the default run (``python main.py --model K
--adv-train``, ``python main.py --adv-train``).  Run from the repository root while nothing
else runs::

    .venv/bin/python bench/bench_worker_threads.py [--workers 2] [--iterations 60]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from evaluation.executors import (THREAD_VARIABLES, machine_cores,  # noqa: E402
                                  worker_thread_env)

RESULTS = os.path.join(ROOT, "bench", "results", "worker_threads.json")


def passes(out: str, images: int, iterations: int, m_weights: str, k_log_dir: str) -> None:
    """One process: the passes timed, their outputs saved to ``out`` (npz) with the start and
    end of its timed loop."""
    import time

    import numpy as np

    import tfcompat
    tf, _ = tfcompat.import_tf()
    from evaluation.model_k import robust_extractor
    from models.classifier import build_classifier
    from models.mrcnn.attack_interface import PartScorer

    scorer = PartScorer(robust_extractor("last", k_log_dir, "synthetic", log=lambda s: None),
                        96)
    m = build_classifier("mobilenetv2_050", 5, 96)
    m.load_weights(m_weights)

    @tf.function
    def m_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.log_softmax(m(x, training=False))[:, 0])
        return tape.gradient(loss, x)

    x = np.random.RandomState(0).rand(images, 96, 96, 3).astype(np.float32)
    present = np.zeros((images, scorer.num_parts), np.float32)
    present[:, :3] = 1.0

    def once():
        loss, grad = scorer.hinge_value_and_grad(x, present, 1.0 - present)
        return loss, grad, m_grad(tf.constant(x)).numpy()

    for _ in range(3):
        outputs = once()
    # every process starts its timed loop together, once all have warmed up
    open(out + ".ready", "w").close()
    go = os.path.join(os.path.dirname(out), "go")
    while not os.path.exists(go):
        time.sleep(0.02)
    start = time.time()
    for _ in range(iterations):
        once()
    np.savez(out, k_loss=outputs[0], k_grad=outputs[1], m_grad=outputs[2], start=start,
             end=time.time())


def run_setting(env_extra, workers, args, folder):
    """``workers`` processes with the environment ``env_extra``, their timed loops started
    together; returns their outputs and the image-evaluations per second of all of them
    (images over the span from the first start to the last end)."""
    import time

    import numpy as np

    os.makedirs(folder)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(env_extra)
    procs, outs = [], [os.path.join(folder, "%d.npz" % w) for w in range(workers)]
    try:
        for out in outs:
            with open(out + ".err", "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--child", out,
                     "--images", str(args.images), "--iterations", str(args.iterations),
                     "--m-weights", args.m_weights, "--k-log-dir", args.k_log_dir],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
        while not all(os.path.exists(o + ".ready") for o in outs):
            _check(procs, outs)
            time.sleep(0.05)
        open(os.path.join(folder, "go"), "w").close()
        for p in procs:
            p.wait()
        _check(procs, outs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    got = [dict(np.load(o)) for o in outs]
    span = max(float(g["end"]) for g in got) - min(float(g["start"]) for g in got)
    return got, workers * args.iterations * args.images / span


def _check(procs, outs):
    """Stop the bench, naming the error, when a worker process failed."""
    for p, out in zip(procs, outs):
        if p.poll() not in (None, 0):
            with open(out + ".err") as f:
                raise SystemExit("a worker process failed:\n%s" % f.read()[-2000:])


def same(a, b) -> bool:
    import numpy as np
    return all(np.array_equal(a[k], b[k]) for k in ("k_loss", "k_grad", "m_grad"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=machine_cores())
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--m-weights",
                   default="checkpoints/model_m/cs5-2/mobilenetv2_050_96_at_eps4/best.h5")
    p.add_argument("--k-log-dir", default="logs/model_k_robust")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.child:
        passes(args.child, args.images, args.iterations, args.m_weights, args.k_log_dir)
        return 0
    if args.workers < 2:
        raise SystemExit("--workers must be at least 2: one process keeps TensorFlow's pools")
    shared = worker_thread_env(args.workers)
    if len(shared) < len(THREAD_VARIABLES):
        raise SystemExit("unset %s first: the bench compares TensorFlow's default pools with "
                         "the shared ones" % " and ".join(THREAD_VARIABLES))
    rounds, outputs = [], []
    load_before = _machine.load_average()
    with tempfile.TemporaryDirectory() as folder:
        for r, (name, env) in enumerate([("default", {}), ("shared", shared)] * 2):
            got, rate = run_setting(env, args.workers, args,
                                    os.path.join(folder, "%s%d" % (name, r)))
            outputs += got
            rounds.append({"setting": name, "image_evaluations_per_second": round(rate, 2)})
    load_after = _machine.load_average()
    rate = {name: [x["image_evaluations_per_second"] for x in rounds if x["setting"] == name]
            for name in ("default", "shared")}
    record = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "command": _machine.record_command([sys.executable] + sys.argv),
        "machine": _machine.machine_info(),
        "workers": args.workers, "images": args.images, "iterations": args.iterations,
        "models": {"m": _machine.repo_relative(args.m_weights),
                   "k_log_dir": _machine.repo_relative(args.k_log_dir)},
        "shared_pools": shared, "rounds": rounds,
        "default": sum(rate["default"]) / 2, "shared": sum(rate["shared"]) / 2,
        "ratio": round(sum(rate["shared"]) / sum(rate["default"]), 3),
        "identical": all(same(outputs[0], o) for o in outputs[1:]),
        "load_average_before": load_before, "load_average_after": load_after}
    write_json_atomic(args.out, record, indent=1)
    print(json.dumps({k: record[k] for k in ("rounds", "ratio", "identical")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
