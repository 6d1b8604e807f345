"""Universal (image-agnostic) perturbations: the fitted record and how one is applied.

A *universal* attack (registry flag ``AttackSpec.universal``) does not optimise each image: it
first fits ONE perturbation ``v`` ``[H, W, 3]`` on a set of images (``CompiledAttack.fit``, or
``CompiledAttack.set_perturbation`` for a precomputed one) and then applies the same ``v`` to
every image, ``x_adv = clip_[0,1](x + v)``.  Clipping only shrinks coordinates of ``x_adv - x``
towards zero, so ``x_adv`` stays inside the eps-ball that ``v`` lies in.

This module holds what is common to universal attacks; the fitting algorithms live in their own
modules (:mod:`attacks.uap`).
"""
import tfcompat  # noqa: F401

import dataclasses

import numpy as np
import tensorflow as tf

from attacks import _utils


@dataclasses.dataclass(eq=False)
class UniversalPerturbation:
    """A universal perturbation and how it was obtained.

    Attributes:
        v: float32 ``[H, W, 3]`` in ``[0, 1]`` pixel units (not 0-255), inside the ball of radius
            ``eps / 255`` for ``norm`` (L-inf: every entry in ``[-eps/255, eps/255]``).
        fooling_rate: fraction of the fit images whose prediction changes when ``v`` is applied,
            ``mean(M(clip(x + v)) != M(x))``; NaN for a perturbation given by
            ``set_perturbation`` (not fitted here).
        passes: passes over the fit images that were run (0 when not fitted here).
        n_images: number of fit images used (after the attack's cap; 0 when not fitted here).
        norm: ``'linf'`` or ``'l2'``.
        eps: ball radius on the 0-255 scale (the attack's config ``eps``).
        pass_rates: the fooling rate on the fit images after each pass (empty when not fitted
            here, or with ``eps = 0``); ``fooling_rate`` is the entry of the pass whose ``v``
            was kept.
    """

    v: np.ndarray
    fooling_rate: float
    passes: int
    n_images: int
    norm: str
    eps: float
    pass_rates: tuple = ()

    @property
    def shape(self):
        """``(H, W, 3)`` of ``v``: the image size the perturbation applies to."""
        return tuple(self.v.shape)


def apply_universal(model_fn, x, y, *, eps, step_size, steps, norm, seed, perturbation,
                    **fit_params):
    """``clip_[0,1](x + v)`` for every image of a batch (the batch function of universal attacks).

    Args:
        model_fn, y, eps, step_size, steps, norm, seed: accepted for the registry's uniform
            signature; unused (``perturbation`` was checked against the ball when it was set).
        x: float32 tensor ``[B, H, W, 3]`` in ``[0, 1]``.
        perturbation: float32 tensor ``[H, W, 3]``, the universal ``v`` in ``[0, 1]`` units.
        **fit_params: the attack's fitting parameters (unused when applying).

    Returns:
        float32 ``[B, H, W, 3]`` in ``[0, 1]``.
    """
    del model_fn, y, eps, step_size, steps, norm, seed, fit_params
    return _utils.clip_pixels(x + tf.cast(perturbation, x.dtype)[tf.newaxis])
