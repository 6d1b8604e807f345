"""Projected Gradient Descent (Madry et al. 2018), L-inf and L2, untargeted or targeted.

Untargeted: ``x_{t+1} = Proj_{B(x, eps)} clip_[0,1]( x_t + step * d(grad L(x_t)) )`` with ``d``
the sign (L-inf) or the L2-normalised gradient (L2) and ``L`` the cross-entropy of the label
(:func:`attacks.losses.cross_entropy`), started at a random point of the ball
(``rand_init=True``, the original UnMask code's setting) or at ``x`` (the paper's equation 1,
and the Basic Iterative Method).  Targeted: each image steps toward a target class ``t != y``
(random ones for ``targeted=True``, :func:`attacks._utils.attack_targets`; or given
``targets``) by ascending ``-CE(t)``.

The attack runs on an :class:`~attacks.target.AttackTarget` (a model is wrapped as a
:class:`~attacks.target.ModelTarget`): per step one evaluation of the target, then
cleverhans 4.0.0's step (``optimize_linear`` and the clip, :func:`attacks._utils.gradient_step`)
and projection (``clip_eta``, :func:`attacks._utils.project`).  With a model target the
numbers are those of cleverhans' ``fast_gradient_method`` iterated, bit for bit.  cleverhans'
own ``projected_gradient_descent`` driver is not used: its random start cannot be seeded per
call and its Python loop unrolls into ``steps`` copies of the model inside ``tf.function``
(see :mod:`attacks._utils`).
"""
import tfcompat  # noqa: F401

from attacks import _utils
from attacks.losses import get_loss
from attacks.target import as_target


def pgd(target, x, y, *, eps, step_size, steps, norm, seed, rand_init=True, targeted=False,
        targets=None, start=None, loss="ce"):
    """PGD on a batch, untargeted (default) or toward target classes.

    Args:
        target: an :class:`~attacks.target.AttackTarget`, or a model (callable, float32
            ``[B, H, W, C]`` in ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, the labels.
        eps: ball radius in ``[0, 1]`` units (L-inf: per pixel; L2: whole image).
        step_size: step length in ``[0, 1]`` units (L-inf: per pixel; L2: L2 length).
        steps: number of iterations (Python int).
        norm: ``'linf'`` or ``'l2'``.
        seed: int tensor ``[2]`` for the stateless random start and the random targets
            (unused when neither is asked for).
        rand_init: start from a uniform random point of the ball instead of ``x``.
        targeted: step toward a random target class ``!= y`` per image (drawn from ``seed``).
        targets: int ``[B]`` target classes to step toward (overrides ``targeted``).
        start: float32 ``[B, H, W, C]`` first iterate (overrides ``rand_init``; the engine's
            restarts).
        loss: the attacker's loss, a name of :data:`attacks.losses.LOSSES` (default ``'ce'``).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    target = as_target(target)
    loss_fn = get_loss(loss)
    goal = _utils.goal_targets(target, x, y, seed, targeted, targets)

    def step(x_adv):
        grad = target.evaluate(x_adv, y, goal, loss_fn).grad
        return _utils.step_and_project(x_adv, grad, x, step_size, eps, norm)

    return _utils.iterate(steps, step, _utils.start_point(x, norm, eps, seed, rand_init, start))
