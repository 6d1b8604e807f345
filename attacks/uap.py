"""Universal adversarial perturbation, UAP (Moosavi-Dezfooli et al. 2017; SPEC section 7 (i)).

ONE perturbation ``v`` ``[H, W, 3]`` for all images, fitted on a set of images (Algorithm 1 of
the paper)::

    v = 0
    while fooling_rate(v) < fooling_target and passes < max_passes:
        for x_i in the fit images, in a new random order each pass:
            if M(clip(x_i + v)) == M(x_i):                  # v does not fool x_i yet
                r_i = DeepFool(clip(x_i + v), leave class M(x_i))
                v = Proj_{xi-ball}(v + r_i)

with ``fooling_rate(v) = mean_i [M(clip(x_i + v)) != M(x_i)]`` over the fit images and the
perturbation applied as ``clip_[0,1](x + v)`` (see :mod:`attacks.universal`).

DeepFool (Moosavi-Dezfooli et al. 2016), multi-class, as in the paper for both norms (the UAP
paper's inner problem is the *L2*-minimal perturbation, ``Proj`` handles the L-inf ball): from
the current point, for every class ``k != k0`` linearise ``f_k - f_k0`` (gradients of the logits
w.r.t. the input, one backward pass per class), step onto the nearest linearised boundary
(``(|f_k - f_k0| / ||w_k||_2 + 1e-4) * w_k / ||w_k||_2``), at most ``deepfool_steps`` = 10
iterations, stopping per image once its label changed; the total step is scaled by
``1 + overshoot`` (0.02), as the reference implementation does.

Batching (for speed): the fit images are processed in batches of ``fit_batch_size``; DeepFool
runs on the whole batch at the same ``v`` (one ``tf.function``, no XLA; only the images still
not fooled are pushed through the model at each iteration), then the per-image ``r_i`` are
added to ``v`` one after the other, in the shuffled order, with a projection after each -- the
paper's sequential update with ``v`` refreshed once per batch instead of once per image.

Returned ``v``: the paper returns the last iterate; here the fooling rate is measured after
every pass and the best *pass-end* iterate is returned, ties going to the later pass (the same
``v`` whenever the target is reached, since the fit stops there; the paper's last iterate
whenever no pass beats an earlier one, e.g. when every pass-end rate is 0).  It matters when
the target is not reached: with few, symmetric classes (e.g. 3 classes that each brighten one
colour channel) the DeepFool updates of the not-yet-fooled images pull ``v`` from one class to
the next and the pass-end fooling rate swings between 0 and the best achievable.  The starting
point ``v = 0`` is never a candidate: an earlier version compared the pass-end rates to that of
``v = 0`` with a strict ``>``, so a fit whose passes never fooled a single fit image (the
project's trained MobileNetV2 at ``xi = 10``: pass-end rates 0.000, although ``v`` is at the
bound) returned ``v = 0`` as if it were a result.  At least one pass always runs (also with
``fooling_target = 0``); the fit raises rather than return a zero ``v`` for ``eps > 0`` (only
possible when every DeepFool step is zero, e.g. zero input gradients) or a non-finite one
(NaN logits/gradients).  The per-pass rates are returned (``pass_rates``) so a caller can report
how the fit went; :meth:`attacks.runner.CompiledAttack.fit` warns when the target is missed.

Defaults (SPEC section 7): L-inf ``xi = 10`` (0-255 scale), ``fooling_target = 1 - delta =
0.8``, ``max_passes = 10``, ``overshoot = 0.02``, ``deepfool_steps = 10``.  L2 (``uap_l2``):
``xi = 850``, the paper's ImageNet ``xi = 2000`` at 224 x 224 rescaled to the same root-mean-square
per pixel (~5.2 on 0-255) at the project's default 96 x 96 input (``2000 * 96 / 224 ~= 857``).
``max_fit_images = 256``: more images are subsampled (seeded) to 256 so that a fit takes about
a minute on the default model (MobileNetV2 alpha 0.5 at 96 px, 5 classes, 2 CPU cores; an
untrained one, 6 passes to a fooling rate of 0.91: 77 s wall / 53 s CPU on a loaded machine,
the first batch, with tracing, 17 s).  ``fit_batch_size = 32``.

Determinism: for a given ``seed`` the subset, the order of every pass and the batches are fixed
(one ``numpy.random.Generator``), so the same seed gives the same ``v``.
"""
import tfcompat  # noqa: F401

import numbers

import numpy as np
import tensorflow as tf

from attacks import _utils

#: DeepFool's extra step beyond the linearised boundary (the reference implementation's 1e-4).
_DEEPFOOL_EPS = 1e-4

#: Images per call of the prediction function (fooling-rate evaluation).
_PREDICT_BATCH = 128


def check_params(params):
    """Validate the fitting parameters (called by :func:`attacks.resolve_config`).

    Raises:
        ValueError: naming the parameter and the valid range.
    """
    for key in ("max_passes", "deepfool_steps", "max_fit_images", "fit_batch_size"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError("%s=%r for a universal perturbation: expected an integer >= 1"
                             % (key, value))
    target = params["fooling_target"]
    if (isinstance(target, bool) or not isinstance(target, numbers.Real)
            or not 0.0 <= target <= 1.0):
        raise ValueError("fooling_target=%r: expected a fraction in [0, 1] (1 - delta; the "
                         "paper's delta = 0.2 gives 0.8)" % (target,))
    overshoot = params["overshoot"]
    if (isinstance(overshoot, bool) or not isinstance(overshoot, numbers.Real)
            or not 0.0 <= overshoot < np.inf):
        raise ValueError("overshoot=%r: expected a finite number >= 0 (DeepFool's 0.02)"
                         % (overshoot,))


def _logit_jacobian(model_fn, x):
    """Gradients of every logit w.r.t. its own image: ``([B, K, H, W, C], logits [B, K])``.

    With a static class count ``K`` (Keras models) this is ``K`` backward passes from one
    forward pass (persistent tape): measured on MobileNetV2 (alpha 0.5, 96 px, 5 classes, batch
    32, 2 CPU cores) 0.33 s per call and 6 s to trace, against 1.6 s and 20 s for
    ``batch_jacobian``'s vectorised version (identical values).  Either assumes, as every
    attack here does, that the model treats the images of a batch independently.
    """
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        logits = model_fn(x)
        classes = logits.shape[1]
        columns = None if classes is None else [logits[:, k] for k in range(classes)]
    if columns is None:
        jacobian = tape.batch_jacobian(logits, x)
    else:
        jacobian = tf.stack([tape.gradient(column, x) for column in columns], axis=1)
    del tape
    return jacobian, logits


def deepfool(model_fn, x, labels, *, steps, overshoot):
    """Multi-class DeepFool (L2) on a batch, inside a graph: the perturbations ``[B, H, W, C]``.

    Args:
        model_fn: callable, float32 ``[B, H, W, C]`` -> logits ``[B, K]`` (``K >= 2``).
        x: float32 tensor ``[B, H, W, C]``, the start points.
        labels: int64 tensor ``[B]``, the class each image must leave.  An image whose
            prediction at ``x`` already differs gets a zero perturbation.
        steps: maximum number of DeepFool iterations (Python int).
        overshoot: the total step is multiplied by ``1 + overshoot``.

    Returns:
        float32 ``[B, H, W, C]``: ``(1 + overshoot) * r_total`` (not clipped to pixels).
    """
    labels = tf.cast(labels, tf.int64)
    scale = tf.cast(1.0 + overshoot, x.dtype)
    tiny = tf.cast(1e-12, x.dtype)

    def body(i, r_total, active):
        index = tf.where(active)[:, 0]
        points = tf.gather(x, index) + scale * tf.gather(r_total, index)
        label = tf.gather(labels, index)
        jacobian, logits = _logit_jacobian(model_fn, points)      # [b, K, H, W, C], [b, K]
        count, classes = tf.shape(logits)[0], tf.shape(logits)[1]
        jacobian = tf.reshape(jacobian, [count, classes, -1])
        still = tf.argmax(logits, axis=1) == label
        # Linearised distance to the boundary with every other class k: |f_k - f_0| / ||w_k||.
        w = jacobian - tf.gather(jacobian, label, axis=1, batch_dims=1)[:, tf.newaxis]
        f = logits - tf.gather(logits, label, axis=1, batch_dims=1)[:, tf.newaxis]
        w_norm = tf.norm(w, axis=2)
        distance = tf.abs(f) / (w_norm + tiny)
        distance = tf.where(tf.one_hot(label, classes, on_value=True, off_value=False),
                            tf.cast(np.inf, x.dtype), distance)
        nearest = tf.argmin(distance, axis=1)
        length = tf.gather(distance, nearest, axis=1, batch_dims=1) + _DEEPFOOL_EPS
        direction = (tf.gather(w, nearest, axis=1, batch_dims=1)
                     / (tf.gather(w_norm, nearest, axis=1, batch_dims=1) + tiny)[:, tf.newaxis])
        step = tf.where(still[:, tf.newaxis], length[:, tf.newaxis] * direction,
                        tf.zeros_like(direction))
        r_total = tf.tensor_scatter_nd_add(r_total, index[:, tf.newaxis],
                                           tf.reshape(step, tf.shape(points)))
        active = tf.tensor_scatter_nd_update(active, index[:, tf.newaxis], still)
        return i + 1, r_total, active

    def cond(i, r_total, active):
        return tf.logical_and(i < steps, tf.reduce_any(active))

    initial = (tf.constant(0), tf.zeros_like(x), tf.ones(tf.shape(x)[:1], tf.bool))
    _, r_total, _ = tf.while_loop(cond, body, initial)
    return scale * r_total


def project_perturbation(v, norm, eps):
    """Project ``v`` (numpy) onto the ``norm``-ball of radius ``eps`` (``[0, 1]`` units)."""
    if norm == _utils.LINF:
        return np.clip(v, -eps, eps).astype(np.float32)
    if norm == _utils.L2:
        length = float(np.linalg.norm(v.astype(np.float64)))
        if length > eps:
            v = v * np.float32(eps / length)
        return v.astype(np.float32)
    raise ValueError("norm must be one of %s, got %r" % (list(_utils.NORMS), norm))


def _compiled_functions(model_fn, height, width, deepfool_steps, overshoot):
    """``(predict, deepfool_batch)`` tf.functions for images of size ``height x width``."""
    images = tf.TensorSpec([None, height, width, 3], tf.float32)

    @tf.function(input_signature=[images])
    def predict(x):
        return _utils.predict_labels(model_fn, x)

    @tf.function(input_signature=[images, tf.TensorSpec([height, width, 3], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def deepfool_batch(x, v, clean_labels):
        start = _utils.clip_pixels(x + v[tf.newaxis])
        return deepfool(model_fn, start, clean_labels, steps=deepfool_steps,
                        overshoot=overshoot)

    return predict, deepfool_batch


def _predict_all(predict, images):
    return np.concatenate([predict(tf.constant(images[i:i + _PREDICT_BATCH])).numpy()
                           for i in range(0, images.shape[0], _PREDICT_BATCH)])


def fit_uap(model_fn, images, *, eps, norm, seed, progress=None, max_passes=10,
            fooling_target=0.8, overshoot=0.02, deepfool_steps=10, max_fit_images=256,
            fit_batch_size=32):
    """Fit a universal perturbation on ``images`` (see the module docstring).

    Args:
        model_fn: callable, float32 ``[B, H, W, 3]`` in ``[0, 1]`` -> logits ``[B, K]``.
        images: float32 numpy ``[N, H, W, 3]`` in ``[0, 1]`` (validated by the caller).
        eps: radius ``xi`` of the ball in ``[0, 1]`` units.
        norm: ``'linf'`` or ``'l2'``.
        seed: non-negative int; keys the subsample and the order of every pass.
        progress: None or a callable ``(done, total)`` called after each batch, counting
            processed images out of ``max_passes * n`` (a fit that reaches its target early
            stops short of the total).
        max_passes, fooling_target, overshoot, deepfool_steps, max_fit_images, fit_batch_size:
            see the module docstring.

    Returns:
        ``(v, fooling_rate, passes, n_images, pass_rates)``: ``v`` float32 ``[H, W, 3]`` within
        the ball, its fooling rate on the fit images (measured, for exactly this ``v``), the
        passes run, the number of fit images and the tuple of pass-end fooling rates.  ``v`` is
        the best pass-end iterate (ties: the later one), never the starting ``v = 0``; with
        ``eps = 0`` the result is ``(0, 0.0, 0, n_images, ())``.

    Raises:
        RuntimeError: a DeepFool step is NaN/infinite (the model's logits or gradients are not
            finite), or ``eps > 0`` and every step was zero, so that ``v`` is still exactly 0
            (e.g. the model's input gradients vanish): no perturbation was fitted.
    """
    rng = np.random.default_rng(seed)
    if images.shape[0] > max_fit_images:
        images = images[np.sort(rng.choice(images.shape[0], max_fit_images, replace=False))]
    count, height, width = images.shape[:3]
    eps = np.float32(eps)
    v = np.zeros((height, width, 3), np.float32)
    if eps <= 0:                          # the ball is {0}: nothing to fit
        return v, 0.0, 0, int(count), ()
    predict, deepfool_batch = _compiled_functions(model_fn, height, width, deepfool_steps,
                                                  overshoot)
    clean = _predict_all(predict, images)

    def fooling_rate(v):
        return float(np.mean(_predict_all(predict, np.clip(images + v, 0.0, 1.0)) != clean))

    # v = 0 fools nothing by construction (clean = the model's own predictions): it is not a
    # candidate; the best pass-end iterate is, ties going to the later pass.
    best_v, best_rate, pass_rates = None, 0.0, []
    while len(pass_rates) < max_passes and (best_v is None or best_rate < fooling_target):
        passes = len(pass_rates)
        order = rng.permutation(count)
        for begin in range(0, count, fit_batch_size):
            batch = order[begin:begin + fit_batch_size]
            steps = deepfool_batch(tf.constant(images[batch]), tf.constant(v),
                                   tf.constant(clean[batch])).numpy()
            if not np.all(np.isfinite(steps)):
                raise RuntimeError(
                    "universal perturbation fit: DeepFool returned NaN/infinite steps in pass "
                    "%d (the model's logits or input gradients are not finite); no "
                    "perturbation was fitted" % (passes + 1))
            for step in steps:
                if step.any():                   # zero: v already fooled this image
                    v = project_perturbation(v + step, norm, eps)
            if progress is not None:
                progress(passes * count + begin + batch.size, max_passes * count)
        rate = fooling_rate(v)
        pass_rates.append(rate)
        if best_v is None or rate >= best_rate:
            best_v, best_rate = v, rate
    if not best_v.any():
        raise RuntimeError(
            "universal perturbation fit: v is still exactly 0 after %d passes over %d images "
            "(every DeepFool step was zero: the model's input gradients vanish?); refusing to "
            "return a zero perturbation for eps = %.4g/255" % (len(pass_rates), count,
                                                              float(eps) * 255.0))
    return best_v, best_rate, len(pass_rates), int(count), tuple(pass_rates)
