"""Shared maths of the attacks: norms, projections, clipping, random starts/targets, the loss.

Every attack of the package works on image batches ``x`` of shape ``[B, H, W, C]``, float32,
pixels in ``[0, 1]``, and on integer labels ``y`` of shape ``[B]``.  A *model_fn* is any callable
mapping such a batch to **logits** ``[B, num_classes]``.

Units: the public API quotes ``eps`` and ``step_size`` on the 0-255 pixel scale, as the UnMask
paper does (``eps=8`` means 8/255).  This holds for the L2 attacks too: ``eps=300`` is an L2
radius of 300/255 ~= 1.18 in ``[0, 1]`` pixel units.  That is the original code's convention
(it divided every epsilon by 255), kept on purpose so the paper's attack vectors read the same.
Everything in this module works in ``[0, 1]`` units; :func:`to_unit_scale` converts.

Where cleverhans 4.0.0 is used as is and where not (the reasons are in the docstrings below):

* projection onto the L-inf / L2 ball: cleverhans' ``clip_eta`` is correct per sample for a
  batch (it reduces over axes 1..3 with ``keepdims``) and is used as is.
* random start: cleverhans' ``random_lp_vector`` draws from *stateful* RNG ops with
  ``seed=None``; inside a reused ``tf.function`` the draws then depend on the global seed at
  trace time and on how often the function ran before, so a run cannot be reproduced from a
  seed.  :func:`random_start` draws the same distributions with *stateless* ops keyed by an
  explicit seed tensor.
* random targets (``targeted=True`` attacks and ``ga``): :func:`random_targets`, stateless
  from the batch seed, like the random start (both are keyed by the same batch seed).
* the iteration: cleverhans' iterative drivers (``projected_gradient_descent``,
  ``basic_iterative_method``, ``momentum_iterative_method``) run a Python ``while`` loop, which
  inside ``tf.function`` unrolls into ``steps`` copies of the model's forward/backward graph.
  Measured on a 2-core CPU, PGD-L-inf with 20 steps on MobileNetV2 (bit-identical outputs): the
  first (tracing) call takes 21 s unrolled vs 7 s as one ``tf.while_loop`` at 128x128, batch 32
  (36 s vs 3 s at 64x64, batch 4); steady-state runs are equal at batch 32 and about 2x faster
  with the loop at batch 4.  The attacks therefore loop with :func:`iterate` around cleverhans'
  single-step pieces (``fast_gradient_method``, ``optimize_linear``, ``clip_eta``).
"""
import tfcompat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear

#: The two norms the package knows, by their public names.
LINF = "linf"
L2 = "l2"
NORMS = (LINF, L2)

#: Pixel scale on which the public ``eps`` / ``step_size`` are quoted.
PIXEL_SCALE = 255.0

#: Numerical floor used when dividing by a norm (avoids 0/0 for a zero gradient).
_TINY = 1e-12


def to_unit_scale(value):
    """Convert a 0-255-scale ``eps`` / ``step_size`` to ``[0, 1]`` units (None stays None)."""
    return None if value is None else float(value) / PIXEL_SCALE


def cleverhans_ord(norm):
    """Map a public norm name (``'linf'`` / ``'l2'``) to cleverhans' ``np.inf`` / ``2``."""
    if norm == LINF:
        return np.inf
    if norm == L2:
        return 2
    raise ValueError("norm must be one of %s, got %r" % (list(NORMS), norm))


def per_sample_norm(delta, norm):
    """Norm of each sample of ``delta`` ``[B, H, W, C]`` -> ``[B]`` (L-inf or L2)."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == LINF:
        return tf.reduce_max(tf.abs(flat), axis=1)
    if norm == L2:
        return tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))
    raise ValueError("norm must be one of %s, got %r" % (list(NORMS), norm))


def clip_pixels(x):
    """Clip a batch to the valid pixel range ``[0, 1]``."""
    return tf.clip_by_value(x, 0.0, 1.0)


def project(x_adv, x, norm, eps):
    """Project ``x_adv`` onto the ``eps``-ball (``norm``) around ``x``, then clip to ``[0, 1]``.

    Both tensors are ``[B, H, W, C]``; ``eps`` is in ``[0, 1]`` units, per sample.  Clipping to
    the pixel range after the projection never leaves the ball: it only shrinks coordinates of
    the perturbation towards zero.  Uses cleverhans' ``clip_eta`` (correct per sample).
    """
    eta = clip_eta(x_adv - x, cleverhans_ord(norm), tf.cast(eps, x.dtype))
    return clip_pixels(x + eta)


def random_start(x, norm, eps, seed):
    """Start point ``x + delta`` with ``delta`` uniform in the ``eps``-ball, clipped to ``[0, 1]``.

    L-inf: ``delta ~ U[-eps, eps]`` per coordinate.  L2: uniform in the ball of radius ``eps``
    (Gaussian direction, radius ``eps * u**(1/d)`` with ``u ~ U[0, 1]`` and ``d = H*W*C``), the
    same distribution as cleverhans' ``random_lp_vector`` but drawn with stateless RNG from
    ``seed`` (int32/int64 tensor of shape ``[2]``), so the start is reproducible from the seed
    and independent of how often a compiled function already ran.
    """
    shape = tf.shape(x)
    seed = tf.cast(seed, tf.int64)
    if norm == LINF:
        delta = tf.random.stateless_uniform(shape, seed, -eps, eps, dtype=x.dtype)
    elif norm == L2:
        dim = tf.reduce_prod(shape[1:])
        direction = tf.random.stateless_normal([shape[0], dim], seed, dtype=x.dtype)
        direction = direction / tf.maximum(
            tf.norm(direction, axis=1, keepdims=True), tf.cast(_TINY, x.dtype))
        radius_seed = seed + tf.constant([0, 7919], tf.int64)
        u = tf.random.stateless_uniform([shape[0], 1], radius_seed, dtype=x.dtype)
        radius = eps * tf.pow(u, 1.0 / tf.cast(dim, x.dtype))
        delta = tf.reshape(radius * direction, shape)
    else:
        raise ValueError("norm must be one of %s, got %r" % (list(NORMS), norm))
    return clip_pixels(x + delta)


def cross_entropy_loss(labels, logits):
    """Per-sample softmax cross-entropy ``[B]`` of int ``labels`` ``[B]``, ``logits`` ``[B, K]``.

    Keyword-compatible with cleverhans (``loss_fn(labels=..., logits=...)``).  The untargeted
    attacks *maximise* it.
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int64), logits=logits)


def predict_labels(model_fn, x):
    """Arg-max class ``[B]`` (int64) of ``model_fn`` on a batch ``x`` ``[B, H, W, C]``."""
    return tf.argmax(model_fn(x), axis=1)


def random_targets(y, num_classes, seed):
    """Random target classes ``[B]`` (int64), each different from its label.

    ``t = (y + k) mod num_classes`` with ``k`` uniform in ``{1, ..., num_classes - 1}``, drawn
    with ``tf.random.stateless_uniform`` from ``seed`` (int tensor/sequence ``[2]``), so the
    target is uniform over the other classes and a function of ``(y, num_classes, seed)`` only.
    Exported as :func:`attacks.ga_targets` (the targets of ``ga`` and of every attack run with
    ``targeted=True``; the runner passes batch ``i`` the seed ``(seed, i)``).

    Args:
        y: int tensor ``[B]`` of labels in ``[0, num_classes)``.
        num_classes: int (or scalar int tensor) >= 2.
        seed: int tensor ``[2]``, e.g. ``(run_seed, batch_index)``.
    """
    y = tf.cast(y, tf.int64)
    num_classes = tf.cast(num_classes, tf.int64)
    tf.debugging.assert_greater_equal(num_classes, tf.constant(2, tf.int64),
                                      message="a targeted attack (e.g. ga) needs a model with "
                                              "at least 2 classes")
    offset = tf.random.stateless_uniform(tf.shape(y), tf.cast(seed, tf.int64), minval=1,
                                         maxval=num_classes, dtype=tf.int64)
    return (y + offset) % num_classes


def attack_targets(target, x, y, seed):
    """The random targets ``[B]`` of a targeted attack on the batch ``(x, y)``.

    :func:`random_targets` with the class count of ``target`` (an
    :class:`~attacks.target.AttackTarget`; for a model, one forward pass on ``x``) and the
    batch seed ``seed`` (int tensor ``[2]``; required: a targeted attack called directly needs
    one, the runner gives ``(seed, batch_index)``).
    """
    if seed is None:
        raise ValueError("targeted=True draws a random target per image from the batch seed; "
                         "pass seed=(run_seed, batch_index) (an int tensor of shape [2])")
    return random_targets(y, target.num_classes(x), seed)


def goal_targets(target, x, y, seed, targeted, targets):
    """The target classes an attack steps toward: ``targets`` when given (int ``[B]``, e.g.
    the engine's ranked targets), random ones when ``targeted`` (:func:`attack_targets`),
    else None (untargeted)."""
    if targets is not None:
        return tf.cast(targets, tf.int64)
    return attack_targets(target, x, y, seed) if targeted else None


def gradient_step(x_adv, grad, step_size, norm):
    """``clip_[0,1](x_adv + step * d(grad))`` with ``d`` the sign (L-inf) or the L2-normalised
    gradient (L2): cleverhans' ``fast_gradient_method`` step (``optimize_linear`` and the
    clip), taken from a given gradient."""
    return clip_pixels(x_adv + optimize_linear(grad, step_size, cleverhans_ord(norm)))


_COMPILED = {}


def compiled(fn):
    """``fn`` (tensor arguments, plus Python ones it is specialised on) as one
    ``tf.function`` when an attack runs eagerly -- one dispatch instead of one per op (the
    adaptive engine runs one attack per image in its own thread) -- and ``fn`` itself when the
    caller is being traced (a compiled attack's graph holds exactly the ops it always held,
    so its numbers do not move)."""
    if tf.inside_function():
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = tf.function(fn, reduce_retracing=True)
    return _COMPILED[fn]


def _step_and_project(x_adv, grad, x, step_size, eps, norm):
    return project(gradient_step(x_adv, grad, step_size, norm), x, norm, eps)


def step_and_project(x_adv, grad, x, step_size, eps, norm):
    """:func:`gradient_step` then :func:`project` (PGD's and BIM's update), compiled."""
    return compiled(_step_and_project)(x_adv, grad, x, tf.cast(step_size, x.dtype),
                                       tf.cast(eps, x.dtype), norm)


def start_point(x, norm, eps, seed, rand_init, start):
    """An iterative attack's first iterate: ``start`` when given (the engine's restarts),
    else a random point of the ball (``rand_init``, :func:`random_start`) or ``x``."""
    if start is not None:
        return tf.cast(start, x.dtype)
    return random_start(x, norm, eps, seed) if rand_init else x


def iterate(steps, step_fn, state):
    """Apply ``state = step_fn(state)`` ``steps`` times in one ``tf.while_loop``.

    ``state`` is a tensor or a tuple of tensors whose shapes ``step_fn`` preserves (a dynamic
    batch dimension is fine).  Unlike a Python loop, the body is traced once, whatever
    ``steps`` is (see the module docstring for why this matters).
    """
    if steps < 1:
        return state
    as_tuple = isinstance(state, tuple)

    def body(i, *loop_state):
        new_state = step_fn(loop_state if as_tuple else loop_state[0])
        return (i + 1,) + (tuple(new_state) if as_tuple else (new_state,))

    initial = (tf.constant(0),) + (state if as_tuple else (state,))
    result = tf.while_loop(lambda i, *_: i < steps, body, initial)
    return tuple(result[1:]) if as_tuple else result[1]
