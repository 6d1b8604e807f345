"""Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf, untargeted, one step of size eps.

Uses cleverhans 4.0.0's ``fast_gradient_method`` as is (``sanity_checks=False`` so it can run
inside ``tf.function``).
"""
import tfcompat  # noqa: F401

import numpy as np
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from attacks import _utils


def fgsm(model_fn, x, y, *, eps, step_size=None, steps=1, norm=_utils.LINF, seed=None):
    """One signed-gradient step: ``clip_[0,1](x + eps * sign(grad_x CE(M(x), y)))``.

    Args:
        model_fn: callable, float32 ``[B, H, W, C]`` in ``[0, 1]`` -> logits ``[B, K]``.
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``.
        eps: step = ball radius, ``[0, 1]`` units.
        step_size, steps, norm, seed: accepted for a uniform signature; FGSM is always one
            L-inf step of length ``eps``.

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` (L-inf) of ``x``.
    """
    del step_size, steps, norm, seed
    return fast_gradient_method(
        model_fn, x, eps, np.inf, loss_fn=_utils.cross_entropy_loss,
        clip_min=0.0, clip_max=1.0, y=y, targeted=False, sanity_checks=False)
