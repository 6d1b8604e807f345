"""Seconds a run's report page adds: ``report.html`` rebuilt from a finished run's folder.

Times :func:`evaluation.report.writer.write_page` (what ``--report`` runs and every run runs at
its end, after writing ``run.json``) ``--repeats`` times on ``--run-dir`` and records the
median, the part of it spent building K (the only model the page loads, for the few images
shown), the page's size and its images.  ``--run-log`` adds the line the run itself printed
(``wrote .../report.html (N s)``, run.json included).  Writes ``bench/results/page.json``.

Run from the repository root::

    .venv/bin/python bench/bench_page.py --run-dir results/cs5-2/mobilenetv2_050 [--run-log LOG]
"""
import argparse
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402,F401
import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "page.json")


def _in_run_seconds(log_path):
    """Seconds of the page in the run's own log line, and the run's total (None if absent)."""
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    page = re.search(r"wrote \S*report\.html \(([\d.]+) s\)", text)
    total = re.findall(r"^wrote \d+ files in \S+ \((\d+) s[;)]", text, re.M)
    return (float(page.group(1)) if page else None, float(total[-1]) if total else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--run-log")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    from evaluation.report import gallery, writer
    from evaluation.store.run_folder import RunFolder

    folder = RunFolder(args.run_dir)
    load_before = _machine.load_average()
    start = time.time()
    source = gallery.parts_source(folder)
    k_seconds = time.time() - start
    if hasattr(source, "close"):
        source.close()
    times = []
    for _ in range(args.repeats):
        start = time.time()
        path = writer.write_page(args.run_dir, log=lambda s: None)
        times.append(time.time() - start)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    record = {
        "what": "report.html of a finished run rebuilt from its folder "
                "(evaluation.report.writer.write_page: what --report runs and every run runs at "
                "its end): median seconds, the part spent building K for the gallery's images, "
                "the page's size",
        "command": _machine.record_command(sys.argv),
        "run": {"extractor": folder.metrics["extractor"], "test_images": folder.n_test,
                "vectors": len(folder.metrics["attacks"]),
                "defenses": list(folder.metrics.get("defenses", {}))},
        "seconds_median": round(statistics.median(times), 2),
        "seconds_each": [round(t, 2) for t in times],
        "k_build_seconds": round(k_seconds, 2),
        "page_megabytes": round(os.path.getsize(path) / 1e6, 2),
        "images_on_page": text.count("<img "),
        "machine": _machine.machine_info(),
        "load_average_before": load_before, "load_average_after": _machine.load_average()}
    if args.run_log:
        in_run, total = _in_run_seconds(args.run_log)
        record.update(in_run_seconds=in_run, run_seconds=total)
    write_json_atomic(args.out, _machine.relative_paths(record, roots=(args.run_dir,)),
                      indent=2)
    print(record["seconds_median"], "s median;", record["k_build_seconds"], "s of K;",
          record["page_megabytes"], "MB ->", args.out)


if __name__ == "__main__":
    main()
