"""K's attack interface (models.mrcnn.attack_interface): margins, input gradients, part sets.

A tiny K with seeded random weights; every check is deterministic.
"""
import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from data.synthetic import m_classes  # noqa: E402
from data.synthetic_render import render_scene  # noqa: E402
from mrcnn_config import get_config  # noqa: E402
from models.mrcnn import data_gen  # noqa: E402
from models.mrcnn.attack_interface import PartScorer, part_margins_from_logits  # noqa: E402
from models.mrcnn.extractor import PartExtractor, to_uint8  # noqa: E402
from models.mrcnn.keras_classes import restore_v2_keras_classes  # noqa: E402
from models.mrcnn.model import MaskRCNN  # noqa: E402
from models.mrcnn.toy_data import TOY_CLASSES, ToyDataset  # noqa: E402
from toys import seed_weights  # noqa: E402

S = 48  # M's image size here; K's tiny config works at 64


@pytest.fixture(scope="module")
def k_model(tmp_path_factory):
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0)
    model = MaskRCNN("inference", cfg, str(tmp_path_factory.mktemp("logs")))
    seed_weights(model, 7)
    yield model
    model.close()


@pytest.fixture(scope="module")
def scorer(k_model):
    return PartScorer(k_model, S, class_names=["BG"] + list(TOY_CLASSES))


def _random_images(n, size=S, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _synthetic_images(n, size=S, seed=0):
    rng = np.random.default_rng(seed)
    classes = m_classes()
    return np.stack([render_scene(rng, size, [classes[i % len(classes)]])[0]
                     for i in range(n)]).astype(np.float32) / 255.0


def test_margins_of_hand_made_logits():
    z = np.array([[0.0, 2.0, 1.0, -1.0],     # part 1 wins over the runner-up part 2
                  [3.0, 2.0, 2.5, 0.0],      # background wins
                  [0.0, 1.0, 1.0, -2.0],     # tie between parts 1 and 2
                  [-1.0, -5.0, -3.0, 4.0]], np.float32)
    expected = np.array([[z[i, p] - np.max(np.delete(z[i], p)) for p in (1, 2, 3)]
                         for i in range(4)], np.float32)
    np.testing.assert_allclose(part_margins_from_logits(z).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(expected[0], [1.0, -1.0, -3.0])
    np.testing.assert_allclose(expected[2], [0.0, 0.0, -3.0])
    assert (expected[1] < 0).all()
    batched = np.stack([z, z[::-1]])        # any leading shape, e.g. [B, R, C]
    np.testing.assert_allclose(part_margins_from_logits(batched).numpy()[1], expected[::-1],
                               atol=1e-6)


def test_shapes_chunking_and_margins_match_logits(scorer, k_model):
    cfg = k_model.config
    R, P = cfg.POST_NMS_ROIS_INFERENCE, cfg.NUM_CLASSES - 1
    assert (scorer.num_rois, scorer.num_parts, scorer.batch_size) == (R, P, 2)
    assert scorer.part_names == list(TOY_CLASSES)
    x = _random_images(3)                   # more than BATCH_SIZE=2: two runs, one padded
    margins, rois = scorer.part_margins(x)
    assert margins.shape == (3, R, P) and rois.shape == (3, R, 4)
    assert margins.dtype == np.float32 and rois.dtype == np.float32
    logits, rois2 = scorer.logits(x)
    np.testing.assert_allclose(rois2, rois)
    np.testing.assert_allclose(margins, part_margins_from_logits(logits).numpy(), atol=1e-4)
    single, _ = scorer.part_margins(x[2:])  # a batch of one is padded
    np.testing.assert_allclose(single, margins[2:], atol=1e-4)
    w = np.random.default_rng(1).normal(size=margins.shape).astype(np.float32)
    loss, grad, m2, r2 = scorer.value_and_grad(x, w, return_margins=True)
    assert loss.shape == (3,) and grad.shape == x.shape and grad.dtype == np.float32
    np.testing.assert_allclose(loss, (w * margins).sum(axis=(1, 2)), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(m2, margins, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="weights must have shape"):
        scorer.value_and_grad(x, w[:, :, :2])
    with pytest.raises(ValueError, match="images must have shape"):
        scorer.part_margins(_random_images(2, size=S + 1))


def test_molding_matches_the_real_pipeline(scorer, k_model):
    """The in-graph molding equals what PartExtractor.extract feeds K: to_uint8, resize
    (skimage, 48 -> 64), then data_gen.mold_inputs."""
    extractor = PartExtractor(k_model, class_names=["BG"] + list(TOY_CLASSES))
    x = np.concatenate([_random_images(2, seed=3), _synthetic_images(2, seed=3)])
    x[0, :3, :3] = [0.0, 1.0, 0.999]        # extremes and a value truncated to 254
    squares = [extractor.resize(to_uint8(im)) for im in x]
    real, metas, _ = data_gen.mold_inputs(squares, k_model.config)
    ours = scorer.mold(x, quantize=True)
    assert ours.shape == real.shape
    diff = np.abs(ours - real)
    print("molding vs extract: max diff %.3g, fraction > 1e-3: %.2g"
          % (diff.max(), (diff > 1e-3).mean()))
    assert diff.max() <= 1.0 + 1e-4 and (diff > 1e-3).mean() < 1e-3
    np.testing.assert_allclose(scorer.geometry["meta"], metas[0])
    # without quantisation: the float skimage resize of the float pixels
    floats = [extractor.resize(im.astype(np.float64) * 255.0) for im in x]
    real_f, _, _ = data_gen.mold_inputs(floats, k_model.config)
    np.testing.assert_allclose(scorer.mold(x, quantize=False), real_f, atol=2e-3)


@pytest.mark.parametrize("kind", ["random", "synthetic"])
def test_gradient_matches_finite_differences(scorer, kind):
    """Directional derivatives of sum(w * m) against central differences (step 1e-3, no
    quantisation, proposals held fixed by feeding them back).  Directions are drawn inside
    the ascent cone (a random ReLU network has so many kinks that a direction orthogonal
    to the gradient mostly measures kinks, not the gradient)."""
    x = _random_images(2, seed=11) if kind == "random" else _synthetic_images(2, seed=11)
    rng = np.random.default_rng(5)
    margins, rois = scorer.part_margins(x, quantize=False)
    w = rng.normal(size=margins.shape).astype(np.float32)
    loss, grad = scorer.value_and_grad(x, w, rois=rois, quantize=False)
    # the proposals K finds by itself at x are the ones fed back: same value and gradient
    loss_own, grad_own = scorer.value_and_grad(x, w, quantize=False)
    np.testing.assert_allclose(loss_own, loss, rtol=1e-5, atol=1e-4)
    # (compared in norm: multi-threaded float sums can move a near-tied pixel of the bilinear
    # pull-back across a ReLU kink between two runs, a local, not a systematic, difference)
    # (the RPN's NMS can also order near-tied proposals differently between two runs, so
    # only a loose bound: a gradient flowing through the proposals would be far off)
    rel_norm = np.linalg.norm(grad_own - grad) / np.linalg.norm(grad)
    assert rel_norm < 0.3, rel_norm
    top = np.argsort(-np.abs(grad).reshape(2, -1), axis=1)[:, :16]
    pixels = np.zeros_like(grad).reshape(2, -1)
    for b in range(2):
        pixels[b, top[b]] = np.sign(grad.reshape(2, -1)[b, top[b]]) * rng.random(16)
    directions = {
        "gradient": grad / np.abs(grad).max(axis=(1, 2, 3), keepdims=True),
        "random in ascent orthant": np.sign(grad) * rng.random(grad.shape),
        "16 top pixels": pixels.reshape(grad.shape),
    }
    h = 1e-3
    for name, d in directions.items():
        d = d.astype(np.float32)
        plus, _ = scorer.value_and_grad(x + h * d, w, rois=rois, quantize=False)
        minus, _ = scorer.value_and_grad(x - h * d, w, rois=rois, quantize=False)
        fd = (plus - minus) / (2 * h)
        analytic = (grad * d).sum(axis=(1, 2, 3))
        rel = np.abs(fd - analytic) / np.abs(analytic)
        print("FD %s %s: analytic %s fd %s rel.err %s" % (kind, name, analytic, fd, rel))
        assert (rel < 0.05).all(), (name, analytic, fd, rel)


def test_hinge_loss_and_tape_interface(scorer):
    x = _random_images(2, seed=21)
    margins, rois = scorer.part_margins(x, quantize=False)
    present = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    absent = 1.0 - present
    kappa, tau = 0.5, 0.25
    loss, grad, m, _ = scorer.hinge_value_and_grad(x, present, absent, kappa=kappa, tau=tau,
                                                   lam_absent=0.1, rois=rois, quantize=False,
                                                   return_margins=True)
    smax = tau * np.log(np.exp(m / tau).sum(axis=1))
    expect = (present * np.maximum(kappa - smax, 0)).sum(1) \
        + 0.1 * (absent * np.maximum(m + kappa, 0).sum(1)).sum(1)
    np.testing.assert_allclose(loss, expect, rtol=1e-4, atol=1e-4)
    assert grad.shape == x.shape and np.abs(grad).max() > 0
    # the same gradient through the chain rule on the linear interface
    s = np.exp((m - m.max(axis=1, keepdims=True)) / tau)
    s /= s.sum(axis=1, keepdims=True)
    dl_dm = (-present * (kappa - smax > 0))[:, None, :] * s \
        + 0.1 * absent[:, None, :] * (m + kappa > 0)
    _, grad_lin = scorer.value_and_grad(x, dl_dm.astype(np.float32), rois=rois, quantize=False)
    # in norm: separate session runs of a random-weight K can move a near-tied activation
    # across a ReLU kink (multi-threaded float sums), a local, not a systematic, difference
    assert _rel_norm(grad, grad_lin) < 0.3
    # margins_tf: a model_fn-like op whose tape gradient is the interface's VJP
    xt = tf.constant(x)
    w = np.random.default_rng(2).normal(size=margins.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        mt = scorer.margins_tf(xt)
        total = tf.reduce_sum(mt * w)
    g_tape = tape.gradient(total, xt).numpy()
    q_margins, q_rois = scorer.part_margins(x)           # default quantize=True, as margins_tf
    # two separate runs: the RPN's NMS may order near-tied proposals differently, so most
    # (not all) ROI margins agree exactly and the gradients agree in norm, loosely
    assert np.mean(np.isclose(mt.numpy(), q_margins, atol=1e-4)) > 0.9
    _, g_ref = scorer.value_and_grad(x, w, rois=q_rois)
    assert _rel_norm(g_tape, g_ref) < 0.3


def _rel_norm(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _agreement(a, b):
    return float(np.mean([x == y for x, y in zip(a, b)]))


def test_detected_parts_agree_with_part_extractor(k_model, scorer):
    extractor = PartExtractor(k_model, class_names=["BG"] + list(TOY_CLASSES))
    toy = ToyDataset(n=6, size=S, seed=4)
    sets = {
        "random": _random_images(6, seed=31),
        "synthetic": np.concatenate([_synthetic_images(6, seed=31),
                                     np.stack([toy.load_image(i) for i in toy.image_ids])
                                     .astype(np.float32) / 255.0]),
    }
    for name, x in sets.items():
        real = extractor.extract(x)
        got = {m: scorer.detected_parts(x, method=m) for m in ("detections", "topn", "margins")}
        rates = {m: _agreement(sets_, real) for m, sets_ in got.items()}
        print("agreement with PartExtractor.extract on %d %s images: %s; real set sizes %s"
              % (len(x), name, rates, [len(r) for r in real]))
        assert rates["detections"] >= 0.8, rates
        # the cut only removes parts: detections <= topn <= margins
        for d, t, m in zip(got["detections"], got["topn"], got["margins"]):
            assert d <= m and t <= m
    # p is in the margin set iff max_r m_{r,p} > 0
    margins, _ = scorer.part_margins(sets["random"])
    for m, parts in zip(margins, scorer.detected_parts(sets["random"], method="margins")):
        assert parts == frozenset(n for n, v in zip(scorer.part_names, m.max(0)) if v > 0)


def test_hinge_with_parts_is_one_pass_of_both(scorer):
    """``return_parts`` adds K's detected sets of the same forward: equal to
    :meth:`detected_parts`, with the loss and gradient unchanged."""
    x = np.concatenate([_synthetic_images(3, seed=12), _random_images(2, seed=13)])
    rng = np.random.default_rng(5)
    present = (rng.random((5, scorer.num_parts)) < 0.5).astype(np.float32)
    kw = dict(kappa=1.0, tau=0.5)
    loss, grad = scorer.hinge_value_and_grad(x, present, 1 - present, **kw)
    loss2, grad2, parts = scorer.hinge_value_and_grad(x, present, 1 - present,
                                                      return_parts=True, **kw)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5, atol=1e-5)
    # in norm: two session runs of a random-weight K can move a near-tied activation across
    # a ReLU kink (see test_hinge_loss_and_tape_interface)
    print("relative difference of the gradients: %.3g" % _rel_norm(grad2, grad))
    assert _rel_norm(grad2, grad) < 0.3
    assert parts == scorer.detected_parts(x)
    assert all(isinstance(p, frozenset) and p <= set(scorer.part_names) for p in parts)
    _, rois = scorer.part_margins(x)
    with pytest.raises(ValueError, match="return_parts needs K's own proposals"):
        scorer.hinge_value_and_grad(x, present, 1 - present, rois=rois, return_parts=True)


def test_images_whose_gradient_is_not_wanted_get_a_forward_pass_only(scorer):
    """``need_grad``: the images it leaves out get a zero gradient, with the loss and the part
    sets of the same forward pass; the others' gradient is the full run's."""
    x = np.concatenate([_synthetic_images(3, seed=21), _random_images(2, seed=22)])
    present = (np.random.default_rng(3).random((5, scorer.num_parts)) < 0.5).astype(np.float32)
    kw = dict(kappa=1.0, tau=0.5, return_parts=True)
    loss, grad, parts = scorer.hinge_value_and_grad(x, present, 1 - present, **kw)
    need = np.array([True, False, True, False, False])
    loss2, grad2, parts2 = scorer.hinge_value_and_grad(x, present, 1 - present,
                                                       need_grad=need, **kw)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5, atol=1e-5)
    assert parts2 == parts
    assert not grad2[~need].any()
    assert _rel_norm(grad2[need], grad[need]) < 0.3 and np.abs(grad2[need]).sum() > 0
    none = scorer.hinge_value_and_grad(x, present, 1 - present, need_grad=np.zeros(5, bool),
                                       **kw)
    assert not none[1].any() and none[2] == parts


def test_interface_after_eager_m(k_model):
    """M (eager tf-keras) first, then K's graph is extended by a new scorer: both work."""
    from models.classifier import build_classifier
    xm = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    m = build_classifier("mobilenetv2_050", 3, input_size=32)
    before = m(xm).numpy()
    scorer80 = PartScorer(k_model, 80)       # downsampling 80 -> 64
    assert restore_v2_keras_classes() == 0, "the scorer left tf-keras classes on v1 bases"
    x = _random_images(2, size=80, seed=41)
    margins, _ = scorer80.part_margins(x)
    w = np.ones_like(margins)
    loss, grad = scorer80.value_and_grad(x, w)
    assert grad.shape == (2, 80, 80, 3) and np.isfinite(grad).all() and np.isfinite(loss).all()
    np.testing.assert_allclose(m(xm).numpy(), before, rtol=1e-5, atol=1e-5)
    with tf.GradientTape() as tape:
        xt = tf.constant(xm)
        tape.watch(xt)
        out = tf.reduce_sum(m(xt))
    assert np.isfinite(tape.gradient(out, xt).numpy()).all()


@pytest.mark.slow
def test_joint_attack_on_m_and_k_evades_more_than_the_gray_box_attack(k_model, scorer):
    """On a tiny M and K, the joint attack through the adaptive engine (M toward y', K's parts
    toward V[y'], every target class) raises the evasion rate -- M fooled and not flagged by
    Algorithm 1 -- above the gray-box attack's at the same eps; every image it returns is
    8-bit, in the ball and in [0, 1], and its verdicts are the real pipeline's."""
    from attacks import resolve_config, run_attack
    from attacks.engine import AdaptiveEngine, EngineSettings
    from attacks.losses import cross_entropy
    from defense.adaptive import UnMaskTarget
    from defense.unmask import distances

    v = [frozenset({"square"}), frozenset({"disc"}), frozenset({"bar"})]
    keras.utils.set_random_seed(3)
    m = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Conv2D(4, 3, strides=2),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    x = (np.round(_synthetic_images(8, seed=4) * 255) / 255).astype(np.float32)
    y = m.predict(x, verbose=0).argmax(1)
    t = 0.2                                           # flagged unless K(x') == V[M(x')]

    def evasion(z):
        pred = m.predict(z, verbose=0).argmax(1)
        d = distances(scorer.detected_parts(z), pred, v)
        return (pred != y) & (d < t)

    def judge_with(sc):
        return lambda pred, parts, yy: (pred != yy) & (distances(parts, pred, v) < t)

    gray = run_attack(m, x, y, "pgd_linf", eps=32, steps=30, step_size=4, seed=0)
    target = UnMaskTarget(m, scorer, v, judge_with(scorer))
    ranked = target.ranked_targets(x, y).numpy()
    assert ranked.shape == (8, 2) and np.all(ranked != y[:, None])
    with pytest.raises(ValueError, match="target class"):
        target.evaluate(tf.constant(x), tf.constant(y), None, cross_entropy)
    out = target.evaluate(tf.constant(x), tf.constant(y), tf.constant(ranked[:, 0]),
                          cross_entropy)
    np.testing.assert_array_equal(out.success.numpy(), evasion(x))
    assert out.grad.shape == x.shape and np.isfinite(out.grad.numpy()).all()

    def attack(tgt):
        engine = AdaptiveEngine(resolve_config("pgd_linf", 32, step_size=4), tgt,
                                EngineSettings(steps=30, restarts=1), seed=0)
        return engine.run(x, y, slots=8)

    res = attack(target)
    np.testing.assert_array_equal(res.success, evasion(res.x_adv))
    delta = np.abs(res.x_adv - x).max()
    assert delta <= 32 / 255 + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert np.allclose(np.round(res.x_adv * 255), res.x_adv * 255, atol=1e-4)
    joint, gray_rate = evasion(res.x_adv).mean(), evasion(gray.x_adv).mean()
    print("evasion: joint %.2f, gray-box %.2f" % (joint, gray_rate))
    assert joint > gray_rate

    # the transfer variant: the same attack through a K with other weights (which also
    # makes the attacker's verdicts), judged on the real K -- it never beats the white-box
    # attack (else the gradients are broken)
    other = MaskRCNN("inference", k_model.config, k_model.model_dir)
    try:
        seed_weights(other, 8)
        surrogate_scorer = PartScorer(other, S, class_names=["BG"] + list(TOY_CLASSES))
        transfer = attack(UnMaskTarget(m, surrogate_scorer, v, judge_with(surrogate_scorer)))
    finally:
        other.close()
    print("evasion: transfer %.2f" % evasion(transfer.x_adv).mean())
    assert evasion(transfer.x_adv).mean() <= joint
