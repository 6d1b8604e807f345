"""Basic Iterative Method (Kurakin et al. 2017), L-inf, untargeted: PGD started at ``x``.

The same algorithm as cleverhans 4.0.0's ``basic_iterative_method`` (which is PGD with
``rand_init=False``), run through :func:`attacks.pgd.pgd` so the iterations form one
``tf.while_loop`` instead of cleverhans' unrolled Python loop (see :mod:`attacks._utils`).
"""
import tfcompat  # noqa: F401

from attacks import _utils
from attacks.pgd import pgd


def bim(model_fn, x, y, *, eps, step_size, steps, norm=_utils.LINF, seed=None):
    """Iterated signed-gradient steps from ``x``, each projected onto the L-inf ``eps``-ball.

    Args:
        model_fn: callable, float32 ``[B, H, W, C]`` in ``[0, 1]`` -> logits ``[B, K]``.
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``.
        eps: L-inf radius, ``[0, 1]`` units.
        step_size: per-step change of each pixel, ``[0, 1]`` units (must be <= eps).
        steps: number of iterations (Python int).
        norm, seed: accepted for a uniform signature (always L-inf, deterministic).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    del norm, seed
    return pgd(model_fn, x, y, eps=eps, step_size=step_size, steps=steps, norm=_utils.LINF,
               seed=None, rand_init=False)
