"""Input-transform defenses of seed 004 (defense/transforms.py) on hand-made images."""
import json

import numpy as np
import pytest

import tfcompat
from defense import transforms as T

tf, _ = tfcompat.import_tf()

DEFAULT_PARAMS = {"noise": {"amplitude": 8}, "resizepad": {"min_scale": 0.5}}


def _rand(n=6, h=12, w=12, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, h, w, 3)).astype(np.float32)


def _make(name, train=None, **params):
    t = T.get_transform(name, **dict(DEFAULT_PARAMS.get(name, {}), **params))
    return t.fit(_rand(8) if train is None else train)


def _checkerboard(n=2, side=16):
    ii, jj = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    board = ((ii + jj) % 2).astype(np.float32)
    return np.repeat(np.repeat(board[None, :, :, None], n, 0), 3, -1)


def _low_rank(n=20, side=8, rank=3, seed=1):
    """Images in [0.25, 0.75] spanned by a mean and ``rank`` patterns."""
    rng = np.random.default_rng(seed)
    d = side * side * 3
    basis = rng.uniform(-1, 1, size=(rank, d))
    coef = rng.uniform(-1, 1, size=(n, rank))
    flat = coef @ basis
    flat = 0.5 + 0.25 * flat / np.abs(flat).max()
    return flat.reshape(n, side, side, 3).astype(np.float32)


# ------------------------------------------------------------------------------ registry sweep

@pytest.mark.parametrize("name", sorted(T.TRANSFORMS))
def test_registry_sweep(name):
    t = _make(name)
    assert t.name == name and t.fitted
    x = _rand(3, seed=5)
    x[0, 0, 0] = [0.0, 1.0, 0.5]
    y = t(x, seed=3)
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_array_equal(y, t(x, seed=3))
    x_copy = x.copy()
    t(x)
    np.testing.assert_array_equal(x, x_copy)
    p = t.params()
    assert json.loads(json.dumps(p)) == p
    assert set(t.init_params()) <= set(p)
    again = T.get_transform(name, **t.init_params())
    assert type(again) is type(t) and again.init_params() == t.init_params()
    assert t.randomized == (name in ("noise", "resizepad"))
    assert t.has_differentiable_form == (name in ("pca", "downsample", "noise"))
    assert t(x[:0]).shape == (0,) + x.shape[1:]
    g = t.estimate_gradient(x, np.ones_like(x))
    assert g.shape == x.shape and g.dtype == np.float32


@pytest.mark.parametrize("name", sorted(T.TRANSFORMS))
def test_bpda_forward_is_the_transform(name):
    t = _make(name)
    x = _rand(2, seed=7)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = t.bpda(xt, seed=4)
    np.testing.assert_allclose(y.numpy(), t(x, seed=4), atol=2e-6)
    g = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    grad = tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()
    np.testing.assert_allclose(grad, t.estimate_gradient(x, g, seed=4), atol=1e-5)
    if t.randomized and not t.identity_gradient:      # a draw that is not the identity
        assert not np.allclose(grad, g)


# ------------------------------------------------------------------------------------ PCA

def test_pca_error_within_dropped_variance():
    train = _rand(30, 6, 6, seed=11)
    total = float(np.sum((train - train.mean(0)) ** 2, dtype=np.float64))
    for variance in (0.5, 0.9, 0.99):
        t = T.get_transform("pca", variance=variance).fit(train)
        err = float(np.sum((t(train).astype(np.float64) - train) ** 2))
        assert err <= (1.0 - t.explained_variance) * total * (1 + 1e-4) + 1e-6
        assert err <= (1.0 - variance) * total * (1 + 1e-4) + 1e-6
        assert err > 0.5 * (1.0 - t.explained_variance) * total  # the bound is not slack
        assert 1 <= t.n_components < 30 and t.explained_variance >= variance - 1e-6
        assert t.params()["n_components"] == t.n_components
    full = T.get_transform("pca", variance=1.0).fit(train)
    np.testing.assert_allclose(full(train), train, atol=1e-4)
    assert full.n_components == 30  # min(N, D): the last one has ~zero variance


def test_pca_keeps_low_rank_data_exactly():
    train = _low_rank(rank=3)
    t = T.get_transform("pca", variance=0.99).fit(train)
    assert t.n_components <= 3
    np.testing.assert_allclose(t(train), train, atol=1e-5)
    # an image of the same subspace that was not in the training set
    new = _low_rank(n=4, rank=3, seed=1)[:2] * 0.5 + train[-2:] * 0.5
    np.testing.assert_allclose(t(new), new, atol=1e-5)
    # an image off the subspace changes
    assert np.abs(t(_rand(1, 8, 8, seed=3)) - _rand(1, 8, 8, seed=3)).max() > 0.05


def test_pca_needs_fit_and_the_training_size():
    t = T.get_transform("pca")
    assert not t.fitted and "n_components" not in t.params()
    with pytest.raises(ValueError, match="fit"):
        t(_rand(1))
    with pytest.raises(ValueError, match="fit"):
        t.estimate_gradient(_rand(1), _rand(1))
    with pytest.raises(ValueError, match="fit"):
        t.differentiable(tf.constant(_rand(1)))
    with pytest.raises(ValueError, match="train_images"):
        t.fit(_rand(1))
    t.fit(_rand(5, 8, 8))
    with pytest.raises(ValueError, match=r"images.*\[N, 8, 8, 3\]"):
        t(_rand(1, 9, 9))


def test_pca_gradient_is_the_projection_vjp():
    train = _low_rank(n=12, rank=4, seed=2)
    t = T.get_transform("pca", variance=0.95).fit(train)
    x = train[:3]
    g = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    est = t.estimate_gradient(x, g)
    c = t.components_.astype(np.float64)
    want = (g.reshape(3, -1) @ c.T @ c).reshape(x.shape)
    np.testing.assert_allclose(est, want, atol=1e-5)
    # finite differences on the numpy forward (interior: nothing clipped)
    v = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    h = 1e-2
    fd = (t(x + h * v).astype(np.float64) - t(x - h * v)) / (2 * h)
    np.testing.assert_allclose(np.sum(fd * g), np.sum(est.astype(np.float64) * v), rtol=1e-3)


# ---------------------------------------------------------------------------- down-sampling

@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_downsample_constant_smooth_and_checkerboard(scale):
    t = T.get_transform("downsample", scale=scale)
    const = np.full((2, 16, 16, 3), 0.3, np.float32)
    const[1] = [0.0, 1.0, 0.6]
    np.testing.assert_allclose(t(const), const, atol=1e-6)
    ii, jj = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    smooth = 0.5 + 0.3 * np.sin(2 * np.pi * ii / 16.0) * np.cos(2 * np.pi * jj / 16.0)
    smooth = np.repeat(smooth[None, :, :, None], 3, -1).astype(np.float32)
    assert np.abs(t(smooth) - smooth).mean() < 0.03
    board = _checkerboard()
    out = t(board)
    assert out.std() < 0.25 * board.std()
    assert np.abs(out - 0.5)[:, 2:-2, 2:-2].max() < 0.2


def test_downsample_scale_one_is_identity_and_sizes():
    x = _rand(2, 10, 14)
    np.testing.assert_array_equal(T.get_transform("downsample", scale=1.0)(x), x)
    assert T.DownsampleTransform(0.75).small_size(96, 96) == (72, 72)
    assert T.DownsampleTransform(0.5).small_size(5, 96) == (3, 48)


@pytest.mark.parametrize("scale", [0.5, 0.75])
def test_downsample_gradient_is_the_vjp(scale):
    t = T.get_transform("downsample", scale=scale)
    x = 0.25 + 0.5 * _rand(2, 7, 9, seed=4)
    g = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    est = t.estimate_gradient(x, g)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = t.differentiable(xt)
    np.testing.assert_allclose(t(x), y.numpy(), atol=1e-6)
    np.testing.assert_allclose(est, tape.gradient(y, xt, output_gradients=tf.constant(g)),
                               atol=1e-6)
    # the Jacobian built column by column from the numpy forward (linear map)
    d = x.size
    jac = np.empty((d, d))
    base = t(np.zeros_like(x)).ravel().astype(np.float64)
    for k in range(d):
        e = np.zeros(d, np.float32)
        e[k] = 1.0
        jac[:, k] = t(e.reshape(x.shape)).ravel() - base
    np.testing.assert_allclose(est.ravel(), g.ravel().astype(np.float64) @ jac, atol=1e-5)
    assert not np.allclose(est, g)


# ------------------------------------------------------------------------------------- noise

def test_noise_bounds_steps_and_seeds():
    a = 7
    t = T.get_transform("noise", amplitude=a)
    x = (np.random.default_rng(0).integers(20, 236, size=(4, 16, 16, 3)) / 255.0
         ).astype(np.float32)  # far from 0 and 1: nothing is clipped
    y = t(x, seed=1)
    steps = np.round((y.astype(np.float64) - x) * 255.0)
    np.testing.assert_allclose((y.astype(np.float64) - x) * 255.0, steps, atol=1e-3)
    assert steps.min() == -a and steps.max() == a
    assert set(np.unique(steps).astype(int)) == set(range(-a, a + 1))
    np.testing.assert_allclose(y * 255.0, np.round(y * 255.0), atol=1e-3)
    assert not np.array_equal(y, t(x, seed=2))
    np.testing.assert_array_equal(y, t(x, seed=1))
    np.testing.assert_allclose(y - x, t.sample(x.shape, 1), atol=1e-6)
    # saturated inputs are clipped into [0, 1]
    edge = np.zeros((1, 8, 8, 3), np.float32)
    edge[0, :4] = 1.0
    ye = t(edge, seed=0)
    assert ye.min() == 0.0 and ye.max() == 1.0 and ye[0, 4:].max() > 0
    # a = 0 is the identity
    np.testing.assert_array_equal(T.get_transform("noise", amplitude=0)(x, seed=3), x)


def test_noise_differentiable_seeded_and_eot():
    tf.random.set_seed(0)      # fresh draws from TF's global RNG need it under op determinism
    t = T.get_transform("noise", amplitude=5)
    x = _rand(2, 6, 6)
    np.testing.assert_allclose(t.differentiable(tf.constant(x), seed_tf=9).numpy(), t(x, seed=9),
                               atol=1e-6)
    seeded = tf.function(lambda v, s: t.differentiable(v, seed_tf=s))
    np.testing.assert_allclose(seeded(tf.constant(x), tf.constant(9)).numpy(), t(x, seed=9),
                               atol=1e-6)
    d1 = t.differentiable(tf.constant(x)).numpy()
    d2 = t.differentiable(tf.constant(x)).numpy()
    assert not np.array_equal(d1, d2)  # fresh noise per call (EOT)
    inner = (x > 6 / 255) & (x < 1 - 6 / 255)
    assert np.abs(d1 - x)[inner].max() <= 5 / 255 + 1e-6
    g = _rand(2, 6, 6, seed=3)
    np.testing.assert_array_equal(t.estimate_gradient(x, g), g)


# ----------------------------------------------------------------------- bit depth and JPEG

@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bitdepth_levels(bits):
    t = T.get_transform("bitdepth", bits=bits)
    x = _rand(3, 16, 16)
    y = t(x)
    assert np.unique(y).size <= 2 ** bits
    lv = 2 ** bits - 1
    np.testing.assert_allclose(y * lv, np.round(y * lv), atol=1e-4)
    assert np.abs(y - x).max() <= 0.5 / lv + 1e-6
    g = _rand(3, 16, 16, seed=1)
    np.testing.assert_array_equal(t.estimate_gradient(x, g), g)
    assert t.differentiable(tf.constant(x)) is None
    if bits == 8:
        x8 = np.round(x * 255) / 255
        np.testing.assert_allclose(t(x8), x8, atol=1e-7)


def test_jpeg_flat_image_kept_noise_changed():
    t = T.get_transform("jpeg", quality=75)
    flat = np.empty((2, 16, 16, 3), np.float32)
    flat[0] = np.array([40, 120, 200]) / 255.0
    flat[1] = np.array([255, 255, 0]) / 255.0
    assert np.abs(t(flat) - flat).max() <= 3 / 255 + 1e-6
    noisy = _rand(2, 16, 16)
    assert np.abs(t(noisy) - noisy).mean() > 0.05
    assert np.abs(T.get_transform("jpeg", quality=95)(noisy) - noisy).mean() \
        < np.abs(T.get_transform("jpeg", quality=10)(noisy) - noisy).mean()
    g = _rand(2, 16, 16, seed=1)
    np.testing.assert_array_equal(t.estimate_gradient(noisy, g), g)
    assert t.differentiable(tf.constant(noisy)) is None and not t.has_differentiable_form


# ------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("name, params, word", [
    ("pca", {"variance": 0.0}, "variance"), ("pca", {"variance": 1.5}, "variance"),
    ("pca", {"variance": "0.9"}, "variance"), ("pca", {"seed": -1}, "seed"),
    ("noise", {"amplitude": -1}, "amplitude"), ("noise", {"amplitude": 2.5}, "amplitude"),
    ("noise", {"amplitude": 256}, "amplitude"), ("noise", {"amp": 5}, "amplitude"),
    ("downsample", {"scale": 0}, "scale"), ("downsample", {"scale": 2}, "scale"),
    ("jpeg", {"quality": 0}, "quality"), ("jpeg", {"quality": 96}, "quality"),
    ("bitdepth", {"bits": 0}, "bits"), ("bitdepth", {"bits": 9}, "bits"),
    ("bitdepth", {"bits": True}, "bits"), ("bitdepth", {"levels": 3}, "levels"),
])
def test_bad_params(name, params, word):
    with pytest.raises(ValueError, match=word):
        T.get_transform(name, **params)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="bitdepth, downsample, jpeg, noise, pca"):
        T.get_transform("blur")


@pytest.mark.parametrize("bad, word", [
    (np.zeros((8, 8, 3), np.float32), "4-D"),
    (np.zeros((1, 8, 8, 1), np.float32), "4-D"),
    (np.zeros((1, 8, 8, 3), np.uint8), "255"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 8, 8, 3), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((1, 8, 8, 3), -0.1, np.float32), r"\[0, 1\]"),
])
def test_bad_images(bad, word):
    t = T.get_transform("bitdepth")
    with pytest.raises(ValueError, match="images.*" + word):
        t(bad)
    with pytest.raises(ValueError, match="train_images"):
        T.get_transform("pca").fit(bad)


def test_bad_seed_and_grad():
    t = _make("downsample")
    x = _rand(2)
    with pytest.raises(ValueError, match="seed"):
        t(x, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        t(x, seed=1.5)
    with pytest.raises(ValueError, match="grad"):
        t.estimate_gradient(x, np.ones((2, 12, 12, 1), np.float32))
    with pytest.raises(ValueError, match="grad"):
        t.estimate_gradient(x, np.full_like(x, np.inf))
    # tiny float excursions are tolerated and clipped
    y = T.get_transform("bitdepth", bits=8)(np.full((1, 4, 4, 3), 1 + 1e-7, np.float32))
    assert y.max() == 1.0


def test_differentiable_pca_works_in_two_separate_tf_functions():
    """Each adaptive attack traces its own tf.function: the PCA's TF form must not reuse a
    tensor made inside another function's graph."""
    import tfcompat
    tf = tfcompat.import_tf()[0]
    rng = np.random.default_rng(0)
    t = T.get_transform("pca", variance=0.9).fit(rng.random((20, 4, 4, 3)).astype(np.float32))
    x = tf.constant(rng.random((2, 4, 4, 3)).astype(np.float32))
    outs = [tf.function(lambda z: t.differentiable(z))(x) for _ in range(2)]
    np.testing.assert_allclose(outs[0].numpy(), outs[1].numpy())
    np.testing.assert_allclose(outs[0].numpy(), t.differentiable(x).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------- resize + pad

def test_resize_pad_draws_sizes_and_places_and_its_gradient_is_the_exact_adjoint():
    t = T.get_transform("resizepad", min_scale=0.5)
    x = _rand(6, 12, 12, seed=4)
    draws = t.draws(6, 12, 12, seed=9)
    assert np.all((draws[:, 0] >= 6) & (draws[:, 0] <= 12) & (draws[:, 2] + draws[:, 0] <= 12))
    assert len({tuple(d) for d in draws}) > 1                  # the draws differ
    y = t(x, seed=9)
    for i, (h, w, top, left) in enumerate(draws):             # zero outside the placed image
        outside = np.ones((12, 12), bool)
        outside[top:top + h, left:left + w] = False
        assert np.all(y[i][outside] == 0)
        assert y[i][~outside].min() >= x[i].min() - 1e-6     # convex weights: inside the range
    assert not np.array_equal(y, t(x, seed=10))
    # <T x, g> == <x, T^T g> for the same draw: the backward pass is the exact adjoint
    g = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    lhs = float(np.sum(t(x, seed=9).astype(np.float64) * g))
    rhs = float(np.sum(x.astype(np.float64) * t.estimate_gradient(x, g, seed=9)))
    assert lhs == pytest.approx(rhs, rel=1e-5)
    full = T.get_transform("resizepad", min_scale=1.0)
    np.testing.assert_allclose(full(x, seed=3), x, atol=1e-6)   # side S: the identity
    with pytest.raises(ValueError, match="min_scale"):
        T.get_transform("resizepad", min_scale=0)
