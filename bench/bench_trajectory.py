"""Benchmark of the trajectory detector's fit on the default M (synthetic CS5b).

Times ``TrajectoryDefense.fit``: by default with the run's cached representatives and
training features (``<m_dir>_trajectory``, written by a run with ``--defenses trajectory``), so
the figure is the detector's training (goal: <= 3 minutes on the 2-core CI machine) plus
embedding; ``--from-scratch`` uses an empty temporary cache and also times the
representatives (tap features of the training images, medoids) and the training data (8
attacks on up to 600 training/validation images).  Then scores the test images once.  M must
be trained already (``python main.py`` trains it).  Records machine, versions and load
average in ``bench/results/trajectory.json``.

Run from the repository root::

    .venv/bin/python bench/bench_trajectory.py [--classset CS5b] [--detector lstm]
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402,F401
import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "trajectory.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--data-dir", default=os.path.join("data", "unmask"))
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--configuration", default="medoid-cosine-lstm",
                   help="the trajectory defense's value, e.g. centroid-l2-mlp")
    p.add_argument("--from-scratch", action="store_true",
                   help="ignore the cached representatives and training features")
    p.add_argument("--out", default=RESULTS, help="JSON output path")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    from evaluation import run as ev
    from evaluation.comparison import Comparison
    from evaluation.config import EvalConfig
    from defense.defenses import build_defense
    from defense.defenses import trajectory as traj_module

    cfg = EvalConfig(class_set=get_class_set(args.classset), data_dir=args.data_dir,
                     checkpoint_dir=args.checkpoint_dir, progress=False)
    if not os.path.isfile(os.path.join(cfg.m_dir, "best.h5")):
        p.error("no trained M in %s: run `python main.py` first" % cfg.m_dir)
    stamps = []
    log = lambda msg: (stamps.append((time.time(), msg)), print(msg))  # noqa: E731
    data = ev.load_data(cfg, log)
    m, _ = ev.get_models(cfg, data, log)
    comparison = Comparison(cfg, data, {"m": m}, log)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = comparison.fit_context(lambda k="standard": None)
        if args.from_scratch:
            ctx.trajectory_cache = (os.path.join(tmp, "m_trajectory"),)
        defense = build_defense("trajectory:" + args.configuration)
        load_before = _machine.load_average()
        start = time.time()
        defense.fit(ctx)
        fit_seconds = time.time() - start
        t0 = time.time()
        scores = defense.score(comparison.images("test"))
        score_seconds = time.time() - t0
    params = defense.params()
    record = {
        "what": "TrajectoryDefense.fit on the default M, %s" % (
            "from an empty cache" if args.from_scratch else
            "with the run's cached representatives and training features"),
        "class_set": cfg.class_set.paper_name, "arch": cfg.arch,
        "configuration": args.configuration,
        "fit_seconds": round(fit_seconds, 1),
        "detector_train_seconds": params["train_seconds"], "detector_target_seconds": 180,
        "test_scoring_seconds": round(score_seconds, 2),
        "test_images": int(len(scores)),
        "n_train_sequences": params["n_train"], "n_val_sequences": params["n_val"],
        "val_macro_auc": params["val_macro_auc"], "best_epoch": params["best_epoch"],
        "train_attacks": params["train_attacks"],
        "max_sources": {k: traj_module.MAX_SOURCES[k] for k in ("train", "val")},
        "log": [[round(t - start, 1), msg] for t, msg in stamps if t >= start],
        "machine": _machine.machine_info(),
        "load_average_before": load_before, "load_average_after": _machine.load_average(),
    }
    write_json_atomic(args.out, record, indent=2)
    print("trajectory fit %.0f s (detector training %.0f s, target <= 180 s); written to %s"
          % (fit_seconds, params["train_seconds"], os.path.relpath(args.out, ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
