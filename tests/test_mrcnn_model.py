"""Model K graph: matterport layer names/shapes, legacy Keras-2 .h5 loading, session guard."""
import gc
import sys

import h5py
import numpy as np
import pytest

import tfcompat
from mrcnn_config import get_config
from models.mrcnn import session_guard
from models.mrcnn.model import HEAD_LAYERS, MaskRCNN
from models.mrcnn.toy_data import ToyDataset
from models.mrcnn.weights import layer_weight_names

tf, keras = tfcompat.import_tf()


@pytest.fixture(scope="module")
def tiny_inference(tmp_path_factory):
    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path_factory.mktemp("logs")))
    yield model
    model.close()


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
def test_legacy_h5_loads_by_name_with_exclude(tmp_path, tiny_inference, nested):
    model = tiny_inference
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


def test_legacy_h5_shape_mismatch_names_the_layer(tmp_path, tiny_inference):
    path = str(tmp_path / "coco_like.h5")
    _write_legacy_h5(path, tiny_inference, np.random.default_rng(1))
    with pytest.raises(ValueError, match="mrcnn_class_logits"):
        tiny_inference.load_weights(path, by_name=True)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        tiny_inference.load_weights(str(tmp_path / "missing.h5"), by_name=True)


def test_save_load_round_trip_gives_same_detections(tmp_path, tiny_inference):
    ds = ToyDataset(2, 64, seed=3)
    images = [ds.load_image(0), ds.load_image(1)]
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0)
    a = MaskRCNN("inference", cfg, str(tmp_path), seed=5)
    b = MaskRCNN("inference", cfg, str(tmp_path), seed=6)
    try:
        path = str(tmp_path / "parts20250101T0000" / "mask_rcnn_tiny_0003.h5")
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


def _seed_guard_del(callable_obj):
    """The guard suggested by the original README: checks ``_session`` only."""
    from tensorflow.python.client import session as session_module
    if callable_obj._handle is not None and callable_obj._session._session is not None:
        session_module.tf_session.TF_SessionReleaseCallable(callable_obj._session._session,
                                                            callable_obj._handle)


def test_session_close_then_collect_is_harmless(tmp_path, monkeypatch, capfd):
    """Regression: close K's session first, then let its callables be garbage collected."""
    from tensorflow.python.client import session as session_module
    assert session_guard.guard_installed()
    assert session_guard.install_session_close_guard() is False  # idempotent

    def old_tf_release(session_handle, handle):  # TF 1.x behaviour on a closed session
        raise tf.errors.CancelledError(None, None, "Session has been closed.")

    monkeypatch.setattr(session_module.tf_session, "TF_SessionReleaseCallable", old_tf_release)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(info))
    ds = ToyDataset(2, 64, seed=4)
    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path))
    model.detect([ds.load_image(0), ds.load_image(1)])
    callables = list(model._callables.values())
    assert callables
    model.close()
    # the seed's guard alone would still call into the closed session
    with pytest.raises(tf.errors.CancelledError, match="closed"):
        _seed_guard_del(callables[0])
    del callables
    model._callables.clear()
    del model
    gc.collect()
    assert unraisable == []
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "has been closed" not in err


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


def test_graph_built_once_and_eager_unaffected(tiny_inference):
    """K runs in its own graph/session; batches add no ops; eager mode stays on."""
    ds = ToyDataset(2, 64, seed=9)
    images = [ds.load_image(0), ds.load_image(1)]
    tiny_inference.detect(images)
    n_ops = len(tiny_inference.graph.get_operations())
    for _ in range(3):
        tiny_inference.detect(images)
    assert len(tiny_inference.graph.get_operations()) == n_ops
    assert tf.executing_eagerly()
    assert tiny_inference.graph is not tf.compat.v1.get_default_graph()
    assert float(tf.reduce_sum(tf.ones([3]))) == 3.0
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        tiny_inference.detect(images[:1])
