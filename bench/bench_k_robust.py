"""The robust K beside the standard one (issue 18): training cost, and mask mAP@.5 and part-set
F1 on clean test images and under PGD on K's own training losses at 4/255 and 8/255.

Usage (from the repository root, after ``python main.py --model K`` and
``python main.py --model K --adv-train``)::

    .venv/bin/python bench/bench_k_robust.py [--steps 10] [--limit N]

Training cost, two ways: ``training`` is read from each K's own training run (the median gap
between consecutive checkpoints' modification times, one checkpoint per epoch; the two runs
may have met different loads), and ``step_timing`` measures seconds per training step of both
in this process, in alternating rounds -- the ratio to quote.  The evaluation runs
:func:`evaluation.model_k.evaluate_model_k` with the attack of
:mod:`models.mrcnn.robustness` (PGD, ``--steps`` steps, random start, seeded) on both.

Writes ``bench/results/k_robust.json`` (atomically; paths relative to the repository).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import _machine  # noqa: E402
from data.fileio import read_json, write_json_atomic  # noqa: E402
from evaluation import model_k as cli  # noqa: E402
from evaluation.options import ROBUST_K_DIRS  # noqa: E402
from models.mrcnn.adversarial import KAdversarialSettings  # noqa: E402
from models.mrcnn.model import find_last_checkpoint  # noqa: E402
from mrcnn_config import get_config  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "k_robust.json")


def training_cost(checkpoint: str) -> dict:
    """Epochs, median seconds per epoch and the training's span (first to last checkpoint,
    plus one epoch) from the modification times of a run's per-epoch checkpoints."""
    folder = os.path.dirname(checkpoint)
    prefix = os.path.basename(checkpoint).rsplit("_", 1)[0]
    files = sorted(glob.glob(os.path.join(folder, prefix + "_*.h5")))
    times = np.array([os.path.getmtime(f) for f in files])
    gaps = np.diff(times)
    if len(gaps) == 0:
        raise ValueError("%s: one checkpoint only, no epoch time to measure" % folder)
    epoch = float(np.median(gaps))
    return {"epochs": len(files), "seconds_per_epoch": round(epoch, 1),
            "minutes": round(float(times[-1] - times[0] + epoch) / 60.0, 1),
            "adv_train": read_json(os.path.join(folder, "config.json")).get("ADV_TRAIN")}


def step_times(data_dir: str, steps: int, rounds: int) -> dict:
    """Seconds per training step of the synthetic K, standard and adversarially trained
    (the default ``--k-adv-*``), measured in this process: the same data, model size and
    batches, ``rounds`` alternating rounds of ``steps`` steps after one warm-up epoch each."""
    import tempfile

    from data.coco_parts import load_parts_dataset
    from models.mrcnn.adversarial import KAdversary
    from models.mrcnn.model import MaskRCNN
    ds = load_parts_dataset(data_dir, "train")
    cfg = get_config("synthetic", VALIDATION_STEPS=0)
    times = {"standard": [], "robust": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for kind in times:
            model = MaskRCNN("training", cfg, os.path.join(tmp, kind), seed=0)
            if kind == "robust":
                model.trainer.adversary = KAdversary(model, KAdversarialSettings())
            model.train(ds, None, cfg.LEARNING_RATE, 1, "all", progress=False,
                        steps_per_epoch=5)                               # warm-up
            models[kind] = model
        try:
            for _ in range(rounds):
                for kind, model in models.items():
                    start = time.perf_counter()
                    model.train(ds, None, cfg.LEARNING_RATE, model.epoch + 1, "all",
                                progress=False, steps_per_epoch=steps)
                    times[kind].append((time.perf_counter() - start) / steps)
        finally:
            for model in models.values():
                model.close()
    out = {kind: round(float(np.median(v)), 3) for kind, v in times.items()}
    return {"seconds_per_step": out, "rounds": times, "steps_per_round": steps,
            "ratio": round(out["robust"] / out["standard"], 2)}


def summary(metrics: dict) -> dict:
    """The figures of one evaluation the README quotes."""
    def row(m):
        return {"mask_mAP50": round(m["segm"]["mAP50"], 4),
                "box_mAP50": round(m["bbox"]["mAP50"], 4),
                "part_set_f1": round(m["part_sets"]["f1_micro"], 4),
                "part_set_f1_per_image": round(m["part_sets"]["f1_samples"], 4)}
    out = {"clean": row(metrics)}
    for eps, m in metrics.get("under_attack", {}).items():
        out["pgd_%s" % eps] = dict(row(m), max_linf=m["attack"]["max_linf"])
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the evaluation")
    parser.add_argument("--eps", default="4,8", help="budgets, 0-255 scale")
    parser.add_argument("--limit", type=int, default=None, help="test images (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-rounds", type=int, default=3,
                        help="alternating rounds of the training-step timing (0: skip it)")
    parser.add_argument("--steps-per-round", type=int, default=30)
    parser.add_argument("--timing-only", action="store_true",
                        help="only the training-step timing (keep the recorded evaluation)")
    args = parser.parse_args(argv)
    if args.step_rounds < 0 or args.steps_per_round < 1:
        parser.error("--step-rounds must be >= 0 and --steps-per-round >= 1")
    if args.timing_only and not args.step_rounds:
        parser.error("--timing-only needs --step-rounds >= 1")
    if args.timing_only:
        report = read_json(RESULTS)
        report["step_timing"] = step_times(args.data_dir, args.steps_per_round,
                                           args.step_rounds)
        report["step_timing"]["load_average"] = _machine.load_average()
        write_json_atomic(RESULTS, _machine.relative_paths(report), indent=1)
        print(report["step_timing"])
        return report
    standard_cfg = get_config("synthetic")
    robust_cfg = cli.robust_config(standard_cfg, KAdversarialSettings())
    kinds = {"standard": (standard_cfg, cli.DEFAULT_LOG_DIR),
             "robust": (robust_cfg, ROBUST_K_DIRS["k_log_dir"])}
    report = {"machine": _machine.machine_info(), "load_average_before": _machine.load_average(),
              "attack": {"name": "pgd_linf on K's training losses", "steps": args.steps,
                         "eps": args.eps, "random_start": True, "seed": args.seed},
              "models": {}}
    for kind, (cfg, log_dir) in kinds.items():
        checkpoint = find_last_checkpoint(log_dir, cfg.NAME, cfg)
        start = time.time()
        metrics = cli.evaluate_model_k(
            args.data_dir, cfg, checkpoint, "test", log_dir, args.limit,
            results_dir=os.path.join(ROOT, "bench", "results", "model_k_%s" % kind),
            attack_eps=cli.parse_attack_eps(args.eps), attack_steps=args.steps,
            seed=args.seed)
        report["models"][kind] = {"checkpoint": checkpoint, "images": metrics["images"],
                                  "training": training_cost(checkpoint),
                                  "evaluation_seconds": round(time.time() - start, 1),
                                  **summary(metrics)}
        print(kind, report["models"][kind])
    cost = {k: v["training"]["seconds_per_epoch"] for k, v in report["models"].items()}
    report["training_time_ratio_from_runs"] = round(cost["robust"] / cost["standard"], 2)
    if args.step_rounds:
        report["step_timing"] = step_times(args.data_dir, args.steps_per_round,
                                           args.step_rounds)
    elif os.path.isfile(RESULTS) and "step_timing" in read_json(RESULTS):
        report["step_timing"] = read_json(RESULTS)["step_timing"]     # kept as measured
    report["load_average_after"] = _machine.load_average()
    write_json_atomic(RESULTS, _machine.relative_paths(report), indent=1)
    print("wrote %s; robust / standard: %.2f per epoch of their runs, %s per step measured "
          "together" % (os.path.relpath(RESULTS, ROOT), report["training_time_ratio_from_runs"],
                        report.get("step_timing", {}).get("ratio")))
    return report


if __name__ == "__main__":
    main()
