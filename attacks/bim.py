"""Basic Iterative Method (Kurakin et al. 2017): PGD started at ``x``, L-inf or L2.

The L-inf attack is the same algorithm as cleverhans 4.0.0's ``basic_iterative_method`` (which
is PGD with ``rand_init=False``); the L2 one (registry ``bim_l2``) takes L2-normalised gradient
steps and projects onto the L2 ball, as cleverhans' ``projected_gradient_descent`` with
``norm=2, rand_init=False``.  Both run through :func:`attacks.pgd.pgd` (one ``tf.while_loop``,
on an :class:`~attacks.target.AttackTarget`).  ``targeted=True`` steps towards a random target
class per image (see :mod:`attacks.pgd`).
"""
import tfcompat  # noqa: F401

from attacks import _utils
from attacks.pgd import pgd


def bim(target, x, y, *, eps, step_size, steps, norm=_utils.LINF, seed=None, targeted=False,
        targets=None, start=None, loss="ce"):
    """Iterated gradient steps from ``x`` (or ``start``), each projected onto the ``eps``-ball.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, C]`` in
            ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, the labels.
        eps: ball radius, ``[0, 1]`` units.
        step_size: step length, ``[0, 1]`` units (L-inf: per pixel; L2: L2 length).
        steps: number of iterations (Python int).
        norm: ``'linf'`` (signed steps, registry ``bim``) or ``'l2'`` (``bim_l2``).
        seed: int tensor ``[2]`` keying the random targets; unused (may be None) when
            untargeted: the untargeted attack is deterministic.
        targeted, targets, start, loss: as :func:`attacks.pgd.pgd`.

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    return pgd(target, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm,
               seed=seed, rand_init=False, targeted=targeted, targets=targets, start=start,
               loss=loss)
