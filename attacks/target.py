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

import collections
from typing import NamedTuple, Sequence, Tuple

import numpy as np
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
    #: The ways the defense's final answer can reach the attacker's goal (SPEC §13), each
    #: attacked in turn by the adaptive engine on the images no earlier one won.  A plain
    #: target has one.
    routes: Tuple[str, ...] = ("default",)

    def route_needs_targets(self, route: str) -> bool:
        """Whether ``route`` is attacked toward a target class (default:
        ``requires_targets``)."""
        return self.requires_targets

    def evaluate_route(self, x, y, t, loss_fn, route: str) -> Evaluation:
        """:meth:`evaluate` along ``route`` (a plain target has one route: :meth:`evaluate`)."""
        if route not in self.routes:
            raise ValueError("route %r is not one of this target's routes %s"
                             % (route, self.routes))
        return self.evaluate(x, y, t, loss_fn)

    def evaluate_jobs(self, x: np.ndarray, y: np.ndarray, t: np.ndarray,
                      loss_fns: Sequence, routes: Sequence[str]) -> Evaluation:
        """One batched evaluation of the engine's jobs: row ``i`` is image ``x[i]`` with label
        ``y[i]``, target class ``t[i]`` (-1: untargeted), loss ``loss_fns[i]`` and route
        ``routes[i]``.  Default: one :meth:`evaluate_route` per (loss, route, targeted or
        not) group of rows; a target whose routes share an expensive part (UnMask's K)
        evaluates them together.  Returns numpy arrays in row order."""
        groups = {}
        for i, (fn, route, ti) in enumerate(zip(loss_fns, routes, t)):
            groups.setdefault((fn, route, ti >= 0), []).append(i)
        parts = {}
        for (fn, route, targeted), rows in groups.items():
            rows = np.asarray(rows)
            out = self.evaluate_route(tf.constant(x[rows]), tf.constant(y[rows]),
                                      tf.constant(t[rows]) if targeted else None, fn, route)
            parts[tuple(rows)] = [np.asarray(v) for v in out]
        return Evaluation(*(_scatter(len(x), {r: p[k] for r, p in parts.items()})
                            for k in range(4)))

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


def _scatter(n: int, parts) -> np.ndarray:
    """Rows ``{tuple of row indices: array [len, ...]}`` put back into one ``[n, ...]``
    array."""
    first = next(iter(parts.values()))
    out = np.zeros((n,) + first.shape[1:], first.dtype)
    for rows, values in parts.items():
        out[list(rows)] = values
    return out


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


class CompiledModelTarget(ModelTarget):
    """A :class:`ModelTarget` whose forward and backward pass is one ``tf.function`` per
    (loss, targeted or not), for callers that evaluate it eagerly one batch at a time (the
    adaptive engine): the same ops as :meth:`ModelTarget.evaluate`, without eager TensorFlow's
    per-op cost (3.2x per evaluation on the AT model here; more on a small one).  Inside an
    attack's own ``tf.function`` it is traced into that graph like the plain target.  The
    eight losses used last are kept compiled."""

    #: Compiled steps kept (an attack that makes a new loss per call would otherwise grow it).
    KEEP_COMPILED = 8

    def __init__(self, model_fn):
        super().__init__(model_fn)
        self._steps: "collections.OrderedDict" = collections.OrderedDict()

    def _step(self, loss_fn, targeted: bool):
        key = (loss_fn, targeted)
        if key in self._steps:
            self._steps.move_to_end(key)
            return self._steps[key]
        while len(self._steps) >= self.KEEP_COMPILED:
            self._steps.popitem(last=False)
        if targeted:
            step = tf.function(lambda x, y, t: ModelTarget.evaluate(self, x, y, t, loss_fn),
                               reduce_retracing=True)
        else:
            step = tf.function(lambda x, y: ModelTarget.evaluate(self, x, y, None, loss_fn),
                               reduce_retracing=True)
        self._steps[key] = step
        return step

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        step = self._step(loss_fn, t is not None)
        return step(x, y, t) if t is not None else step(x, y)


def as_target(model_or_target) -> AttackTarget:
    """``model_or_target`` itself when it is an :class:`AttackTarget`, else a
    :class:`ModelTarget` of it (a ``model_fn``: attacks may be called with a model directly)."""
    if isinstance(model_or_target, AttackTarget):
        return model_or_target
    return ModelTarget(model_or_target)
