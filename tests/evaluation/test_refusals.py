"""Refusals of inputs that would silently give a wrong result (project issue "refuse what would
silently give a wrong result").

Each test fails on the code before the fix and checks the error's message (the file or
argument it is about and the way out) and that nothing written earlier is lost.  Only tiny
models are built: a 3-layer stand-in for M and the "tiny" configuration of K.
"""
import glob
import json
import os
import shutil
import types

import h5py
import numpy as np
import pytest

import tfcompat
from data.fileio import atomic_path, write_json_atomic, write_text_atomic
from mrcnn_config import get_config
from models import train_classifier as m_train
from evaluation import model_k as cli
from models.mrcnn import weights as k_weights
from models.mrcnn.extractor import PartExtractor
from models.mrcnn.model import MaskRCNN, find_last_checkpoint
from models.mrcnn.toy_data import ToyDataset
from models.mrcnn.weights import weighted_layers
from models.train_classifier import TrainConfig, train_classifier

tf, keras = tfcompat.import_tf()

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["BG", "a", "b", "c"]  # the tiny config's 1 + 3 classes
SIZE = 8
QUIET = dict(progress=False, log=lambda s: None)


# ----------------------------------------------------------------------------- helpers

def _bytes(folder):
    """{relative path: content} of every file under a folder, subfolders (M's TensorBoard
    summaries) included, to show that nothing was changed."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _values(model):
    return [v.copy() for v in model.read_variables(model.keras_model.weights)]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def _truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def _tiny_m(nan_gradient=False, seed=0):
    """A stand-in for M (logits out, layer names like M's file); ``nan_gradient`` makes the
    convolution's gradient NaN while the loss stays finite."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    if nan_gradient:
        @tf.custom_gradient
        def nan_grad(t):
            return tf.identity(t), lambda dy: dy * np.float32("nan")
        x = keras.layers.Lambda(nan_grad, name="nan_grad")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="logits")(x))


def _m_data(n=16):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64)
    return x, y


def _train_m(folder, epochs, model=None, **kwargs):
    x, y = _m_data()
    return train_classifier(model or _tiny_m(), x, y, x, y, str(folder),
                            TrainConfig(epochs=epochs, batch_size=8, learning_rate=0.01),
                            **dict(QUIET, **kwargs))


@pytest.fixture(scope="module")
def m_folder(tmp_path_factory):
    """A finished 1-epoch run of M (best.h5, last.h5, state.json); copy it before changing."""
    folder = tmp_path_factory.mktemp("m") / "run"
    _train_m(folder, 1)
    return str(folder)


@pytest.fixture
def m_copy(m_folder, tmp_path):
    folder = str(tmp_path / "m")
    shutil.copytree(m_folder, folder)
    return folder


@pytest.fixture(scope="module")
def m_best_h5(m_folder):
    return os.path.join(m_folder, "best.h5")


@pytest.fixture(scope="module")
def k_run(tiny_k, tmp_path_factory):
    """Two checkpoints (epochs 1, 2) of the tiny K in a run folder: ``(log_dir, paths)``."""
    logs = tmp_path_factory.mktemp("k_run")
    paths = [str(logs / "tiny20250101T0000" / ("mask_rcnn_tiny_%04d.h5" % e)) for e in (1, 2)]
    for path in paths:
        tiny_k.save_weights(path)
    return str(logs), paths


def _drop_layers(src, dst, drop):
    """Copy of a K weight file without the layers ``drop(name)`` selects."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        for name in names:
            if drop(name):
                del f[name]
        f.attrs["layer_names"] = np.array([n.encode() for n in names if not drop(n)])
    return dst


# ----------------------------------------------------------------------------- 1. layers matched

def test_k_refuses_a_checkpoint_of_m_that_matches_no_layer(tiny_k, m_best_h5):
    before = _values(tiny_k)
    with pytest.raises(ValueError, match=r"not a model K .*0 of its \d+ layers match") as err:
        tiny_k.load_weights(m_best_h5, by_name=True)
    assert m_best_h5 in str(err.value) and "python main.py --model K" in str(err.value)
    assert _same(_values(tiny_k), before)  # nothing loaded


def test_extractor_refuses_a_checkpoint_of_m(m_best_h5, tmp_path):
    with pytest.raises(ValueError, match="not a model K") as err:
        PartExtractor.from_checkpoint(m_best_h5, get_config("tiny"), model_dir=str(tmp_path),
                                      class_names=NAMES)
    assert m_best_h5 in str(err.value)


def test_k_refuses_a_checkpoint_missing_a_whole_part(tiny_k, k_run, tmp_path):
    full = k_run[1][0]
    before = _values(tiny_k)
    no_rpn = _drop_layers(full, str(tmp_path / "no_rpn.h5"), lambda n: n == "rpn_model")
    with pytest.raises(ValueError, match=r"no weights for its RPN \(RPN: rpn_model\)") as err:
        tiny_k.load_weights(no_rpn, by_name=True)
    assert no_rpn in str(err.value)
    no_heads = _drop_layers(full, str(tmp_path / "no_heads.h5"), lambda n: n.startswith("mrcnn_"))
    with pytest.raises(ValueError, match="no weights for its heads"):
        tiny_k.load_weights(no_heads, by_name=True)
    assert _same(_values(tiny_k), before)


def test_k_load_reports_the_count_and_allows_the_callers_exclusions(tiny_k, k_run, tmp_path):
    full = k_run[1][0]
    n_layers = len(weighted_layers(tiny_k.keras_model))
    loaded = tiny_k.load_weights(full, by_name=True)
    assert loaded.matched == loaded.candidates == n_layers and not loaded.unmatched
    assert "loaded %d of %d weighted layers" % (n_layers, n_layers) in loaded.summary()
    # the heads left out on purpose (as the COCO weights are loaded) may be missing
    heads = [layer.name for layer in weighted_layers(tiny_k.keras_model)
             if k_weights.layer_part(layer.name) == "heads"]
    no_heads = _drop_layers(full, str(tmp_path / "no_heads.h5"), lambda n: n in heads)
    loaded = tiny_k.load_weights(no_heads, by_name=True, exclude=heads)
    assert loaded.matched == loaded.candidates == n_layers - len(heads)
    # a backbone-only file (ImageNet ResNet, --weights imagenet) initialises the backbone
    backbone = _drop_layers(full, str(tmp_path / "backbone.h5"),
                            lambda n: k_weights.layer_part(n) != "backbone")
    loaded = tiny_k.load_weights(backbone, by_name=True)
    assert loaded.matched == sum(k_weights.layer_part(n) == "backbone" for n in loaded)
    assert 0 < loaded.matched < loaded.candidates and "rpn_model" in loaded.unmatched


# ----------------------------------------------------------------------------- 2. damaged files

def test_truncated_k_checkpoint_is_named_with_the_way_to_recover(tiny_k, k_run, tmp_path):
    log_dir, (first, second) = k_run
    shutil.copytree(log_dir, str(tmp_path / "logs"))
    first, second = [p.replace(log_dir, str(tmp_path / "logs")) for p in (first, second)]
    _truncate(second)
    before = _values(tiny_k)
    with pytest.raises(ValueError, match="damaged") as err:
        tiny_k.load_weights(second, by_name=True)
    message = str(err.value)
    assert second in message and "--weights last" in message and "--k-retrain" in message
    with pytest.raises(ValueError, match="damaged"):
        PartExtractor.from_checkpoint("last", get_config("tiny"), model_dir=str(tmp_path / "logs"),
                                      class_names=NAMES)
    assert _same(_values(tiny_k), before)
    # the advice holds: without the damaged file, "last" is the previous epoch's checkpoint
    os.remove(second)
    assert find_last_checkpoint(str(tmp_path / "logs"), "tiny") == first


def test_corrupted_weight_bytes_of_a_k_checkpoint_are_detected(tiny_k, k_run, tmp_path):
    path = str(tmp_path / "flipped.h5")
    shutil.copy(k_run[1][0], path)
    with h5py.File(path, "r") as f:
        data = f["conv1"]["conv1/kernel:0"]
        offset = (data.id.get_offset() if data.chunks is None
                  else data.id.get_chunk_info(0).byte_offset)
    with open(path, "r+b") as f:
        f.seek(offset + 8)
        data = f.read(8)
        f.seek(offset + 8)
        f.write(bytes(b ^ 0xFF for b in data))
    with pytest.raises(ValueError, match="flipped.h5 is damaged"):
        tiny_k.load_weights(path, by_name=True)


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("name,epochs", [("last.h5", 2), ("best.h5", 1)])
def test_truncated_m_checkpoint_is_refused(m_copy, name, epochs, checksum):
    """last.h5 when resuming (2 of 2 epochs asked), best.h5 when the run is done; with the
    SHA-256 that state.json records, and without it (a run of an older version)."""
    if not checksum:
        state_path = os.path.join(m_copy, "state.json")
        state = json.load(open(state_path))
        state.pop("last_sha256", None), state.pop("best_sha256", None)
        write_json_atomic(state_path, state)
    _truncate(os.path.join(m_copy, name))
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match=r"%s is damaged" % name) as err:
        _train_m(m_copy, epochs)
    assert "delete the folder %s" % m_copy in str(err.value)
    if not checksum:
        assert "truncated or corrupted HDF5" in str(err.value)
    assert _bytes(m_copy) == before


BAD_STATES = {
    "garbage": '{"epoch": 1, "best_val',
    "a list": "[1, 2]",
    "empty object": "{}",
    "missing epoch": '{"best_val_acc": 0.5, "best_epoch": 1, "epochs": 1, "done": true}',
    "missing best_val_acc": '{"epoch": 1, "best_epoch": 1, "epochs": 2, "done": false}',
    "epoch as text": '{"epoch": "1", "best_val_acc": 0.5, "best_epoch": 1, "epochs": 2, '
                     '"done": false}',
    "epoch as float": '{"epoch": 1.5, "best_val_acc": 0.5, "best_epoch": 1, "epochs": 2, '
                      '"done": false}',
    "epoch as bool": '{"epoch": true, "best_val_acc": 0.5, "best_epoch": 1, "epochs": 2, '
                     '"done": false}',
    "done as text": '{"epoch": 1, "best_val_acc": 0.5, "best_epoch": 1, "epochs": 1, '
                    '"done": "yes"}',
    "accuracy NaN": '{"epoch": 1, "best_val_acc": NaN, "best_epoch": 1, "epochs": 1, '
                    '"done": true}',
    "epoch beyond epochs": '{"epoch": 5, "best_val_acc": 0.5, "best_epoch": 1, "epochs": 2, '
                           '"done": false}',
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_damaged_m_state_json_is_refused(m_copy, case):
    with open(os.path.join(m_copy, "state.json"), "w") as f:
        f.write(BAD_STATES[case])
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match="state.json is damaged") as err:
        _train_m(m_copy, 2)
    assert "delete the folder %s" % m_copy in str(err.value)
    assert _bytes(m_copy) == before  # neither retrained from scratch nor resumed


def test_m_weights_without_state_json_are_not_trained_over(m_copy):
    os.remove(os.path.join(m_copy, "state.json"))
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match=r"holds best.h5 and last.h5 but no state.json.*"
                                         r"delete the folder"):
        _train_m(m_copy, 2)
    assert _bytes(m_copy) == before


def test_m_last_h5_of_another_epoch_is_refused(m_copy):
    """A last.h5 that is not the one state.json recorded (replaced, or a run killed between
    the two writes) would resume at a wrong epoch."""
    other = _tiny_m(seed=7)
    other.save_weights(os.path.join(m_copy, "last.h5"), save_format="h5")
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match="last.h5 is damaged: its SHA-256 differs"):
        _train_m(m_copy, 2)
    assert _bytes(m_copy) == before


def test_m_done_state_without_best_h5_is_refused(m_copy):
    os.remove(os.path.join(m_copy, "best.h5"))
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match=r"best.h5 is missing .*delete the folder"):
        _train_m(m_copy, 1)
    assert _bytes(m_copy) == before


# ----------------------------------------------------------------------------- 3. non-finite

@pytest.mark.parametrize("lr", [float("inf"), 1e30, float("nan"), 0.0, -0.1, 11.0])
def test_meaningless_learning_rates_are_refused_up_front(lr, tmp_path):
    with pytest.raises(ValueError, match=r"--lr must be a finite number > 0 and <= 10"):
        TrainConfig(learning_rate=lr).validate()
    missing = str(tmp_path / "no_data")  # the check comes before any data is read
    with pytest.raises(ValueError, match=r"--k-lr must be a finite number > 0 and <= 10"):
        cli.train_model_k(missing, "tiny", learning_rate=lr, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="LEARNING_RATE"):
        cli.train_model_k(missing, get_config("tiny", LEARNING_RATE=float("inf")),
                          log_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


def test_a_validation_set_with_another_class_count_is_refused_before_training(tmp_path):
    """K's validation set is checked like its training set: a tiny K (the toy's classes)
    with a validation set of one class more is refused before any model is built."""
    train = ToyDataset(2, 64, seed=0)
    val = ToyDataset(2, 64, seed=1)
    val.num_classes = train.num_classes + 1
    with pytest.raises(ValueError, match=r"NUM_CLASSES=%d.* have %d classes"
                       % (train.num_classes, val.num_classes)):
        cli.train_model_k(str(tmp_path / "no_data"), "tiny", log_dir=str(tmp_path / "logs"),
                          train_dataset=train, val_dataset=val, progress=False)
    assert not os.path.exists(tmp_path / "logs")


def test_m_training_stops_at_a_nan_loss_and_keeps_the_earlier_epoch(m_copy):
    before = _bytes(m_copy)
    with pytest.raises(ValueError, match=r"loss became nan at batch 1 in epoch 2") as e:
        _train_m(m_copy, 2, perturb=lambda x, y, i: x * np.float32("nan"))
    assert isinstance(e.value, m_train.NonFiniteTraining)
    assert "--lr" in str(e.value) and m_copy in str(e.value)
    assert _bytes(m_copy) == before  # best.h5, last.h5 and state.json of epoch 1 kept


def test_m_training_stops_when_a_weight_becomes_nan(tmp_path):
    """The loss of the only batch is finite (computed before the update); the weights the
    update leaves are NaN and must not be saved as best.h5."""
    x, y = _m_data()
    with pytest.raises(ValueError, match=r"weight conv/kernel.* became non-finite") as err:
        train_classifier(_tiny_m(nan_gradient=True), x, y, x, y, str(tmp_path / "m"),
                         TrainConfig(epochs=1, batch_size=len(x), learning_rate=0.01), **QUIET)
    assert isinstance(err.value, m_train.NonFiniteTraining)
    assert not os.path.exists(tmp_path / "m") or not os.listdir(tmp_path / "m")


def test_k_training_stops_at_a_non_finite_loss_and_keeps_the_earlier_epoch(tmp_path):
    ds = ToyDataset(2, 64, seed=0)
    model = MaskRCNN("training", get_config("tiny", VALIDATION_STEPS=0), str(tmp_path), seed=0)
    try:
        first = model.train(ds, None, 0.001, 1, "heads", progress=False, steps_per_epoch=1)
        before = _bytes(model.log_dir)
        # past the CLI's check (Trainer.train takes any number): a diverging step size
        with pytest.raises(ValueError, match=r"loss became non-finite at step \d+ .* epoch 2") \
                as err:
            model.train(ds, None, 1e30, 2, "heads", progress=False, steps_per_epoch=4)
        assert type(err.value).__name__ == "NonFiniteTraining"
        assert "--k-lr" in str(err.value) and "last one kept is epoch 1" in str(err.value)
        after = _bytes(model.log_dir)
        assert {k: v for k, v in after.items() if k.endswith(".h5")} == \
            {k: v for k, v in before.items() if k.endswith(".h5")}
        assert os.path.basename(first[-1]["checkpoint"]) in after
        assert model.epoch == 1
    finally:
        model.close()


# ----------------------------------------------------------------------------- 4. umask

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
        write_text_atomic(str(tmp_path / "b.txt"), "text")
        with atomic_path(str(tmp_path / "c.h5"), ".h5") as tmp:
            with h5py.File(tmp, "w") as f:
                f["x"] = np.arange(3)
        write_json_atomic(str(tmp_path / "a.json"), {"x": 2})  # replacing an existing file
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt", "c.h5"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.txt", "c.h5"]  # no temporary left
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}


# ----------------------------------------------------------------------------- 5. closed K

def test_closed_extractor_says_so_and_how_to_get_a_new_one(tmp_path):
    ext = PartExtractor(MaskRCNN("inference", get_config("tiny"), str(tmp_path)), NAMES)
    image = np.full((1, 64, 64, 3), 0.5, np.float32)
    assert len(ext.extract(image, keys=["k"])) == 1
    ext.close()
    for call in (lambda: ext.extract(image), lambda: ext.extract(image, keys=["k"]),
                 lambda: ext.detect([image[0] * 255])):
        with pytest.raises(RuntimeError, match=r"PartExtractor is closed.*from_checkpoint"):
            call()
    assert ext.closed
    ext.close()  # idempotent


# ----------------------------------------------------------------------------- 6. CLI numbers

BAD_FLAGS = [("--k-steps", "0"), ("--k-steps", "-3"), ("--k-batch", "0"),
             ("--k-eval-limit", "-1"), ("--k-eval-limit", "0"), ("--k-max-minutes", "-5"),
             ("--k-max-minutes", "0"), ("--k-max-minutes", "nan"), ("--k-lr", "inf"),
             ("--k-lr", "0"), ("--k-lr", "1e30"), ("--k-epochs", "1,-1")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_k_cli_refuses_meaningless_numbers_when_parsing(flag, value, capsys):
    from evaluation.options import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, value])
    assert "argument %s: %s" % (flag, flag) in capsys.readouterr().err


@pytest.mark.parametrize("key,value,flag", [
    ("k_steps", 0, "--k-steps"), ("k_batch", 0, "--k-batch"), ("k_eval_limit", -1,
                                                               "--k-eval-limit"),
    ("k_max_minutes", -1.0, "--k-max-minutes"), ("k_lr", float("nan"), "--k-lr")])
def test_run_model_k_checks_numbers_before_any_work(key, value, flag, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")
    monkeypatch.setattr("data.synthetic.ensure_dataset", no_work)
    with pytest.raises(ValueError, match=flag):
        cli.run_model_k_report(data_dir=str(tmp_path / "data"), k_log_dir=str(tmp_path),
                               **{key: value})
    missing = str(tmp_path / "data")
    with pytest.raises(ValueError, match="--k-steps"):
        cli.train_model_k(missing, "tiny", steps_per_epoch=0, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--k-eval-limit"):
        cli.evaluate_model_k(missing, "tiny", limit=-1, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--k-batch"):
        cli.evaluate_model_k(missing, "tiny", batch_size=0, log_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- 7. bench paths

def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_benchmark_records_hold_no_absolute_path():
    files = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "**", "*.json"),
                             recursive=True))
    assert files
    for path in files:
        with open(path, encoding="utf-8") as f:
            for text in _strings(json.load(f)):
                for token in text.split():      # (a lone "/" separates figures in tables)
                    assert token == "/" or not os.path.isabs(token), (path, text)
                    assert ROOT not in token, (path, text)


def test_bench_scripts_record_paths_relative_to_the_repository():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_machine", os.path.join(ROOT, "bench", "_machine.py"))
    _machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_machine)
    results = os.path.join(ROOT, "bench", "results", "model_k")
    assert _machine.repo_relative(results) == "bench/results/model_k"
    assert _machine.repo_relative("logs/model_k") == "logs/model_k"
    assert _machine.repo_relative("/elsewhere/data") == "<outside the repository>/data"
    assert _machine.record_command(["/usr/bin/python3", "main.py", "--k-results-dir",
                                    results]) == "python main.py --k-results-dir " \
                                                 "bench/results/model_k"
    record = {"command": "python main.py --out %s --x 1" % results, "n": 1.25,
              "list": [os.path.join(ROOT, "logs", "a.h5"), 3]}
    assert _machine.relative_paths(record) == {
        "command": "python main.py --out bench/results/model_k --x 1", "n": 1.25,
        "list": ["logs/a.h5", 3]}


# ----------------------------------------------------------------------------- 8. input named

def test_extractor_errors_name_the_input(tiny_k):
    ext = PartExtractor(tiny_k, NAMES)
    good = np.full((64, 64, 3), 0.5, np.float32)
    nan = good.copy()
    nan[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"images\[3\] contains NaN"):
        ext.extract([good, good, good, nan])
    with pytest.raises(ValueError, match=r"images\[1\] is too small: \(0, 0, 3\)"):
        ext.extract([good, np.zeros((0, 0, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[0\] must hold real numbers"):
        ext.extract([good.astype(np.complex64)])
    with pytest.raises(ValueError, match="images must be a batch"):
        ext.extract(0.5)
    with pytest.raises(ValueError, match=r"keys\[1\] must be hashable"):
        ext.extract([good, good], keys=["a", ["not", "hashable"]])
    with pytest.raises(ValueError, match="threshold must be a detection score"):
        PartExtractor(tiny_k, NAMES, threshold=float("nan"))
    with pytest.raises(ValueError, match="threshold must be a detection score"):
        ext.part_sets([], threshold=float("nan"))
    with pytest.raises(ValueError, match="cache_size"):
        PartExtractor(tiny_k, NAMES, cache_size=-1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        PartExtractor.from_checkpoint("unused.h5", get_config("tiny"), batch_size=2.5)
    # a batch size of 0 would be the step of K's batching loop
    zero = types.SimpleNamespace(mode="inference",
                                 config=types.SimpleNamespace(BATCH_SIZE=0, NUM_CLASSES=4))
    with pytest.raises(ValueError, match=r"BATCH_SIZE=0 .*IMAGES_PER_GPU >= 1"):
        PartExtractor(zero, NAMES)


def test_k_seed_sets_the_training_seed_apart_from_the_data_seed():
    """A surrogate K for the transfer threat trains on the same data with other weights."""
    from evaluation import model_k as cli

    assert cli._training_seed({"seed": 3, "k_seed": None}) == 3
    assert cli._training_seed({"seed": 3, "k_seed": 1}) == 1
    from evaluation.options import build_parser
    p = build_parser()
    assert p.parse_args(["--k-seed", "2"]).k_seed == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--k-seed", "-1"])
