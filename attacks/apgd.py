"""Auto-PGD (Croce & Hein, ICML 2020), the core of AutoAttack: L-inf and L2, any loss, targeted.

One run of ``N`` iterations (SPEC §11):

* start: a random point of the ball (L-inf: ``x + eps * u / max|u|``, ``u ~ U[-1, 1]``; L2:
  ``x + eps * g / ||g||``, ``g`` Gaussian: AutoAttack's starts), clipped to ``[0, 1]``;
* step size ``eta_0 = 2 eps`` (per image), momentum ``alpha = 0.75`` (none at the first step):
  ``z = P(x_k + eta * d(grad))``, ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)
  (x_k - x_{k-1}))`` with ``d`` the sign (L-inf) or the L2-normalised gradient (L2) and ``P``
  the projection on the ball and ``[0, 1]``;
* checkpoints after ``w_1 = int(0.22 N)`` iterations, then at intervals shrinking by
  ``int(0.03 N)`` down to ``int(0.06 N)`` (at least 1): at a checkpoint the step of an image
  is halved and its iterate restarts from its best point (highest loss) if at most 75% of the
  steps since the last checkpoint raised its loss (``rho``), or if its step was not halved at
  the last checkpoint and its best loss did not improve since;
* the result: the last iterate at which the target's goal was reached (AutoAttack's
  ``x_best_adv``), else the highest-loss point.

Losses (:mod:`attacks.losses`): ``'ce'`` (APGD-CE), ``'dlr'`` (APGD-DLR) and, with target
classes, the targeted DLR (APGD-T).  Registry attacks: ``apgd_ce``, ``apgd_dlr``, ``apgd_t``
(and their ``_l2`` forms); :func:`apgd_targets` runs APGD-T over the ``n_targets`` classes
with the highest clean logits (AutoAttack's choice), each on the images not yet fooled.

Two differences from AutoAttack's code: its oscillation count compares the first iteration's
loss with an uninitialised zero (``loss_steps[-1]``); here it is compared with the loss at the
start point (on purpose).  And AutoAttack starts with ``reduced_last_check = 1``, so its "no
improvement" rule cannot halve at the first checkpoint; here it can (as the paper's condition
2 with ``w_0 = 0`` and ART 1.20.1).  Like AutoAttack, the oscillation rule halves when at most
75% of the steps raised the loss (``<=``; the paper and SPEC say fewer than 75%: the two differ
only when ``0.75 k`` is an integer, e.g. the interval of 16 at N = 100).  Each iteration costs
one evaluation of the target (one forward and one backward pass for a model), ``N + 1`` in all.
"""
import tfcompat  # noqa: F401

import tensorflow as tf

from attacks import _utils
from attacks.losses import get_loss
from attacks.target import as_target

#: Momentum of the update (SPEC §11).
MOMENTUM = 0.75
#: Fraction of loss-raising steps below which the step is halved at a checkpoint.
RHO = 0.75
#: First checkpoint, interval decrease and smallest interval, as fractions of N.
P1, DECREASE, MIN_INTERVAL = 0.22, 0.03, 0.06


def checkpoint_schedule(steps):
    """``(first interval, decrease, smallest interval)`` in iterations for ``steps``."""
    return (max(int(P1 * steps), 1), max(int(DECREASE * steps), 1),
            max(int(MIN_INTERVAL * steps), 1))


def checkpoints(steps):
    """The iterations (1-based) after which APGD checks its progress, for ``steps``."""
    first, decrease, smallest = checkpoint_schedule(steps)
    out, at, k = [], first, first
    while at <= steps:
        out.append(at)
        k = max(k - decrease, smallest)
        at += k
    return out


def _l2(v):
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2, 3], keepdims=True))


def _project(v, x, norm, eps):
    """AutoAttack's projection of ``v`` on the ``eps``-ball around ``x`` and ``[0, 1]``."""
    if norm == _utils.LINF:
        return tf.clip_by_value(tf.minimum(tf.maximum(v, x - eps), x + eps), 0.0, 1.0)
    d = v - x
    n = _l2(d)
    return tf.clip_by_value(x + d / (n + 1e-12) * tf.minimum(eps, n), 0.0, 1.0)


def apgd_start(x, norm, eps, seed):
    """AutoAttack's random start (see the module docstring), stateless from ``seed [2]``."""
    seed = tf.cast(seed, tf.int64)
    if norm == _utils.LINF:
        u = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0, dtype=x.dtype)
        top = tf.reduce_max(tf.abs(u), axis=[1, 2, 3], keepdims=True)
        return tf.clip_by_value(x + eps * u / tf.maximum(top, 1e-12), 0.0, 1.0)
    g = tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
    return tf.clip_by_value(x + eps * g / (_l2(g) + 1e-12), 0.0, 1.0)


def _direction(grad, norm):
    if norm == _utils.LINF:
        return tf.sign(grad)
    return grad / (_l2(grad) + 1e-12)


def _propose(i, x_adv, x_prev, grad, step, x, eps, norm):
    """The next iterate of APGD (momentum ``alpha`` after the first step)."""
    a = tf.where(i > 0, MOMENTUM, 1.0)
    z = _project(x_adv + step * _direction(grad, norm), x, norm, eps)
    return _project(x_adv + (z - x_adv) * a + (x_adv - x_prev) * (1.0 - a), x, norm, eps)


def _take(state, x_new, loss, grad, success, decrease, smallest):
    """APGD's bookkeeping after the target's answer at ``x_new``: the best point, the point
    reaching the goal, and at a checkpoint the halved step and the restart from the best
    point (see the module docstring)."""
    (i, x_adv, x_prev, _, step, x_best, grad_best, loss_best, x_found, found, loss_prev, n_up,
     counter, k, best_at_check, reduced) = state
    hit = tf.reshape(success, [-1, 1, 1, 1])
    x_found = tf.where(hit, x_new, x_found)
    found = tf.logical_or(found, success)
    n_up += tf.cast(loss > loss_prev, tf.int32)
    better = loss > loss_best
    keep = tf.reshape(better, [-1, 1, 1, 1])
    x_best = tf.where(keep, x_new, x_best)
    grad_best = tf.where(keep, grad, grad_best)
    loss_best = tf.where(better, loss, loss_best)
    counter += 1
    check = tf.equal(counter, k)
    oscillating = tf.cast(n_up, tf.float32) <= tf.cast(k, tf.float32) * RHO
    stalled = tf.logical_and(tf.logical_not(reduced), best_at_check >= loss_best)
    halve = tf.logical_and(check, tf.logical_or(oscillating, stalled))
    back = tf.reshape(halve, [-1, 1, 1, 1])
    step = tf.where(back, step / 2.0, step)
    next_x = tf.where(back, x_best, x_new)
    next_grad = tf.where(back, grad_best, grad)
    reduced = tf.where(check, halve, reduced)
    best_at_check = tf.where(check, loss_best, best_at_check)
    k = tf.where(check, tf.maximum(k - decrease, smallest), k)
    n_up = tf.where(check, tf.zeros_like(n_up), n_up)
    counter = tf.where(check, 0, counter)
    return (i + 1, next_x, x_adv, next_grad, step, x_best, grad_best, loss_best, x_found,
            found, loss, n_up, counter, k, best_at_check, reduced)


def apgd_run(target, x, y, goal, x0, *, eps, steps, norm, loss_fn):
    """One APGD run from ``x0``; returns ``(x_best [B, ...], found [B] bool, x_found)``:
    the highest-loss point, whether the goal was reached, and the last iterate reaching it
    (``x0`` where it never was).  Each iteration: :func:`_propose`, the target's answer,
    :func:`_take` (both compiled: one dispatch each when run eagerly)."""
    first, decrease, smallest = checkpoint_schedule(steps)
    ev = target.evaluate(x0, y, goal, loss_fn)
    eps = tf.cast(eps, x.dtype)
    batch = tf.shape(x)[0]
    step0 = tf.fill([batch, 1, 1, 1], 2.0 * eps)
    propose, take = _utils.compiled(_propose), _utils.compiled(_take)

    def body(*state):
        i, x_adv, x_prev, grad, step = state[:5]
        x_new = propose(i, x_adv, x_prev, grad, step, x, eps, norm)
        out = target.evaluate(x_new, y, goal, loss_fn)
        return take(state, x_new, out.loss, out.grad, out.success, decrease, smallest)

    state = (tf.constant(0), x0, x0, ev.grad, step0, x0, ev.grad, ev.loss, x0, ev.success,
             ev.loss, tf.zeros([batch], tf.int32), tf.constant(0), tf.constant(first),
             ev.loss, tf.zeros([batch], tf.bool))
    out = tf.while_loop(lambda i, *_: i < steps, body, state)
    return out[5], out[9], out[8]


def apgd(target, x, y, *, eps, step_size=None, steps, norm, seed, loss="ce", targeted=False,
         targets=None, start=None, rand_init=True, restarts=1):
    """APGD on a batch; returns float32 ``[B, H, W, 3]`` in ``[0, 1]`` within ``eps`` of ``x``.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, 3]`` in
            ``[0, 1]`` -> logits ``[B, C]``).
        x, y: float32 ``[B, H, W, 3]`` in ``[0, 1]`` and int ``[B]`` labels.
        eps: ball radius in ``[0, 1]`` units; the first step is ``2 eps``.
        step_size: ignored (APGD sets its own step; accepted for a uniform signature).
        steps: iterations ``N`` per run (Python int).
        norm: ``'linf'`` or ``'l2'``.
        seed: int ``[2]`` keying the random starts (restart ``r`` adds ``r`` to its second
            entry's stream) and random targets.
        loss: ``'ce'``, ``'dlr'`` (targeted: the targeted DLR) or ``'margin'``.
        targeted, targets: as :func:`attacks.pgd.pgd`.
        start: first iterate of the first run (the engine's restarts), else a random start
            (``rand_init``) or ``x``.
        restarts: runs; each later run starts at a new random point and changes only the
            images whose goal no run has reached yet.
    """
    del step_size
    target = as_target(target)
    goal = _utils.goal_targets(target, x, y, seed, targeted, targets)
    return _apgd(target, x, y, goal, eps=eps, steps=steps, norm=norm, seed=seed, loss=loss,
                 start=start, rand_init=rand_init, restarts=restarts)[0]


def _apgd(target, x, y, goal, *, eps, steps, norm, seed, loss, start, rand_init, restarts):
    """:func:`apgd` toward ``goal`` (None or targets); returns ``(x_adv, found [B])``."""
    loss_fn = get_loss(loss)
    seed = tf.cast(seed, tf.int64) if seed is not None else tf.constant([0, 0], tf.int64)
    fallback = found = result = None
    for r in range(int(restarts)):
        if r == 0 and start is not None:
            x0 = tf.cast(start, x.dtype)
        elif rand_init or r > 0:
            x0 = apgd_start(x, norm, eps, seed + tf.constant([0, 7919], tf.int64) * r)
        else:
            x0 = x
        x_best, hit, x_hit = apgd_run(target, x, y, goal, x0, eps=eps, steps=steps, norm=norm,
                                      loss_fn=loss_fn)
        if r == 0:
            fallback, found, result = x_best, hit, x_hit
            continue
        new = tf.logical_and(hit, tf.logical_not(found))
        result = tf.where(tf.reshape(new, [-1, 1, 1, 1]), x_hit, result)
        found = tf.logical_or(found, hit)
    return tf.where(tf.reshape(found, [-1, 1, 1, 1]), result, fallback), found


def apgd_targets(target, x, y, *, eps, step_size=None, steps, norm, seed, n_targets=9,
                 first_target=0, restarts=1, rand_init=True, start=None, targets=None):
    """APGD-T: APGD with the targeted DLR loss toward each of the classes ranked
    ``first_target .. first_target + n_targets - 1`` by the target's clean logits (highest
    first, the label left out; at most C - 1), each run changing only the images not fooled
    by an earlier one (AutoAttack's APGD-T).  ``targets`` (int ``[B]``, the engine's) runs
    one targeted DLR attack toward them instead.  Other arguments as :func:`apgd`."""
    del step_size
    target = as_target(target)
    if targets is not None:
        return apgd(target, x, y, eps=eps, steps=steps, norm=norm, seed=seed, loss="dlr",
                    targets=targets, start=start, restarts=restarts, rand_init=rand_init)
    ranked = target.ranked_targets(x, y)
    count = ranked.shape[1]
    last = first_target + n_targets if count is None else min(first_target + n_targets, count)
    out = found = None
    for k in range(first_target, last):
        adv, hit = _apgd(target, x, y, ranked[:, k], eps=eps, steps=steps, norm=norm,
                         seed=seed, loss="dlr", start=start, rand_init=rand_init,
                         restarts=restarts)
        if out is None:
            out, found = adv, hit
            continue
        new = tf.reshape(tf.logical_and(hit, tf.logical_not(found)), [-1, 1, 1, 1])
        out = tf.where(new, adv, out)
        found = tf.logical_or(found, hit)
    return x if out is None else out
