"""bench/bench_steps.py: two runs of one adaptive attack compared on the images both attacked
(a smaller --n-test is a subset of a larger one), refusing records of different attacks or of
other images."""
import hashlib
import json
import os

import numpy as np
import pytest

from benchmods import load

TINY_DATA = {"per_class": (2, 1, 4)}          # 20 test images of CS5b


@pytest.fixture(scope="module")
def bench():
    return load("bench_steps")


def _run(tmp_path, name, data_dir, n_test, steps, success_of, fp_extra=None, converged=True):
    """A run folder with a config.json for ``n_test`` images and an adaptive record whose
    ``success`` is ``success_of(key)`` per image (fingerprinted with those images)."""
    from data.classset import load_split
    from data.knowledge import get_class_set
    from evaluation.config import EvalConfig, record
    from evaluation.store.records import array_digest, write_npz

    cfg = EvalConfig(class_set=get_class_set("CS5b"), data_dir=data_dir, n_test=n_test,
                     input_size=64, results_dir=str(tmp_path / name))
    run = tmp_path / name / "cs5-2" / cfg.arch
    folder = run / "vectors" / "adaptive" / "unmask-k-robust-m-at"
    folder.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(record("evaluate", cfg)))
    split = load_split(data_dir, cfg.class_set, "test").subset(n_test, seed=cfg.seed)
    fp = {"defense": {"k": "robust"}, "attack": "autoattack", "eps": 8.0, "goal": "wrong",
          "engine": {"steps": steps, "restarts": 2},
          "test_keys": hashlib.sha1("\n".join(split.keys).encode()).hexdigest()[:16],
          "test_images": array_digest(split.arrays(64), split.labels)}
    fp.update(fp_extra or {})
    success = np.array([success_of(k) for k in split.keys], bool)
    write_npz(str(folder / "test-autoattack_8.wrong.npz"),
              {"success": success, "fingerprint": json.dumps(fp, sort_keys=True),
               "convergence": json.dumps({"converged": converged})})
    return str(run), list(split.keys)


def _images(bench, run):
    return bench.RunImages(run, "unmask:k=robust:m=at", "autoattack", 8.0, "adaptive", "wrong")


def test_a_smaller_test_subset_is_inside_a_larger_one(tiny_data):
    from data.classset import load_split
    from data.knowledge import get_class_set
    split = load_split(tiny_data, get_class_set("CS5b"), "test")
    small, large = split.subset(6, seed=0).keys, split.subset(15, seed=0).keys
    assert len(small) == 6 and len(large) == 15 and set(small) <= set(large)


def test_the_longer_run_is_compared_on_the_images_both_attacked(bench, tiny_data, tmp_path):
    short, keys_short = _run(tmp_path, "short", tiny_data, 6, 100, lambda k: False)
    taken = set(keys_short[:2])                       # the longer attack took two more
    long_, keys_long = _run(tmp_path, "long", tiny_data, 15, 200,
                            lambda k: k in taken or k not in keys_short)
    a, b = _images(bench, short), _images(bench, long_)
    ia, ib = bench.shared(a, b)
    assert [a.keys[i] for i in ia] == [b.keys[i] for i in ib] == keys_short
    table = bench.table_of(a, b, ["cmd short", "cmd long"])
    c = table["comparison"]
    assert (c["n"], c["a_only"], c["b_only"]) == (6, 2, 0)
    assert c["a_rate"] == 1.0 and c["b_rate"] == pytest.approx(4 / 6)
    # each run's own rate over its own images: 6 of 6, and 4 of 15 for the longer one
    assert table["rows"][0][1:5] == ["100 × 2", "1.00 [.61, 1.00] on 6", "1.00 [.61, 1.00]", "2"]
    assert table["rows"][1][1] == "200 × 2" and table["rows"][1][2].endswith("on 15")
    assert table["rows"][1][2].startswith(".27")
    assert "engine" in table["caption"] and "test_keys" in table["caption"]
    assert "cmd short" in table["source"] and "cmd long" in table["source"]


def test_records_of_different_defenses_are_refused(bench, tiny_data, tmp_path):
    a, _ = _run(tmp_path, "a", tiny_data, 6, 100, lambda k: False)
    b, _ = _run(tmp_path, "b", tiny_data, 6, 200, lambda k: False,
                fp_extra={"defense": {"k": "standard"}})
    with pytest.raises(ValueError, match="differ in defense"):
        bench.table_of(_images(bench, a), _images(bench, b), ["x", "y"])


def test_a_record_of_other_images_is_refused(bench, tiny_data, tmp_path):
    run, _ = _run(tmp_path, "a", tiny_data, 6, 100, lambda k: False,
                  fp_extra={"test_images": "0" * 16})
    with pytest.raises(ValueError, match="not the ones its record was made on"):
        _images(bench, run)


def test_an_unfinished_run_is_named(bench, tiny_data, tmp_path):
    run, _ = _run(tmp_path, "a", tiny_data, 6, 100, lambda k: False)
    with pytest.raises(FileNotFoundError, match="no finished adaptive record.*resumes"):
        bench.RunImages(run, "unmask:k=robust:m=at", "autoattack", 12.0, "adaptive", "wrong")
    os.remove(os.path.join(run, "config.json"))      # a run writes it when it ends
    with pytest.raises(FileNotFoundError, match="config.json a run writes when it ends"):
        _images(bench, run)


def test_a_damaged_or_foreign_record_is_named(bench, tiny_data, tmp_path):
    run, _ = _run(tmp_path, "a", tiny_data, 6, 100, lambda k: False)
    path = os.path.join(run, "vectors", "adaptive", "unmask-k-robust-m-at",
                        "test-autoattack_8.wrong.npz")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read.*recompute"):
        _images(bench, run)
    other, _ = _run(tmp_path, "b", tiny_data, 6, 100, lambda k: False)
    path = os.path.join(other, "vectors", "adaptive", "unmask-k-robust-m-at",
                        "test-autoattack_8.wrong.npz")
    from evaluation.store.records import write_npz
    write_npz(path, {"success": np.zeros(6, bool), "fingerprint": json.dumps({"m": "x"})})
    with pytest.raises(ValueError, match="not an adaptive engine's record.*engine"):
        _images(bench, other)


def test_runs_sharing_fewer_than_two_images_are_refused(bench, tiny_data, tmp_path):
    a, _ = _run(tmp_path, "a", tiny_data, 1, 100, lambda k: False)
    b, _ = _run(tmp_path, "b", tiny_data, 10, 200, lambda k: True)
    with pytest.raises(ValueError, match="share 1 test image"):
        bench.table_of(_images(bench, a), _images(bench, b), ["x", "y"])


def test_the_command_line_writes_the_table_with_its_verdict(bench, tiny_data, tmp_path,
                                                          monkeypatch):
    """The longer run takes every image the shorter left: the caption says so with its paired
    interval, and the shorter run's rate is starred where its own trace had not settled."""
    a, _ = _run(tmp_path, "a", tiny_data, 20, 100, lambda k: False, converged=False)
    b, _ = _run(tmp_path, "b", tiny_data, 20, 200, lambda k: True)
    monkeypatch.setattr(bench, "TABLES", str(tmp_path / "tables"))
    assert bench.main(["--run", a, "--run", b, "--command", "x", "--command", "y",
                       "--defense", "unmask:k=robust:m=at", "--attack", "autoattack:8",
                       "--name", "steps"]) == 0
    table = json.loads((tmp_path / "tables" / "steps.json").read_text())
    c = table["comparison"]
    assert (c["claim"], c["a_only"], c["b_only"], c["interval"]) == ("a > b", 20, 0, [1.0, 1.0])
    assert c["p_mcnemar"] < 1e-5
    assert "the second run's attack took more images" in table["caption"]
    assert "+1.00 [+1.00, +1.00]" in table["caption"]
    assert "engine.steps 100 → 200" in table["caption"]
    assert table["rows"][0][3].endswith("*") and not table["rows"][1][3].endswith("*")
    assert table["rows"][1][3].startswith(".00")
    with pytest.raises(SystemExit, match="exactly two --run"):
        bench.main(["--run", a, "--command", "x", "--defense", "d", "--attack", "a:8",
                    "--name", "n"])
    with pytest.raises(SystemExit, match="NAME:EPS"):
        bench.main(["--run", a, "--run", b, "--command", "x", "--command", "y",
                    "--defense", "d", "--attack", "autoattack", "--name", "n"])
