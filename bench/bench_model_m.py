"""Wall-time benchmark of the default job, ``python main.py --model M --classset CS5b``.

Runs ``main.py`` in a subprocess with fresh result and checkpoint folders (the synthetic data
set in ``--data-dir`` is reused or generated first, outside the timing), so the figure is the
cost of training M, running the 8 attack vectors and writing the report.  Records the wall
time, the machine, the versions, the load average (the machine may be shared) and the run's
headline figures in ``bench/results/model_m.json`` (written atomically).

Run from the repository root::

    .venv/bin/python bench/bench_model_m.py [--classset CS5b] [-- extra main.py options]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.fileio import write_json_atomic  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "model_m.json")


def _versions():
    out = {"python": platform.python_version()}
    for name in ("tensorflow", "tf-keras", "cleverhans", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--data-dir", default=os.path.join("data", "unmask"))
    p.add_argument("extra", nargs="*", help="further main.py options (after --)")
    args = p.parse_args(argv)
    cs = get_class_set(args.classset)
    py = sys.executable
    subprocess.run([py, "main.py", "--prepare-data", "--data-dir", args.data_dir], cwd=ROOT,
                   check=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [py, "main.py", "--model", "M", "--classset", cs.paper_name, "--data-dir",
               args.data_dir, "--results-dir", os.path.join(tmp, "results"),
               "--checkpoint-dir", os.path.join(tmp, "ckpt"), "--no-progress"] + args.extra
        load_before = os.getloadavg()
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        seconds = time.time() - start
        out_dir = os.path.join(tmp, "results", cs.code_name)
        arch = os.listdir(out_dir)[0]
        with open(os.path.join(out_dir, arch, "metrics.json")) as f:
            metrics = json.load(f)
    record = {
        "command": "python main.py --model M --classset %s %s" % (cs.paper_name,
                                                                  " ".join(args.extra)),
        "wall_seconds": round(seconds, 1), "target_seconds": 1200,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "versions": _versions()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "metrics": metrics,
    }
    write_json_atomic(RESULTS, record, indent=2)
    print("%s: %.0f s (target <= 1200 s); written to %s" % (record["command"], seconds, RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
