"""Wall-time benchmark of the default job, ``python main.py --model M --classset CS5b``.

Runs ``main.py`` in a subprocess with fresh result and checkpoint folders (the synthetic data
set in ``--data-dir`` is reused or generated first, outside the timing), so the figure is the
cost of training M, running the 8 attack vectors and writing the report.  Records the wall
time, the machine, the versions, the load average (the machine may be shared) and the run's
headline figures in ``bench/results/model_m.json`` (written atomically).

With ``--fresh-k`` no K is trained either (a new ``--k-log-dir`` in the run's folder), so the
figure is the fresh-clone default job: K, then M, the attacks and the report (goal: 12 min).

Run from the repository root::

    .venv/bin/python bench/bench_model_m.py [--classset CS5b] [--keep DIR] [--fresh-k] [-- main.py options]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "model_m.json")


def run_timed(cmd, out_root, class_set):
    """Run the command; returns (wall seconds, the run's metrics.json)."""
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.time() - start
    out_dir = os.path.join(out_root, "results", class_set.code_name)
    arch = sorted(os.listdir(out_dir))[0]
    with open(os.path.join(out_dir, arch, "metrics.json"), encoding="utf-8") as f:
        return seconds, json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--data-dir", default=os.path.join("data", "unmask"))
    p.add_argument("--keep", metavar="DIR",
                   help="write results/ and checkpoints/ under DIR and keep them (default: a "
                        "temporary folder, removed afterwards); DIR must not hold a run yet")
    p.add_argument("--fresh-k", action="store_true",
                   help="time the fresh-clone default job: no trained K either (a new "
                        "--k-log-dir under the run's folder), so main.py trains K first; "
                        "target 12 minutes")
    p.add_argument("--out", default=RESULTS, help="JSON output path")
    p.add_argument("extra", nargs="*", help="further main.py options (after --)")
    args = p.parse_args(argv)
    cs = get_class_set(args.classset)
    py = sys.executable
    subprocess.run([py, "main.py", "--prepare-data", "--data-dir", args.data_dir], cwd=ROOT,
                   check=True)
    if args.keep and os.path.exists(os.path.join(args.keep, "checkpoints")):
        p.error("--keep %s already holds checkpoints: the timing would reuse them" % args.keep)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.abspath(args.keep or tmp)
        cmd = [py, "main.py", "--model", "M", "--classset", cs.paper_name, "--data-dir",
               args.data_dir, "--results-dir", os.path.join(root, "results"),
               "--checkpoint-dir", os.path.join(root, "checkpoints"), "--no-progress"]
        if args.fresh_k:
            cmd += ["--k-log-dir", os.path.join(root, "k_logs")]
        load_before = _machine.load_average()
        seconds, metrics = run_timed(cmd + args.extra, root, cs)
    record = {
        "command": _machine.record_command(["python", "main.py", "--model", "M", "--classset",
                                            cs.paper_name] + list(args.extra)),
        "k_trained_in_the_run": bool(args.fresh_k),
        "wall_seconds": round(seconds, 1), "target_seconds": 720 if args.fresh_k else 1200,
        "machine": _machine.machine_info(),
        "load_average_before": load_before, "load_average_after": _machine.load_average(),
        "metrics": metrics,
    }
    record = _machine.relative_paths(record, roots=(root,))  # repository-relative paths only
    write_json_atomic(args.out, record, indent=2)
    print("%s: %.0f s (target <= %d s); written to %s" % (
        record["command"], seconds, record["target_seconds"], args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
