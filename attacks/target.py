"""What an attack runs on: an *attack target* (one contract for every threat model).

An attack never calls a model directly.  It asks its target, at a batch of images ``x``
(float32 ``[B, H, W, 3]`` in ``[0, 1]``), for an :class:`Evaluation`:

* ``loss [B]`` -- the attacker's objective for the loss the attack asks for
  (``loss_fn(logits, y, t)`` of :mod:`attacks.losses`, higher = better for the attacker), plus
  whatever terms the target adds (a detector's, a part extractor's);
* ``grad [B, H, W, 3]`` -- the direction that raises it (the loss's gradient, or a target's
  combination of its terms' gradients, e.g. a two-phase or orthogonal rule);
* ``logits [B, C]`` -- the protected classifier's logits at ``x`` (from the same pass);
* ``success [B]`` bool -- the attacker's goal reached at ``x``, by the real decision of what
  is attacked (for M alone: M's answer is not the label).

The gray-box target is a classifier (:class:`ModelTarget`: M, or the adversarially trained
model).  A defense that hides something from that attacker gives its *adaptive* target
(BPDA / EOT through a transform, a detector through its score, UnMask through M and K); every
attack of the registry runs on either, and :mod:`attacks.engine` adds what an adaptive
evaluation needs around it (8-bit iterates, the best iterate by the real decision, restarts,
several target classes, convergence traces).

``traceable`` says whether :meth:`AttackTarget.evaluate` is made of TensorFlow ops only (then
an attack on it can be compiled into one ``tf.function``); a target that runs another runtime
(K's TF1 session) is evaluated eagerly.
"""
import tfcompat  # noqa: F401

from typing import NamedTuple

import tensorflow as tf


class Evaluation(NamedTuple):
    """A target's answer at a batch of images (see the module docstring)."""
    loss: tf.Tensor
    grad: tf.Tensor
    logits: tf.Tensor
    success: tf.Tensor


class AttackTarget:
    """Base class of attack targets.

    Subclasses implement :meth:`evaluate`; :meth:`loss_and_grad` and :meth:`decide` are its
    parts.  ``requires_targets``: the target only makes sense toward a target class (e.g.
    UnMask's part terms need the class whose parts are forged), so the engine gives every
    attack run on it a target class from :meth:`ranked_targets`.
    """

    traceable = True
    requires_targets = False

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        """Loss, direction, M's logits and the goal verdict at ``x`` (see the module
        docstring); ``t`` is None (untargeted) or int ``[B]`` target classes."""
        raise NotImplementedError

    def loss_and_grad(self, x, y, t, loss_fn):
        """``(loss [B], grad [B, H, W, 3])`` for ``loss_fn``."""
        out = self.evaluate(x, y, t, loss_fn)
        return out.loss, out.grad

    def decide(self, x, y, t=None):
        """bool ``[B]``: the attacker's goal reached at ``x`` (the real decision)."""
        from attacks.losses import cross_entropy
        return self.evaluate(x, y, t, cross_entropy).success

    def num_classes(self, x) -> tf.Tensor:
        """Number of classes of the protected classifier (int32 scalar)."""
        return tf.shape(self.evaluate(x[:1], tf.zeros([1], tf.int64), None,
                                      _zero_loss).logits)[1]

    def ranked_targets(self, x, y):
        """int64 ``[B, C - 1]``: the classes other than ``y`` in the order a targeted attack
        should try them (default: M's logits at ``x``, highest first, as AutoAttack's
        APGD-T picks its targets)."""
        logits = self.evaluate(x, y, None, _zero_loss).logits
        return rank_by_score(logits, y)


def _zero_loss(logits, y, t=None):
    return tf.zeros(tf.shape(logits)[:1], logits.dtype)


def rank_by_score(scores, y):
    """int64 ``[B, C - 1]``: class indices by ``scores [B, C]`` descending (ties: lower index
    first), without ``y``."""
    scores = tf.convert_to_tensor(scores, tf.float32)
    n = tf.shape(scores)[1]
    is_label = tf.one_hot(tf.cast(y, tf.int32), n, on_value=True, off_value=False)
    order = tf.argsort(tf.where(is_label, tf.fill(tf.shape(scores), -float("inf")), scores),
                       axis=1, direction="DESCENDING", stable=True)
    return tf.cast(order[:, :-1], tf.int64)


class ModelTarget(AttackTarget):
    """A classifier seen whole: ``model_fn`` maps float32 ``[B, H, W, 3]`` in ``[0, 1]`` to
    logits ``[B, C]``; the loss is differentiated through it (one forward and one backward
    pass per evaluation); success = its answer is not the label."""

    def __init__(self, model_fn):
        if not callable(model_fn):
            raise ValueError("model_fn must be a callable mapping float32 [B, H, W, 3] images "
                             "in [0, 1] to logits [B, C], got %r" % (model_fn,))
        self.model_fn = model_fn

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self.model_fn(x)
            loss = loss_fn(logits, y, t)
        grad = tape.gradient(loss, x)
        success = tf.not_equal(tf.argmax(logits, axis=1), tf.cast(y, tf.int64))
        return Evaluation(loss, grad, logits, success)

    def num_classes(self, x) -> tf.Tensor:
        return tf.shape(self.model_fn(x))[1]

    def ranked_targets(self, x, y):
        return rank_by_score(self.model_fn(x), y)


def as_target(model_or_target) -> AttackTarget:
    """``model_or_target`` itself when it is an :class:`AttackTarget`, else a
    :class:`ModelTarget` of it (a ``model_fn``: attacks may be called with a model directly)."""
    if isinstance(model_or_target, AttackTarget):
        return model_or_target
    return ModelTarget(model_or_target)
