"""Benchmark of the synthetic data set: generation time, size on disk and file counts.

Usage (from the repository root)::

    python bench/bench_data.py                 # default config, seed 0, default workers
    python bench/bench_data.py --workers 1 --keep /tmp/unmask_bench

Generates the default synthetic UnMask data set (``data.synthetic.generate_dataset``, default
``SyntheticConfig``) into a temporary folder, and writes ``bench/results/data.json``
(atomically) with: the machine, versions and load average before and after, the wall time of
the generation, the total bytes on disk, and the file counts per part of the layout (K's
images and annotations per split, M's images per class set and split).  The temporary folder
is deleted afterwards unless ``--keep`` names a folder to generate into instead.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from data.fileio import read_json, write_json_atomic  # noqa: E402
from data.knowledge import CLASS_SETS  # noqa: E402
from data.synthetic import SPLITS, SyntheticConfig, generate_dataset  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "data.json")
PACKAGES = ("numpy", "pillow", "pycocotools", "matplotlib")


def bytes_on_disk(root: str) -> int:
    """Total size in bytes of the files under ``root``."""
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _dirs, files in os.walk(root) for name in files)


def count_files(folder: str) -> int:
    """Number of files anywhere under ``folder`` (0 when it does not exist)."""
    return sum(len(files) for _folder, _dirs, files in os.walk(folder))


def k_counts(root: str) -> dict:
    """K's pool per split: image files and the images/annotations of its COCO file."""
    out = {}
    for split in SPLITS:
        coco = read_json(os.path.join(root, "VOC2010", split + ".json"))
        out[split] = {"image_files": count_files(os.path.join(root, "VOC2010", "Images", split)),
                      "coco_images": len(coco["images"]),
                      "annotations": len(coco["annotations"])}
    return out


def m_counts(root: str) -> dict:
    """M's image files per class set and split (``<code>/<split>/<class>/*.jpg``)."""
    return {cs.code_name: {split: count_files(os.path.join(root, cs.code_name, split))
                           for split in SPLITS} for cs in CLASS_SETS}


def measure(data_dir: str, seed: int, workers) -> dict:
    """Generate the default data set into ``data_dir`` and describe what was written."""
    load_before = _machine.load_average()
    start = time.perf_counter()
    generate_dataset(data_dir, seed=seed, config=SyntheticConfig(), workers=workers,
                     log=lambda _message: None)
    seconds = time.perf_counter() - start
    return {"seed": seed, "workers": workers, "config": SyntheticConfig().as_dict(),
            "wall_seconds": round(seconds, 2), "load_before": load_before,
            "load_after": _machine.load_average(), "bytes_on_disk": bytes_on_disk(data_dir),
            "files_total": count_files(data_dir), "k": k_counts(data_dir),
            "m": m_counts(data_dir)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed of the data set")
    p.add_argument("--workers", type=int, default=None,
                   help="rendering processes (default: the generator's, min(2, CPUs))")
    p.add_argument("--keep", default=None,
                   help="generate into this folder (must not exist) and keep it")
    p.add_argument("--out", default=DEFAULT_OUT, help="where the JSON result is written")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    scratch = None if args.keep else tempfile.mkdtemp(prefix="bench_data_")
    data_dir = args.keep or os.path.join(scratch, "unmask")
    try:
        result = {"benchmark": "synthetic data set generation",
                  "machine": _machine.machine_info(_machine.DEFAULT_PACKAGES + PACKAGES),
                  "data": measure(data_dir, args.seed, args.workers)}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result = _machine.relative_paths(result, roots=(data_dir,))  # repository-relative paths
    write_json_atomic(args.out, result, indent=1)
    print("generated in %.1f s, %.1f MB in %d files; written to %s"
          % (result["data"]["wall_seconds"], result["data"]["bytes_on_disk"] / 1e6,
             result["data"]["files_total"], args.out))
    return result


if __name__ == "__main__":
    main()
