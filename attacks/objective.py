"""Projected gradient ascent on an arbitrary objective, for defense-aware (adaptive) attacks.

The registry's attacks maximise M's cross-entropy inside one ``tf.function``.  An adaptive
attack maximises a loss that also runs through the defense -- a transform's BPDA backward
pass, an expectation over a random transform (EOT), a detector, or K, which lives in its own
graph and session -- so the loop here is plain Python over two callables:

* ``value_and_grad(x) -> (loss [B], grad [B, H, W, C])``: the attacker's objective (higher is
  better for the attacker) and its gradient w.r.t. the images, numpy in and out.  Gradients
  from different runtimes simply add (the loss is a sum).
* ``decide(x) -> float [B]``: the *real* pipeline's verdict on the quantised images, higher =
  better for the attacker (e.g. 1 where the defense's answer is wrong and not rejected).  Per
  image, the iterate with the best verdict is kept (the first one on ties, so an image the
  attack cannot improve stays as benign as possible); nothing is judged on surrogate values.

With ``evaluate(x) -> (loss, grad, verdict)`` instead, one call gives the objective, its
gradient and the verdict at the same (quantised) candidate -- for a defense whose verdict and
gradient come from the same forward pass (UnMask's K), this halves the work per step.  The
next step's gradient is then taken at the quantised candidate rather than at the continuous
iterate (they differ by less than 1/255 per pixel); ``decide`` judges only the last one.

Every candidate is **quantised to 8 bits** before it is judged and returned: the perturbation
is truncated toward zero on the 1/255 grid (``x`` itself must lie on that grid, as decoded
images do), which never leaves the ε-ball (L∞ or L2) nor [0, 1]; on the backward pass the
quantisation is the identity.  Budgets are in [0, 1] units here (the registry's 0-255 values
divided by 255, see :func:`attacks._utils.to_unit_scale`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import numpy as np

LINF, L2 = "linf", "l2"


@dataclasses.dataclass
class ObjectiveResult:
    """Outcome of :func:`pgd_objective` on B images.

    Attributes:
        x_adv: float32 [B, H, W, C], the best iterate per image (quantised, in the ball).
        verdict: float [B], ``decide`` of ``x_adv``.
        best_step: int [B], the step it came from (0 = the start point).
        losses: float [steps, B], the objective at each step's starting point.
    """
    x_adv: np.ndarray
    verdict: np.ndarray
    best_step: np.ndarray
    losses: np.ndarray


def quantize(x_adv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """8-bit image nearest to ``x_adv`` on the segment toward ``x``: ``x + trunc(255 (x_adv -
    x)) / 255``.  With ``x`` on the 1/255 grid the result is on it too, no farther from ``x``
    than ``x_adv`` in every pixel (so inside any L∞ or L2 ball ``x_adv`` was in) and in [0, 1]
    when ``x_adv`` is."""
    delta = np.trunc(np.round((x_adv - x) * 255.0, 4)) / 255.0
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


def _project(x_adv, x, norm, eps):
    delta = x_adv - x
    if norm == LINF:
        delta = np.clip(delta, -eps, eps)
    else:
        n = np.sqrt(np.sum(delta.reshape(len(delta), -1) ** 2, axis=1))
        factor = np.minimum(1.0, eps / np.maximum(n, 1e-12))
        delta = delta * factor[:, None, None, None]
    return np.clip(x + delta, 0.0, 1.0)


def _direction(grad, norm):
    if norm == LINF:
        return np.sign(grad)
    n = np.sqrt(np.sum(grad.reshape(len(grad), -1) ** 2, axis=1))
    return grad / np.maximum(n, 1e-12)[:, None, None, None]


def _random_start(x, norm, eps, rng):
    if norm == LINF:
        return _project(x + rng.uniform(-eps, eps, x.shape), x, norm, eps)
    d = rng.normal(size=x.shape)
    d /= np.sqrt(np.sum(d.reshape(len(d), -1) ** 2, axis=1))[:, None, None, None]
    r = eps * rng.uniform(size=len(x)) ** (1.0 / d[0].size)
    return _project(x + d * r[:, None, None, None], x, norm, eps)


def pgd_objective(value_and_grad: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]],
                  decide: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, eps: float,
                  step_size: float, steps: int, norm: str = LINF, rand_init: bool = False,
                  seed: int = 0,
                  step_callback: Optional[Callable[[int, np.ndarray], None]] = None,
                  evaluate: Optional[Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]]] = None
                  ) -> ObjectiveResult:
    """Maximise ``value_and_grad``'s objective by projected (sign / L2-normalised) gradient
    steps inside the ``eps``-ball around ``x`` (float [B, H, W, C] on the 1/255 grid), keeping
    per image the iterate ``decide`` rates best.  With ``evaluate`` (objective, gradient and
    verdict of one candidate), ``value_and_grad`` is not used and may be None, and each step
    costs one ``evaluate``.  See the module docstring."""
    if norm not in (LINF, L2):
        raise ValueError("norm must be 'linf' or 'l2', got %r" % (norm,))
    if not (eps >= 0 and step_size > 0 and int(steps) >= 0):
        raise ValueError("need eps >= 0, step_size > 0 and steps >= 0 (got %r, %r, %r)"
                         % (eps, step_size, steps))
    if value_and_grad is None and evaluate is None:
        raise ValueError("pass value_and_grad or evaluate")
    x = np.asarray(x, np.float32)
    steps = int(steps)
    rng = np.random.default_rng(seed)
    cur = _random_start(x, norm, eps, rng) if rand_init and eps > 0 else x.copy()
    best = quantize(cur, x)
    if evaluate is not None and steps > 0:
        loss, grad, verdict = evaluate(best)
        best_verdict = np.array(verdict, np.float64)       # a copy: updated in place below
    else:
        best_verdict = np.array(decide(best), np.float64)
    best_step = np.zeros(len(x), np.int64)
    losses = []
    for step in range(1, steps + 1):
        if evaluate is None:
            loss, grad = value_and_grad(cur)
        losses.append(np.asarray(loss, np.float64))
        cur = _project(cur + step_size * _direction(np.asarray(grad, np.float64), norm), x,
                       norm, eps)
        cand = quantize(cur, x)
        if evaluate is not None and step < steps:
            loss, grad, verdict = evaluate(cand)           # the next step's gradient too
        else:
            verdict = decide(cand)
        verdict = np.asarray(verdict, np.float64)
        better = verdict > best_verdict
        best[better], best_verdict[better], best_step[better] = (
            cand[better], verdict[better], step)
        if step_callback is not None:
            step_callback(step, cand)
    return ObjectiveResult(x_adv=best, verdict=best_verdict, best_step=best_step,
                           losses=np.stack(losses) if losses else np.zeros((0, len(x))))
