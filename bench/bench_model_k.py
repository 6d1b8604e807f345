"""Benchmark of model K: training time and mask mAP, inference images/s and memory over time.

Usage (from the repository root)::

    python bench/bench_model_k.py --train            # train the synthetic default, then measure
    python bench/bench_model_k.py                    # measure the last checkpoint only
    python bench/bench_model_k.py --images 1000 --batch 8

Writes ``bench/results/model_k.json`` (atomically) with: training minutes and the evaluation
of the test split (COCO mask/box mAP@[.5:.95] and @.5, matterport mAP@.5), the extractor's
images/s at the given batch size, and the resident memory sampled while K answers
``--images`` images (flat memory = the graph is built once and reused).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfcompat  # noqa: E402

tfcompat.import_tf()

import numpy as np  # noqa: E402

from data.fileio import write_json_atomic  # noqa: E402
from models.mrcnn import cli  # noqa: E402
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=cli.DEFAULT_DATA_DIR)
    p.add_argument("--log-dir", default=cli.DEFAULT_LOG_DIR)
    p.add_argument("--checkpoint", default="last")
    p.add_argument("--train", action="store_true", help="train the synthetic default first")
    p.add_argument("--k-epochs", default=None, help="epochs per stage (see main.py)")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="bench/results/model_k.json")
    args = p.parse_args(argv)
    from data.synthetic import ensure_dataset
    ensure_dataset(args.data_dir, seed=0)
    report = {"config": "synthetic"}
    checkpoint = args.checkpoint
    if args.train:
        t0 = time.time()
        trained = cli.train_model_k(args.data_dir, "synthetic", "none", args.k_epochs,
                                    args.log_dir)
        report["train_minutes"] = round((time.time() - t0) / 60, 2)
        report["train_epochs"] = len(trained["history"])
        checkpoint = trained["checkpoint"]
    metrics = cli.evaluate_model_k(args.data_dir, "synthetic", checkpoint, "test", args.log_dir,
                                   batch_size=args.batch,
                                   results_dir=os.path.join(os.path.dirname(args.out) or ".",
                                                            "model_k"))
    report["eval"] = {k: metrics[k] for k in ("matterport_mAP50", "images", "images_per_second",
                                              "checkpoint")}
    report["eval"]["segm"] = {k: metrics["segm"][k] for k in ("mAP", "mAP50", "mAP75")}
    report["eval"]["bbox"] = {k: metrics["bbox"][k] for k in ("mAP", "mAP50", "mAP75")}
    extractor = PartExtractor.from_checkpoint(checkpoint, model_dir=args.log_dir,
                                              batch_size=args.batch)
    try:
        report["extractor"] = bench_extractor(extractor, load_test_images(args.data_dir),
                                              args.images, args.batch)
    finally:
        extractor.close()
    report["cpu_count"] = os.cpu_count()
    write_json_atomic(args.out, report, indent=1)
    print(cli.format_metrics(metrics))
    print("extractor: %.1f images/s at batch %d; RSS growth %.1f MiB over %d images"
          % (report["extractor"]["images_per_second"], args.batch,
             report["extractor"]["rss_growth_mb_after_warmup"], report["extractor"]["images"]))
    return report


if __name__ == "__main__":
    main()
