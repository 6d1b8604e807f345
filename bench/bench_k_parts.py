"""Seconds per image of model K in the paper's ``parts`` configuration on this machine.

The original configuration -- ResNet-101 FPN, 1024-px square inputs, 44 part classes -- as
the inference graph ``PartExtractor`` uses, with random weights (no download; the cost of a
forward pass does not depend on the weights' values except for the number of detections,
which random weights keep near ``DETECTION_MAX_INSTANCES``).  The paper reports 4 images/s on
one GPU; this records the CPU figure beside it.  Writes ``bench/results/k_parts.json``.

Run from the repository root::

    .venv/bin/python bench/bench_k_parts.py [--images 4] [--batch 1]
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

RESULTS = os.path.join(ROOT, "bench", "results", "k_parts.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    import numpy as np

    from mrcnn_config import get_config
    from models.mrcnn.extractor import PartExtractor, parts_class_names
    from models.mrcnn.model import MaskRCNN

    cfg = get_config("parts", IMAGES_PER_GPU=args.batch)
    start = time.time()
    model = MaskRCNN("inference", cfg, tempfile.mkdtemp(prefix="bench_k_parts_"))
    build_s = time.time() - start
    extractor = PartExtractor(model, parts_class_names())
    rng = np.random.default_rng(0)
    images = rng.random((args.images, 1024, 1024, 3), dtype=np.float32)
    extractor.extract(images[:args.batch])                       # warm-up (first run)
    load_before = _machine.load_average()
    start = time.time()
    for i in range(0, args.images, args.batch):
        extractor.extract(images[i:i + args.batch])
    seconds = time.time() - start
    extractor.close()
    record = {
        "what": "K, parts configuration (ResNet-101 FPN, 1024 px, 44 parts), random weights: "
                "PartExtractor.extract seconds per image on this CPU",
        "images": args.images, "batch": args.batch,
        "seconds_per_image": round(seconds / args.images, 2),
        "images_per_second": round(args.images / seconds, 3),
        "graph_build_seconds": round(build_s, 1),
        "paper_images_per_second_one_gpu": 4,
        "machine": _machine.machine_info(), "load_average_before": load_before,
        "load_average_after": _machine.load_average(),
    }
    write_json_atomic(args.out, record, indent=2)
    print("K parts config: %.2f s/image (%.3f img/s; the paper: 4 img/s on one GPU); "
          "written to %s" % (record["seconds_per_image"], record["images_per_second"],
                             os.path.relpath(args.out, ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
