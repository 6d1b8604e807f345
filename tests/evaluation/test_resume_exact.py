"""A run killed with SIGKILL and restarted gives the uninterrupted run's ``metrics.json``,
byte for byte.

One tiny run of ``main.py`` (M trained for 3 epochs, two attack vectors, two defenses) is
run once straight through, and once killed -- ``kill -9``, no clean-up -- at four points in a
row, each restart resuming the previous one: during M's training (after an epoch's
checkpoint), during the attacks (after the first saved vector), during the defenses'
observations and while the reports are written.  Both runs use the same relative paths from
their own working folders, so any difference in the file is a difference in the numbers.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from data.synthetic import MANIFEST, SyntheticConfig, generate_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--model", "M", "--classset", "CS3a", "--data-dir", os.path.join("..", "data"),
        "--input-size", "32", "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
        "--attacks", "pgd_linf:8,fgsm:8", "--n-test", "9", "--extractor", "oracle",
        "--defenses", "none,unmask", "--results-dir", "results",
        "--checkpoint-dir", "ckpt", "--no-progress"]
M_DIR = os.path.join("ckpt", "model_m", "cs3-1", "mobilenetv2_050_32_bs16_lr0.01")
OUT = os.path.join("results", "cs3-1", "mobilenetv2_050")
TIMEOUT = 600


def _start(cwd):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + ARGS, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out[-3000:]
    return out


def _epoch_saved(cwd):
    path = os.path.join(cwd, M_DIR, "state.json")
    try:
        with open(path) as f:
            return '"epoch": 2' in f.read()
    except OSError:
        return False


def _first_attack_saved(cwd):
    folder = os.path.join(cwd, OUT, "vectors", "attacks", "m")
    return os.path.isdir(folder) and any(f.startswith("test-") for f in os.listdir(folder))


def _observation_saved(cwd):
    folder = os.path.join(cwd, OUT, "vectors", "defenses", "unmask")
    return os.path.isdir(folder) and any(f.endswith(".json") for f in os.listdir(folder))


def _report_started(cwd):
    return os.path.exists(os.path.join(cwd, OUT, "metrics.json"))


def _kill_when(cwd, ready):
    """Start a run in ``cwd`` and SIGKILL it as soon as ``ready(cwd)``; returns whether it
    was killed (False: it finished first)."""
    proc = _start(cwd)
    deadline = time.time() + TIMEOUT
    while proc.poll() is None and time.time() < deadline:
        if ready(cwd):
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return True
        time.sleep(0.02)
    _finish(proc)
    return False


@pytest.mark.slow
def test_kill_9_at_four_points_then_resume_gives_the_same_metrics(tmp_path):
    generate_dataset(str(tmp_path / "data"), seed=0, config=SyntheticConfig(
        image_size=64, k_images=(2, 1, 1), m_images_per_class=(16, 6, 6)), workers=1,
        log=lambda s: None)
    # without its manifest the folder reads as real data in the original layout, which
    # main.py takes as it is (a synthetic set must have the default sizes)
    os.remove(str(tmp_path / "data" / MANIFEST))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    _finish(_start(straight))
    reference = (straight / OUT / "metrics.json").read_bytes()

    kills = [_kill_when(killed, ready) for ready in (_epoch_saved, _first_attack_saved,
                                                     _observation_saved, _report_started)]
    print("killed at: training %s, attacks %s, observations %s, reports %s" % tuple(kills))
    assert all(kills[:3]), "a run finished before the point it was to be killed at"
    _finish(_start(killed))
    assert (killed / OUT / "metrics.json").read_bytes() == reference
    assert sorted(os.listdir(killed / OUT)) == sorted(os.listdir(straight / OUT))
    # the weights too
    for name in ("best.h5", "last.h5"):
        a, b = (d / M_DIR / name for d in (straight, killed))
        assert _h5_arrays(a) == _h5_arrays(b), name
    leftovers = [f for d, _, fs in os.walk(killed) for f in fs if f.endswith((".tmp", ".next"))]
    assert not leftovers


def _h5_arrays(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()].tobytes())
                     if isinstance(obj, h5py.Dataset) else None)
    return out
