"""Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf, untargeted, one step of size eps.

cleverhans 4.0.0's ``fast_gradient_method`` step (``optimize_linear`` and the clip,
:func:`attacks._utils.gradient_step`) from the gradient of an
:class:`~attacks.target.AttackTarget` (a model is wrapped as a
:class:`~attacks.target.ModelTarget`: the same numbers as cleverhans' function).
"""
import tfcompat  # noqa: F401

from attacks import _utils
from attacks.losses import get_loss
from attacks.target import as_target


def fgsm(target, x, y, *, eps, step_size=None, steps=1, norm=_utils.LINF, seed=None,
         targets=None, start=None, loss="ce"):
    """One signed-gradient step: ``clip_[0,1](x + eps * sign(grad_x L(x)))``.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, C]`` in
            ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``.
        eps: step = ball radius, ``[0, 1]`` units.
        step_size, steps, norm, seed: accepted for a uniform signature; FGSM is always one
            L-inf step of length ``eps``.
        targets: int ``[B]`` classes to step toward (the engine's targets), or None.
        start: ignored (one step from ``x``: a random start would leave the ball's corner
            FGSM is defined by); accepted for a uniform signature.
        loss: the attacker's loss (:data:`attacks.losses.LOSSES`).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` (L-inf) of ``x``.
    """
    del step_size, steps, norm, seed, start
    target = as_target(target)
    goal = None if targets is None else _utils.goal_targets(target, x, y, None, False, targets)
    grad = target.evaluate(x, y, goal, get_loss(loss)).grad
    return _utils.gradient_step(x, grad, eps, _utils.LINF)
