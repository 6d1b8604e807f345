"""Routes of UnMask's decision rule (SPEC §13) on a toy where M is robust and K is not: the
K-only route reaches a wrong final answer that the two-phase template cannot, the route-
complete plan takes it, and a rejecting UnMask turns those images into rejections."""
import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from attacks import resolve_config  # noqa: E402
from attacks.engine import AdaptiveEngine, EngineSettings  # noqa: E402
from data.knowledge import CLASS_PARTS  # noqa: E402
from defense.adaptive import UnMaskTarget  # noqa: E402
from defense.routes import UNMASK_ROUTES, unmask_routes  # noqa: E402
from defense.threats import Goal  # noqa: E402
from defense.unmask import UnMask  # noqa: E402

CLASSES = ("bicycle", "tvmonitor", "pottedplant")
#: K's parts: part j is seen when stripe j (rows 2j, 2j+1) of the image is bright
PARTS = ("wheel", "saddle", "screen", "plant", "pot")


class StripeK:
    """A K that is easy to fool: part j's margin is 10 x (mean of stripe j - 0.5)."""
    part_names, num_parts = PARTS, len(PARTS)

    def margins(self, x):
        x = np.asarray(x, np.float32)
        return np.stack([(x[:, 2 * j:2 * j + 2].mean(axis=(1, 2, 3)) - 0.5) * 10
                         for j in range(self.num_parts)], axis=1)

    def sets(self, x):
        return [frozenset(p for p, v in zip(PARTS, row) if v > 0) for row in self.margins(x)]

    def hinge_value_and_grad(self, images, present, absent, *, kappa=0.0, lam_present=1.0,
                             lam_absent=1.0, tau=1.0, return_parts=False, need_grad=None):
        x = np.asarray(images, np.float32)
        m = self.margins(x)
        loss = (lam_present * present * np.maximum(kappa - m, 0)
                + lam_absent * absent * np.maximum(m + kappa, 0)).sum(axis=1)
        d_m = -lam_present * present * (kappa - m > 0) + lam_absent * absent * (m + kappa > 0)
        grad = np.zeros_like(x)
        per_pixel = 10.0 / (2 * x.shape[2] * x.shape[3])
        for j in range(self.num_parts):
            grad[:, 2 * j:2 * j + 2] = (d_m[:, j] * per_pixel)[:, None, None, None]
        if need_grad is not None:
            grad[~np.asarray(need_grad, bool)] = 0.0
        out = (loss.astype(np.float32), grad)
        return out + (self.sets(x),) if return_parts else out

    def detected_parts(self, images):
        return self.sets(images)


def robust_m(x, training=False):
    """An M no pixel can move: it always says bicycle (the images' class)."""
    x = tf.convert_to_tensor(x)
    return tf.constant([[5.0, 0.0, 0.0]]) + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3])[:, None]


class _NoExtractor:
    kind = "k"

    def extract(self, images, keys=None):
        raise AssertionError("the toy's part sets come from StripeK")


@pytest.fixture(scope="module")
def toy():
    """Bicycles (class 0) whose wheel and saddle stripes are bright: clean, M is right and
    K's parts agree with it, so UnMask answers bicycle."""
    x = np.full((4, 10, 10, 3), 100 / 255, np.float32)
    x[:, :4] = 155 / 255
    x += (np.arange(4) / 255)[:, None, None, None].astype(np.float32)
    um = UnMask(robust_m, _NoExtractor(), CLASS_PARTS, CLASSES, threshold=0.5)
    return x, np.zeros(4, np.int64), um


def _judges(um):
    def final(pred, parts, response):
        res = um.decide(pred, parts)
        return res.final if response == "rectify" else np.where(res.flags, -1, res.preds)

    def wrong(response):
        def judge(pred, parts, y):
            f = final(pred, parts, response)
            return (f != y) & (f != -1)
        return judge
    return final, wrong


def _attack(x, y, um, routes, response="rectify"):
    _, wrong = _judges(um)
    target = UnMaskTarget(robust_m, StripeK(), um.class_parts_list, wrong(response),
                          routes=routes)
    engine = AdaptiveEngine(resolve_config("pgd_linf", 40, step_size=4), target,
                            EngineSettings(steps=20, restarts=1), seed=0)
    return engine.run(x, y, slots=len(x))


def test_clean_toy_is_right_and_unflagged(toy):
    x, y, um = toy
    res = um.decide(np.zeros(4, np.int64), StripeK().sets(x))
    assert not res.flags.any() and np.all(res.final == y)


def test_k_only_reaches_the_wrong_answer_that_two_phase_cannot(toy):
    x, y, um = toy
    two_phase = _attack(x, y, um, ("two-phase",))
    k_only = _attack(x, y, um, ("k-only",))
    assert not two_phase.success.any(), "M holds, so the template never turns to K"
    assert k_only.success.all()
    final, _ = _judges(um)
    answers = final(np.zeros(4, np.int64), StripeK().sets(k_only.x_adv), "rectify")
    assert np.all(answers != y) and np.all(answers != -1), "flagged and rectified elsewhere"
    # the route-complete plan (every route of the rule, in order) takes what any route takes
    complete = _attack(x, y, um, unmask_routes(Goal.WRONG, "rectify"))
    assert complete.success.all()
    wins = complete.route_wins()
    assert sum(wins.values()) == len(x) and wins["two-phase"] == 0


def test_reject_turns_the_k_only_images_into_rejections(toy):
    x, y, um = toy
    k_only = _attack(x, y, um, ("k-only",))
    final, _ = _judges(um)
    rejected = final(np.zeros(4, np.int64), StripeK().sets(k_only.x_adv), "reject")
    assert np.all(rejected == -1)
    routes = unmask_routes(Goal.WRONG, "reject")
    assert "k-only" not in routes
    assert not _attack(x, y, um, routes, response="reject").success.any()


def test_routes_of_the_rule():
    assert unmask_routes(Goal.WRONG, "rectify") == UNMASK_ROUTES
    for goal, response in ((Goal.UNDETECTED, "rectify"), (Goal.WRONG, "reject"),
                           (Goal.UNDETECTED, "reject")):
        assert unmask_routes(goal, response) == tuple(r for r in UNMASK_ROUTES
                                                      if r != "k-only")
    with pytest.raises(ValueError, match="routes"):
        UnMaskTarget(robust_m, StripeK(), [CLASS_PARTS[c] for c in CLASSES],
                     lambda *a: None, routes=("sideways",))


def test_one_k_run_serves_a_batch_whatever_its_routes(toy):
    """Rows on different routes, losses and targets are evaluated together: one session run
    of K, and each row's direction is its own route's."""
    from attacks.losses import cross_entropy
    x, y, um = toy
    runs = []

    class Counting(StripeK):
        def hinge_value_and_grad(self, images, present, absent, **kw):
            runs.append(len(images))
            wanted.append(kw.get("need_grad"))
            forged.append(present.copy())
            return super().hinge_value_and_grad(images, present, absent, **kw)

    wanted, forged = [], []

    _, wrong = _judges(um)
    target = UnMaskTarget(robust_m, Counting(), um.class_parts_list, wrong("rectify"),
                          routes=UNMASK_ROUTES)
    routes = list(UNMASK_ROUTES)
    out = target.evaluate_jobs(x, y, np.array([-1, 1, 2, 1]), [cross_entropy] * 4, routes)
    assert runs == [4]
    # K's gradient is asked for where the route uses it: the two-phase rule only once M says
    # y' (this M never does), every other route always
    np.testing.assert_array_equal(wanted[0], [True, False, True, True])
    # K's target class: y' for the targeted routes; on follow-m, M's answer -- or, while M
    # still says y (this M always does), its best other class (a tie: the lower index, 1)
    np.testing.assert_array_equal(forged[0], target.masks[[1, 1, 2, 1]])
    alone = [target.evaluate_jobs(x[i:i + 1], y[i:i + 1], np.array([t]), [cross_entropy],
                                  [r]) for i, (t, r) in enumerate(zip([-1, 1, 2, 1], routes))]
    for i, one in enumerate(alone):
        np.testing.assert_allclose(np.asarray(out.grad)[i], np.asarray(one.grad)[0], atol=1e-6)
        np.testing.assert_allclose(np.asarray(out.loss)[i], np.asarray(one.loss)[0], atol=1e-6)


def test_m_runs_backward_only_for_the_rows_whose_route_uses_its_gradient(toy):
    """The k-only route never uses M's loss or gradient: its rows get M's forward pass only
    (M's answer still makes the verdict), the other routes' rows M's forward and backward."""
    from attacks.losses import cross_entropy
    x, y, um = toy
    _, wrong = _judges(um)
    target = UnMaskTarget(robust_m, StripeK(), um.class_parts_list, wrong("rectify"),
                          routes=UNMASK_ROUTES)
    backward, forward = [], []
    step, logits_fn = target._m_step, target._m_logits

    def counted_step(fn, targeted=True):
        inner = step(fn, targeted)
        return lambda xb, yb, tb: (backward.append(int(xb.shape[0])), inner(xb, yb, tb))[1]

    def counted_logits():
        inner = logits_fn()
        return lambda xb: (forward.append(int(xb.shape[0])), inner(xb))[1]

    target._m_step, target._m_logits = counted_step, counted_logits
    routes = ["k-only", "two-phase", "k-only", "joint"]
    out = target.evaluate_jobs(x, y, np.array([1, 1, 2, 2]), [cross_entropy] * 4, routes)
    assert sum(backward) == 2 and forward == [2]
    # every row has M's logits; the k-only rows' loss is K's term alone
    np.testing.assert_allclose(out.logits, np.asarray(robust_m(x)), atol=1e-6)
    k_loss = StripeK().hinge_value_and_grad(x, target.masks[[1, 1, 2, 2]],
                                            1 - target.masks[[1, 1, 2, 2]], kappa=1.0,
                                            tau=0.5)[0]
    np.testing.assert_allclose(np.asarray(out.loss)[[0, 2]], -k_loss[[0, 2]], atol=1e-5)
    assert np.all(np.isfinite(out.grad)) and np.abs(out.grad[[0, 2]]).sum() > 0
