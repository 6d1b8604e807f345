"""Momentum Iterative Method, MI-FGSM ("MIA" in the UnMask paper; Dong et al. 2018).

``g_{t+1} = mu * g_t + grad / mean|grad|`` and ``x_{t+1} = Proj clip(x_t + alpha * d(g_{t+1}))``
with ``d`` the sign (L-inf) or L2 normalisation (L2).  The paper uses ``mu = 1`` and
``alpha = eps / T`` for ``T`` iterations, starting at ``x``.  Untargeted by default;
``targeted=True`` draws a random target ``t != y`` per image
(:func:`attacks._utils.attack_targets`, the targets of ``ga``) and accumulates the gradient of
the *negated* cross-entropy of ``t`` (cleverhans' ``targeted=True``), so the steps lower it.

Follows cleverhans 4.0.0's ``momentum_iterative_method`` step for step and uses its pieces
(``optimize_linear``, ``clip_eta``); the gradient comes from an
:class:`~attacks.target.AttackTarget` (for a model, cleverhans' ``compute_gradient``'s).  Checked in cleverhans: its gradient
normalisation (mean absolute value over axes 1..3, ``keepdims``), its L2 step
(``optimize_linear``) and its L2 projection (``clip_eta``) are all per sample, so batches are
handled correctly; dividing by the *mean* instead of the L1 *sum* of Dong et al. rescales every
accumulated term by the same constant ``H*W*C`` and changes no step.  Its driver is not called
because (a) its Python loop unrolls into ``T`` copies of the model graph inside ``tf.function``
(see :mod:`attacks._utils`) and (b) its ``sanity_checks=True`` default calls ``np.all`` on
symbolic tensors, which fails inside ``tf.function``.

Not reproduced: the original UnMask code passed the step un-scaled (2.0 in [0, 1] units, a
step far larger than the ball) to its MIA attacks; this package uses the paper's
``alpha = eps / T`` unless ``step_size`` is given.
"""
import tfcompat  # noqa: F401

import tensorflow as tf
from cleverhans.tf2.utils import optimize_linear

from attacks import _utils
from attacks.losses import get_loss
from attacks.target import as_target


def _normalise_l1(grad):
    """``grad / mean|grad|`` per sample (``[B, H, W, C]``), as cleverhans / Dong et al."""
    scale = tf.reduce_mean(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
    return grad / tf.maximum(scale, tf.cast(1e-12, grad.dtype))


def _mim_step(x_adv, momentum, grad, x, step_size, eps, decay, norm):
    """One MI-FGSM update (the momentum, then the step and the projection)."""
    momentum = decay * momentum + _normalise_l1(grad)
    x_adv = x_adv + optimize_linear(momentum, step_size, _utils.cleverhans_ord(norm))
    return _utils.project(x_adv, x, norm, eps), momentum


def _mim_update(*args):
    return _utils.compiled(_mim_step)(*args)


def mim(target, x, y, *, eps, step_size, steps, norm, seed=None, decay=1.0, targeted=False,
        targets=None, start=None, loss="ce"):
    """MI-FGSM on a batch, untargeted (default) or toward target classes.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, C]`` in
            ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, the labels.
        eps: ball radius in ``[0, 1]`` units.
        step_size: step length ``alpha`` in ``[0, 1]`` units.
        steps: number of iterations ``T`` (Python int).
        norm: ``'linf'`` or ``'l2'``.
        seed: int tensor ``[2]`` keying the random targets; unused (may be None) when
            untargeted: the untargeted method is deterministic.
        decay: momentum decay factor ``mu``.
        targeted: step toward a random target ``!= y`` per image (drawn from ``seed``).
        targets: int ``[B]`` target classes (overrides ``targeted``).
        start: first iterate (default ``x``; the engine's restarts start elsewhere).
        loss: the attacker's loss (:data:`attacks.losses.LOSSES`, default ``'ce'``).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    target = as_target(target)
    loss_fn = get_loss(loss)
    goal = _utils.goal_targets(target, x, y, seed, targeted, targets)

    def step(state):
        x_adv, momentum = state
        grad = target.evaluate(x_adv, y, goal, loss_fn).grad
        return _mim_update(x_adv, momentum, grad, x, tf.cast(step_size, x.dtype),
                           tf.cast(eps, x.dtype), tf.cast(decay, x.dtype), norm)

    first = _utils.start_point(x, norm, eps, seed, False, start)
    return _utils.iterate(steps, step, (first, tf.zeros_like(x)))[0]
