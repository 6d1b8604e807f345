"""The numbers held fixed: a small fixed configuration -- a grid of one pair with every kind of
defense (none, at, unmask with the oracle, a transform, the trajectory detector) under the
gray-box and the adaptive threat models, on a tiny synthetic data set -- gives the recorded
``metrics.json``, ``bench.csv`` and ``grid.json`` byte for byte, timings aside (the files hold
no absolute path) and every number compared to 6 significant digits: CPUs of one kind differ
in the last digits of a trained network's outputs (the trajectory detector's threshold came
out 0.6179232918 on one machine and 0.6179228204 on another, from the same code).

The recorded files are in ``tests/evaluation/golden/``; after a deliberate change of the
numbers, write them anew with ``python tests/evaluation/test_golden.py tests/evaluation/golden``
(from the repository) and say why in the commit.
"""
import os
import re
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
#: (recorded name, file of the run relative to its results folder)
FILES = (("metrics.json", os.path.join("cs3-1", "vgg16", "metrics.json")),
         ("bench.csv", os.path.join("cs3-1", "vgg16", "bench.csv")),
         ("grid.json", os.path.join("grid", "grid.json")),
         ("grid_bench.csv", os.path.join("grid", "bench.csv")))
#: Sources of the trajectory detector's training attacks (the default 300 / 150 would attack
#: every correctly classified image of the tiny data set, for no other number).
SOURCES = {"train": 12, "val": 6, "test": None}

pytestmark = pytest.mark.slow


def run_golden(root: str) -> dict:
    """Run the fixed configuration in ``root``; returns recorded name -> file text with the
    timings masked."""
    sys.path.insert(0, os.path.dirname(HERE))          # tests/, for toys
    import tfcompat  # noqa: F401
    from data.knowledge import get_class_set
    from defense.defenses import trajectory
    from evaluation import grid
    from evaluation.config import EvalConfig
    from models.train_classifier import TrainConfig
    from toys import tiny_unmask

    data = os.path.join(root, "unmask")
    if not os.path.isdir(data):
        tiny_unmask(data, seed=3, per_class=(24, 6, 4))
    cfg = EvalConfig(
        class_set=get_class_set("CS3a"), data_dir=data, arch="vgg16", input_size=32,
        train=TrainConfig(epochs=6, batch_size=8, learning_rate=0.003),
        vectors=(("pgd_linf", 16), ("fgsm", 8)), n_test=9, attack_batch=4, adaptive_batch=4,
        defenses=("none", "at", "unmask", "bitdepth:3", "trajectory"),
        threats=("gray-box", "adaptive"), adaptive_steps=3, adaptive_restarts=1,
        adaptive_targets=1, extractor="oracle", target_fpr=0.3,
        results_dir=os.path.join(root, "results"), checkpoint_dir=os.path.join(root, "ckpt"),
        k_log_dir=os.path.join(root, "klogs"), progress=False)
    saved = trajectory.MAX_SOURCES
    trajectory.MAX_SOURCES = SOURCES
    try:
        grid.run_grid(cfg, ["vgg16"], ["cs3-1"], log=lambda s: None)
    finally:
        trajectory.MAX_SOURCES = saved
    out = {}
    for name, path in FILES:
        with open(os.path.join(root, "results", path), encoding="utf-8") as f:
            out[name] = masked(f.read(), root)
    return out


def masked(text: str, root: str) -> str:
    """``text`` with its timings (``"seconds": 1.5``, ``"train_seconds": 6.7``) and the run's
    folder replaced by fixed marks."""
    text = re.sub(r'("\w*seconds"): -?[0-9.e+-]+', r'\1: "<time>"', text)
    return text.replace(os.path.abspath(root), "<root>")


#: A number of the recorded files: compared at this many significant digits.
DIGITS = 6
_NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?")


def comparable(text: str) -> str:
    """``text`` with every decimal number rounded to :data:`DIGITS` significant digits."""
    return _NUMBER.sub(lambda m: "%.*g" % (DIGITS, float(m.group(0))), text)


def test_the_fixed_configuration_gives_the_recorded_files(tmp_path):
    got = run_golden(str(tmp_path))
    for name, _ in FILES:
        with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
            want = f.read()
        assert comparable(got[name]) == comparable(want), (
            "%s differs from tests/evaluation/golden/%s" % (name, name))


def test_numbers_are_compared_at_six_significant_digits():
    assert comparable('"threshold": 0.6179232918394397') == comparable(
        '"threshold": 0.617922820417118')
    assert comparable('"acc": 0.5') != comparable('"acc": 0.5001')
    assert comparable("acc,0.25,12") == "acc,0.25,12"


if __name__ == "__main__":      # python tests/evaluation/test_golden.py OUT_DIR [WORK_DIR]
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))      # the repository
    os.makedirs(sys.argv[1], exist_ok=True)
    work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="golden-")
    for file_name, text in run_golden(work).items():
        with open(os.path.join(sys.argv[1], file_name), "w", encoding="utf-8") as f:
            f.write(text)
    print("wrote %s (run in %s)" % (", ".join(n for n, _ in FILES), work))
