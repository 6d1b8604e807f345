"""Projected Gradient Descent (Madry et al. 2018), L-inf and L2, untargeted or targeted.

Untargeted: ``x_{t+1} = Proj_{B(x, eps)} clip_[0,1]( x_t + step * d(grad_x CE(M(x_t), y)) )``
with ``d`` the sign (L-inf) or the L2-normalised gradient (L2), started at a random point of
the ball (``rand_init=True``, the original UnMask code's setting) or at ``x`` (the paper's
equation 1, and the Basic Iterative Method).  Targeted (``targeted=True``): each image gets a
random target ``t != y`` (:func:`attacks._utils.attack_targets`, the targets of ``ga``) and the
step *descends* the target's cross-entropy, ``x_t - step * d(grad_x CE(M(x_t), t))``.

Built from cleverhans 4.0.0's pieces: each step is cleverhans' ``fast_gradient_method`` (with
its own ``targeted`` flag) and the projection is cleverhans' ``clip_eta`` (via
:func:`attacks._utils.project`).  cleverhans' ``projected_gradient_descent`` driver itself is
not used: its random start cannot be seeded per call (stateful RNG) and its Python loop
unrolls into ``steps`` copies of the model graph inside ``tf.function`` (slow to compile and
to run); see :mod:`attacks._utils`.
"""
import tfcompat  # noqa: F401

from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from attacks import _utils


def pgd(model_fn, x, y, *, eps, step_size, steps, norm, seed, rand_init=True, targeted=False):
    """PGD on a batch, untargeted (default) or towards random targets.

    Args:
        model_fn: callable, float32 ``[B, H, W, C]`` in ``[0, 1]`` -> logits ``[B, K]``.
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, the labels (untargeted: their cross-entropy is maximised;
            targeted: the targets are drawn among the other classes).
        eps: ball radius in ``[0, 1]`` units (L-inf: per pixel; L2: whole image).
        step_size: step length in ``[0, 1]`` units (L-inf: per pixel; L2: L2 length).
        steps: number of iterations (Python int).
        norm: ``'linf'`` or ``'l2'``.
        seed: int tensor ``[2]`` for the stateless random start and the random targets
            (unused when neither is asked for).
        rand_init: start from a uniform random point of the ball instead of ``x``.
        targeted: minimise the cross-entropy of a random target class ``!= y`` per image
            (:func:`attacks._utils.attack_targets` from ``seed``) instead of maximising the
            label's.

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    order = _utils.cleverhans_ord(norm)
    goal = _utils.attack_targets(model_fn, x, y, seed) if targeted else y
    start = _utils.random_start(x, norm, eps, seed) if rand_init else x

    def step(x_adv):
        x_adv = fast_gradient_method(
            model_fn, x_adv, step_size, order, loss_fn=_utils.cross_entropy_loss,
            clip_min=0.0, clip_max=1.0, y=goal, targeted=targeted, sanity_checks=False)
        return _utils.project(x_adv, x, norm, eps)

    return _utils.iterate(steps, step, start)
