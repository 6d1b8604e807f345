"""Model K graph: matterport layer names/shapes, legacy Keras-2 .h5 loading, session guard."""
import gc
import os
import sys

import h5py
import numpy as np
import pytest

import tfcompat
from data.fileio import write_json_atomic
from mrcnn_config import get_config
from evaluation import model_k as cli
from models.mrcnn import session_guard
from models.mrcnn.extractor import PartExtractor
from models.mrcnn.model import HEAD_LAYERS, MaskRCNN, find_last_checkpoint, resolve_checkpoint
from models.mrcnn.toy_data import ToyDataset
from models.mrcnn.weights import layer_weight_names

tf, keras = tfcompat.import_tf()


def _shapes(model):
    out = {}
    for layer in model.keras_model.layers:
        for name, w in zip(layer_weight_names(layer), layer.weights):
            out[(layer.name, name)] = tuple(w.shape)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backbone,last_block", [("resnet50", "res4f"), ("resnet101", "res4w")])
def test_matterport_layer_names_and_weight_shapes(tmp_path, backbone, last_block):
    cfg = get_config("parts", BACKBONE=backbone, IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=256,
                     IMAGES_PER_GPU=1)
    model = MaskRCNN("inference", cfg, str(tmp_path))
    try:
        shapes = _shapes(model)
        names = {layer.name for layer in model.keras_model.layers}
        expected = {
            ("conv1", "conv1/kernel:0"): (7, 7, 3, 64),
            ("bn_conv1", "bn_conv1/moving_variance:0"): (64,),
            ("res2a_branch2a", "res2a_branch2a/kernel:0"): (1, 1, 64, 64),
            ("res2a_branch1", "res2a_branch1/kernel:0"): (1, 1, 64, 256),
            ("res3d_branch2b", "res3d_branch2b/kernel:0"): (3, 3, 128, 128),
            (last_block + "_branch2c", last_block + "_branch2c/kernel:0"): (1, 1, 256, 1024),
            ("res5c_branch2c", "res5c_branch2c/bias:0"): (2048,),
            ("fpn_c5p5", "fpn_c5p5/kernel:0"): (1, 1, 2048, 256),
            ("fpn_c2p2", "fpn_c2p2/kernel:0"): (1, 1, 256, 256),
            ("fpn_p2", "fpn_p2/kernel:0"): (3, 3, 256, 256),
            ("rpn_model", "rpn_conv_shared/kernel:0"): (3, 3, 256, 512),
            ("rpn_model", "rpn_class_raw/kernel:0"): (1, 1, 512, 6),
            ("rpn_model", "rpn_bbox_pred/bias:0"): (12,),
            ("mrcnn_class_conv1", "mrcnn_class_conv1/kernel:0"): (7, 7, 256, 1024),
            ("mrcnn_class_bn2", "mrcnn_class_bn2/gamma:0"): (1024,),
            ("mrcnn_class_logits", "mrcnn_class_logits/kernel:0"): (1024, 45),
            ("mrcnn_bbox_fc", "mrcnn_bbox_fc/kernel:0"): (1024, 180),
            ("mrcnn_mask_conv4", "mrcnn_mask_conv4/kernel:0"): (3, 3, 256, 256),
            ("mrcnn_mask_deconv", "mrcnn_mask_deconv/kernel:0"): (2, 2, 256, 256),
            ("mrcnn_mask", "mrcnn_mask/kernel:0"): (1, 1, 256, 45),
        }
        for key, shape in expected.items():
            assert shapes.get(key) == shape, key
        n_stage4 = {"resnet50": 6, "resnet101": 23}[backbone]
        assert sum(1 for n in names if n.startswith("res4") and n.endswith("_branch2a")) \
            == n_stage4
        bn = [k for k in shapes if k[0] == "bn2a_branch2a"]
        assert [k[1].split("/")[1] for k in bn] == ["gamma:0", "beta:0", "moving_mean:0",
                                                      "moving_variance:0"]
    finally:
        model.close()


def _write_legacy_h5(path, model, rng, nested_under_model_weights=False, coco_heads=True):
    """Write a Keras-2 HDF5 weight file by hand (not with the project's writer)."""
    values = {}
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if nested_under_model_weights else f
        layer_names = []
        for layer in model.keras_model.layers:
            if not layer.weights:
                continue
            names = layer_weight_names(layer)
            shapes = [tuple(w.shape) for w in layer.weights]
            if layer.name == "rpn_model":  # file order differs from the model's order
                names, shapes = names[::-1], shapes[::-1]
            if coco_heads and layer.name == "mrcnn_class_logits":
                shapes = [(shapes[0][0], 81), (81,)]
            group = root.create_group(layer.name)
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n, s in zip(names, shapes):
                data = rng.normal(size=s).astype(np.float32)
                group.create_dataset(n, data=data)
                values[(layer.name, n)] = data
            layer_names.append(layer.name)
        extra = root.create_group("not_in_model")
        extra.attrs["weight_names"] = np.array([b"not_in_model/kernel:0"])
        extra.create_dataset("not_in_model/kernel:0", data=np.zeros((3, 3)))
        root.attrs["layer_names"] = np.array([n.encode() for n in layer_names + ["not_in_model"]])
        root.attrs["keras_version"] = b"2.0.8"
    return values


def _model_values(model):
    out = {}
    for layer in model.keras_model.layers:
        vals = model.read_variables(layer.weights)
        for n, v in zip(layer_weight_names(layer), vals):
            out[(layer.name, n)] = v
    return out


@pytest.mark.parametrize("nested", [False, True])
def test_legacy_h5_loads_by_name_with_exclude(tmp_path, tiny_k, nested):
    model = tiny_k
    rng = np.random.default_rng(0)
    path = str(tmp_path / "legacy.h5")
    file_values = _write_legacy_h5(path, model, rng, nested_under_model_weights=nested)
    before = _model_values(model)
    loaded = model.load_weights(path, by_name=True, exclude=HEAD_LAYERS)
    after = _model_values(model)
    assert "rpn_model" in loaded and "conv1" in loaded and "mrcnn_class_logits" not in loaded
    for key, value in after.items():
        if key[0] in HEAD_LAYERS:
            np.testing.assert_array_equal(value, before[key])
        else:
            np.testing.assert_array_equal(value, file_values[key])
    # the nested rpn_model was matched by weight name although the file order differs
    assert after[("rpn_model", "rpn_class_raw/kernel:0")].shape == \
        file_values[("rpn_model", "rpn_class_raw/kernel:0")].shape


def test_legacy_h5_shape_mismatch_names_the_layer(tmp_path, tiny_k):
    path = str(tmp_path / "coco_like.h5")
    _write_legacy_h5(path, tiny_k, np.random.default_rng(1))
    with pytest.raises(ValueError, match="mrcnn_class_logits"):
        tiny_k.load_weights(path, by_name=True)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        tiny_k.load_weights(str(tmp_path / "missing.h5"), by_name=True)


def test_save_load_round_trip_gives_same_detections(tmp_path, tiny_k):
    ds = ToyDataset(2, 64, seed=3)
    images = [ds.load_image(0), ds.load_image(1)]
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0)
    a = MaskRCNN("inference", cfg, str(tmp_path), seed=5)
    b = MaskRCNN("inference", cfg, str(tmp_path), seed=6)
    try:
        path = str(tmp_path / "tiny20250101T0000" / "mask_rcnn_tiny_0003.h5")
        a.save_weights(path)
        with h5py.File(path, "r") as f:
            assert "rpn_model" in [n.decode() for n in f.attrs["layer_names"]]
            assert b"rpn_conv_shared/kernel:0" in list(f["rpn_model"].attrs["weight_names"])
        b.load_weights(path)
        assert b.epoch == 3
        ra, rb = a.detect(images), b.detect(images)
        for x, y in zip(ra, rb):
            np.testing.assert_array_equal(x["class_ids"], y["class_ids"])
            np.testing.assert_allclose(x["scores"], y["scores"], rtol=1e-5)
    finally:
        a.close()
        b.close()


def test_find_last_and_missing_checkpoint_message(tmp_path):
    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path / "logs"))
    try:
        with pytest.raises(FileNotFoundError, match="python main.py --model K"):
            model.find_last()
        for run, epochs in (("tiny20240101T0000", [1, 2]), ("tiny20240102T0000", [1, 4])):
            for e in epochs:
                model.save_weights(str(tmp_path / "logs" / run / ("mask_rcnn_tiny_%04d.h5" % e)))
        assert model.find_last().endswith("tiny20240102T0000/mask_rcnn_tiny_0004.h5")
        assert not list((tmp_path / "logs").rglob("*.tmp"))
    finally:
        model.close()


def _fake_run(log_dir, run, name, epochs, config=None):
    """A run folder with empty checkpoint files (find_last only lists names) and, when
    ``config`` is given, the ``config.json`` a training run records."""
    folder = log_dir / run
    folder.mkdir(parents=True)
    for e in epochs:
        (folder / ("mask_rcnn_%s_%04d.h5" % (name, e))).write_bytes(b"")
    if config is not None:
        write_json_atomic(str(folder / "config.json"), config.to_dict())
    return folder


def test_find_last_skips_runs_of_another_architecture(tmp_path):
    logs = tmp_path / "logs"
    tiny, wide = get_config("tiny"), get_config("tiny", SMALL_BACKBONE_WIDTH=16)
    _fake_run(logs, "tiny20240101T0000", "tiny", [1, 2], tiny)
    _fake_run(logs, "tiny20240102T0000", "tiny", [1, 3], wide)
    old = str(logs / "tiny20240101T0000" / "mask_rcnn_tiny_0002.h5")
    new = str(logs / "tiny20240102T0000" / "mask_rcnn_tiny_0003.h5")
    assert find_last_checkpoint(str(logs), "tiny", tiny) == old
    assert find_last_checkpoint(str(logs), "tiny", wide) == new
    assert find_last_checkpoint(str(logs), "tiny") == new  # no config: any run
    # batch size and detection threshold do not change weight shapes (inference copies)
    inference = get_config("tiny", IMAGES_PER_GPU=5, DETECTION_MIN_CONFIDENCE=0)
    assert resolve_checkpoint("last", str(logs), "tiny", inference) == old
    # a run folder without config.json (files placed by the user) is accepted
    _fake_run(logs, "tiny20240103T0000", "tiny", [7])
    placed = str(logs / "tiny20240103T0000" / "mask_rcnn_tiny_0007.h5")
    assert find_last_checkpoint(str(logs), "tiny", tiny) == placed
    assert find_last_checkpoint(str(logs), "tiny", wide) == placed


def test_find_last_takes_only_this_names_runs_and_orders_same_minute_runs(tmp_path):
    """A run of a name that merely starts with this one (``tiny_robust...`` beside ``tiny...``,
    both without config.json) is not this name's run, nor its checkpoint files; runs started
    in the same minute (``-k``) count by number, and epochs by value."""
    logs = tmp_path / "logs"
    _fake_run(logs, "tiny20240101T0000", "tiny", [2])
    _fake_run(logs, "tiny20240101T0000-2", "tiny", [9, 10])
    _fake_run(logs, "tiny20240101T0000-10", "tiny", [3])
    _fake_run(logs, "tiny_robust20240105T0000", "tiny_robust", [5])
    _fake_run(logs, "tinyish", "tiny", [8])                       # not the folder scheme
    newest = str(logs / "tiny20240101T0000-10" / "mask_rcnn_tiny_0003.h5")
    assert find_last_checkpoint(str(logs), "tiny") == newest
    assert find_last_checkpoint(str(logs), "tiny_robust") == str(
        logs / "tiny_robust20240105T0000" / "mask_rcnn_tiny_robust_0005.h5")
    # a robust K's files in a folder of the standard name are not the standard K's epochs
    (logs / "tiny20240101T0000-10" / "mask_rcnn_tiny_robust_0099.h5").write_bytes(b"")
    (logs / "tiny20240101T0000-10" / "mask_rcnn_tiny_10000.h5").write_bytes(b"")
    assert find_last_checkpoint(str(logs), "tiny") == str(
        logs / "tiny20240101T0000-10" / "mask_rcnn_tiny_10000.h5")


def test_only_incompatible_runs_give_an_error_naming_them_and_the_command(tmp_path):
    logs = tmp_path / "logs"
    _fake_run(logs, "tiny20240102T0000", "tiny", [3], get_config("tiny", SMALL_BACKBONE_WIDTH=16))
    with pytest.raises(FileNotFoundError) as err:
        find_last_checkpoint(str(logs), "tiny", get_config("tiny"))
    msg = str(err.value)
    for part in ("tiny20240102T0000", "SMALL_BACKBONE_WIDTH 16, wanted 8", "TinyTestConfig",
                 "python main.py --model K --k-config tiny --k-log-dir %s" % logs):
        assert part in msg, (part, msg)
    (logs / "tiny20240102T0000" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        find_last_checkpoint(str(logs), "tiny", get_config("tiny"))


def test_synthetic_run_is_not_taken_for_the_parts_model(tmp_path):
    """SyntheticPartsConfig shares NAME "parts": its checkpoints must not be loaded into the
    ResNet101 parts model (and a plain `--k-config parts` run must not count as trained)."""
    logs = tmp_path / "logs"
    synthetic, parts = get_config("synthetic"), get_config("parts")
    _fake_run(logs, "parts20240101T0000", "parts", [28], synthetic)
    found = str(logs / "parts20240101T0000" / "mask_rcnn_parts_0028.h5")
    assert find_last_checkpoint(str(logs), "parts", synthetic) == found
    with pytest.raises(FileNotFoundError, match="BACKBONE 'resnet_small', wanted 'resnet101'"):
        find_last_checkpoint(str(logs), "parts", parts)
    with pytest.raises(FileNotFoundError, match="--k-config parts"):
        PartExtractor.from_checkpoint("last", parts, model_dir=str(logs))
    with pytest.raises(FileNotFoundError, match="--k-config parts"):
        cli.evaluate_model_k(config=parts, log_dir=str(logs), dataset=ToyDataset(1, 64),
                             results_dir=str(tmp_path / "res"))
    opts = dict(cli.CLI_DEFAULTS, k_log_dir=str(logs))
    assert cli._already_trained(opts, synthetic) and not cli._already_trained(opts, parts)


def test_detect_rejects_bad_images_naming_the_index(tiny_k):
    good = np.full((64, 64, 3), 100, np.uint8)
    cases = [
        ([np.zeros((64, 64, 4), np.uint8), good], r"images\[0\].*RGBA.*\[\.\.\., :3\]"),
        ([good, np.zeros((64, 64), np.uint8)], r"images\[1\].*grayscale.*np\.stack"),
        ([good, np.zeros((64, 64, 1), np.uint8)], r"images\[1\].*np\.repeat"),
        ([np.zeros((0, 64, 3), np.uint8), good], r"images\[0\] is too small"),
        ([good, np.full((64, 64, 3), np.nan)], r"images\[1\].*NaN"),
        ([np.array([["a"] * 3] * 4 * 4).reshape(4, 4, 3), good], r"images\[0\].*dtype"),
    ]
    for images, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            tiny_k.detect(images)
    out = tiny_k.detect([good, good.astype(np.float32).tolist()])  # lists are arrays
    assert len(out) == 2 and out[1]["masks"].shape[:2] == (64, 64)


def _seed_guard_del(callable_obj):
    """``_Callable.__del__`` as the original README suggested: checks ``_session._session``
    only, not ``_closed`` (what TensorFlow < 1.15 effectively did)."""
    from tensorflow.python.client import session as session_module
    if callable_obj._handle is not None and callable_obj._session._session is not None:
        session_module.tf_session.TF_SessionReleaseCallable(callable_obj._session._session,
                                                            callable_obj._handle)


def _old_tf_release(monkeypatch):
    """Make releasing a callable of a closed session fail as in TensorFlow 1.x (the C call
    raised "Session has been closed."; TF 2.21's C layer ignores it).  Returns the list to
    which closed C sessions are added; other sessions release normally."""
    from tensorflow.python.client import session as session_module
    real_release = session_module.tf_session.TF_SessionReleaseCallable
    closed = []

    def release(session_handle, handle):
        if any(session_handle is c for c in closed):
            raise tf.errors.CancelledError(None, None, "Session has been closed.")
        return real_release(session_handle, handle)

    monkeypatch.setattr(session_module.tf_session, "TF_SessionReleaseCallable", release)
    return closed


def _close_then_collect(tmp_path, monkeypatch, capfd):
    """Run K once, close its session, then release its callables; returns what reached
    ``sys.unraisablehook`` and stderr while they were collected."""
    closed = _old_tf_release(monkeypatch)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ds = ToyDataset(2, 64, seed=4)
    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path))
    model.detect([ds.load_image(0), ds.load_image(1)])
    assert model._callables, "detect() should have created a session callable"
    capfd.readouterr()
    closed.append(model.session._session)
    model.close()
    model._callables.clear()
    del model
    gc.collect()
    return unraisable, capfd.readouterr().err


def _callable_class():
    from tensorflow.python.client import session as session_module
    return session_module.BaseSession._Callable


def test_session_close_then_collect_is_harmless(tmp_path, monkeypatch, capfd):
    """Regression: close K's session first, then let its callables be garbage collected.

    Stock TF 2.21 already checks ``_closed``; to test the project's guard, the callable's
    release is first replaced by the seed-era one, then the guard is installed over it."""
    assert session_guard.guard_installed()
    assert session_guard.install_session_close_guard() is False  # idempotent
    monkeypatch.setattr(_callable_class(), "__del__", _seed_guard_del)
    assert not session_guard.guard_installed()
    assert session_guard.install_session_close_guard() is True
    assert _callable_class().__del__.original is _seed_guard_del
    unraisable, err = _close_then_collect(tmp_path, monkeypatch, capfd)
    assert unraisable == []
    assert "Exception ignored" not in err and "has been closed" not in err


def test_without_the_guard_the_seed_release_reports_closed_session(tmp_path, monkeypatch,
                                                                    capfd):
    """Control for the test above: the same scenario with the seed-era release and no guard
    reports "Session has been closed" from ``__del__``, so the guard is what prevents it."""
    monkeypatch.setattr(_callable_class(), "__del__", _seed_guard_del)
    assert not session_guard.guard_installed()
    unraisable, err = _close_then_collect(tmp_path, monkeypatch, capfd)
    messages = [str(u.exc_value) for u in unraisable] + [err]
    assert unraisable, "the unguarded seed release should fail on the closed session"
    assert all(isinstance(u.exc_value, tf.errors.OpError) for u in unraisable)
    assert any("closed" in m.lower() for m in messages), messages


def test_guard_tolerates_sessions_without_closed_flag(monkeypatch):
    """Sessions of TF versions before 1.15 have no ``_closed`` attribute."""
    from tensorflow.python.client import session as session_module
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2])
        y = x + 1
    sess = tf.compat.v1.Session(graph=graph)
    fn = session_guard.make_callable(sess, [x], [y])
    assert fn(np.zeros(2, np.float32))[0].tolist() == [1, 1]
    sess.close()
    del sess._closed
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(info))
    monkeypatch.setattr(session_module.tf_session, "TF_SessionReleaseCallable",
                        lambda *a: (_ for _ in ()).throw(
                            tf.errors.CancelledError(None, None, "Session has been closed.")))
    del fn
    gc.collect()
    assert unraisable == []
    sess._closed = True


def test_graph_built_once_and_eager_unaffected(tiny_k):
    """K runs in its own graph/session; batches add no ops; eager mode stays on."""
    ds = ToyDataset(2, 64, seed=9)
    images = [ds.load_image(0), ds.load_image(1)]
    tiny_k.detect(images)
    n_ops = len(tiny_k.graph.get_operations())
    for _ in range(3):
        tiny_k.detect(images)
    assert len(tiny_k.graph.get_operations()) == n_ops
    assert tf.executing_eagerly()
    assert tiny_k.graph is not tf.compat.v1.get_default_graph()
    assert float(tf.reduce_sum(tf.ones([3]))) == 3.0
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        tiny_k.detect(images[:1])


def test_weights_of_another_name_start_a_new_run_not_resume_the_old_one(tmp_path):
    """set_log_dir resumes (folder, epoch) only from this configuration's own checkpoints: a
    standard K's weights loaded to start a robust K (NAME ``tiny_robust``) begin a new
    ``tiny_robust<time>`` run at epoch 0 instead of writing into the standard run's folder."""
    from models.mrcnn.model import MaskRCNN

    class _Stub:                              # set_log_dir reads only config and model_dir
        def _set_checkpoint_path(self):
            MaskRCNN._set_checkpoint_path(self)

    logs = tmp_path / "logs"
    run = _fake_run(logs, "tiny20240101T0000-3", "tiny", [12])
    standard = str(run / "mask_rcnn_tiny_0012.h5")
    stub = _Stub()
    stub.config, stub.model_dir = get_config("tiny"), str(logs)
    MaskRCNN.set_log_dir(stub, standard)
    assert (stub.epoch, stub.log_dir) == (12, str(run))          # its own run: resumed
    assert stub.checkpoint_path.endswith("mask_rcnn_tiny_{epoch:04d}.h5")
    stub.config = get_config("tiny").replace(NAME="tiny_robust")
    MaskRCNN.set_log_dir(stub, standard)
    assert stub.epoch == 0 and os.path.dirname(stub.log_dir) == str(logs)
    assert os.path.basename(stub.log_dir).startswith("tiny_robust2")
    assert stub.checkpoint_path.endswith("mask_rcnn_tiny_robust_{epoch:04d}.h5")
    # and the other way round: a robust checkpoint is not resumed by the standard name
    robust_run = _fake_run(logs, "tiny_robust20240102T0000", "tiny_robust", [5])
    stub.config = get_config("tiny")
    MaskRCNN.set_log_dir(stub, str(robust_run / "mask_rcnn_tiny_robust_0005.h5"))
    assert stub.epoch == 0 and os.path.basename(stub.log_dir).startswith("tiny2")


def test_k_session_takes_gpu_memory_as_it_needs_it(tiny_k):
    """K's session beside M on one GPU (a Ray worker's): memory growth on, soft placement
    (the same session on a CPU-only machine)."""
    config = tiny_k.session._config
    assert config.gpu_options.allow_growth and config.allow_soft_placement
