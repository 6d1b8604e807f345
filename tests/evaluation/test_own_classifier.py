"""Your own classifier in M's place (``main.py --m-model FILE``): what is refused before any
work, and a run on a tiny synthetic data set that evaluates exactly that file's model, trains
no M, and keys every record and folder to it."""
import json
import os

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from data.knowledge import get_class_set  # noqa: E402
from evaluation import run as ev  # noqa: E402
from evaluation.config import EvalConfig, from_dict  # noqa: E402
from evaluation.store.records import fingerprint, short_digest  # noqa: E402
from models.classifier import UnitToBackbone, load_classifier_file  # noqa: E402
from models.train_classifier import TrainConfig  # noqa: E402

SIZE = 32
TINY_DATA = dict(seed=5, per_class=(16, 6, 6))


def _net(n_classes=3, size=SIZE, softmax=False, seed=0, scaling=False):
    """A small conv net ``[B, size, size, 3] -> [B, n_classes]`` (logits unless ``softmax``;
    ``size`` None: any image size), optionally with the project's own input-scaling layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = UnitToBackbone("tf")(inputs) if scaling else inputs
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(n_classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, out)


def _saved(model, path):
    model.save(str(path))
    return str(path)


# ----------------------------------------------------------------------------- the loader

def test_a_saved_model_loads_with_the_same_logits_custom_scaling_included(tmp_path):
    net = _net(scaling=True)
    loaded = load_classifier_file(_saved(net, tmp_path / "mine.h5"), 3, SIZE)
    x = np.random.default_rng(1).random((5, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_file_is_loaded_once_while_it_is_unchanged(tmp_path):
    """The run's check before any work and its loading of M (and each work unit of a Ray
    worker) share one load of the file; a file written anew is loaded anew."""
    path = _saved(_net(seed=0), tmp_path / "m.h5")
    first = load_classifier_file(path, 3, SIZE)
    assert load_classifier_file(path, 3, SIZE) is first
    os.remove(path)
    _saved(_net(seed=1), path)
    os.utime(path, ns=(1, 1))            # surely another modification time than the first
    second = load_classifier_file(path, 3, SIZE)
    assert second is not first
    x = np.random.default_rng(3).random((2, SIZE, SIZE, 3)).astype(np.float32)
    assert not np.allclose(second(x).numpy(), first(x).numpy())


def test_a_model_of_any_image_size_is_fixed_to_the_runs(tmp_path):
    """UnMask's attack reads M's input size: a free size is fixed to --input-size."""
    net = _net(size=None)
    loaded = load_classifier_file(_saved(net, tmp_path / "free.h5"), 3, SIZE)
    assert tuple(loaded.input_shape) == (None, SIZE, SIZE, 3)
    x = np.random.default_rng(2).random((3, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("folder", "is a folder"),
    ("missing", "no such file"),
    ("garbage", "cannot be read as a tf-keras model"),
    ("input size", "--input-size"),
    ("classes", "the class set has 3 classes"),
    ("softmax", "gives probabilities"),
])
def test_what_cannot_serve_as_m_is_refused_naming_the_file_and_the_fix(tmp_path, case,
                                                                      message):
    path = str(tmp_path / "m.h5")
    if case == "folder":
        os.mkdir(path)
    elif case == "garbage":
        with open(path, "wb") as f:
            f.write(b"not a model" * 100)
    elif case == "input size":
        _saved(_net(size=40), path)
    elif case == "classes":
        _saved(_net(n_classes=4), path)
    elif case == "softmax":
        _saved(_net(softmax=True), path)
    with pytest.raises(ValueError, match=message) as err:
        load_classifier_file(path, 3, SIZE)
    assert path in str(err.value)


# ----------------------------------------------------------------------------- the command line

def _main(args, capsys):
    import main
    try:
        code = main.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--grid",), "--m-model gives your one classifier: give one of them"),
    (("--defenses", "none,trajectory"), "drop trajectory"),
    (("--trajectory-table",), "drop --trajectory-table"),
    (("--defenses", "trajectory", "--trajectory-table"), "drop trajectory, --trajectory-table"),
    (("--at-line-search",), "drop --m-model"),
])
def test_cli_refuses_what_cannot_run_on_your_classifier(tmp_path, capsys, extra, message):
    model = _saved(_net(), tmp_path / "mine.h5")
    code, err = _main(["--model", "M", "--classset", "CS3a", "--input-size", SIZE,
                       "--m-model", model, "--data-dir", tmp_path / "data",
                       "--results-dir", tmp_path / "results"] + list(extra), capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "data"), "refused before the data set is generated"


@pytest.mark.parametrize("case, message", [("missing", "no such file"),
                                           ("folder", "is a folder"),
                                           ("softmax", "gives probabilities")])
def test_cli_checks_the_file_before_any_work(tmp_path, capsys, case, message):
    model = str(tmp_path / "mine.h5")
    if case == "softmax":
        _saved(_net(softmax=True), model)
    elif case == "folder":
        os.mkdir(model)
    code, err = _main(["--model", "M", "--classset", "CS3a", "--input-size", SIZE,
                       "--m-model", model, "--data-dir", tmp_path / "data",
                       "--results-dir", tmp_path / "results"], capsys)
    assert code == 2 and "--m-model %s" % model in err and message in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "data") and not os.path.exists(tmp_path / "results")


# ----------------------------------------------------------------------------- a run

@pytest.fixture(scope="module")
def nets(tiny_data, tmp_path_factory):
    """(the knowing net's file, its opposite's file, the run's data): see :func:`_knowing`."""
    return _knowing(tiny_data, tmp_path_factory.mktemp("nets"))


def _copy(src, dst):
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    return str(dst)


def _knowing(tiny_data, tmp_path):
    """A small net trained on every image of the tiny set (so it knows the test images:
    accuracy well above chance) and its opposite (the same net with its logits negated: it
    picks its least likely class), both saved whole."""
    cfg = EvalConfig(class_set=get_class_set("CS3a"), data_dir=tiny_data, input_size=SIZE)
    data = ev.load_data(cfg, log=lambda s: None)
    x = np.concatenate([data["x_" + s] for s in ("train", "val", "test")]) / 255.0
    y = np.concatenate([data["y_" + s] for s in ("train", "val", "test")])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    net = keras.Model(inputs, keras.layers.Dense(3)(h))
    net.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=60, batch_size=16, verbose=0)
    opposite = keras.models.clone_model(net)
    weights = net.get_weights()
    opposite.set_weights(weights[:-2] + [-weights[-2], -weights[-1]])
    return (_saved(net, tmp_path / "my net.h5"), _saved(opposite, tmp_path / "opposite.h5"),
            data)


def _own_accuracy(path, data):
    model = keras.models.load_model(path, compile=False)
    pred = np.argmax(model.predict(data["x_test"] / 255.0, verbose=0), axis=1)
    return float(np.mean(pred == data["y_test"]))


def test_a_run_evaluates_your_file_trains_no_m_and_keys_its_records_to_it(tiny_data, nets,
                                                                          tmp_path):
    model_file = _copy(nets[0], tmp_path / "my net.h5")
    opposite = nets[1]
    cfg = EvalConfig(class_set=get_class_set("CS3a"), data_dir=tiny_data, input_size=SIZE,
                     m_model=model_file, train=TrainConfig(epochs=1, batch_size=16),
                     vectors=(("fgsm", 8),), n_test=9, attack_batch=8,
                     defenses=("none", "unmask"), extractor="oracle", progress=False,
                     results_dir=str(tmp_path / "results"),
                     checkpoint_dir=str(tmp_path / "ckpt"))
    name = "own-my-net-" + short_digest(model_file)[:8]
    assert cfg.out_dir == os.path.join(str(tmp_path / "results"), "cs3-1", name)
    data = ev.load_data(cfg, log=lambda s: None)       # the run's 9 test images
    lines = []
    metrics = ev.run_evaluation(cfg, log=lines.append)
    own_acc = _own_accuracy(model_file, data)
    assert own_acc >= 0.8, "the check needs a model far from chance (1/3) to mean anything"
    assert metrics["benign"]["acc_none"] == pytest.approx(own_acc)
    assert metrics["arch"] == name
    project_m = EvalConfig(class_set=get_class_set("CS3a"), input_size=SIZE)
    assert not os.path.exists(os.path.join(str(tmp_path / "ckpt"), os.path.relpath(
        project_m.m_dir, project_m.checkpoint_dir))), "no M of --arch was trained"
    assert any("your classifier %s" % model_file in line for line in lines)

    with open(os.path.join(cfg.out_dir, "config.json")) as f:
        recorded = json.load(f)
    assert recorded["checkpoints"]["m"]["path"] == model_file
    assert recorded["checkpoints"]["m"]["sha1"].startswith(short_digest(model_file))
    assert from_dict(recorded["config"]).m_model == model_file     # --config reruns it
    fp = fingerprint(cfg, data)
    assert fp["m"] == short_digest(model_file)

    # the file retrained in place (here: replaced by the net's opposite): new records, a new
    # folder, and the run's answer is the new file's
    _copy(opposite, model_file)
    assert fingerprint(cfg, data)["m"] != fp["m"]
    assert cfg.out_dir != os.path.join(str(tmp_path / "results"), "cs3-1", name)
    opposite_acc = _own_accuracy(model_file, data)
    assert opposite_acc <= 0.2
    again = ev.run_evaluation(cfg, log=lambda s: None)
    assert again["benign"]["acc_none"] == pytest.approx(opposite_acc)
    assert os.path.isfile(os.path.join(str(tmp_path / "results"), "cs3-1", name,
                                       "metrics.json")), "the first file's results are kept"
    os.remove(model_file)              # a rerun of the first run (--config) without its file
    from evaluation.commands import check_recorded_models
    with pytest.raises(ValueError, match="restore that file"):
        check_recorded_models(recorded, from_dict(recorded["config"]), "config.json")


def test_your_at_model_is_the_at_baseline_and_no_at_is_trained(tiny_data, nets, tmp_path):
    """--at-model: the AT row (added, as --adv-train would) answers with your file's model;
    the AT defense's parameters name no training budget, and nothing is trained."""
    mine, at_file = _copy(nets[0], tmp_path / "m.h5"), _copy(nets[1], tmp_path / "at.h5")
    cfg = EvalConfig(class_set=get_class_set("CS3a"), data_dir=tiny_data, input_size=SIZE,
                     m_model=mine, at_model=at_file, vectors=(("fgsm", 8),), n_test=9,
                     attack_batch=8, defenses=("none",), extractor="oracle", progress=False,
                     results_dir=str(tmp_path / "results"),
                     checkpoint_dir=str(tmp_path / "ckpt"))
    assert cfg.adv_train and cfg.defenses == ("none", "at")
    assert os.path.basename(cfg.out_dir) == "own-m-%s+at-own-at-%s" % (
        short_digest(mine)[:8], short_digest(at_file)[:8])
    lines = []
    metrics = ev.run_evaluation(cfg, log=lines.append)
    data = ev.load_data(cfg, log=lambda s: None)
    at_acc = _own_accuracy(at_file, data)
    assert at_acc != pytest.approx(_own_accuracy(mine, data)), "the two files must differ"
    assert metrics["benign"]["acc_at"] == pytest.approx(at_acc)
    assert metrics["benign"]["acc_none"] == pytest.approx(_own_accuracy(mine, data))
    params = metrics["defenses"]["at"]["params"]
    assert "eps" not in params and params["checkpoint_digest"] == short_digest(at_file)
    assert not os.path.exists(tmp_path / "ckpt" / "model_m"), "neither M nor AT was trained"
    assert any("the AT model: your classifier %s" % at_file in line for line in lines)
    with open(os.path.join(cfg.out_dir, "config.json")) as f:
        assert json.load(f)["checkpoints"]["at"]["path"] == at_file


def test_at_model_file_is_checked_before_any_work(tmp_path, capsys):
    mine = _saved(_net(), tmp_path / "mine.h5")
    bad = _saved(_net(n_classes=4), tmp_path / "at.h5")
    code, err = _main(["--model", "M", "--classset", "CS3a", "--input-size", SIZE,
                       "--m-model", mine, "--at-model", bad, "--data-dir", tmp_path / "data",
                       "--results-dir", tmp_path / "results"], capsys)
    assert code == 2 and "--at-model %s" % bad in err and "3 classes" in err
    assert not os.path.exists(tmp_path / "data")
    code, err = _main(["--model", "M", "--at-model", bad, "--at-line-search",
                       "--data-dir", tmp_path / "data"], capsys)
    assert code == 2 and "drop --at-model" in err
    code, err = _main(["--model", "M", "--at-model", bad, "--at-eps", "4",   # the default
                       "--data-dir", tmp_path / "data"], capsys)
    assert code == 2 and "drop --at-eps" in err
    code, err = _main(["--model", "M", "--at-model", bad, "--grid",
                       "--data-dir", tmp_path / "data"], capsys)
    assert code == 2 and "--at-model gives your one classifier" in err
    assert not os.path.exists(tmp_path / "data")


def test_your_at_model_alone_gets_a_folder_apart_from_the_trained_models(tmp_path):
    """Saved records are found by their path: a run with your AT model and the project's M
    must not write into the folder of the run that trains both."""
    at_file = _saved(_net(), tmp_path / "robust.h5")
    trained = EvalConfig(class_set=get_class_set("CS3a"), input_size=SIZE, adv_train=True)
    yours = EvalConfig(class_set=get_class_set("CS3a"), input_size=SIZE, at_model=at_file)
    assert yours.out_dir == trained.out_dir + "+at-own-robust-" + short_digest(at_file)[:8]
    assert yours.m_checkpoint == trained.m_checkpoint       # the same M is evaluated
    assert yours.at_checkpoint == at_file != trained.at_checkpoint
