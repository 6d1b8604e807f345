"""Targeted "gradient ascent" of the seed-004 project (SPEC section 7 (ii)), L-inf.

Per image a random target class ``t != y`` is drawn; every step moves the image *against* the
gradient of the target's cross-entropy (``x <- x - step * sign(grad_x CE(M(x), t))``, i.e.
gradient ascent on ``log p(t | x)``), then the perturbation is clipped to the eps-ball and the
image to ``[0, 1]``.  An image whose ``p(t | x) >= stop_prob`` (softmax of the logits) stops
moving for good (per-image early stop, a "done" mask in the loop state); at most ``steps``
iterations (the seed: 100).  The seed's budget is eps = 3 on the 0-255 scale.

The seed does not state a step size; the registry's default is ``eps / 20`` (20 steps cross the
ball once, so the 100-step budget leaves room to walk along its faces -- the same ratio as
MI-FGSM's ``eps / T`` with ``T = 20``).

Targets: :func:`ga_targets` (:func:`attacks._utils.random_targets`, shared with the
``targeted=True`` variants of the other iterative attacks) draws them with *stateless* RNG from
the batch's seed tensor, the convention of :func:`attacks._utils.random_start`; the runner
calls the attack on batch ``i`` of :meth:`attacks.CompiledAttack.run` with the seed
``(seed, i)``, so ``ga_targets(y_batch_i, num_classes, [seed, i])`` is the target of each image
of that batch.
The targets depend on the batching (a different ``batch_size`` gives other targets).
The runner reports them (``AttackResult.targets``) but, for backward compatibility, ``ga``'s
``success`` stays "prediction != label"; ``AttackResult.target_success_rate`` is the targeted
success rate (``pred_adv == targets``).
"""
import tfcompat  # noqa: F401

import tensorflow as tf
from cleverhans.tf2.utils import optimize_linear

from attacks import _utils
from attacks.losses import cross_entropy
from attacks.target import as_target


#: The random targets of ``ga`` (and of every attack run with ``targeted=True``): see
#: :func:`attacks._utils.random_targets`, of which this is the public name.
ga_targets = _utils.random_targets


def ga(target, x, y, *, eps, step_size, steps, norm=_utils.LINF, seed, stop_prob=0.99,
       targets=None, start=None):
    """Targeted gradient ascent on a batch, with a per-image early stop.

    Args:
        target: an :class:`~attacks.target.AttackTarget` or a model (``[B, H, W, C]`` in
            ``[0, 1]`` -> logits ``[B, K]``).
        x: float32 tensor ``[B, H, W, C]``, pixels in ``[0, 1]``.
        y: int tensor ``[B]``, true labels (the targets are drawn among the other classes).
        eps: ball radius in ``[0, 1]`` units.
        step_size: step length in ``[0, 1]`` units (per pixel for L-inf).
        steps: maximum number of iterations (Python int).
        norm: ``'linf'`` (the seed's attack; ``'l2'`` takes L2-normalised steps and projects
            onto the L2 ball).
        seed: int tensor ``[2]`` keying the targets (:func:`ga_targets`).
        stop_prob: an image stops moving once the softmax probability of its target is
            ``>= stop_prob``.
        targets: int ``[B]`` targets to use instead of random ones (the engine's).
        start: first iterate (default ``x``).

    Returns:
        float32 ``[B, H, W, C]`` in ``[0, 1]`` and within ``eps`` of ``x``.
    """
    target = as_target(target)
    order = _utils.cleverhans_ord(norm)
    goal = _utils.goal_targets(target, x, y, seed, True, targets)

    def step(state):
        x_adv, done = state
        out = target.evaluate(x_adv, y, goal, cross_entropy)     # ascends -CE(target)
        p_target = tf.gather(tf.nn.softmax(out.logits), goal, axis=1, batch_dims=1)
        done = tf.logical_or(done, p_target >= stop_prob)
        moved = _utils.project(x_adv + optimize_linear(out.grad, step_size, order), x, norm,
                               eps)
        keep = tf.reshape(done, [-1, 1, 1, 1])
        return tf.where(keep, x_adv, moved), done

    not_done = tf.zeros(tf.shape(x)[:1], tf.bool)
    first = _utils.start_point(x, norm, eps, seed, False, start)
    return _utils.iterate(steps, step, (first, not_done))[0]
