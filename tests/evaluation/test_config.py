"""One configuration, written with each run: the options come from their dataclasses,
every run writes config.json beside metrics.json, and ``main.py --config`` reruns it to the
same numbers (here into other folders, so M is trained and attacked again)."""
import dataclasses
import functools
import json
import os
import re

import pytest

from data.synthetic import SyntheticConfig

TINY = dict(image_size=48, k_images=(2, 1, 1), m_images_per_class=(4, 2, 2))


def _masked(path):
    with open(path, encoding="utf-8") as f:
        return re.sub(r'("\w*seconds"): -?[0-9.e+-]+', r'\1: "<time>"', f.read())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny `--model M` run through main.main: (its folder, its argv's folders)."""
    import main
    from data import synthetic

    root = tmp_path_factory.mktemp("config")
    mp = pytest.MonkeyPatch()
    mp.setattr(synthetic, "SyntheticConfig", functools.partial(SyntheticConfig, **TINY))
    try:
        argv = ["--model", "M", "--classset", "CS3a", "--data-dir", str(root / "unmask"),
                "--input-size", "32", "--epochs", "1", "--batch-size", "4", "--lr", "0.01",
                "--attacks", "fgsm:8", "--n-test", "6", "--extractor", "oracle",
                "--defenses", "none,unmask,bitdepth:3", "--results-dir", str(root / "r1"),
                "--checkpoint-dir", str(root / "c1"), "--k-log-dir", str(root / "k"),
                "--no-progress"]
        assert main.main(argv) == 0
    finally:
        mp.undo()
    return root, os.path.join(str(root / "r1"), "cs3-1", "mobilenetv2_050")


@pytest.mark.slow
def test_a_run_writes_its_whole_configuration(finished):
    from evaluation.config import EvalConfig

    _, out = finished
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        rec = json.load(f)
    assert rec["command"] == "evaluate" and rec["version"] == 1
    assert set(rec["config"]) == {f.name for f in dataclasses.fields(EvalConfig)}
    cfg = rec["config"]
    assert cfg["class_set"] == "cs3-1" and cfg["extractor"] == "oracle"
    assert cfg["train"]["epochs"] == 1 and cfg["vectors"] == [["fgsm", 8.0]]
    assert cfg["defenses"] == ["none", "unmask", "bitdepth:3"]
    # the defaults it used: everything not given on the command line
    assert {"target_fpr", "mode", "adaptive_steps", "attack_batch", "seed"} <= set(
        rec["defaults"])
    assert not {"input_size", "vectors", "n_test", "results_dir"} & set(rec["defaults"])
    assert {"python", "tensorflow", "numpy"} <= set(rec["versions"])
    m = rec["checkpoints"]["m"]
    assert m["path"].endswith("best.h5") and len(m["sha1"]) == 40


@pytest.mark.slow
def test_config_reruns_the_run_to_the_same_numbers(finished, capsys, monkeypatch):
    import main
    from data import synthetic

    monkeypatch.setattr(synthetic, "SyntheticConfig", functools.partial(SyntheticConfig, **TINY))
    root, out = finished
    path = os.path.join(out, "config.json")
    assert main.main(["--config", path, "--results-dir", str(root / "r2"),
                      "--checkpoint-dir", str(root / "c2")]) == 0
    again = os.path.join(str(root / "r2"), "cs3-1", "mobilenetv2_050")
    for name in ("metrics.json", "bench.csv"):
        assert _masked(os.path.join(again, name)) == _masked(os.path.join(out, name)), name
    with open(os.path.join(again, "config.json"), encoding="utf-8") as f:
        second = json.load(f)
    with open(path, encoding="utf-8") as f:
        first = json.load(f)
    differ = {k for k in first["config"] if first["config"][k] != second["config"][k]}
    assert differ == {"results_dir", "checkpoint_dir"}
    assert first["checkpoints"]["m"]["sha1"] == second["checkpoints"]["m"]["sha1"]
    capsys.readouterr()
    # the recorded settings are the run's: other options are refused, not mixed in
    assert main.main(["--config", path, "--epochs", "2"]) == 2
    assert "--config reruns the settings recorded" in capsys.readouterr().err
    assert main.main(["--config", str(root / "nothing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_every_option_has_one_definition():
    """Defaults, help and ranges live in the options' dataclasses: the parser is built from
    them, the run's configuration and K's runner take their defaults from them."""
    from evaluation import model_k
    from evaluation.config import EvalConfig
    from evaluation.options import GROUPS, MOptions, Options, build_parser, parse_args

    from data.knowledge import get_class_set
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    fields = {"--" + f.name.replace("_", "-") for _, cls in GROUPS
              for f in dataclasses.fields(cls)}
    assert flags == fields
    opts = parse_args([])
    assert opts == Options() and opts.given == ()
    cfg = EvalConfig(class_set=get_class_set("CS5b"))
    m = MOptions()
    assert (cfg.input_size, cfg.target_fpr, cfg.adaptive_steps, cfg.at_eps, cfg.train.epochs,
            cfg.train.learning_rate) == (m.input_size, m.target_fpr, m.adaptive_steps,
                                         m.at_eps, m.epochs, m.lr)
    assert model_k.CLI_DEFAULTS == Options().k_options()
    given = parse_args(["--model", "m", "--n-test", "5", "--no-progress"])
    assert given.commands.model == "M" and given.m.n_test == 5 and given.m.no_progress
    assert set(given.given) == {"model", "n_test", "no_progress"}
