"""Trajectory detector core (SPEC §6): taps of M, representatives, embedding, detector."""
import functools
import math
import os

import numpy as np
import pytest

import tfcompat
from defense import trajectory as trj
from models import DEFAULT_ARCH
from models.classifier import ARCHITECTURES, build_classifier
from models.taps import (POOLED, TAPS, find_backbone, num_taps, tap_features, tap_model,
                         tap_names)

tf, keras = tfcompat.import_tf()


# ----------------------------------------------------------------------------- taps of M

@functools.lru_cache(maxsize=None)
def _small_m(arch):
    """M of ``arch`` at the smallest input its architecture allows (built once per module)."""
    return build_classifier(arch, 4, ARCHITECTURES[arch].min_size, seed=0)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def test_every_architecture_has_a_tap_table():
    assert set(TAPS) == set(ARCHITECTURES)
    expected_l = {"resnet50": 16, "densenet121": 8, "vgg16": 5, "mobilenetv2": 18,
                  "mobilenetv2_050": 18}
    for arch, spec in TAPS.items():
        assert num_taps(arch) == spec.num_taps == expected_l[arch]
        assert tap_names(arch)[-1] == POOLED and len(tap_names(arch)) == spec.num_taps
        assert len(set(spec.layers)) == len(spec.layers)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_taps_exist_in_order_and_end_with_the_pooled_features(arch):
    m = _small_m(arch)
    size = ARCHITECTURES[arch].min_size
    backbone = find_backbone(m)
    names = [layer.name for layer in backbone.layers]
    spec = TAPS[arch]
    # Every tapped layer is in the backbone; shallow -> deep: topological index increasing,
    # spatial size non-increasing; the pooled features come after all of them.
    depth = [names.index(n) for n in spec.layers] + [len(names) - 1]
    assert depth == sorted(depth) and len(set(depth)) == len(depth)
    sides = [backbone.get_layer(n).output_shape[1] for n in spec.layers]
    assert all(a >= b for a, b in zip(sides, sides[1:])), sides
    assert sides[0] < size
    # The layer feeding the global pooling is not tapped too (its pooled tap would duplicate
    # the pooled features).
    pool_layer = backbone.layers[-1]
    assert isinstance(pool_layer, keras.layers.GlobalAveragePooling2D)
    assert pool_layer.input.name.split("/")[0] not in spec.layers

    model = tap_model(m, arch, with_logits=True)
    x = _images(2, size)
    outs = [o.numpy() for o in model(x, training=False)]
    taps, logits = outs[:-1], outs[-1]
    assert len(taps) == spec.num_taps
    widths = [backbone.get_layer(n).output_shape[-1] for n in spec.layers]
    assert [t.shape for t in taps] == [(2, w) for w in widths + [pool_layer.output_shape[-1]]]
    # Last tap == the pooled features that feed M's head; logits == M's, same forward pass.
    pooled = keras.Model(m.inputs, m.get_layer("head_dropout").input)(x, training=False)
    np.testing.assert_allclose(taps[-1], pooled.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, m(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    # A tap is the global average of its layer's map.
    first_map = keras.Model(backbone.inputs, backbone.get_layer(spec.layers[0]).output)
    pre = m.get_layer("preprocess")(x)
    np.testing.assert_allclose(taps[0], first_map(pre).numpy().mean(axis=(1, 2)),
                               rtol=1e-4, atol=1e-5)
    # Weights are M's own (shared, not copied), and M's layers got no extra nodes.
    assert {id(v) for v in model.weights} <= {id(v) for v in m.weights}
    assert len(m.get_layer("logits").inbound_nodes) == 1


def test_tap_features_batches_and_dtype():
    arch = DEFAULT_ARCH
    m = _small_m(arch)
    x = _images(5, ARCHITECTURES[arch].min_size, seed=1)
    feats = tap_features(m, arch, x, batch_size=2)
    assert len(feats) == num_taps(arch)
    assert all(f.dtype == np.float32 and f.shape[0] == 5 for f in feats)
    direct = tap_model(m, arch)(x, training=False)
    for f, d in zip(feats, direct):
        np.testing.assert_allclose(f, d.numpy(), rtol=1e-5, atol=1e-6)


def test_tap_errors_name_the_architecture_and_layer():
    with pytest.raises(ValueError, match="'nosuchnet'"):
        tap_model(_small_m(DEFAULT_ARCH), "nosuchnet")
    # A MobileNetV2 M declared as a ResNet50: the first missing layer is named.
    with pytest.raises(ValueError, match="conv2_block1_out.*'resnet50'"):
        tap_model(_small_m(DEFAULT_ARCH), "resnet50")


# ----------------------------------------------------------------------------- representatives

# Class 0 on tap 0: a 3-4-5 right triangle plus a far point.  Pairwise distances:
# |p0p1| = 3, |p0p2| = 4, |p1p2| = 5, |p0p3| = 10, |p1p3| = sqrt(73), |p2p3| = sqrt(52).
# Sums: p0 17, p1 8 + sqrt(73) = 16.544, p2 9 + sqrt(52) = 16.211, p3 25.755 -> medoid p2.
# Tap 1 (other coordinates of the same samples): (0,0), (0,1), (5,0), (0,2); sums
# 1+5+2 = 8, 1+sqrt(26)+1 = 7.099, 5+sqrt(26)+sqrt(29) = 15.484, 2+1+sqrt(29) = 8.385
# -> medoid p1 (chosen per tap: not the same sample as on tap 0).
_TAP0 = np.array([[0, 0], [3, 0], [0, 4], [6, 8], [7, 7]], np.float32)
_TAP1 = np.array([[0, 0], [0, 1], [5, 0], [0, 2], [9, 9]], np.float32)
_LABELS = np.array([0, 0, 0, 0, 1])


def test_centroid_and_medoid_by_hand():
    sums = trj.summed_distances(_TAP0[:4])
    np.testing.assert_allclose(sums, [17, 8 + math.sqrt(73), 9 + math.sqrt(52),
                                      10 + math.sqrt(73) + math.sqrt(52)], rtol=1e-12)
    sums1 = trj.summed_distances(_TAP1[:4])
    np.testing.assert_allclose(sums1, [8, 2 + math.sqrt(26), 5 + math.sqrt(26) + math.sqrt(29),
                                       3 + math.sqrt(29)], rtol=1e-12)

    cent = trj.representatives([_TAP0, _TAP1], _LABELS, 2, kind="centroid")
    np.testing.assert_allclose(cent[0], [[2.25, 3.0], [7, 7]])
    np.testing.assert_allclose(cent[1], [[1.25, 0.75], [9, 9]])
    med = trj.representatives([_TAP0, _TAP1], _LABELS, 2, kind="medoid")
    np.testing.assert_array_equal(med[0], [[0, 4], [7, 7]])  # sample 2 on tap 0
    np.testing.assert_array_equal(med[1], [[0, 1], [9, 9]])  # sample 1 on tap 1 (per tap)
    assert all(r.dtype == np.float32 for r in cent + med)


def test_empty_class_is_named():
    with pytest.raises(ValueError, match="class 2 has no sample"):
        trj.representatives([_TAP0], _LABELS, 3, kind="medoid")
    with pytest.raises(ValueError, match="class 2"):
        trj.representatives([_TAP0], _LABELS, 3, kind="centroid")


def test_medoid_chunked_equals_unchunked_and_brute_force():
    rng = np.random.default_rng(3)
    feats = [rng.normal(size=(240, 16)).astype(np.float32),
             (rng.normal(size=(240, 40)) * 10 + 5).astype(np.float32)]
    labels = rng.integers(0, 3, 240)
    whole = trj.representatives(feats, labels, 3, kind="medoid", chunk=10_000)
    for chunk in (1, 7, 64):
        parts = trj.representatives(feats, labels, 3, kind="medoid", chunk=chunk)
        for a, b in zip(whole, parts):
            np.testing.assert_array_equal(a, b)
    # Against an explicit [n, n, d] computation.
    pts = feats[1][labels == 1].astype(np.float64)
    brute = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).sum(1)
    np.testing.assert_allclose(trj.summed_distances(pts, chunk=5), brute, rtol=1e-9)
    np.testing.assert_array_equal(whole[1][1], feats[1][labels == 1][np.argmin(brute)])


# ----------------------------------------------------------------------------- embedding

def test_embedding_values_by_hand():
    feats = [np.array([[3, 4], [1, 0]], np.float32), np.array([[1, 0], [0, 0]], np.float32)]
    reps = [np.array([[0, 0], [3, 0], [0, 4]], np.float32),
            np.array([[0, 2], [3, 0], [-1, 0]], np.float32)]
    l2 = trj.embed(feats, reps, "l2")
    assert l2.shape == (2, 2, 3) and l2.dtype == np.float32
    np.testing.assert_allclose(l2[0, 0], [5, 4, 3])  # 3-4-5 triangle
    np.testing.assert_allclose(l2[1, 0], [1, 2, math.sqrt(17)])
    np.testing.assert_allclose(l2[0, 1], [math.sqrt(5), 2, 2])
    cos = trj.embed(feats, reps, "cosine")
    np.testing.assert_allclose(cos[0, 1], [0, 1, -1], atol=1e-7)  # orthogonal, parallel, anti
    np.testing.assert_allclose(cos[1, 1], [0, 0, 0])  # zero vector -> 0
    np.testing.assert_allclose(cos[0, 0, 1:], [3 / 5, 4 / 5], rtol=1e-6)
    # The TensorFlow version agrees (away from the zero vector) and has finite gradients.
    t = [tf.constant(f) for f in feats]
    with tf.GradientTape() as tape:
        tape.watch(t)
        e_l2 = trj.embed_tensors(t, reps, "l2")
        e_cos = trj.embed_tensors(t, reps, "cosine")
        total = tf.reduce_sum(e_l2) + tf.reduce_sum(e_cos)
    np.testing.assert_allclose(e_l2.numpy(), l2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(e_cos.numpy()[0], cos[0], atol=1e-6)
    assert all(np.isfinite(g.numpy()).all() for g in tape.gradient(total, t))


# ----------------------------------------------------------------------------- caching

def test_representatives_save_load_fingerprint_and_damage(tmp_path):
    reps = trj.representatives([_TAP0, _TAP1], _LABELS, 2, kind="medoid")
    weights = tmp_path / "m.weights.h5"
    weights.write_bytes(b"weights v1")
    meta = trj.representatives_fingerprint(str(weights), DEFAULT_ARCH, "medoid",
                                           extra={"classes": ("a", "b")})
    path = str(tmp_path / "reps" / "medoid.npz")
    assert trj.load_representatives(path, meta) is None  # nothing cached yet
    trj.save_representatives(path, reps, meta)
    assert sorted(os.listdir(tmp_path / "reps")) == ["medoid.npz"]  # no temporary left
    back = trj.load_representatives(path, meta)
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(reps, back))
    # Another kind, or M's weights changed -> recompute.
    other = dict(meta, kind="centroid")
    assert trj.load_representatives(path, other) is None
    weights.write_bytes(b"weights v2")
    assert trj.load_representatives(
        path, trj.representatives_fingerprint(str(weights), DEFAULT_ARCH, "medoid",
                                              extra={"classes": ("a", "b")})) is None
    # Damaged files: ValueError naming the file.
    blob = open(path, "rb").read()
    for damaged in (b"not a zip file at all", blob[: len(blob) // 2]):
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(ValueError, match="medoid.npz"):
            trj.load_representatives(path, meta)


# ----------------------------------------------------------------------------- metrics, split

def test_macro_auc_by_hand():
    scores = np.array([0, 1, 2, 3, 4, 5, 1.5, -1])
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    macro, per = trj.macro_auc(scores, groups)
    assert per == {1: 1.0, 2: 0.25}  # group 2: 1.5 beats 2 of 4 naturals, -1 none -> 2/8
    assert macro == pytest.approx(0.625)
    with pytest.raises(ValueError):
        trj.macro_auc(scores[:4], groups[:4])


def test_split_by_source_never_splits_a_source():
    rng = np.random.default_rng(0)
    sources = np.array(["img_%02d" % i for i in rng.permutation(np.repeat(np.arange(40), 4))])
    train, val = trj.split_by_source(sources, fraction=0.2, seed=5)
    assert not np.any(train & val) and np.all(train | val)
    assert not set(sources[train]) & set(sources[val])
    assert len(set(sources[val])) == 8
    again = trj.split_by_source(sources, fraction=0.2, seed=5)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(trj.split_by_source(sources, 0.2, seed=6)[1], val)
    tiny_train, tiny_val = trj.split_by_source([7, 7, 8], fraction=0.01)
    assert tiny_val.sum() in (1, 2) and tiny_train.any()  # one source each side


# ----------------------------------------------------------------------------- detector

def _toy(n_natural, n_per_type, seed, taps=6, classes=3):
    """Natural N(10, 1) trajectories; type 1 shifted up by 4 on the 3 deepest taps of class 0,
    type 2 shifted down by 4 on the 3 shallowest taps of class 1."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([0, 1, 2], [n_natural, n_per_type, n_per_type])
    x = rng.normal(size=(len(groups), taps, classes)).astype(np.float32) + 10
    x[groups == 1, -3:, 0] += 4
    x[groups == 2, :3, 1] -= 4
    return x, (groups > 0).astype(np.int64), groups


_TRAIN = _toy(240, 60, seed=0)
_VAL = _toy(120, 40, seed=1)
_TINY = dict(epochs=10, batch_size=32, learning_rate=1e-2, hidden=8)


def test_balanced_sampling_draws_every_group_equally():
    members = [np.arange(100), np.arange(100, 110), np.arange(110, 140)]
    order = trj._balanced_epoch(members, 47, np.random.default_rng(0))
    counts = [np.isin(order, m).sum() for m in members]
    assert counts == [47, 47, 47]
    assert len(np.unique(order[order < 100])) == 47  # large group: no repeats within an epoch


@pytest.mark.parametrize("kind", trj.DETECTOR_KINDS)
def test_detector_learns_a_separable_toy_problem(kind):
    lines = []
    model, hist = trj.train_detector(*_TRAIN, *_VAL, kind=kind, seed=0, log=lines.append,
                                     **_TINY)
    assert len(lines) == len(hist["loss"]) == len(hist["val_macro_auc"]) == _TINY["epochs"]
    assert hist["best_val_macro_auc"] == max(hist["val_macro_auc"])
    macro, per = trj.macro_auc(trj.detector_scores(model, _VAL[0]), _VAL[2])
    assert macro == pytest.approx(hist["best_val_macro_auc"], abs=1e-6)  # best epoch kept
    assert macro > 0.95 and min(per.values()) > 0.9, per
    # Differentiable w.r.t. its input (for adaptive attacks).
    x = tf.constant(_VAL[0][:8])
    with tf.GradientTape() as tape:
        tape.watch(x)
        logit = model(x, training=False)
    grad = tape.gradient(logit, x).numpy()
    assert logit.shape == (8, 1) and np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_detector_is_deterministic_self_contained_and_checks_labels(tmp_path):
    kw = dict(_TINY, epochs=3)
    first, _ = trj.train_detector(*_TRAIN, *_VAL, kind="lstm", seed=3, **kw)
    second, _ = trj.train_detector(*_TRAIN, *_VAL, kind="lstm", seed=3, **kw)
    s1, s2 = (trj.detector_scores(m, _VAL[0]) for m in (first, second))
    np.testing.assert_array_equal(s1, s2)
    other, _ = trj.train_detector(*_TRAIN, *_VAL, kind="lstm", seed=4, **kw)
    assert not np.allclose(trj.detector_scores(other, _VAL[0]), s1)
    # The standardisation is inside the model: a saved model scores the raw trajectories.
    norm = first.get_layer("standardise")
    np.testing.assert_allclose(np.squeeze(norm.mean.numpy()), _TRAIN[0].mean(0), rtol=1e-4)
    path = str(tmp_path / "detector.keras")
    first.save(path)
    np.testing.assert_allclose(trj.detector_scores(keras.models.load_model(path), _VAL[0]), s1,
                               rtol=1e-5, atol=1e-5)
    bad = _TRAIN[1].copy()
    bad[0] = 1  # a natural sample labelled adversarial
    with pytest.raises(ValueError, match="groups"):
        trj.train_detector(_TRAIN[0], bad, _TRAIN[2], kind="mlp", **kw)
