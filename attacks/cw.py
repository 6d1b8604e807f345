"""Carlini & Wagner L2 attack (Carlini and Wagner 2017), untargeted or targeted, graph-friendly.

Minimises ``||x' - x||_2^2 + c * max(Z_y(x') - max_{j != y} Z_j(x') + kappa, 0)`` over
``x' = (tanh(w) + 1) / 2`` (so ``x'`` always lies in ``[0, 1]``) with Adam, and binary-searches
the constant ``c`` per sample.  For each sample the smallest-L2 adversarial point met during the
search is returned; samples never misclassified are returned unchanged (bit-exact ``x``).

Targeted (``targeted=True``): each image gets a random target ``t != y``
(:func:`attacks._utils.attack_targets`, the targets of ``ga``) and the hinge term is the
targeted objective of Carlini and Wagner (and of cleverhans' ``targeted`` mode),
``max(max_{j != t} Z_j(x') - Z_t(x') + kappa, 0)``: a point counts as adversarial -- and can
become the returned one -- only when ``t`` wins by more than ``kappa``; images that never reach
their target are returned unchanged.

Why not cleverhans 4.0.0's ``carlini_wagner_l2``: it is broken for this use.  (1) Passing the
true labels ``y`` silently turns it into a *targeted* attack (``self.targeted = y is not
None``), so an untargeted attack against the true labels is impossible.  (2) The trade-off
constant is created with the full image shape ``[B, H, W, C]`` instead of ``[B]`` and then
multiplied with the per-sample loss ``[B]``; this fails (or broadcasts wrongly) for every batch
size other than 1 or C.  (3) It runs eagerly with Python control flow on tensor values and a
Keras optimizer, so it cannot be compiled once and reused.  This module implements the same
algorithm with ``tf.while_loop`` and an explicit Adam update; it has no early abort.

``eps`` (optional) caps the perturbation: the result is projected onto the L2 ball of radius
``eps`` around ``x`` (``None`` = unbounded, the classic attack).
"""
import tfcompat  # noqa: F401

import tensorflow as tf

from attacks import _utils
from attacks.target import as_target

_TANH_SHRINK = 0.999999   # keeps atanh finite at pixels exactly 0 or 1
_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8
_NO_UPPER = 1e10          # "no upper bound found yet" marker of the binary search


def _to_tanh_space(x):
    """``[0, 1]`` pixels -> unconstrained ``w`` with ``(tanh(w) + 1) / 2 ~= x``."""
    return tf.atanh((2.0 * x - 1.0) * _TANH_SHRINK)


def _margin(logits, y, confidence, targeted=False):
    """Per-sample hinge argument ``[B]``; < 0 means adversarial.

    Untargeted (``y`` the labels): ``Z_y - max_{j != y} Z_j + confidence``.  Targeted (``y``
    the targets): ``max_{j != y} Z_j - Z_y + confidence``.
    """
    is_true = tf.one_hot(y, tf.shape(logits)[1], on_value=True, off_value=False)
    real = tf.reduce_sum(tf.where(is_true, logits, tf.zeros_like(logits)), axis=1)
    other = tf.reduce_max(tf.where(is_true, tf.fill(tf.shape(logits), -1e9), logits), axis=1)
    if targeted:
        return other - real + confidence
    return real - other + confidence


def _squared_l2(a, b):
    """Squared L2 distance per sample ``[B]`` of two ``[B, H, W, C]`` batches."""
    return tf.reduce_sum(tf.square(a - b), axis=[1, 2, 3])


def _search_round(target, x, y, goal, const, best, steps, learning_rate, confidence):
    """One Adam run of ``steps`` iterations at fixed per-sample constants ``const`` ``[B]``.

    ``goal`` is None (untargeted) or the targets ``[B]``.  The target gives the gradient of
    ``-const * relu(margin)`` at ``x'`` (the attacker's loss, higher = better); the distance
    term's gradient ``2 (x' - x)`` is added and both are pulled back through ``x' = (tanh(w)
    + 1) / 2`` as TensorFlow's own gradient of that expression would (``TanhGrad`` of half
    the sum).  ``best`` is the tuple ``(best_l2 [B], best_adv [B, H, W, C])``, updated whenever
    an iterate is adversarial and closer to ``x``.  Returns ``(best, found [B] bool)``.
    """
    w0 = _to_tanh_space(x)
    targeted = goal is not None

    def hinge(logits, y_, t_):
        return -(const * tf.maximum(_margin(logits, y_ if t_ is None else t_, confidence,
                                            targeted), 0.0))

    def body(i, delta, m, v, best_l2, best_adv, found):
        tanh_w = tf.tanh(w0 + delta)
        x_new = (tanh_w + 1.0) / 2.0
        out = target.evaluate(x_new, y, goal, hinge)
        margin = _margin(out.logits, y if goal is None else goal, confidence, targeted)
        dist = _squared_l2(x_new, x)
        grad_x = (x_new - x) * 2.0 - out.grad
        grad = tf.raw_ops.TanhGrad(y=tanh_w, dy=grad_x / 2.0)
        is_adv = margin < 0.0
        better = tf.logical_and(is_adv, dist < best_l2)
        best_l2 = tf.where(better, dist, best_l2)
        best_adv = tf.where(better[:, None, None, None], x_new, best_adv)
        t = tf.cast(i + 1, x.dtype)
        m = _ADAM_BETA1 * m + (1.0 - _ADAM_BETA1) * grad
        v = _ADAM_BETA2 * v + (1.0 - _ADAM_BETA2) * tf.square(grad)
        m_hat = m / (1.0 - _ADAM_BETA1 ** t)
        v_hat = v / (1.0 - _ADAM_BETA2 ** t)
        delta = delta - learning_rate * m_hat / (tf.sqrt(v_hat) + _ADAM_EPS)
        return i + 1, delta, m, v, best_l2, best_adv, tf.logical_or(found, is_adv)

    zeros = tf.zeros_like(x)
    found = tf.zeros_like(y, dtype=tf.bool)
    loop_vars = (tf.constant(0), zeros, zeros, zeros, best[0], best[1], found)
    out = tf.while_loop(lambda i, *_: i < steps, body, loop_vars)
    return (out[4], out[5]), out[6]


def _update_constants(const, lower, upper, found):
    """One per-sample binary-search step on the constant; returns ``(const, lower, upper)``."""
    upper = tf.where(found, tf.minimum(upper, const), upper)
    lower = tf.where(found, lower, tf.maximum(lower, const))
    const = tf.where(upper < _NO_UPPER / 10.0, (lower + upper) / 2.0, const * 10.0)
    return const, lower, upper


def cw_l2(target, x, y, *, eps=None, step_size=None, steps=100, norm=_utils.L2, seed=None,
          binary_search_steps=5, initial_const=0.1, learning_rate=0.01, confidence=0.0,
          targeted=False, targets=None, start=None):
    """Carlini-Wagner L2 on a batch, untargeted (default) or towards random targets.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, C]`` in
            ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, the labels to move away from (targeted: the targets are drawn
            among the other classes).
        eps: optional L2 cap in ``[0, 1]`` units (``None``: unbounded).
        step_size, norm: accepted for a uniform signature (CW uses ``learning_rate`` and is
            always L2).
        seed: int tensor ``[2]`` keying the random targets; unused (may be None) when
            untargeted: the untargeted attack is deterministic.
        steps: Adam iterations per binary-search round (Python int).
        binary_search_steps: rounds of the per-sample search over the constant ``c``.
        initial_const: starting value of ``c``.
        learning_rate: Adam learning rate in tanh space.
        confidence: ``kappa``, required logit margin of the adversarial class.
        targeted: reach a random target ``!= y`` per image
            (:func:`attacks._utils.attack_targets` from ``seed``) with the targeted objective.
        targets: int ``[B]`` targets (overrides ``targeted``).
        start: ignored: CW starts at ``x`` in tanh space and is deterministic (accepted for a
            uniform signature).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]``.
    """
    del step_size, norm, start
    target = as_target(target)
    y = tf.cast(y, tf.int64)
    goal = _utils.goal_targets(target, x, y, seed, targeted, targets)
    batch = tf.shape(x)[0]
    const = tf.fill([batch], tf.cast(initial_const, x.dtype))
    lower = tf.zeros([batch], x.dtype)
    upper = tf.fill([batch], tf.cast(_NO_UPPER, x.dtype))
    best = (tf.fill([batch], tf.cast(float("inf"), x.dtype)), x)
    for _ in range(binary_search_steps):
        best, found = _search_round(target, x, y, goal, const, best, steps, learning_rate,
                                    confidence)
        const, lower, upper = _update_constants(const, lower, upper, found)
    x_adv = best[1]
    if eps is not None:
        x_adv = _utils.project(x_adv, x, _utils.L2, eps)
    return x_adv
