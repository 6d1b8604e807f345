"""Benchmark of model K: training time and mask mAP, inference images/s and memory over time.

Usage (from the repository root)::

    python bench/bench_model_k.py --train            # time `python main.py --model K`, measure
    python bench/bench_model_k.py                    # measure the last checkpoint only
    python bench/bench_model_k.py --images 1000 --batch 8

``--train`` runs the synthetic default command ``python main.py --model K --k-retrain`` in a
subprocess and times it end to end (data generation when the data set is missing, training in
stages, evaluation on the test split): the figure the issue's 20-minute target is about.

Writes ``bench/results/model_k.json`` (atomically) with: the machine, versions and load, the
command's wall time and training minutes, the evaluation of the test split (COCO mask/box
mAP@[.5:.95] and @.5, matterport mAP@.5), the extractor's images/s at the given batch size,
and the resident memory sampled while K answers ``--images`` images (flat memory = the graph
is built once and reused).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402

tfcompat.import_tf()

import numpy as np  # noqa: E402

import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from evaluation import model_k as cli  # noqa: E402
from models.mrcnn.extractor import PartExtractor  # noqa: E402


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 when unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def load_test_images(data_dir: str, split: str = "test") -> list:
    """RGB images in [0, 1] of a split of the parts data set."""
    ds = cli.load_parts_dataset(data_dir, split)
    return [ds.load_image(i).astype(np.float32) / 255.0 for i in ds.image_ids]


def bench_extractor(extractor: PartExtractor, images: list, n_images: int, batch: int) -> dict:
    """images/s of ``extract`` in batches and RSS samples every ~100 images."""
    extractor.extract(images[:batch])  # warm-up: callables are created once
    samples, done, seconds = [], 0, 0.0
    next_sample = 0
    while done < n_images:
        chunk = [images[(done + i) % len(images)] for i in range(min(batch, n_images - done))]
        t0 = time.perf_counter()
        extractor.extract(chunk)
        seconds += time.perf_counter() - t0
        done += len(chunk)
        if done >= next_sample:
            samples.append({"images": done, "rss_mb": round(rss_mb(), 1)})
            next_sample += 100
    first = samples[min(1, len(samples) - 1)]["rss_mb"]
    return {"images": done, "batch_size": batch, "seconds": round(seconds, 2),
            "images_per_second": round(done / max(seconds, 1e-9), 2), "rss_samples": samples,
            "rss_growth_mb_after_warmup": round(samples[-1]["rss_mb"] - first, 1)}


def relative_eval_record(results_dir: str) -> None:
    """Rewrite ``<results_dir>/eval_test.json`` (written by the evaluation) with paths
    relative to the repository, as every record of the benchmark."""
    path = os.path.join(results_dir, "eval_test.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        write_json_atomic(path, _machine.relative_paths(record), indent=1)


def train_by_command(args) -> dict:
    """Run ``python main.py --model K --k-retrain`` and time it; returns the record and the
    evaluation metrics the command wrote."""
    data_ready = os.path.isdir(os.path.join(args.data_dir, "VOC2010"))
    results_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), "model_k")
    cmd = [sys.executable, "main.py", "--model", "K", "--k-retrain", "--data-dir", args.data_dir,
           "--k-log-dir", args.log_dir, "--k-results-dir", results_dir, "--no-progress"]
    if args.k_epochs:
        cmd += ["--k-epochs", args.k_epochs]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.time() - start
    with open(os.path.join(results_dir, "eval_test.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    run_dir = os.path.join(ROOT, os.path.dirname(metrics["checkpoint"]))  # the command's cwd
    with open(os.path.join(run_dir, "train_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    record = {"command": _machine.record_command(cmd),
              "command_minutes": round(seconds / 60, 2), "target_minutes": 20,
              "data_set_generated_by_the_command": not data_ready,
              "train_minutes": round(summary["seconds"] / 60, 2),
              "train_epochs": len(summary["history"])}
    return record, metrics


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR)
    p.add_argument("--log-dir", default=cli.DEFAULT_LOG_DIR)
    p.add_argument("--checkpoint", default="last")
    p.add_argument("--train", action="store_true",
                   help="first time `python main.py --model K --k-retrain` (trains anew)")
    p.add_argument("--k-epochs", default=None, help="epochs per stage (see main.py)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="bench/results/model_k.json")
    args = p.parse_args(argv)
    report = {"config": "synthetic", "machine": _machine.machine_info(),
              "load_average_before": _machine.load_average()}
    checkpoint = args.checkpoint
    if args.train:
        record, metrics = train_by_command(args)
        report.update(record)
        checkpoint = metrics["checkpoint"]
    else:
        from data.synthetic import ensure_dataset
        ensure_dataset(args.data_dir, seed=0)
        metrics = cli.evaluate_model_k(
            args.data_dir, "synthetic", checkpoint, "test", args.log_dir, batch_size=args.batch,
            results_dir=os.path.join(os.path.dirname(args.out) or ".", "model_k"))
    relative_eval_record(os.path.join(os.path.dirname(os.path.abspath(args.out)), "model_k"))
    report["eval"] = {k: metrics[k] for k in ("matterport_mAP50", "images", "images_per_second",
                                              "batch_size", "checkpoint")}
    report["eval"]["segm"] = {k: metrics["segm"][k] for k in ("mAP", "mAP50", "mAP75")}
    report["eval"]["bbox"] = {k: metrics["bbox"][k] for k in ("mAP", "mAP50", "mAP75")}
    extractor = PartExtractor.from_checkpoint(checkpoint, model_dir=args.log_dir,
                                              batch_size=args.batch)
    try:
        report["extractor"] = bench_extractor(extractor, load_test_images(args.data_dir),
                                              args.images, args.batch)
    finally:
        extractor.close()
    report["load_average_after"] = _machine.load_average()
    report = _machine.relative_paths(report)  # no absolute path of this machine is recorded
    write_json_atomic(args.out, report, indent=1)
    print(cli.format_metrics(metrics))
    if "command_minutes" in report:
        print("%s: %.1f min (target <= 20)" % (report["command"], report["command_minutes"]))
    print("extractor: %.1f images/s at batch %d; RSS growth %.1f MiB over %d images"
          % (report["extractor"]["images_per_second"], args.batch,
             report["extractor"]["rss_growth_mb_after_warmup"], report["extractor"]["images"]))
    return report


if __name__ == "__main__":
    main()
