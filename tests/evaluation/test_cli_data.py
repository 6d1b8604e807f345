"""Command-line tests of main.py's data commands (run as a user would, in a subprocess):
--describe-classsets, class-set name validation, --prepare-data on existing folders, --help.

None of these generate the full default data set: --prepare-data is only run on folders that
already hold something (a small synthetic data set of another seed/size, real-data layout,
foreign files), which must be reused or refused, never overwritten.
"""
import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.fileio import read_json, write_json_atomic
from data.knowledge import CLASS_SETS, class_set_names, class_set_summary
from data.synthetic import SyntheticConfig, generate_dataset

ROOT = Path(__file__).resolve().parents[2]


def run_main(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "main.py")] + [str(a) for a in args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tree_state(root):
    """{relative path: (sha256, mtime_ns)} of every file under ``root``."""
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (digest, os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A tiny synthetic data set made with seed 7 and a small config, so it does not match
    what ``main.py --prepare-data`` asks for (default config, seed 0 or 7)."""
    path = str(tmp_path_factory.mktemp("cli") / "unmask")
    generate_dataset(path, seed=7, workers=1, log=lambda _m: None,
                     config=SyntheticConfig(image_size=48, k_images=(2, 1, 1),
                                            m_images_per_class=(1, 1, 1)))
    return path


# ----------------------------------------------------------------------------- class sets

# Table II computed from the class-feature map: shared/distinct parts and the overlap as
# printed (three decimals), next to the paper's printed value (two decimals, truncated or
# rounded as the paper has it).
EXPECTED_TABLE_II = {"cs3-1": ("2/29", "6.897%", "6.89%"), "cs3-2": ("9/18", "50.000%", "50.00%"),
                     "cs5-1": ("8/34", "23.529%", "23.53%"),
                     "cs5-2": ("10/34", "29.412%", "29.41%")}


def test_describe_classsets_prints_table_ii():
    proc = run_main("--describe-classsets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for cs in CLASS_SETS:
        rows = [line for line in lines if line.split()[:2] == [cs.paper_name, cs.code_name]]
        assert len(rows) == 1, (cs, proc.stdout)
        row = rows[0]
        fraction, computed, paper = EXPECTED_TABLE_II[cs.code_name]
        assert row.split()[-3:] == [fraction, computed, paper], row
        n_distinct = int(fraction.split("/")[1])
        assert re.search(r"\b%d\s+%s\b" % (n_distinct, re.escape(fraction)), row), row
        assert all(c in row for c in cs.classes)
        shared = len(class_set_summary(cs).shared_parts)
        assert "%d/%d" % (shared, n_distinct) == fraction  # the library agrees with the CLI


@pytest.mark.slow
def test_describe_classsets_distinct_counts():
    proc = run_main("--describe-classsets", "--classset", "cs3-1")
    assert proc.returncode == 0, proc.stderr
    counts = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        for cs in CLASS_SETS:
            if fields[:2] == [cs.paper_name, cs.code_name]:
                counts[cs.code_name] = [int(f) for f in fields if f.isdigit()]
    assert {code: nums[0] for code, nums in counts.items()} == {
        "cs3-1": 29, "cs3-2": 18, "cs5-1": 34, "cs5-2": 34}


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["nope", "CS6"])
def test_unknown_classset_exits_nonzero_listing_valid_names(bad):
    proc = run_main("--classset", bad, "--describe-classsets")
    assert proc.returncode != 0
    assert bad in proc.stderr
    for name in class_set_names():
        assert name in proc.stderr
    assert proc.stdout.strip() == ""  # nothing was described


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cs5-2", "CS5B", "cs3a"])
def test_classset_names_are_accepted_case_insensitively(name):
    proc = run_main("--classset", name, "--describe-classsets")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_two_commands_at_once_are_refused(tiny_dataset):
    before = tree_state(tiny_dataset)
    proc = run_main("--prepare-data", "--describe-classsets", "--data-dir", tiny_dataset)
    assert proc.returncode != 0
    assert "one command" in proc.stderr
    assert tree_state(tiny_dataset) == before


# ----------------------------------------------------------------------------- --prepare-data

@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 7])
def test_prepare_data_never_overwrites_another_synthetic_data_set(tiny_dataset, seed):
    """Seed 0 differs in seed and sizes, seed 7 only in sizes: both are refused (exit 2)."""
    before = tree_state(tiny_dataset)
    proc = run_main("--prepare-data", "--data-dir", tiny_dataset, "--seed", seed)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert tiny_dataset in proc.stderr
    assert "not overwritten" in proc.stderr and "--data-dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_state(tiny_dataset) == before
    assert not [p for p in os.listdir(os.path.dirname(tiny_dataset)) if ".tmp-" in p]


@pytest.mark.slow
def test_default_job_also_refuses_a_mismatching_data_set(tiny_dataset):
    before = tree_state(tiny_dataset)
    proc = run_main("--data-dir", tiny_dataset)
    assert proc.returncode == 2 and "not overwritten" in proc.stderr, proc.stderr
    assert tree_state(tiny_dataset) == before


@pytest.mark.slow
def test_prepare_data_reuses_a_matching_data_set(tiny_dataset, tmp_path):
    """A folder whose manifest matches the requested seed and the default sizes is reused
    as it is (the manifest of a copy of the tiny set is edited to claim the defaults, so the
    full default data set need not be generated)."""
    folder = tmp_path / "unmask"
    shutil.copytree(tiny_dataset, folder)
    manifest = read_json(str(folder / "synthetic.json"))
    manifest.update(seed=5, config=SyntheticConfig().as_dict())
    write_json_atomic(str(folder / "synthetic.json"), manifest)
    before = tree_state(str(folder))
    proc = run_main("--prepare-data", "--data-dir", folder, "--seed", 5)
    assert proc.returncode == 0, proc.stderr
    assert "synthetic UnMask data set" in proc.stdout and "seed 5" in proc.stdout
    for cs in CLASS_SETS:
        assert cs.code_name in proc.stdout
    assert tree_state(str(folder)) == before


@pytest.mark.slow
def test_negative_seed_is_a_usage_error(tmp_path):
    data_dir = tmp_path / "unmask"
    proc = run_main("--prepare-data", "--data-dir", data_dir, "--seed", -1, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "--seed" in proc.stderr and "Traceback" not in proc.stderr
    assert not data_dir.exists() and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_prepare_data_refuses_a_foreign_folder(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    proc = run_main("--prepare-data", "--data-dir", folder)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert str(folder) in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(folder) == ["thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "keep me"


@pytest.mark.slow
def test_prepare_data_reuses_real_data_as_it_is(tmp_path):
    folder = tmp_path / "real"
    for sub in ("VOC2010/Images/train", "cs5-2/train/dog"):
        (folder / sub).mkdir(parents=True)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    proc = run_main("--prepare-data", "--data-dir", folder)
    assert proc.returncode == 0, proc.stderr
    assert "real UnMask data" in proc.stdout and str(folder) in proc.stdout
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


# ----------------------------------------------------------------------------- --help

def _help_body(text):
    """--help output without its usage block (which lists every option anyway)."""
    return text.split("\n\n", 1)[1]


def _squeeze(text):
    return re.sub(r"\s+", "", text)


@pytest.mark.slow
def test_help_documents_every_option():
    """Every option of the parser (built from the options' dataclasses) has help text, and
    --help shows the option on its own line (not only in the usage) followed by that text."""
    from evaluation.options import build_parser

    parser = build_parser()
    actions = [a for a in parser._actions if a.option_strings]
    undocumented = [a.option_strings for a in actions
                    if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()]
    assert undocumented == []
    options = {s for a in actions for s in a.option_strings}
    assert {"--prepare-data", "--describe-classsets", "--model", "--data-dir", "--seed",
            "--classset", "--help"} <= options
    proc = run_main("--help")
    assert proc.returncode == 0, proc.stderr
    body = _help_body(proc.stdout)
    for action in actions:
        for option in action.option_strings:
            assert re.search(r"^\s+(?:-\w+(?: \S+)?, )?%s\b" % re.escape(option), body,
                             re.M), option
        opening = " ".join(action.help.split("%")[0].split()[:4])
        assert _squeeze(opening) in _squeeze(body), (action.option_strings, opening)
    for name in ("CS5b", "cs3-1"):
        assert name in body  # the valid class-set names are documented


# ----------------------------------------------------------------------------- data on demand

TINY = dict(image_size=48, k_images=(2, 1, 1), m_images_per_class=(1, 1, 1))


@pytest.mark.parametrize("argv", [["--prepare-data"], ["--model", "K"], ["--model", "M"], []],
                         ids=["prepare-data", "model-K", "model-M", "default-job"])
def test_every_command_generates_missing_data_first(tmp_path, monkeypatch, capsys, argv):
    """main.main() on a missing --data-dir generates the synthetic data set before the
    command runs.  The sizes come from data.synthetic.SyntheticConfig (patched to a tiny
    one); the commands themselves are stubbed and check the data are there when they start."""
    import main
    import evaluation.model_k
    import tfcompat
    from data import synthetic
    from data.knowledge import get_class_set
    from evaluation import commands
    from evaluation.config import EvalConfig

    data_dir = str(tmp_path / "unmask")
    ran = []
    cfg = EvalConfig(class_set=get_class_set("CS5b"), data_dir=data_dir,
                     results_dir=str(tmp_path / "results"),
                     checkpoint_dir=str(tmp_path / "ckpt"), k_log_dir=str(tmp_path / "klogs"))

    def command(*_args, **_kwargs):
        ran.append(read_json(os.path.join(data_dir, "synthetic.json")))
        return 0

    monkeypatch.setattr(synthetic, "SyntheticConfig", functools.partial(SyntheticConfig, **TINY))
    monkeypatch.setattr(tfcompat, "import_tf", lambda: None)
    monkeypatch.setattr(EvalConfig, "from_options", lambda options: cfg)
    monkeypatch.setattr(commands, "_checkpoint_writes", lambda *a: [])  # M: not here
    monkeypatch.setattr(commands, "k_missing", lambda cfg: False)    # K: see the next test
    monkeypatch.setattr(commands, "run_model_m", command)
    monkeypatch.setattr(evaluation.model_k, "run_model_k", command)
    monkeypatch.setattr(evaluation.model_k, "log_dir_writes", lambda args: None)  # reads TF
    assert main.main(argv + ["--data-dir", data_dir, "--seed", "3"]) == 0
    manifest = read_json(os.path.join(data_dir, "synthetic.json"))
    assert manifest["seed"] == 3 and manifest["config"] == SyntheticConfig(**TINY).as_dict()
    assert ran == ([] if argv == ["--prepare-data"] else [manifest])
    assert os.path.isfile(os.path.join(data_dir, "VOC2010", "train.json"))
    if argv == ["--prepare-data"]:
        assert "synthetic UnMask data set" in capsys.readouterr().out


def test_default_job_trains_k_first_when_none_is_trained(tmp_path, monkeypatch, capsys):
    """`python main.py` runs the real system: with no K trained for --k-config it trains K
    (as `--model K` would, from random weights) before M's evaluation, which then uses K;
    the oracle runs only when asked for, and a trained K is reused."""
    import main
    import evaluation.model_k
    from data import synthetic
    from data.knowledge import get_class_set
    from evaluation import commands
    from evaluation.config import EvalConfig

    calls = []
    monkeypatch.setattr(synthetic, "SyntheticConfig", functools.partial(SyntheticConfig, **TINY))
    monkeypatch.setattr(EvalConfig, "from_options", lambda options: EvalConfig(
        class_set=get_class_set("CS5b"), extractor=options.m.extractor,
        k_log_dir=options.k.k_log_dir, results_dir=str(tmp_path / "results"),
        checkpoint_dir=str(tmp_path / "ckpt")))
    monkeypatch.setattr(evaluation.model_k, "run_model_k",
                        lambda args, **kw: calls.append(("K", kw)) or 0)
    monkeypatch.setattr(commands, "run_model_m",
                        lambda cfg, line_search=False, **kw: calls.append(("M", cfg.extractor))
                        or 0)
    argv = ["--data-dir", str(tmp_path / "unmask"), "--k-log-dir", str(tmp_path / "no_k")]
    assert main.main(argv) == 0
    assert calls == [("K", {"weights": "none"}), ("M", "k")]
    out = capsys.readouterr().out
    assert "no trained K (--k-config synthetic)" in out and "--extractor oracle" in out
    for extractor in ("oracle", "k"):
        calls.clear()
        assert main.main(argv + ["--extractor", extractor]) == 0
        assert calls == [("M", extractor)]
    calls.clear()
    monkeypatch.setattr(commands, "k_missing", lambda cfg: False)     # a trained K exists
    assert main.main(argv) == 0
    assert calls == [("M", None)]
