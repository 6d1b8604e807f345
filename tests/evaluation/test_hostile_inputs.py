"""Hostile inputs, tried as a new user would: every one must end in a clear message that
names the argument or file and the way out -- before any work starts -- and nothing written
earlier may change.

Four groups: the command line (run in-process through ``main.main``, each against a
workspace whose files are compared before and after), the data layer, checkpoints and
saved records, and the Python API; then the kinds of issue 21 (shared, read-only and
half-broken set-ups), one test or more per kind.  Interruptions are covered here (leftovers of a killed
save) and, end to end with ``kill -9``, in ``test_resume_exact.py``.
"""
import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

import main
import tfcompat
from data.fileio import check_folder
from mrcnn_config import get_config as get_k_config
from data.images import ImageError, read_image
from data.synthetic import (DatasetExistsError, SyntheticConfig, ensure_dataset,
                            generate_dataset)

tf, keras = tfcompat.import_tf()

TINY = SyntheticConfig(image_size=64, k_images=(2, 1, 1), m_images_per_class=(8, 4, 4))


# ----------------------------------------------------------------------------- workspace

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data set, results, checkpoints and K logs with files in them, plus odd paths."""
    root = tmp_path_factory.mktemp("hostile")
    generate_dataset(str(root / "data"), seed=0, config=TINY, workers=1, log=lambda s: None)
    for sub in ("results/cs5-2/mobilenetv2_050", "ckpt/model_m/cs5-2/mobilenetv2_050_96",
                "klogs/parts1"):
        (root / sub).mkdir(parents=True)
    (root / "results/cs5-2/mobilenetv2_050/metrics.json").write_text('{"earlier": "run"}')
    (root / "ckpt/model_m/cs5-2/mobilenetv2_050_96/state.json").write_text('{"epoch": 3}')
    (root / "klogs/parts1/mask_rcnn_parts_0001.h5").write_bytes(b"\x89HDF earlier weights")
    (root / "a_file").write_text("not a folder")
    os.symlink(str(root / "loop_b"), str(root / "loop_a"))
    os.symlink(str(root / "loop_a"), str(root / "loop_b"))
    os.symlink(str(root / "nowhere"), str(root / "dangling"))
    return root


def _snapshot(root):
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _base(root):
    return ["--data-dir", str(root / "data"), "--results-dir", str(root / "results"),
            "--checkpoint-dir", str(root / "ckpt"), "--k-log-dir", str(root / "klogs"),
            "--no-progress"]


# (extra arguments with {root} for the workspace, expected message pattern)
CLI_CASES = [
    # numbers of M's training
    (["--epochs", "0"], r"--epochs must be an integer >= 1"),
    (["--epochs", "-3"], r"--epochs must be an integer >= 1"),
    (["--epochs", "two"], r"--epochs: invalid int value"),
    (["--lr", "0"], r"--lr must be a finite number > 0"),
    (["--lr", "-0.1"], r"--lr must be a finite number > 0"),
    (["--lr", "nan"], r"--lr must be a finite number"),
    (["--lr", "inf"], r"--lr must be a finite number"),
    (["--lr", "1e30"], r"--lr must be .*<= 10"),
    (["--batch-size", "0"], r"--batch-size must be an integer >= 1"),
    (["--batch-size", "-8"], r"--batch-size must be an integer >= 1"),
    (["--seed", "-1"], r"--seed: must be a non-negative integer"),
    (["--seed", "x"], r"--seed: must be a non-negative integer"),
    # M's input
    (["--input-size", "0"], r"--input-size must be in \[32, 1024\]"),
    (["--input-size", "-5"], r"--input-size must be in \[32, 1024\]"),
    (["--input-size", "100000"], r"--input-size must be in \[32, 1024\]"),
    (["--input-size", "8"], r"--input-size must be in \[32, 1024\] for --arch mobilenetv2_050"),
    (["--arch", "resnet9000"], r"resnet9000"),
    (["--weights", "foo"], r"--weights for --model M must be none or imagenet"),
    (["--classset", "CS9"], r"--classset: .*CS9"),
    # attack vectors
    (["--attacks", "pgd_linf:1e9"], r"L-inf budget beyond 255"),
    (["--attacks", "pgd_linf:256"], r"L-inf budget beyond 255"),
    (["--attacks", "pgd_l2:1e9"], r"exceeds the largest L2 distance between two 96x96"),
    (["--attacks", "pgd_linf:-1"], r"eps must be >= 0"),
    (["--attacks", "pgd_linf:0"], r"needs an eps > 0"),
    (["--attacks", "pgd_linf:abc"], r"eps of 'pgd_linf:abc' must be a number"),
    (["--attacks", "pgd_linf:nan"], r"expected a finite number"),
    (["--attacks", "pgd_linf:inf"], r"expected a finite number"),
    (["--attacks", "nosuch:8"], r"nosuch"),
    (["--attacks", "pgd_linf:8,pgd_linf:8"], r"pgd_linf eps=8 is given twice"),
    (["--attacks", "pgd_linf:8,pgd_linf:8.0000001"], r"differ only past the reports' precision"),
    (["--attacks", ","], r"--attacks: give 'paper' or name:eps pairs"),
    (["--attacks", "paper,paper"], r"is given twice"),
    # the decision
    (["--threshold", "1.5"], r"--threshold must be in \[0, 1\]"),
    (["--threshold", "-0.1"], r"--threshold must be in \[0, 1\]"),
    (["--target-fpr", "0"], r"target.fpr"),
    (["--target-fpr", "1.5"], r"target.fpr"),
    (["--target-fpr", "nan"], r"target.fpr"),
    (["--target-fpr", "2", "--threshold", "0.5"], r"target.fpr"),
    (["--mode", "sometimes"], r"--mode: invalid choice"),
    (["--detection-set", "loose"], r"--detection-set: invalid choice"),
    (["--n-test", "0"], r"--n-test must be >= 1"),
    (["--n-test", "-1"], r"--n-test must be >= 1"),
    # defenses and threat models
    (["--defenses", "nosuch"], r"nosuch"),
    (["--defenses", "unmask,unmask"], r"unmask"),
    (["--defenses", "pca:abc"], r"pca"),
    (["--threat", "white"], r"--threat: unknown threat model 'white'"),
    (["--threat", ","], r"--threat: give one or several of gray-box, adaptive, transfer"),
    (["--threat", "transfer"], r"--threat transfer needs --k-transfer PATH.*--model K --k-seed 1 "),
    (["--threat", "transfer", "--k-transfer", "{root}/missing.h5"], r"no such checkpoint file"),
    (["--threat", "transfer", "--k-transfer", "{root}/klogs"], r"no such checkpoint file"),
    (["--adaptive-steps", "0"], r"--adaptive-steps must be an integer >= 1"),
    (["--at-eps", "0"], r"--at-eps must be in \(0, 255\]"),
    (["--at-eps", "300"], r"--at-eps must be in \(0, 255\]"),
    # folders
    (["--results-dir", "{root}/a_file"], r"--results-dir .*a_file is a file, not a folder"),
    (["--results-dir", "{root}/a_file/sub"], r"--results-dir .*lies under the file"),
    (["--checkpoint-dir", "{root}/a_file"], r"--checkpoint-dir .*is a file, not a folder"),
    (["--data-dir", "{root}/a_file"], r"--data-dir .*is a file, not a folder"),
    (["--data-dir", "{root}/loop_a"], r"--data-dir .*loop_a cannot be used: Too many levels "
                                      r"of symbolic links"),
    (["--results-dir", "{root}/loop_a/x"], r"--results-dir .*cannot be used"),
    (["--data-dir", "{root}/dangling"], r"--data-dir .*symbolic link to a missing target"),
    (["--k-log-dir", "{root}/a_file"], r"--k-log-dir .*is a file, not a folder"),
    # distribution
    (["--distribute", "horovod"], r"--distribute: invalid choice"),
    (["--distribute", "multi-worker"], r"needs the TF_CONFIG environment variable"),
    (["--grid", "--distribute", "mirrored"], r"--distribute applies to a single run"),
    (["--grid", "--archs", "resnet9000"], r"--archs: .*resnet9000"),
    (["--grid", "--classsets", "CS3a,CS9"], r"--classsets: .*CS9"),
    (["--grid", "--workers", "0"], r"--workers must be >= 1"),
    (["--grid", "--workers", "2", "--ray-address", "h:1"], r"not both"),
    (["--model", "K", "--workers", "2"], r"K trains in one process"),
    (["--model", "K", "--classset", "CS3a"], r"--classset: option\(s\) of --model M"),
    (["--model", "K", "--m-model", "{root}/mine.h5", "--arch", "vgg16"],
     r"--arch, --m-model: option\(s\) of --model M, which --model K does not read"),
    (["--workers", "0"], r"--workers must be >= 1"),
    (["--grid", "--shards", "0"], r"--shards must be >= 1"),
    (["--shards", "2"], r"go with --grid"),
    (["--archs", "resnet50"], r"go with --grid"),
    # commands
    (["--prepare-data", "--model", "M"], r"give one command at a time"),
    (["--report-out", "{root}/page.html"], r"--report-out FILE goes with --report"),
    (["--allow-other-models"], r"--allow-other-models goes with --config"),
    # settings that would change nothing are refused, not reported as results
    (["--extractor", "oracle", "--defenses", "unmask,unmask:input=random"],
     r"--defenses unmask:input=random: input=random does nothing with the oracle"),
    (["--extractor", "oracle", "--defenses", "unmask:m=at:input=random", "--adv-train"],
     r"input=random does nothing with the oracle.*repeat unmask:m=at's"),
    (["--adaptive-routes", "k-only"], r"--adaptive-routes narrows the defense-aware attacks, "
                                      r"and the run has none"),
    (["--adaptive-routes", "sideways"], r"--adaptive-routes 'sideways': unknown route"),
    (["--defenses", "none,pca", "--threat", "gray-box,adaptive", "--adaptive-routes", "k-only"],
     r"k-only is a route of none of the run's defenses"),
    (["--adaptive-goals", "wrong"], r"--adaptive-goals narrows the defense-aware attacks, "
                                    r"and the run has none"),
    (["--adaptive-goals", "sideways"], r"--adaptive-goals 'sideways': unknown goal"),
    (["--defenses", "none,pca,unmask:reject", "--threat", "gray-box,adaptive",
      "--adaptive-goals", "undetected"], r"--adaptive-goals changes nothing here: each of the "
                                         r"run's defenses \(none, pca, unmask:reject\) has one"),
    (["--model", "X"], r"--model: invalid choice"),
    # model K's numbers and folders
    (["--model", "K", "--k-steps", "0"], r"--k-steps"),
    (["--model", "K", "--k-batch", "0"], r"--k-batch"),
    (["--model", "K", "--k-eval-limit", "-1"], r"--k-eval-limit"),
    (["--model", "K", "--k-max-minutes", "-1"], r"--k-max-minutes"),
    (["--model", "K", "--k-lr", "0"], r"--k-lr"),
    (["--model", "K", "--k-config", "huge"], r"--k-config: invalid choice"),
    (["--model", "K", "--k-log-dir", "{root}/a_file"], r"--k-log-dir .*is a file"),
    (["--model", "K", "--k-results-dir", "{root}/a_file"], r"--k-results-dir .*is a file"),
    # every rejected option names itself, its value and the accepted range (issue 21)
    (["--seed", "4294967296"], r"--seed: must be a non-negative integer <= 4294967295, got "
                               r"'4294967296'"),
    (["--target-fpr", "-0.5"], r"--target-fpr: target_fpr must be in \(0, 1\).*got -0.5"),
    (["--arch", "vgg9"], r"--arch: unknown architecture 'vgg9'; valid: resnet50"),
    (["--defenses", "jpeg:200"], r"--defenses: defense 'jpeg:200': quality must be an integer "
                                 r"1..95.*got 200"),
    (["--defenses", "pca:x"], r"--defenses: defense pca:x: variance must be a number"),
    (["--attacks", "fgsm:-2"], r"--attacks fgsm:-2: .*eps must be >= 0"),
    (["--attacks", "uap:300"], r"--attacks uap:300: .*L-inf budget beyond 255"),
    (["--grid", "--archs", ","], r"--grid needs at least one architecture .*got --archs ','"),
    (["--model", "K", "--k-seed", "4294967296"], r"--k-seed: must be a non-negative integer "
                                                 r"<= 4294967295"),
    (["--model", "K", "--k-eval-split", "dev"], r"--k-eval-split: invalid choice: 'dev'"),
    (["--model", "K", "--weights", "{root}/missing.h5"], r"--weights .*missing.h5: no such "
                                                         r"file; give none, last, coco"),
    # hardened UnMask and K under attack (issue 18)
    (["--defenses", "unmask:k=robus"], r"--defenses: defense unmask:k=robus: k must be one of "
                                       r"standard, robust, got 'robus'"),
    (["--defenses", "unmask:k"], r"unmask:k: k needs a value, e.g. k=robust"),
    (["--defenses", "unmask:k=robust", "--k-robust", "{root}/missing.h5"],
     r"--k-robust .*missing.h5: no such checkpoint file"),
    (["--k-transfer-robust", "{root}/missing.h5"], r"--k-transfer-robust .*missing.h5: no such "
                                                   r"checkpoint file"),
    (["--defenses", "unmask:k=robust", "--k-robust", "{root}/klogs"], r"--k-robust .*: no such "
                                                                      r"checkpoint file"),
    (["--model", "K", "--k-attack-eps", "4,x"], r"--k-attack-eps: 'x' is not a number"),
    (["--model", "K", "--k-attack-eps", "0.5"], r"--k-attack-eps: each budget must be a number "
                                                r"in \[1, 255\]"),
    (["--model", "K", "--k-attack-steps", "0"], r"--k-attack-steps"),
]


@pytest.mark.parametrize("extra,pattern", CLI_CASES,
                         ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_refuses_before_any_work_and_loses_nothing(workspace, extra, pattern, capsys,
                                                       monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    before = _snapshot(workspace)
    argv = _base(workspace) + [a.replace("{root}", str(workspace)) for a in extra]
    try:
        code = main.main(argv)
    except SystemExit as e:       # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert __import__("re").search(pattern, err), err
    assert "Traceback" not in err
    assert _snapshot(workspace) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_cli_refuses_a_read_only_results_folder(workspace, capsys):
    ro = workspace / "read_only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o500)
    try:
        assert main.main(_base(workspace) + ["--results-dir", str(ro)]) == 2
        assert "--results-dir %s cannot be written" % ro in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_unwritable_folder_probe_does_not_trust_os_access(tmp_path, monkeypatch):
    """The probe creates a file: a folder where that fails is refused even when os.access
    says yes (root on a read-only mount)."""
    import data.fileio as fio

    def fail(*a, **k):
        raise PermissionError(30, "Read-only file system")
    monkeypatch.setattr(fio, "_create_temporary", fail)
    with pytest.raises(ValueError, match="--results-dir .* cannot be written \\(Read-only "
                                         "file system"):
        check_folder(str(tmp_path / "new" / "deeper"), "--results-dir")
    check_folder(str(tmp_path), "--data-dir", write=False)      # reading needs no probe


# ----------------------------------------------------------------------------- data layer

def _png(path, size=(8, 8)):
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


@pytest.mark.parametrize("content,pattern", [
    (b"", r"cannot read image"),
    (b"this is text, not a picture", r"cannot read image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"cannot read image"),
], ids=["empty", "text", "truncated-header"])
def test_unreadable_images_are_named(tmp_path, content, pattern):
    path = tmp_path / "img.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=pattern + ".*img.png"):
        read_image(str(path))
    assert path.read_bytes() == content


def test_truncated_image_is_named(tmp_path):
    path = _png(str(tmp_path / "big.png"), (64, 64))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(ImageError, match="big.png"):
        read_image(path)


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(str(tmp_path / "gone.png"))


@pytest.mark.parametrize("pixels", [4000, 7000], ids=["over-limit", "over-twice-limit"])
def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch, pixels):
    """Both PIL's warning band (limit..2x) and its error band are refused."""
    path = _png(str(tmp_path / "bomb.png"), (64, 64))            # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels if pixels < 4096 else 2000)
    with pytest.raises(ImageError, match="bomb.png is too large to decode safely"):
        read_image(path)


def test_ensure_dataset_refuses_other_seed_foreign_folder_and_file(tmp_path, workspace):
    before = _snapshot(workspace / "data")
    with pytest.raises(DatasetExistsError, match="not the requested"):
        ensure_dataset(str(workspace / "data"), seed=5, config=TINY, log=lambda s: None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetExistsError, match="neither the UnMask layout"):
        ensure_dataset(str(foreign), config=TINY, log=lambda s: None)
    with pytest.raises(DatasetExistsError, match="is a file, not a folder"):
        ensure_dataset(str(workspace / "a_file"), config=TINY, log=lambda s: None)
    assert _snapshot(workspace / "data") == before
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_second_generator_of_the_same_folder_waits_and_reuses(tmp_path):
    """Two runs that generate one new data folder at once: the second waits for the first
    (the lock beside the folder) and reuses its result instead of failing at the rename."""
    import fcntl

    target = str(tmp_path / "shared")
    logs, result = [], {}
    with open(target + ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)           # "the first process" is generating
        worker = threading.Thread(target=lambda: result.update(m=ensure_dataset(
            target, seed=0, config=TINY, workers=1, log=logs.append)))
        worker.start()
        for _ in range(200):
            if any("waiting" in m for m in logs):
                break
            threading.Event().wait(0.05)
        assert any("is in use by another process: waiting" in m for m in logs), logs
        generate_dataset(target, seed=0, config=TINY, workers=1, log=lambda s: None)
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(120)
    assert result["m"]["seed"] == 0
    assert any("generated by another process meanwhile" in m for m in logs), logs


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture
def trained_m(tmp_path):
    from models.train_classifier import TrainConfig, train_classifier

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64)

    def model():
        keras.utils.set_random_seed(0)
        inp = keras.Input((8, 8, 3))
        h = keras.layers.Dropout(0.1, seed=0, force_generator=True)(
            keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))
        return keras.Model(inp, keras.layers.Dense(2)(h))

    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=0.01)
    folder = str(tmp_path / "m")
    train_classifier(model(), x, y, x, y, folder, TrainConfig(epochs=1, batch_size=8,
                                                              learning_rate=0.01),
                     progress=False, log=lambda s: None)

    def run(**kw):
        return train_classifier(model(), kw.get("x", x), y, x, y, folder, kw.get("cfg", cfg),
                                progress=False, log=lambda s: None)
    return folder, run


def _damage(path, how):
    if how == "flip":
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    elif how == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 3])
    elif how == "delete":
        os.remove(path)


@pytest.mark.parametrize("name,how,pattern", [
    ("resume.npz", "flip", r"resume.npz is damaged"),
    ("resume.npz", "truncate", r"resume.npz is damaged"),
    ("resume.npz", "delete", r"resume.npz is missing"),
    ("last.h5", "flip", r"last.h5 is damaged"),
    ("last.h5", "delete", r"last.h5 is missing"),
    ("state.json", "truncate", r"state.json is damaged"),
])
def test_damaged_training_files_are_named_and_kept(trained_m, name, how, pattern):
    from models.train_classifier import CheckpointError

    folder, run = trained_m
    _damage(os.path.join(folder, name), how)
    before = _snapshot(folder)
    with pytest.raises(CheckpointError, match=pattern):
        run()
    assert _snapshot(folder) == before


def test_resume_state_of_another_model_is_refused(trained_m):
    from models.train_classifier import CheckpointError

    folder, run = trained_m
    path = os.path.join(folder, "resume.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["optimizer/0001"] = np.zeros((5, 5), np.float32)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    state_path = os.path.join(folder, "state.json")
    state = json.load(open(state_path))
    state["resume_sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    json.dump(state, open(state_path, "w"))
    with pytest.raises(CheckpointError, match="does not fit this model and optimizer"):
        run()


def test_other_settings_or_images_are_refused_not_resumed(trained_m):
    from models.train_classifier import CheckpointError, TrainConfig

    folder, run = trained_m
    before = _snapshot(folder)
    with pytest.raises(CheckpointError, match="other settings"):
        run(cfg=TrainConfig(epochs=2, batch_size=8, learning_rate=0.02))
    with pytest.raises(CheckpointError, match="other settings.*momentum"):
        run(cfg=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, momentum=0.5))
    x = np.zeros((16, 8, 8, 3), np.uint8)
    with pytest.raises(CheckpointError, match="other images"):
        run(x=x)
    assert _snapshot(folder) == before


def test_leftovers_of_a_killed_save_are_removed_not_trusted(trained_m):
    """Garbage ``.next`` files (a kill while writing them) are discarded; training goes on."""
    folder, run = trained_m
    for name in ("last.h5", "best.h5", "resume.npz"):
        with open(os.path.join(folder, name + ".next"), "wb") as f:
            f.write(b"half written")
    state = run()
    assert state["done"] and state["epoch"] == 2
    assert not [f for f in os.listdir(folder) if f.endswith(".next")]


# ----------------------------------------------------------------------------- saved records

@pytest.mark.parametrize("damage,pattern", [
    ("garbage", "rec.npz is damaged"), ("missing key", "no array 'pred_adv'"),
    ("wrong shape", "'pred_adv' has 2 dimensions"), ("no digest", "no content digest")])
def test_damaged_saved_attack_record_is_named_and_recomputed(tmp_path, damage, pattern):
    from evaluation.store import records

    path = str(tmp_path / "rec.npz")
    fp = {"what": "test"}
    if damage == "garbage":
        open(path, "wb").write(b"PK\x03\x04 not really a zip")
    else:
        rec = {"x_adv": np.zeros((2, 4, 4, 3), np.float32), "pred_adv": np.zeros(2, np.int64),
               "fingerprint": records.canonical(fp)}
        if damage == "missing key":
            del rec["pred_adv"]
        elif damage == "wrong shape":
            rec["pred_adv"] = np.zeros((2, 3), np.int64)
        if damage == "no digest":       # a record of before records proved their content
            with open(path, "wb") as f:
                np.savez(f, **rec)
        else:
            records.write_npz(path, rec)
    logs = []
    assert records.read_npz(path, fp, log=logs.append,
                            expect={"x_adv": 4, "pred_adv": 1}) is None
    assert any("rec.npz" in m and "recomputed" in m and re.search(pattern, m)
               for m in logs), logs


def _record(tmp_path, **arrays):
    """A well-formed attack record of 3 images of a 3-class set, with ``arrays`` changed."""
    from evaluation.store import records
    rec = dict({"x_adv": np.full((3, 4, 4, 3), 0.5, np.float32),
                "pred_adv": np.array([0, 2, -1]), "pred_clean": np.array([0, 1, 2]),
                "fingerprint": records.canonical({"what": "test"})}, **arrays)
    path = str(tmp_path / "rec.npz")
    records.write_npz(path, rec)
    return path


@pytest.mark.parametrize("arrays,pattern", [
    ({"pred_adv": np.array([0, 9, 1])}, "'pred_adv' holds class 9 of a 3-class set"),
    ({"pred_adv": np.array([0, -2, 1])}, "'pred_adv' holds -2, below -1"),
    ({"pred_adv": np.array([0.0, 1.0, 1.0])}, "'pred_adv' holds float64, not integers"),
    ({"x_adv": np.full((3, 4, 4, 3), 1.5, np.float32)}, "pixels outside \\[0, 1\\]"),
    ({"x_adv": np.zeros((3, 5, 5, 3), np.float32)}, "images of shape \\(5, 5, 3\\)"),
    ({"x_adv": np.zeros((2, 4, 4, 3), np.float32)}, "'x_adv' holds 2 rows for 3 images"),
])
def test_a_record_is_used_only_for_what_the_evaluation_relies_on(tmp_path, arrays, pattern):
    """A record with the right fingerprint and a matching digest is still checked: class
    indices in [-1, C), one row per image, images of the run's shape in [0, 1]."""
    from evaluation.store import records
    from evaluation.store.attack_store import ATTACK_ARRAYS
    path = _record(tmp_path, **arrays)
    logs = []
    got = records.read_npz(path, {"what": "test"}, logs.append, ATTACK_ARRAYS, 3, classes=3,
                           image_shape=(4, 4, 3))
    assert got is None and any(re.search(pattern, m) and "recomputed" in m for m in logs), logs
    assert records.read_npz(_record(tmp_path), {"what": "test"}, logs.append, ATTACK_ARRAYS, 3,
                            classes=3, image_shape=(4, 4, 3)) is not None


def test_an_edited_record_fails_its_digest(tmp_path):
    """Values changed after the record was written (its fingerprint unchanged) are damage:
    the record is named and recomputed, never used."""
    from evaluation.store import records
    path = _record(tmp_path)
    with np.load(path) as f:
        rec = {k: f[k] for k in f.files}
    rec["pred_adv"] = np.array([1, 1, 1])            # in range, and wrong
    with open(path, "wb") as f:
        np.savez_compressed(f, **rec)
    logs = []
    assert records.read_npz(path, {"what": "test"}, logs.append, {"pred_adv": 1}, 3) is None
    assert any("does not match its digest" in m for m in logs), logs


def _adaptive_store(tmp_path, logs, n=10):
    import types

    from data.knowledge import get_class_set
    from defense.base import ImageSet
    from evaluation.store.adaptive_store import AdaptiveStore
    images = ImageSet(name="benign-test", split="test", x=np.zeros((n, 4, 4, 3), np.float32),
                      keys=["k%d" % i for i in range(n)], labels=np.zeros(n, np.int64))
    cfg = types.SimpleNamespace(class_set=get_class_set("CS3a"), adaptive_batch=n)
    return AdaptiveStore(cfg, None, {}, lambda split: images, str(tmp_path), logs.append)


def _engine_record(n, **changes):
    from evaluation.store import records
    won = np.array([0, -1] * (n // 2))
    return dict({"x_adv": np.zeros((n, 4, 4, 3), np.float32), "success": won >= 0,
                 "first_step": np.zeros((n, 2), np.int64),
                 "route_evaluations": np.ones((n, 1), np.int64), "won": won,
                 "routes": '["default"]', "runs": "[]", "seconds": 1.0,
                 "fingerprint": records.canonical({"batch": 0})}, **changes)


@pytest.mark.parametrize("changes,pattern", [
    ({"success": np.ones(10, bool)}, "'success' disagrees with the winning entries"),
    ({"success": np.ones(10, np.int64)}, "'success' holds int64, not booleans"),
    ({"won": np.full(10, -3)}, "'won' holds -3, below -1"),
])
def test_an_adaptive_record_whose_arrays_disagree_is_recomputed(tmp_path, changes, pattern):
    from evaluation.store import records
    from evaluation.store.adaptive_store import _ENGINE_ARRAYS
    logs = []
    store = _adaptive_store(tmp_path, logs)
    path = str(tmp_path / "test-pgd_linf_8.wrong.batch-0000.npz")
    records.write_npz(path, _engine_record(10, **changes))
    assert store._read(path, {"batch": 0}, _ENGINE_ARRAYS, 10) is None
    assert any(re.search(pattern, m) for m in logs), logs
    records.write_npz(path, _engine_record(10))
    assert store._read(path, {"batch": 0}, _ENGINE_ARRAYS, 10) is not None


def test_a_short_batch_state_is_recomputed_not_merged(tmp_path):
    """A batch cut to 7 of its 10 rows (its arrays consistent with each other, its digest
    rewritten) is named and recomputed; a merged record that does not hold one row per image
    is refused before it is written."""
    from evaluation.store import records
    from evaluation.store.adaptive_store import _ENGINE_ARRAYS, _engine_arrays, _engine_result
    logs = []
    store = _adaptive_store(tmp_path, logs)
    path = str(tmp_path / "test-pgd_linf_8.wrong.batch-0000.npz")
    records.write_npz(path, _engine_record(8))
    assert store._read(path, {"batch": 0}, _ENGINE_ARRAYS, 10) is None
    assert any("'x_adv' holds 8 rows for 10 images" in m for m in logs), logs
    short = _engine_result(_engine_record(8))
    with pytest.raises(ValueError, match="refusing to write the merged.*8 rows for 10 images"):
        records.check_record(_engine_arrays(short), _ENGINE_ARRAYS, 10,
                             "the merged adaptive record x")


def test_damaged_observation_cache_is_named_and_recomputed(tmp_path):
    from data.fileio import read_cached_json

    path = tmp_path / "obs.json"
    path.write_text('{"fingerprint": {"a": 1}, "observation": ')
    logs = []
    assert read_cached_json(str(path), log=logs.append) is None
    assert any("obs.json" in m and "recomputed" in m for m in logs), logs


@pytest.mark.parametrize("edit,pattern", [
    (lambda rec: rec["observation"]["pred"].__setitem__(0, 2), "does not match its digest"),
    (lambda rec: rec.pop("content"), "no content digest"),
    (lambda rec: rec.update(observation={"pred": [0, 9]}, content=None), "pred\\[1\\] is 9"),
])
def test_an_edited_observation_is_recomputed(tmp_path, edit, pattern):
    """An observation file proves its content (a digest of its observation) and holds class
    indices of the run's set only; otherwise the defense observes the images anew."""
    import json

    from defense.base import ImageSet
    from evaluation.store.observations import ObservationCache, _digest

    class Counting:
        label, calls = "toy", 0

        def fingerprint(self):
            return {"toy": 1}

        def observe(self, images):
            Counting.calls += 1
            return {"pred": [0, 1]}

    images = ImageSet(name="benign-test", split="test", x=np.zeros((2, 4, 4, 3), np.float32),
                      keys=["a", "b"], labels=np.array([0, 1]))
    logs = []
    ObservationCache(str(tmp_path), logs.append, classes=3).observe(Counting(), images)
    path = os.path.join(str(tmp_path), "defenses", "toy", "benign-test.json")
    rec = json.load(open(path))
    edit(rec)
    if "content" in rec and rec["content"] is None:       # a consistent, out-of-range file
        rec["content"] = _digest(rec["observation"])
    json.dump(rec, open(path, "w"))
    again = ObservationCache(str(tmp_path), logs.append, classes=3).observe(Counting(), images)
    assert again == {"pred": [0, 1]} and Counting.calls == 2
    assert any(re.search(pattern, m) and "recomputed" in m for m in logs), logs


# ----------------------------------------------------------------------------- --config

def _config_file(tmp_path, mutate):
    """A run's config.json (its recorded configuration) changed by ``mutate``."""
    from data.knowledge import get_class_set
    from evaluation.config import EvalConfig, record

    cfg = EvalConfig(class_set=get_class_set("CS5b"), data_dir=str(tmp_path / "data"),
                     results_dir=str(tmp_path / "results"),
                     checkpoint_dir=str(tmp_path / "ckpt"))
    rec = record("evaluate", cfg)
    mutate(rec)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(rec))
    return str(path)


@pytest.mark.parametrize("mutate,pattern", [
    (lambda r: r["config"].update(n_test="ten"), r"setting 'n_test' must be an integer"),
    (lambda r: r["config"].update(n_test=0), r"setting 'n_test' must be >= 1"),
    (lambda r: r["config"]["train"].update(epochs="two"),
     r"setting 'train.epochs' must be an integer, got 'two'"),
    (lambda r: r["config"]["train"].update(epochs=0), r"--epochs must be an integer >= 1"),
    (lambda r: r["config"].update(target_fpr=2.0), r"target_fpr must be in \(0, 1\)"),
    (lambda r: r["config"].update(defenses=["unmask:k=wobbly"]),
     r"k must be one of standard, robust"),
    (lambda r: r["config"].update(vectors=[["pgd_linf", "eight"]]),
     r"setting 'vectors' must hold \[attack name, eps\] pairs"),
    (lambda r: r["config"].update(adaptive_goals=["sideways"]),
     r"--adaptive-goals 'sideways': unknown goal sideways"),
    (lambda r: r["config"].update(adaptive_goals="wrong"),
     r"setting 'adaptive_goals' must be"),
    (lambda r: r["config"].update(adaptive_goals=["wrong"]),
     r"--adaptive-goals narrows the defense-aware attacks, and the run has none"),
    (lambda r: r["config"].pop("class_set"), r"setting 'class_set' is missing"),
    (lambda r: r.pop("config"), r"a record of command 'evaluate' needs 'config' \(an "
                                r"object\), it is missing"),
    (lambda r: r.update(command="grid"), r"a record of command 'grid' needs 'archs'"),
    (lambda r: r.update(checkpoints={"m": "abc"}), r"'checkpoints' must map each model"),
])
def test_config_goes_through_the_command_lines_checks(tmp_path, capsys, mutate, pattern):
    """--config trusts neither the values nor the structure of the file: each is checked as
    the command line checks it, and the error names the file and the setting (exit 2)."""
    path = _config_file(tmp_path, mutate)
    assert main.main(["--config", path]) == 2
    err = capsys.readouterr().err
    assert path in err and re.search(pattern, err), err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "results"), "nothing ran"


def test_a_run_narrowed_to_some_goals_reads_back_from_its_config_file():
    from data.knowledge import get_class_set
    from evaluation.config import EvalConfig, from_dict, to_dict

    cfg = EvalConfig(class_set=get_class_set("CS5b"), defenses=("unmask",),
                     threats=("gray-box", "adaptive"), adaptive_goals=("wrong",))
    back = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert back.adaptive_goals == ("wrong",) and back == cfg


def test_a_k_record_with_a_bad_setting_names_it(tmp_path, capsys):
    from evaluation.config import record
    from evaluation.options import k_defaults

    path = tmp_path / "config.json"
    path.write_text(json.dumps(record("k", options=dict(k_defaults(), k_steps="two"))))
    assert main.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--k-steps" in err and "Traceback" not in err


def test_a_rerun_loading_another_model_than_recorded_is_refused_unless_allowed(tmp_path):
    """The sha1 of every model a rerun loads is compared with the recorded one, wherever it
    is loaded from: another --checkpoint-dir holding another M is refused (naming both), and
    --allow-other-models runs it with the difference kept in the run's configuration."""
    import dataclasses

    from data.knowledge import get_class_set
    from evaluation.commands import check_recorded_models
    from evaluation.config import EvalConfig, checkpoint, record

    def config(ckpt):
        return EvalConfig(class_set=get_class_set("CS5b"), checkpoint_dir=str(tmp_path / ckpt))

    recorded, other = config("a"), config("b")
    for cfg, content in ((recorded, b"the recorded M"), (other, b"another M")):
        os.makedirs(cfg.m_dir)
        open(os.path.join(cfg.m_dir, "best.h5"), "wb").write(content)
    rec = record("evaluate", recorded, checkpoints={"m": os.path.join(recorded.m_dir,
                                                                       "best.h5")})
    assert check_recorded_models(rec, recorded, "config.json") is recorded
    with pytest.raises(ValueError, match="other models than the run recorded -- m: .*b/model_m"
                                         ".* has sha1 .*, the run recorded .*allow-other"):
        check_recorded_models(rec, other, "config.json")
    allowed = check_recorded_models(rec, other, "config.json", allow=True)
    assert len(allowed.other_models) == 1 and "sha1" in allowed.other_models[0]
    assert dataclasses.replace(allowed, other_models=()) == other
    assert checkpoint(os.path.join(other.m_dir, "best.h5"))["sha1"] in allowed.other_models[0]
    # a recorded model that is not there is made anew, with a note: not refused
    missing = config("c")
    assert check_recorded_models(rec, missing, "config.json") is missing


# ----------------------------------------------------------------------------- one writer

_HOLD = """
import sys, time
sys.path.insert(0, %r)
from data.fileio import exclusive
with exclusive(sys.argv[1], "the folder under test", log=print):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def test_one_writer_per_folder_a_second_process_waits_naming_the_first(tmp_path):
    """Two processes that want to write one folder: the second says which process holds it,
    waits, and goes on when the first is done -- never a half-written file between them."""
    import subprocess
    import sys
    import time

    lock = str(tmp_path / "ckpt.lock")
    script = _HOLD % os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    first = subprocess.Popen([sys.executable, "-c", script, lock, "3"],
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "holding"
    start = time.time()
    second = subprocess.run([sys.executable, "-c", script, lock, "0"], capture_output=True,
                            text=True, timeout=60)
    first.wait(30)
    waited = time.time() - start
    out = second.stdout
    assert "is in use by process %d on " % first.pid in out and "waiting" in out, out
    assert out.index("waiting") < out.index("holding"), "it waited before holding"
    assert waited >= 1.5


def test_m_training_holds_its_checkpoint_folder(tmp_path, monkeypatch):
    """train_classifier trains under the lock of its checkpoint folder (the lock itself --
    a second process waits, naming the first -- is the two-process test above)."""
    import models.train_classifier as tc

    held = []

    class Spy:
        def __init__(self, path, what, log):
            held.append((path, what))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tc, "exclusive", Spy)
    monkeypatch.setattr(tc, "_train_or_load", lambda *a, **kw: {"done": True})
    folder = str(tmp_path / "m")
    assert tc.train_classifier(None, None, None, None, None, folder) == {"done": True}
    assert held == [(folder + ".lock", "checkpoint folder %s" % folder)]


# ----------------------------------------------------------------------------- Python API

def test_api_errors_name_the_input():
    from attacks import run_attack
    from attacks.engine import EngineSettings
    from data.knowledge import get_class_set
    from defense.defenses import parse_defenses
    from defense.unmask import UnMask, scores
    from models.classifier import build_classifier
    from models.train_classifier import TrainConfig

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                          keras.layers.Dense(2)])
    x = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    y = np.array([0, 1, 0])
    bad = x.copy()
    bad[2, 1, 1, 0] = np.nan
    cases = [
        (lambda: run_attack(m, bad, y, "pgd_linf", eps=8), r"images\[2\]"),
        (lambda: run_attack(m, x, y, "pgd_linf", eps=8, step_size=0), r"step_size"),
        (lambda: run_attack(m, x[:0], y[:0], "pgd_linf", eps=8), r"empty|no images"),
        (lambda: run_attack(m, x, y[:2], "pgd_linf", eps=8), r"labels|y"),
        (lambda: EngineSettings(steps=0), r"steps must be an integer >= 1"),
        (lambda: EngineSettings(restarts=2, max_targets=0), r"max_targets"),
        (lambda: scores([{"a"}], [0, 1], [{"a"}, {"b"}]), r"preds must be a 1-D array"),
        (lambda: get_class_set("nosuch"), r"nosuch"),
        (lambda: parse_defenses("pca:-1"), r"pca"),
        (lambda: build_classifier("mobilenetv2_050", 1, 32), r"num_classes must be >= 2"),
        (lambda: build_classifier("mobilenetv2_050", 3, 32, weights="foo"),
         r"weights must be None or 'imagenet'"),
        (lambda: TrainConfig(momentum=1.0).validate(), r"momentum"),
        (lambda: UnMask(m, object(), {"a": {"x"}}, ["a"], 0.5), r"extract"),
        (lambda: UnMask("not a model", object(), {"a": {"x"}}, ["a"], 0.5),
         r"model must be callable"),
    ]
    for fn, pattern in cases:
        with pytest.raises((ValueError, TypeError, KeyError), match=pattern):
            fn()


def test_imagenet_weights_without_network_say_what_to_do(monkeypatch):
    from models import classifier

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")
    import dataclasses
    spec = dataclasses.replace(classifier.get_architecture("mobilenetv2_050"), build=offline)
    monkeypatch.setattr(classifier, "get_architecture", lambda name: spec)
    with pytest.raises(ValueError, match="ImageNet weights are neither in ~/.keras/models nor "
                                         "downloadable here.*--weights none"):
        classifier.build_classifier("mobilenetv2_050", 3, 32, weights="imagenet")


def _parts_file(tmp_path, **changes):
    """A one-image COCO parts file (the oracle's format) with ``changes`` to its annotation
    or category."""
    from pycocotools import mask as mask_utils

    m = np.zeros((8, 8), np.uint8, order="F")
    m[2:5, 2:5] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    ann = {"id": 1, "image_id": 1, "category_id": 0, "segmentation": rle, "area": 9,
           "bbox": [2, 2, 3, 3], "iscrowd": 0}
    cat = {"id": 0, "name": "plant"}
    ann.update(changes.get("ann", {}))
    cat.update(changes.get("cat", {}))
    obj = {"images": [{"id": 1, "file_name": "a/a_0.jpg", "height": 8, "width": 8}],
           "annotations": [ann], "categories": [cat]}
    path = tmp_path / "test_parts.json"
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("changes,pattern", [
    ({"cat": {"name": "wingz"}}, r"name 'wingz' does not match PARTS\[0\]"),
    ({"cat": {"id": 99}, "ann": {"category_id": 99}}, r"category ids must be integers in 0..43"),
    ({"ann": {"bbox": [2, 2, -3, 3]}}, r"bbox width and height must be >= 0"),
    ({"ann": {"bbox": [2, 2, "w", 3]}}, r"bbox must be \[x, y, w, h\]"),
    ({"ann": {"segmentation": [[1, 1, 2, 2, 3]]}}, r"polygon must be a list of >= 6"),
], ids=["unknown-part-name", "category-out-of-range", "negative-bbox", "bbox-not-numbers",
        "odd-polygon"])
def test_oracle_parts_file_with_unknown_parts_or_bad_geometry_is_refused(tmp_path, changes,
                                                                        pattern):
    from defense.extractors import OracleExtractor

    path = _parts_file(tmp_path, **changes)
    with pytest.raises(ValueError, match="test_parts.json.*" + pattern):
        OracleExtractor.from_coco(path)
    assert OracleExtractor.from_coco(_parts_file(tmp_path)).parts_of("a/a_0.jpg") == {"plant"}


def test_saved_observation_with_unknown_parts_or_wrong_length_is_not_used():
    from evaluation.store.observations import observation_problem as _observation_problem

    good = {"pred": [0, 1], "parts": [["wheel"], []]}
    assert _observation_problem(good, 2) is None
    assert "unknown part names ['wingz']" in _observation_problem(
        {"pred": [0, 1], "parts": [["wheel", "wingz"], []]}, 2)
    assert "one entry per image" in _observation_problem({"pred": [0]}, 2)
    assert "not an object" in _observation_problem([1, 2], 2)


def test_k_config_with_another_class_count_than_the_data_is_refused():
    import types

    from evaluation.model_k import check_class_count

    cfg = get_k_config("synthetic")
    check_class_count(cfg, types.SimpleNamespace(num_classes=cfg.NUM_CLASSES), "data/x")
    with pytest.raises(ValueError, match=r"NUM_CLASSES=45, but the part annotations in "
                                         r"data/x have 4 classes"):
        check_class_count(cfg, types.SimpleNamespace(num_classes=4), "data/x")


# ----------------------------------------------------------------------------- issue 21
# Shared, read-only and half-broken set-ups.  Root ignores permission bits (chmod cannot make
# a folder read-only for the test), so read-only folders are simulated where the project
# writes: its writability probe and every atomic write create their file through
# ``data.fileio._create_temporary``, which fails under a read-only folder as on a read-only
# mount; the folders' contents are also compared before and after.

@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)`` makes ``folder`` (and everything under it) read-only for the
    project, as a read-only mount would."""
    import errno

    import data.fileio as fio

    roots = []
    real = fio._create_temporary

    def create(folder, prefix, suffix):
        path = os.path.abspath(folder)
        if any(path == r or path.startswith(r + os.sep) for r in roots):
            raise OSError(errno.EROFS, "Read-only file system", folder)
        return real(folder, prefix, suffix)
    monkeypatch.setattr(fio, "_create_temporary", create)
    return lambda folder: roots.append(os.path.abspath(str(folder)))


def _tree(root):
    """Every folder and file (with its digest) under ``root``: what a read-only folder must
    still hold after a run."""
    out = {}
    for folder, dirs, files in os.walk(root):
        out[os.path.relpath(folder, root) + os.sep] = None
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return out


def _tiny_synthetic(monkeypatch):
    """Commands read the workspace's tiny data set as theirs (it was made with TINY)."""
    import functools

    from data import synthetic
    monkeypatch.setattr(synthetic, "SyntheticConfig", functools.partial(
        SyntheticConfig, **TINY.as_dict()))


def _run(argv, capsys):
    try:
        code = main.main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


# kind: a team's trained models on a read-only share

@pytest.mark.slow
def test_trained_m_and_at_on_a_read_only_share_are_evaluated_only_training_is_refused(
        workspace, tmp_path, read_only, monkeypatch, capsys):
    """Kind: trained models on a read-only share.  Evaluating M and AT trained in a folder
    that cannot be written reads them and writes only to --results-dir; a run that would
    train there is refused before any work, saying so and how to point --checkpoint-dir
    elsewhere."""
    _tiny_synthetic(monkeypatch)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    ckpt = tmp_path / "share"
    argv = ["--data-dir", str(workspace / "data"), "--checkpoint-dir", str(ckpt),
            "--k-log-dir", str(tmp_path / "klogs"), "--no-progress", "--classset", "CS3a",
            "--input-size", "32", "--batch-size", "16", "--epochs", "1", "--attacks",
            "fgsm:8", "--n-test", "6", "--extractor", "oracle", "--adv-train"]
    assert _run(argv + ["--results-dir", str(tmp_path / "team")], capsys)[0] == 0
    read_only(ckpt)
    shared = _tree(ckpt)
    mine = tmp_path / "mine"
    assert _run(argv + ["--results-dir", str(mine)], capsys)[0] == 0
    metrics = json.loads((mine / "cs3-1" / "mobilenetv2_050" / "metrics.json").read_text())
    assert metrics["benign"]["acc_at"] is not None          # AT read from the share too
    assert _tree(ckpt) == shared
    code, err = _run(argv + ["--epochs", "2", "--results-dir", str(tmp_path / "more")], capsys)
    assert code == 2
    assert re.search(r"error: --checkpoint-dir %s cannot be written \(Read-only file system"
                     r".*M would be trained in .*\(it holds 1 of the 2 epochs asked for.*"
                     r"pass a --checkpoint-dir you can write to" % re.escape(str(ckpt)), err), err
    assert _tree(ckpt) == shared and not (tmp_path / "more").exists()


def test_trained_k_in_a_read_only_log_folder_is_evaluated_only_training_is_refused(
        workspace, tmp_path, read_only, monkeypatch, capsys):
    """The same kind for K: --model K evaluates the K trained in a read-only --k-log-dir
    (writing --k-results-dir only) and refuses --k-retrain before any work."""
    from models.mrcnn.model import MaskRCNN

    _tiny_synthetic(monkeypatch)
    logs = tmp_path / "k_share"
    k = MaskRCNN("inference", get_k_config("tiny"), str(logs))
    k.save_weights(str(logs / "tiny20250101T0000" / "mask_rcnn_tiny_0001.h5"))
    k.close()
    read_only(logs)
    shared = _tree(logs)
    argv = ["--model", "K", "--k-config", "tiny", "--data-dir", str(workspace / "data"),
            "--k-log-dir", str(logs), "--k-eval-limit", "1", "--no-progress"]
    # the tiny K does not have the synthetic data's classes: its evaluation under attack
    # (which needs K's losses on the annotations) is refused, naming both
    code, err = _run(argv + ["--k-results-dir", str(tmp_path / "k0")], capsys)
    assert code == 2 and re.search(r"NUM_CLASSES=4, but the part annotations", err), err
    argv += ["--k-attack-eps", "none"]
    assert _run(argv + ["--k-results-dir", str(tmp_path / "kres")], capsys)[0] == 0
    assert json.loads((tmp_path / "kres" / "eval_test.json").read_text())["images"] == 1
    code, err = _run(argv + ["--k-retrain", "--k-results-dir", str(tmp_path / "k2")], capsys)
    assert code == 2
    assert re.search(r"--k-log-dir %s cannot be written \(Read-only file system.*--k-retrain "
                     r"trains K again there.*pass a folder you can write to"
                     % re.escape(str(logs)), err), err
    assert _tree(logs) == shared and not (tmp_path / "k2").exists()


def test_a_trained_m_in_a_read_only_folder_is_loaded_and_never_written(trained_m, read_only):
    """The library below the CLI: train_classifier only reads a finished M in a folder that
    cannot be written (an abandoned .next file stays), refuses an interrupted save it would
    have to finish there, and refuses more epochs before training any."""
    from models.train_classifier import CheckpointError, TrainConfig, training_writes

    folder, run = trained_m
    one = TrainConfig(epochs=1, batch_size=8, learning_rate=0.01)
    assert training_writes(folder, one) is None
    assert "1 of the 2 epochs" in training_writes(folder, TrainConfig(
        epochs=2, batch_size=8, learning_rate=0.01))
    with open(os.path.join(folder, "last.h5.next"), "wb") as f:
        f.write(b"abandoned by a killed save")
    read_only(folder)
    before = _tree(folder)
    assert run(cfg=one)["epoch"] == 1
    with pytest.raises(CheckpointError, match=r"checkpoint_dir .* cannot be written \(Read-only "
                                              r"file system.*M must be trained there \(epochs "
                                              r"2\.\.2\)"):
        run()
    assert _tree(folder) == before                # the abandoned .next file included
    state_path = os.path.join(folder, "state.json")
    state = json.load(open(state_path))
    pending = os.path.join(folder, "best.h5.next")
    with open(pending, "wb") as f:
        f.write(b"recorded")
    state["best_sha256"] = hashlib.sha256(b"recorded").hexdigest()
    with open(state_path, "w") as f:            # the state a kill after it was written left
        json.dump(state, f)
    before = _tree(folder)
    with pytest.raises(CheckpointError, match=r"cannot be written .*an interrupted save of "
                                              r"best\.h5 must be finished there"):
        run(cfg=one)
    assert _tree(folder) == before


def test_the_trajectory_cache_goes_to_the_results_when_m_folder_is_read_only(tmp_path,
                                                                             read_only):
    from data.knowledge import get_class_set
    from evaluation.comparison import trajectory_cache
    from evaluation.config import EvalConfig

    cfg = EvalConfig(class_set=get_class_set("CS3a"), checkpoint_dir=str(tmp_path / "ckpt"),
                     results_dir=str(tmp_path / "res"))
    beside_m = cfg.m_dir + "_trajectory"
    assert trajectory_cache(cfg) == (beside_m,)
    os.makedirs(cfg.m_dir)                          # M trained there, then shared read-only
    read_only(tmp_path / "ckpt")
    assert trajectory_cache(cfg) == (os.path.join(cfg.out_dir, "vectors", "trajectory"),
                                     beside_m)


# kind: unwritable places found late

def test_data_dir_generated_in_an_unwritable_folder_is_refused_before_any_work(
        tmp_path, read_only, capsys):
    """Kind: unwritable places found late.  A missing or empty --data-dir is generated beside
    it (a temporary folder renamed into place): its parent is probed before any work."""
    empty = tmp_path / "share" / "empty"
    empty.mkdir(parents=True)
    read_only(tmp_path / "share")
    for data_dir in (empty, tmp_path / "share" / "missing"):
        code, err = _run(["--prepare-data", "--data-dir", str(data_dir)], capsys)
        assert code == 2
        assert re.search(r"error: --data-dir %s cannot be generated: .*%s cannot be written "
                         r"\(Read-only file system.*pass a --data-dir in a folder you can "
                         r"write to" % (re.escape(str(data_dir)),
                                        re.escape(str(tmp_path / "share"))), err), err
    assert sorted(os.listdir(tmp_path / "share")) == ["empty"] and not os.listdir(empty)


def test_converter_probes_out_before_any_work(tmp_path, read_only, capsys):
    """The PASCAL-Part converter: --out naming a file or a folder that cannot be written, and
    inputs that are no folders, end in `error: ...` naming the option before any work."""
    from data import pascal_part

    ann = tmp_path / "ann"
    ann.mkdir()
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "share").mkdir()
    read_only(tmp_path / "share")
    cases = [
        (["--out", str(tmp_path / "a_file")], r"error: --out .*a_file is a file, not a folder"),
        (["--out", str(tmp_path / "a_file" / "x")], r"error: --out .*lies under the file"),
        (["--out", str(tmp_path / "share")], r"error: --out .*share cannot be written "
                                              r"\(Read-only file system"),
        (["--out", str(tmp_path / "o"), "--images", str(tmp_path / "nope")],
         r"error: --images .*nope is not a folder; point it at VOC2010's JPEGImages"),
    ]
    for extra, pattern in cases:
        with pytest.raises(SystemExit) as exit_:
            pascal_part.main(["--annotations", str(ann)] + extra)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and re.search(pattern, err), err
    assert sorted(os.listdir(tmp_path)) == ["a_file", "ann", "share"]
    assert (tmp_path / "a_file").read_text() == "mine" and not os.listdir(tmp_path / "share")
    with pytest.raises(ValueError, match=r"out_dir .*a_file is a file"):
        pascal_part.convert_pascal_part(str(ann), None, str(tmp_path / "a_file"))


# kind: errors that do not name the input (the command line's cases are in CLI_CASES)

def test_converter_options_name_their_value_and_range(tmp_path, capsys):
    from data import pascal_part

    ann = tmp_path / "ann"
    ann.mkdir()
    for seed in ("-1", "4294967296", "x"):
        with pytest.raises(SystemExit) as exit_:
            pascal_part.main(["--annotations", str(ann), "--out", str(tmp_path / "o"),
                              "--seed", seed])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert "argument --seed: must be a non-negative integer <= 4294967295, got '%s'" % seed \
            in err, err
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer <= 4294967295, "
                                         r"got -1"):
        pascal_part.convert_pascal_part(str(ann), None, str(tmp_path / "o"), seed=-1)
    assert sorted(os.listdir(tmp_path)) == ["ann"]


# kind: the Python API below the CLI's checks

def _tiny_classifier(size=8):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((size, size, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(2)])


def test_api_refuses_images_that_do_not_fit_the_model():
    """Kind: the Python API below the CLI's checks.  Images of another size than M's input
    are refused by name at every entry that runs M (UnMask, run_attack, the defenses),
    instead of failing inside a compiled graph."""
    from attacks import run_attack
    from defense.unmask import UnMask

    m = _tiny_classifier(8)
    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1, 0])

    class Parts:
        kind = "test"

        def extract(self, images, keys):
            return [frozenset({"x"})] * len(images)
    um = UnMask(m, Parts(), {"a": {"x"}, "b": {"y"}}, ["a", "b"], 0.5)
    pattern = r"images of shape \[[BN], 16, 16, 3\] do not fit the model, whose input is " \
              r"\[B, 8, 8, 3\]: resize them to the model's input size \(8x8\)"
    for call in (lambda: um.protect(x), lambda: um.predict(x),
                 lambda: run_attack(m, x, y, "fgsm", eps=8),
                 lambda: _fitted("none", m).predict(_set(x, y))):
        with pytest.raises(ValueError, match=pattern):
            call()


def _set(x, y, **kw):
    from defense.base import ImageSet
    return ImageSet(name="s", split="test", x=x, keys=["k%d" % i for i in range(len(y))],
                    labels=y, **kw)


def _fitted(name, m):
    from data.knowledge import get_class_set
    from defense.base import FitContext
    from defense.defenses import build_defense

    d = build_defense(name)
    d.fit(FitContext(models={"m": m}, class_set=get_class_set("CS3a"), seed=0,
                     target_fpr=0.1, threshold=None, log=lambda s: None, images=None,
                     attacked=None, observe=None))
    return d


def test_defenses_refuse_unfitted_use_and_image_sets_that_do_not_add_up():
    from data.knowledge import get_class_set
    from defense.base import FitContext
    from defense.defenses import build_defense

    m = _tiny_classifier(8)
    x = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    y = np.array([0, 1, 0])
    ctx = dict(class_set=get_class_set("CS3a"), seed=0, target_fpr=0.1, threshold=None,
               log=lambda s: None, images=None, attacked=None, observe=None)
    cases = [
        (lambda: build_defense("none").predict(_set(x, y)), r"defense 'none' is not fitted: "
                                                             r"call fit\(ctx\)"),
        (lambda: build_defense("jpeg").fit("ctx"), r"fit\(ctx\) takes a defense.base."
                                                   r"FitContext"),
        (lambda: _fitted("none", m).predict(x), r"predict\(\) takes an ImageSet"),
        (lambda: _set(x, y[:2]), r"ImageSet.labels must be a 1-D array of 3 class indices"),
        (lambda: _set(x, y + 0.5), r"ImageSet.labels must hold integer class indices"),
        (lambda: _set(x, y - 2), r"ImageSet.labels must be class indices >= 0"),
        (lambda: _set((x * 255).astype(np.uint8), y), r"ImageSet.x must be float pixels"),
        (lambda: _set(x * 255, y), r"ImageSet.x must be finite pixels in \[0, 1\]"),
        (lambda: _set(x[0], y), r"ImageSet.x must have shape \[B, H, W, 3\]"),
        (lambda: _set(x, y, preds={"m": [0, 1]}), r"ImageSet.preds\['m'\] must be a 1-D "
                                                  r"array of 3"),
        (lambda: FitContext(models={}, **ctx), r"models must map 'm' to M"),
        (lambda: FitContext(models={"m": m}, **dict(ctx, target_fpr=0)), r"target_fpr must "
                                                                          r"be in \(0, 1\)"),
        (lambda: FitContext(models={"m": m}, **dict(ctx, threshold=2)), r"threshold must be "
                                                                        r"in \[0, 1\]"),
        (lambda: FitContext(models={"m": m}, **dict(ctx, seed=-1)), r"seed must be an "
                                                                    r"integer >= 0"),
    ]
    for fn, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern):
            fn()
    assert _fitted("none", m).predict(_set(x, y)).shape == (3,)


def test_k_refuses_pixels_outside_its_range_and_inputs_that_are_no_batch(tmp_path):
    """MaskRCNN.detect and PartExtractor take 0..255 pixels (extract: [0, 1]); negative or
    larger values, complex numbers, a lone image or None are refused by name."""
    from models.mrcnn.extractor import PartExtractor
    from models.mrcnn.model import MaskRCNN

    k = MaskRCNN("inference", get_k_config("tiny"), str(tmp_path))
    try:
        good = np.full((64, 64, 3), 100, np.uint8)
        ext = PartExtractor(k, ["BG", "a", "b", "c"])
        cases = [
            (lambda: k.detect([good, np.full((64, 64, 3), -50.0)]),
             r"images\[1\] must hold pixels in 0..255, got range -50..-50"),
            (lambda: k.detect([np.full((64, 64, 3), 1000.0), good]),
             r"images\[0\] must hold pixels in 0..255, got range 1000..1000"),
            (lambda: k.detect([good, good.astype(np.complex64)]), r"images\[1\] must hold "
                                                                  r"real numbers"),
            (lambda: k.detect(good), r"images must be a batch \[B, H, W, 3\]; got one image"),
            (lambda: k.detect(None), r"images must be a batch"),
            (lambda: ext.detect([good - 200.0]), r"images\[0\] must hold pixels in 0..255"),
            (lambda: ext.extract(np.full((2, 64, 64, 3), 0.5), keys="ab"),
             r"keys must be a sequence of one key per image, got the string 'ab'"),
            (lambda: PartExtractor(None), r"PartExtractor needs a MaskRCNN built with "
                                          r"mode='inference'"),
            (lambda: PartExtractor.from_checkpoint("last", "tiny", model_dir=str(tmp_path),
                                                   threshold=float("nan")),
             r"threshold must be a detection score in \[0, 1\]"),
            (lambda: PartExtractor.from_checkpoint("last", object()), r"config must be a "
                                                                      r"mrcnn_config.Config"),
        ]
        for fn, pattern in cases:
            with pytest.raises(ValueError, match=pattern):
                fn()
        assert len(k.detect(np.stack([good, good]))) == 2     # a [B, H, W, 3] array is a batch
    finally:
        k.close()
