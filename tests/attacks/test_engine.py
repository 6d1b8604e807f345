"""The attack engine: attacks on attack targets, APGD / AutoAttack, and the adaptive engine
(8-bit iterates, the best iterate by the target's verdict, restarts, target classes,
convergence traces)."""

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

import attacks  # noqa: E402
from attacks import _utils, resolve_config  # noqa: E402
from attacks.apgd import checkpoints  # noqa: E402
from attacks.engine import (AdaptiveEngine, EngineSettings, convergence,  # noqa: E402
                            quantize)
from attacks.losses import cross_entropy, dlr, margin  # noqa: E402
from attacks.target import (AttackTarget, CompiledModelTarget, Evaluation,  # noqa: E402
                            ModelTarget)


PATTERN_TEST_IMAGES = 48


@pytest.fixture(scope="module")
def pattern(pattern_toy):
    """(model, x [48], y [48]) of the 10-class pattern toy, images on the 1/255 grid."""
    model, _, x, y = pattern_toy
    return model, (np.round(x * 255) / 255).astype(np.float32), y


def _engine(target, x, y, name, eps, steps=20, restarts=1, quantise=True, max_targets=None,
            seed=0, slots=None, speculate=False, **params):
    """The engine's result; by default every image in its own slot, no speculation (so the
    target sees the images in lockstep, one evaluation per step)."""
    engine = AdaptiveEngine(resolve_config(name, eps, **params), target,
                            EngineSettings(steps=steps, restarts=restarts,
                                           max_targets=max_targets, quantize=quantise),
                            seed=seed)
    return engine.run(x, y, slots=slots or len(x), speculate=speculate)


# ----------------------------------------------------------------------------- losses

def test_losses_on_hand_made_logits():
    z = tf.constant([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = tf.constant([0, 0])
    t = tf.constant([2, 1])
    np.testing.assert_allclose(margin(z, y).numpy(), [1.0 - 3.0, 2.0 - 0.0])
    np.testing.assert_allclose(margin(z, y, t).numpy(), [0.0 - 3.0, 2.0 - 1.0])
    # DLR: -(z_y - max_other) / (z_pi1 - z_pi3); targeted: -(z_y - z_t) / (pi1 - (pi3+pi4)/2)
    np.testing.assert_allclose(dlr(z, y).numpy(), [-(3 - 1) / (3 - 0), -(0 - 2) / (2 - 0.5)],
                               rtol=1e-6)
    np.testing.assert_allclose(dlr(z, y, t).numpy(),
                               [-(3 - 0) / (3 - (0 - 1) / 2), -(0 - 2) / (2 - (0.5 + 0) / 2)],
                               rtol=1e-6)
    # DLR is scale invariant, CE is not
    np.testing.assert_allclose(dlr(5 * z, y).numpy(), dlr(z, y).numpy(), rtol=1e-6)
    ce = cross_entropy(z, y).numpy()
    assert np.all(ce > 0) and np.all(cross_entropy(z, y, t).numpy() < 0)
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr(tf.zeros([1, 2]), tf.constant([0]))


# ----------------------------------------------------------------------------- gray-box

def _reference_pgd(model, x, y, eps, step, steps, norm, seed):
    """PGD as the project ran it before the attack targets: cleverhans 4.0.0's
    ``fast_gradient_method`` from the model, projected with ``clip_eta``."""
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    order = _utils.cleverhans_ord(norm)

    @tf.function
    def run(x, y, seed):
        def body(i, x_adv):
            x_adv = fast_gradient_method(model, x_adv, step, order,
                                         loss_fn=_utils.cross_entropy_loss, clip_min=0.0,
                                         clip_max=1.0, y=y, targeted=False,
                                         sanity_checks=False)
            return i + 1, _utils.project(x_adv, x, norm, eps)
        start = _utils.random_start(x, norm, eps, seed)
        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), start))[1]
    return run(tf.constant(x), tf.constant(y), tf.constant(seed, tf.int64)).numpy()


def _reference_mim(model, x, y, eps, step, steps, norm):
    """MI-FGSM as before: cleverhans' ``compute_gradient`` of the model, decay 1."""
    from cleverhans.tf2.utils import compute_gradient, optimize_linear

    order = _utils.cleverhans_ord(norm)

    @tf.function
    def run(x, y):
        def body(i, x_adv, m):
            g = compute_gradient(model, _utils.cross_entropy_loss, x_adv, y, False)
            m = m + g / tf.maximum(tf.reduce_mean(tf.abs(g), axis=[1, 2, 3], keepdims=True),
                                   1e-12)
            return i + 1, _utils.project(x_adv + optimize_linear(m, step, order), x, norm,
                                         eps), m
        return tf.while_loop(lambda i, *_: i < steps, body,
                             (tf.constant(0), x, tf.zeros_like(x)))[1]
    return run(tf.constant(x), tf.constant(y)).numpy()


@pytest.mark.parametrize("name, eps", [("pgd_linf", 8), ("pgd_l2", 300), ("mia_linf", 8),
                                        ("mia_l2", 300)])
def test_gray_box_records_are_the_model_attacks_of_before_bit_for_bit(pattern, name, eps):
    """The registry's attacks now run on a ModelTarget; the records must not move."""
    model, x, y = pattern
    res = attacks.run_attack(model, x, y, name, eps=eps, batch_size=16, seed=3)
    cfg = res.config
    expected = []
    for b, i in enumerate(range(0, len(x), 16)):
        xb, yb = x[i:i + 16], y[i:i + 16]
        if name.startswith("pgd"):
            expected.append(_reference_pgd(model, xb, yb, eps / 255, cfg.step_size / 255,
                                           cfg.steps, cfg.norm, [3, b]))
        else:
            expected.append(_reference_mim(model, xb, yb, eps / 255, cfg.step_size / 255,
                                           cfg.steps, cfg.norm))
    np.testing.assert_array_equal(res.x_adv, np.concatenate(expected))


# ----------------------------------------------------------------------------- APGD

def test_apgd_checkpoints_follow_the_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def _spec_apgd_run(target, x, y, x0, eps, steps, norm):
    """APGD-CE transcribed step by step from SPEC section 11 / AutoAttack, in NumPy: only
    the loss and gradient come from ``target``.  Returns (highest-loss point, its loss)."""
    x, x0 = np.asarray(x), np.asarray(x0)
    axes = (1, 2, 3)

    def project(v):
        if norm == "linf":
            return np.clip(np.clip(v, x - eps, x + eps), 0.0, 1.0)
        d = v - x
        n = np.sqrt((d ** 2).sum(axes, keepdims=True))
        return np.clip(x + d / (n + 1e-12) * np.minimum(eps, n), 0.0, 1.0)

    def direction(g):
        if norm == "linf":
            return np.sign(g)
        return g / (np.sqrt((g ** 2).sum(axes, keepdims=True)) + 1e-12)

    def evaluate(v):
        out = target.evaluate(tf.constant(v), tf.constant(y), None, cross_entropy)
        return out.loss.numpy(), out.grad.numpy()

    loss, grad = evaluate(x0)
    x_k, x_prev, eta = x0, x0, np.full((len(x), 1, 1, 1), 2.0 * eps, np.float32)
    x_best, grad_best, loss_best, loss_prev = x0, grad, loss, loss
    n_up, reduced, best_at_check, last_check = np.zeros(len(x)), np.zeros(len(x), bool), loss, 0
    for i in range(steps):
        a = 0.75 if i > 0 else 1.0
        z = project(x_k + eta * direction(grad))
        x_new = project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))   # x_k - x_{k-1}
        loss, grad = evaluate(x_new)
        n_up += loss > loss_prev
        loss_prev = loss
        better = loss > loss_best
        x_best = np.where(better[:, None, None, None], x_new, x_best)
        grad_best = np.where(better[:, None, None, None], grad, grad_best)
        loss_best = np.where(better, loss, loss_best)
        x_prev, x_k = x_k, x_new
        if i + 1 in checkpoints(steps):
            halve = ((n_up <= 0.75 * (i + 1 - last_check))
                     | (~reduced & (best_at_check >= loss_best)))
            h = halve[:, None, None, None]
            eta = np.where(h, eta / 2, eta)
            x_k, grad = np.where(h, x_best, x_k), np.where(h, grad_best, grad)
            reduced, best_at_check, n_up, last_check = halve, loss_best, 0 * n_up, i + 1
    return x_best, loss_best


@pytest.mark.parametrize("norm, eps", [("linf", 8), ("l2", 150)])
def test_apgd_run_follows_the_spec_step_by_step(pattern, norm, eps):
    """The compiled loop's state machine (momentum on x_k - x_{k-1}, checkpoints, halving,
    restart from the best point) against a plain transcription of SPEC section 11."""
    from attacks.apgd import apgd_run, apgd_start
    model, x, y = pattern
    x, y = tf.constant(x[:16]), tf.constant(y[:16])
    target = ModelTarget(model)
    x0 = apgd_start(x, norm, eps / 255, tf.constant([3, 4]))
    x_best, _, _ = apgd_run(target, x, y, None, x0, eps=eps / 255, steps=30, norm=norm,
                            loss_fn=cross_entropy)
    ref_best, ref_loss = _spec_apgd_run(target, x, y.numpy(), x0, eps / 255, 30, norm)
    loss = cross_entropy(model(x_best), y).numpy()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-5)
    # NumPy and TF sum the L2 norms in different orders: 1e-4 is 1/40 of a 0-255 level
    np.testing.assert_allclose(x_best.numpy(), ref_best, atol=1e-4)


@pytest.mark.parametrize("norm, eps, pgd", [("linf", 8, "pgd_linf"), ("l2", 150, "pgd_l2")])
def test_apgd_reaches_at_least_pgd_success_at_equal_iterations(pattern, norm, eps, pgd):
    model, x, y = pattern
    suffix = "" if norm == "linf" else "_l2"
    p = attacks.run_attack(model, x, y, pgd, eps=eps, steps=50, batch_size=16, seed=1)
    a = attacks.run_attack(model, x, y, "apgd_ce" + suffix, eps=eps, steps=50, batch_size=16,
                           seed=1)
    d = attacks.run_attack(model, x, y, "apgd_dlr" + suffix, eps=eps, steps=50,
                           batch_size=16, seed=1)
    for r in (a, d):
        delta = (r.x_adv - x).reshape(len(x), -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
        assert np.all(size <= eps / 255 + 1e-5) and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    print("success: pgd %.2f, apgd-ce %.2f, apgd-dlr %.2f" % (p.success_rate, a.success_rate,
                                                               d.success_rate))
    assert 0 < p.success_rate < 1, "the budget must leave room to compare"
    assert a.success_rate >= p.success_rate and d.success_rate >= p.success_rate


def test_autoattack_runs_apgd_ce_then_apgd_t_on_what_is_left(pattern):
    model, x, y = pattern
    ce = attacks.compile_attack(model, "apgd_ce", 5, steps=20)
    first = ce.run(x, y, batch_size=16, seed=2)
    aa = attacks.compile_attack(model, "autoattack", 5, steps=20, n_targets=3)
    res = aa.run(x, y, batch_size=16, seed=2)
    # stage 0 is APGD-CE with the same seeds: where it succeeded, its image is kept
    np.testing.assert_array_equal(res.x_adv[first.success], first.x_adv[first.success])
    assert res.success_rate >= first.success_rate
    report = aa.stage_report()
    stages = report["stages"]
    assert [s["attack"] for s in stages] == ["apgd_ce", "apgd_t", "apgd_t", "apgd_t"]
    assert stages[0]["images"] == len(x) and stages[0]["fooled"] == first.success.sum()
    # each later stage attacks only the images no earlier one fooled
    left = len(x) - stages[0]["fooled"]
    for s in stages[1:]:
        assert s["images"] == left
        left -= s["fooled"]
    assert report["not_run"] == ["fab_t", "square"]
    assert res.success.sum() == sum(s["fooled"] for s in stages)


def test_the_compiled_model_target_gives_the_eager_targets_answer(pattern):
    """CompiledModelTarget (what the engine's white-box attack runs on) is ModelTarget's pass
    compiled once per (loss, targeted or not): the same loss, direction, logits and verdict;
    another batch size reuses the compiled pass; at most KEEP_COMPILED losses are kept."""
    model, x, y = pattern
    eager, compiled = ModelTarget(model), CompiledModelTarget(model)
    t = tf.constant((y[:10] + 1) % 10)
    for n, targets in ((10, None), (10, t), (7, None), (7, t[:7]), (5, None), (5, t[:5])):
        want = eager.evaluate(tf.constant(x[:n]), tf.constant(y[:n]), targets, dlr)
        got = compiled.evaluate(tf.constant(x[:n]), tf.constant(y[:n]), targets, dlr)
        for field in ("loss", "grad", "logits"):
            np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-4,
                                       atol=1e-5, err_msg=field)
        np.testing.assert_array_equal(got.success, want.success)
    assert len(compiled._steps) == 2, "one compiled pass per loss and targeting"
    traces = {k: step.experimental_get_tracing_count() for k, step in compiled._steps.items()}
    # 10, 7, then 5 images: the second size relaxes the shape, the third reuses it
    assert all(n == 2 for n in traces.values()), traces
    losses = [lambda z, yy, tt, k=k: k * cross_entropy(z, yy, tt)
              for k in range(CompiledModelTarget.KEEP_COMPILED + 2)]
    for i, fn in enumerate(losses):
        compiled.evaluate(tf.constant(x[:2]), tf.constant(y[:2]), None, fn)
        if i == 4:       # used again: kept while losses used longer ago are dropped
            compiled.evaluate(tf.constant(x[:2]), tf.constant(y[:2]), None, dlr)
    assert len(compiled._steps) == CompiledModelTarget.KEEP_COMPILED
    assert (losses[-1], False) in compiled._steps and (dlr, False) in compiled._steps
    assert (dlr, True) not in compiled._steps and (losses[0], False) not in compiled._steps


# ----------------------------------------------------------------------------- the engine

class _Scripted(AttackTarget):
    """A target whose verdicts and gradients are scripted; records every evaluated batch with
    the image each row belongs to (the nearest clean image: the perturbations are small)."""

    def __init__(self, x0, verdict, gradient=None, classes=5, needs_targets=False,
                 routes=("default",)):
        self.x0, self.verdict, self.gradient = x0, verdict, gradient
        self.classes, self.requires_targets, self.routes = classes, needs_targets, routes
        self.seen, self.calls, self.rows = [], 0, 0

    def image_of(self, z):
        d = np.abs(z[:, None] - self.x0[None]).reshape(len(z), len(self.x0), -1).max(axis=2)
        return np.argmin(d, axis=1)

    def evaluate_route(self, x, y, t, loss_fn, route):
        self.calls += 1
        x = np.asarray(x)
        self.rows += len(x)
        images = self.image_of(x)
        t = None if t is None else np.asarray(t)
        self.seen.append((x.copy(), t, images, route))
        grad = (self.gradient(x, self.calls) if self.gradient is not None
                else np.random.default_rng(self.calls).normal(size=x.shape))
        success = np.asarray(self.verdict(x, np.asarray(y), t, images, route), bool)
        loss = -np.abs(x - self.x0[images]).reshape(len(x), -1).sum(1)
        return Evaluation(tf.constant(loss, tf.float32), tf.constant(grad, tf.float32),
                          tf.zeros([len(x), self.classes]), tf.constant(success))

    def evaluate(self, x, y, t, loss_fn):
        return self.evaluate_route(x, y, t, loss_fn, self.routes[0])

    def ranked_targets(self, x, y):
        n = len(np.asarray(y))
        return tf.constant(np.tile(np.arange(1, self.classes), (n, 1)), tf.int64)

    def num_classes(self, x):
        return self.classes


def _grid_images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 8, 8, 3)) / 255.0).astype(np.float32), np.zeros(n,
                                                                                      np.int64)


def _content_coin(z, p=0.04):
    """A verdict that is a fixed function of each image's content (true for a share ``p`` of
    the images), whoever else is evaluated beside it."""
    import zlib
    return np.array([zlib.crc32(np.round(r * 255).astype(np.uint8).tobytes()) % 1000
                     < 1000 * p for r in z])


@pytest.mark.parametrize("name, eps", [("pgd_linf", 8), ("pgd_l2", 60), ("apgd_ce", 8)])
def test_engine_evaluates_8bit_points_in_the_ball_and_keeps_the_first_success(name, eps):
    x, y = _grid_images()
    target = _Scripted(x, lambda z, yy, t, i, r: _content_coin(z))
    res = _engine(target, x, y, name, eps, steps=8, restarts=2)
    norm = attacks.get_attack(name).norm
    for z, _, _, _ in target.seen:
        assert np.allclose(np.round(z * 255), z * 255, atol=1e-4), "8-bit images only"
        assert z.min() >= 0 and z.max() <= 1
    d = (res.x_adv - x).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    assert np.all(size <= eps / 255 + 1e-6)
    # an image that reached the goal keeps that iterate and is never evaluated again
    first_hit = {}
    for z, _, images, _ in target.seen:
        assert not set(images) & set(first_hit), "an image at the goal is not evaluated"
        assert len(set(images)) == len(images), "one job per image at a time"
        for j, i in enumerate(images):
            if _content_coin(z[j:j + 1])[0]:
                first_hit[i] = z[j]
    assert 0 < len(first_hit) < len(x)
    assert set(first_hit) == set(np.flatnonzero(res.success))
    for i, z in first_hit.items():
        np.testing.assert_array_equal(res.x_adv[i], z)
    assert np.all(res.evaluations <= 2 * (8 + 2) + 1)


def test_engine_cost_is_one_evaluation_per_step_and_run():
    x, y = _grid_images()
    target = _Scripted(x, lambda z, yy, t, i, r: np.zeros(len(z), bool))
    res = _engine(target, x, y, "pgd_linf", 8, steps=7, restarts=3)
    # per run: one evaluation per step plus one of the returned image
    assert target.calls == 3 * (7 + 1) and target.rows == len(x) * 3 * (7 + 1)
    assert np.all(res.evaluations == 3 * (7 + 1)) and not res.success.any()
    assert [r["restart"] for r in res.runs] == [0, 1, 2]
    assert all(r["images"] == len(x) and r["reached"] == 0 for r in res.runs)


def test_adaptive_mia_keeps_its_momentum():
    """Gradient +1 then -1 on half the pixels: with MI-FGSM's momentum (decay 1) those pixels
    do not move back at the second step; BIM (no momentum) moves them back."""
    x, y = _grid_images(2)
    x = np.full_like(x, 128 / 255)

    def gradient(z, call):
        g = np.ones_like(z)
        if call >= 2:
            g[..., :4, :] = -1.0      # the left half flips
        return g

    def moves(name):
        target = _Scripted(x, lambda z, yy, t, i, r: np.zeros(len(z), bool), gradient)
        _engine(target, x, y, name, 16, steps=3, step_size=2)
        return [np.round((z - x[:len(z)]) * 255)[0] for z, _, _, _ in target.seen]

    mia, bim = moves("mia_linf"), moves("bim")
    # after step 1 both moved +2; at step 2 the flipped pixels keep +2 (momentum 0 there)
    assert np.all(mia[1] == 2) and np.all(bim[1] == 2)
    assert np.all(mia[2][:, :4] == 2) and np.all(mia[2][:, 4:] == 4)
    assert np.all(bim[2][:, :4] == 0) and np.all(bim[2][:, 4:] == 4)


def test_multi_target_beats_single_target_when_the_best_target_is_not_first():
    x, y = _grid_images()

    def verdict(z, yy, t, images, route):     # only the third-ranked class can be reached
        return (t == 3) & (np.abs(z - x[images]).max(axis=(1, 2, 3)) > 0)

    def run(max_targets):
        target = _Scripted(x, verdict, classes=5, needs_targets=True)
        res = _engine(target, x, y, "pgd_linf", 8, steps=3, max_targets=max_targets)
        return res, target

    one, _ = run(1)
    every, target = run(None)
    assert one.success.mean() == 0.0 and every.success.mean() == 1.0
    tried = [int(t[list(images).index(0)]) for _, t, images, _ in target.seen if 0 in images]
    assert tried[0] == 1 and 3 in tried and 4 not in tried, "ranked order, stop at success"


def test_convergence_flags_a_number_that_was_still_moving():
    # every image first reaches the goal at step 5 of restart 1: settled
    first = np.full((10, 2), -1)
    first[:, 0] = 5
    settled = convergence(first, 100)
    assert settled["converged"] and settled["steps"][10] == 1.0
    assert settled["restarts"] == [1.0, 1.0]
    assert settled["steps"][50] == settled["steps"][100]
    # four images need 80 steps: doubling 50 -> 100 still changed the rate
    late = np.full((10, 1), 5)
    late[5:9] = 80
    late[9] = -1
    moving = convergence(late, 100)
    assert not moving["converged"] and "50 to 100" in moving["why"]
    assert moving["steps"] == {10: 0.5, 20: 0.5, 50: 0.5, 100: 0.9}
    # a rate of 1 cannot move any more, whatever the path to it
    late[9] = 90
    assert convergence(late, 100)["converged"]
    # the second restart round found more
    restart = np.full((10, 2), -1)
    restart[:6, 0] = 3
    restart[6:8, 1] = 3
    flagged = convergence(restart, 100)
    assert flagged["restarts"] == [0.6, 0.8] and not flagged["converged"]
    assert "restart" in flagged["why"]


def test_a_toy_attack_that_needs_more_steps_is_flagged_and_one_that_does_not_is_not():
    x, _ = _grid_images()
    y = np.array([0, 0, 0, 1, 1, 1])    # only the images of class 0 can be fooled at all

    def far(threshold):
        return lambda z, yy, t, images, route: (
            np.abs(z - x[images]).max(axis=(1, 2, 3)) >= threshold / 255) & (yy == 0)

    def moving_up(z, call):
        return np.ones_like(z)

    quick = _engine(_Scripted(x, far(3), moving_up), x, y, "bim", 64, steps=40, step_size=1)
    slow = _engine(_Scripted(x, far(30), moving_up), x, y, "bim", 64, steps=40, step_size=1)
    assert convergence(quick.first_step, 40)["converged"]
    assert not convergence(slow.first_step, 40)["converged"]
    assert quick.success.sum() == 3 and slow.success.sum() == 3


# ----------------------------------------------------------------------------- full batches

def _same(a, b, message=""):
    for field in ("x_adv", "success", "first_step", "route_evaluations", "won"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field),
                                      err_msg="%s %s" % (field, message))
    assert a.runs == b.runs and a.routes == b.routes


@pytest.mark.parametrize("name, eps", [("pgd_linf", 10), ("autoattack", 6)])
def test_records_do_not_depend_on_the_batch_size_the_order_or_speculation(pattern, name, eps):
    """Every (image, plan entry) job is seeded by the image's id and the entry: 7 slots or 50,
    the images in another order (with their ids), idle slots running later entries ahead or
    not -- the same images, verdicts, steps and evaluation counts."""
    model, x, y = pattern
    if name == "autoattack":      # APGD-CE, then APGD-T on 3 targets (not 9), 12 images
        x, y = x[:12], y[:12]
    engine = AdaptiveEngine(resolve_config(name, eps), CompiledModelTarget(model),
                            EngineSettings(steps=6, restarts=2, max_targets=3), seed=5)
    base = engine.run(x, y, slots=7, speculate=False)
    ranks = {(e.stage, e.rank) for e in engine.plan(10)}
    assert name != "autoattack" or ranks == {(0, None), (1, 0), (2, 1), (3, 2)}, ranks
    assert 0 < base.success.sum() < len(x), "a case where later entries still matter"
    _same(base, engine.run(x, y, slots=50), "with 50 slots")
    _same(base, engine.run(x, y, slots=7, speculate=True), "with speculation")
    order = np.random.default_rng(0).permutation(len(x))
    shuffled = engine.run(x[order], y[order], ids=order, slots=7)
    back = np.argsort(order)
    for field in ("x_adv", "success", "first_step", "route_evaluations", "won"):
        np.testing.assert_array_equal(getattr(shuffled, field)[back], getattr(base, field),
                                      err_msg=field + " in another order")


def test_a_freed_slot_takes_the_next_image_so_the_batch_stays_full():
    """Images reaching the goal at their first evaluation free their slots at once: the
    target sees full batches until the queue runs dry."""
    x, y = _grid_images(20)
    easy = set(range(0, 20, 2))
    target = _Scripted(x, lambda z, yy, t, images, r: np.isin(images, list(easy)))
    res = _engine(target, x, y, "pgd_linf", 8, steps=5, slots=4)
    assert set(np.flatnonzero(res.success)) == easy
    sizes = [len(images) for _, _, images, _ in target.seen]
    # 10 hard images x 6 evaluations and 10 easy x 1 = 70 rows; 4 per round while the queue
    # lasts, so at most the last few rounds are short
    assert sum(sizes) == 70
    assert sizes[:12] == [4] * 12 and len(sizes) <= 70 // 4 + 3


@pytest.mark.parametrize("name,eps", [("pgd_linf", 16), ("autoattack", 8)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_numbers(pattern, name, eps):
    """The state saved during a run (per image, the plan entries done) is all a resumed run
    needs: from an early, a middle or the last saved state it runs exactly the jobs not done
    (the target evaluations not yet consumed) and gives the uninterrupted run's images,
    verdicts, steps, evaluation counts and run list."""
    model, x, y = pattern
    x, y = x[:16], y[:16]
    target = _Counting(model)
    engine = AdaptiveEngine(resolve_config(name, eps), target,
                            EngineSettings(steps=5, restarts=3), seed=2)
    states = []
    whole = engine.run(x, y, slots=6, speculate=False, on_progress=states.append,
                       progress_every=0.0)
    total = target.rows
    assert 0 < whole.success.sum() < len(x), "a case where the later runs still matter"
    assert len(states) >= 3
    # each saved state says how long every image's plan is (for a run's --status)
    assert {s.plan_length for s in states} == {len(engine.plan(int(target.num_classes(x))))}
    for j in sorted({1, len(states) // 2, len(states) - 1}):
        target.rows = 0
        resumed = engine.run(x, y, slots=6, speculate=False, progress=states[j])
        assert target.rows == total - states[j].route_evaluations.sum(), \
            "only the jobs not consumed are run"
        _same(resumed, whole, "after state %d" % j)


def test_a_run_with_speculation_resumes_to_the_same_numbers(pattern):
    """Idle slots running later entries ahead (the default) do not enter the saved state: a
    run resumed from any of its states gives the uninterrupted numbers."""
    model, x, y = pattern
    x, y = x[:12], y[:12]
    engine = AdaptiveEngine(resolve_config("pgd_linf", 16), CompiledModelTarget(model),
                            EngineSettings(steps=4, restarts=3), seed=7)
    states = []
    whole = engine.run(x, y, slots=8, speculate=True, on_progress=states.append,
                       progress_every=0.0)
    assert len(states) >= 3 and 0 < whole.success.sum() < len(x)
    for j in sorted({0, len(states) // 2, len(states) - 1}):
        _same(engine.run(x, y, slots=8, speculate=True, progress=states[j]), whole,
              "after state %d" % j)


def test_progress_of_other_images_or_a_broken_state_is_refused(pattern):
    model, x, y = pattern
    engine = AdaptiveEngine(resolve_config("pgd_linf", 1), CompiledModelTarget(model),
                            EngineSettings(steps=3, restarts=3), seed=0)
    states = []
    engine.run(x[:16], y[:16], slots=4, on_progress=states.append, progress_every=0.0)
    with pytest.raises(ValueError, match="does not belong to these images.*delete it"):
        engine.run(x[:8], y[:8], progress=states[0])
    broken = states[-1].copy()
    broken.won[0], broken.done[0] = 0, 3
    with pytest.raises(ValueError, match="won entry that is not the image's last one done"):
        engine.run(x[:16], y[:16], progress=broken)
    beyond = states[-1].copy()
    beyond.done[0] = 99
    with pytest.raises(ValueError, match="entries done outside 0..3"):
        engine.run(x[:16], y[:16], progress=beyond)


def test_routes_run_in_order_on_what_is_left_and_the_worst_case_is_their_union():
    """A later route attacks only the images no earlier route won; an image's result is the
    first route (in order) to reach its goal, and each route's wins are counted."""
    x, y = _grid_images(8)
    reach = {"first": {0, 1, 2}, "second": {2, 3, 4}, "third": {5}}

    def verdict(z, yy, t, images, route):
        return np.array([i in reach[route] for i in images])

    target = _Scripted(x, verdict, routes=("first", "second", "third"))
    res = _engine(target, x, y, "pgd_linf", 8, steps=3, restarts=1)
    assert set(np.flatnonzero(res.success)) == {0, 1, 2, 3, 4, 5}
    assert res.route_wins() == {"first": 3, "second": 2, "third": 1}
    attacked = {route: set() for route in reach}
    for _, _, images, route in target.seen:
        attacked[route] |= set(images)
    assert attacked == {"first": set(range(8)), "second": {3, 4, 5, 6, 7}, "third": {5, 6, 7}}
    assert res.route_evaluations.shape == (8, 3)
    assert np.all(res.route_evaluations[:3, 1:] == 0) and np.all(res.route_evaluations[7] == 4)


def test_engine_refuses_attacks_without_a_per_image_adaptive_form():
    x, _ = _grid_images()
    target = _Scripted(x, lambda z, yy, t, i, r: np.zeros(len(z), bool))
    with pytest.raises(ValueError, match="universal"):
        AdaptiveEngine(resolve_config("uap", 10), target, EngineSettings())
    with pytest.raises(ValueError, match="random target classes"):
        AdaptiveEngine(resolve_config("ga", 3), target, EngineSettings())


def test_quantize_stays_on_the_segment_toward_x():
    x, _ = _grid_images()
    q = quantize(np.clip(x + 3.7 / 255, 0, 1), x)
    assert np.allclose(np.round(q * 255), q * 255, atol=1e-4)
    assert np.all(np.abs(q - x) <= 3.7 / 255 + 1e-6) and q.min() >= 0 and q.max() <= 1


class _Counting(CompiledModelTarget):
    """A classifier target (compiled, as the engine's white-box target is) counting the
    images it evaluates."""

    def __init__(self, model):
        super().__init__(model)
        self.rows = 0

    def evaluate(self, x, y, t, loss_fn):
        self.rows += int(np.shape(x)[0])
        return super().evaluate(x, y, t, loss_fn)


def test_an_error_in_the_target_ends_the_run_with_that_error_and_no_thread_left():
    """A target that fails mid-run: the engine raises its error (not a hang, not a silent
    partial result) and every job thread has ended."""
    import threading

    x, y = _grid_images(10)

    def verdict(z, yy, t, images, route):
        if target.calls == 4:
            raise RuntimeError("K's session failed")
        return np.zeros(len(z), bool)

    target = _Scripted(x, verdict)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="K's session failed"):
        _engine(target, x, y, "pgd_linf", 8, steps=5, slots=4, speculate=True)
    assert threading.active_count() == before, "job threads left running"
