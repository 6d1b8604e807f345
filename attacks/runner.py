"""Public runner: compile an attack once for a model and run it over a data set in batches.

The per-batch computation (attack + clean and adversarial predictions) is one ``tf.function``
with input signature ``x: float32 [None, H, W, 3]``, ``y: int64 [None]``, ``seed: int64 [2]``.
It is built once per (model_fn, attack config, image size) and reused for every batch, the last
(smaller) one included, so it is traced once.  It is *not* XLA-compiled (``jit_compile``): on
this project's CPU machines XLA was reported about 10x slower for these gradient loops.

Example::

    result = run_attack(model, images, labels, "pgd_linf", eps=8)
    print(result.success.mean(), result.adv_accuracy)
"""
import tfcompat  # noqa: F401

import dataclasses
import time
import warnings

import numpy as np
import tensorflow as tf

from attacks import _inputs, _utils
from attacks.registry import AttackConfig, get_attack, resolve_config


@dataclasses.dataclass
class AttackResult:
    """Outcome of :func:`run_attack` on ``N`` images.

    Attributes:
        x_adv: float32 ``[N, H, W, 3]``, pixels in ``[0, 1]``.
        success: bool ``[N]``, the model's prediction on ``x_adv`` differs from the label.
        pred_clean: int64 ``[N]``, arg-max prediction on the clean images.
        pred_adv: int64 ``[N]``, arg-max prediction on ``x_adv``.
        labels: int64 ``[N]``, the labels attacked (the given ones, or ``pred_clean`` when
            None was given).
        config: the resolved :class:`~attacks.registry.AttackConfig`.
        seconds: wall time of the attack loop (excluding validation).
    """

    x_adv: np.ndarray
    success: np.ndarray
    pred_clean: np.ndarray
    pred_adv: np.ndarray
    labels: np.ndarray
    config: AttackConfig
    seconds: float = 0.0

    @property
    def success_rate(self):
        """Fraction of images whose adversarial prediction differs from the label."""
        return float(np.mean(self.success))

    @property
    def clean_accuracy(self):
        """Accuracy of the model on the clean images w.r.t. ``labels``."""
        return float(np.mean(self.pred_clean == self.labels))

    @property
    def adv_accuracy(self):
        """Accuracy of the model on ``x_adv`` w.r.t. ``labels`` (= 1 - success_rate)."""
        return float(np.mean(self.pred_adv == self.labels))


class CompiledAttack:
    """An attack bound to one model and one config, compiled lazily per image size.

    Use :meth:`run` for whole data sets and :meth:`attack_batch` inside training loops
    (adversarial training): the model's variables are read at call time, so weight updates
    between calls are seen without retracing.  ``tracing_count`` counts Python traces of the
    batch function (1 per image size when no retracing happens); ``probe_count`` counts the
    eager calls that check the model's output (1: only the first run makes one).
    """

    def __init__(self, model_fn, config):
        if not callable(model_fn):
            raise ValueError("model_fn must be a callable mapping float32 [B, H, W, 3] images "
                             "in [0, 1] to logits [B, C], got %r" % (model_fn,))
        self.model_fn = model_fn
        self.config = config
        self.spec = get_attack(config.name)
        self.tracing_count = 0
        self.probe_count = 0
        self._num_classes = None
        self._functions = {}

    def _attack_graph(self, x, y, seed):
        """Body of the compiled function: returns ``(x_adv, pred_clean, pred_adv)``."""
        self.tracing_count += 1
        pred_clean = _utils.predict_labels(self.model_fn, x)
        y = tf.where(y < 0, pred_clean, y)
        cfg = self.config
        if cfg.eps == 0:
            x_adv = tf.identity(x)
        else:
            x_adv = self.spec.fn(
                self.model_fn, x, y, eps=_utils.to_unit_scale(cfg.eps),
                step_size=_utils.to_unit_scale(cfg.step_size), steps=cfg.steps,
                norm=cfg.norm, seed=seed, **dict(cfg.params))
            x_adv = tf.cast(x_adv, tf.float32)
        return x_adv, pred_clean, _utils.predict_labels(self.model_fn, x_adv)

    def _function_for(self, height, width):
        key = (int(height), int(width))
        if key not in self._functions:
            signature = [tf.TensorSpec([None, key[0], key[1], 3], tf.float32, name="x"),
                         tf.TensorSpec([None], tf.int64, name="y"),
                         tf.TensorSpec([2], tf.int64, name="seed")]
            self._functions[key] = tf.function(self._attack_graph, input_signature=signature)
        return self._functions[key]

    def _call(self, x, y, seed_pair):
        fn = self._function_for(x.shape[1], x.shape[2])
        out = fn(tf.convert_to_tensor(x), tf.convert_to_tensor(y),
                 tf.constant(seed_pair, dtype=tf.int64))
        return tuple(t.numpy() for t in out)

    def attack_batch(self, x, y=None, seed=0, batch_index=0):
        """Attack one batch; returns ``x_adv`` float32 ``[B, H, W, 3]`` (numpy).

        ``x``: float32 ``[B, H, W, 3]`` in ``[0, 1]``; ``y``: int ``[B]`` or None (attack the
        model's own predictions).  ``(seed, batch_index)`` keys the random start.
        """
        x = _inputs.check_images(x)
        y = _inputs.check_labels(y, x.shape[0])
        y = np.full(x.shape[0], -1, np.int64) if y is None else y
        return self._call(x, y, (_inputs.check_seed(seed), int(batch_index)))[0]

    def _probe_model(self, images, labels):
        """Check the model's output and the label range.

        The model is called (eagerly, on one image) only on the first run: its class count
        cannot change while it is bound to this attack, and an eager call of a deep Keras
        model costs a noticeable share of a batch's attack time.
        """
        if self._num_classes is None:
            self.probe_count += 1
            logits = np.asarray(self.model_fn(tf.convert_to_tensor(images[:1])))
            if logits.ndim != 2:
                raise ValueError("model_fn must return logits of shape [B, C], got shape %s"
                                 % (logits.shape,))
            if np.all(logits >= 0) and np.allclose(logits.sum(axis=1), 1.0, atol=1e-4):
                warnings.warn("model_fn output looks like probabilities (rows sum to 1); the "
                              "attacks expect logits (pre-softmax scores)", stacklevel=3)
            self._num_classes = int(logits.shape[1])
        _inputs.check_label_range(labels, self._num_classes)

    def run(self, images, labels=None, *, batch_size=32, seed=0, progress=None):
        """Attack ``images`` in batches; returns an :class:`AttackResult`.

        Args:
            images: float array ``[N, H, W, 3]``, pixels in ``[0, 1]``.
            labels: int ``[N]`` true labels, or None to attack the model's clean predictions.
            batch_size: images per compiled call.
            seed: non-negative int; batch ``i`` uses the stateless seed ``(seed, i)``, so a
                result is reproducible for the same seed and batch size.
            progress: None/False (silent), True (tqdm bar) or a callable ``(done, total)``
                called after each batch with image counts.
        """
        images = _inputs.check_images(images)
        labels = _inputs.check_labels(labels, images.shape[0])
        batch_size = _inputs.check_positive_int(batch_size, "batch_size")
        seed = _inputs.check_seed(seed)
        self._probe_model(images, labels)
        attacked = np.full(images.shape[0], -1, np.int64) if labels is None else labels
        start = time.perf_counter()
        parts = _run_batches(self, images, attacked, batch_size, seed, progress)
        seconds = time.perf_counter() - start
        x_adv, pred_clean, pred_adv = (np.concatenate(p) for p in zip(*parts))
        used = pred_clean.astype(np.int64) if labels is None else labels
        return AttackResult(x_adv=x_adv.astype(np.float32, copy=False),
                            success=pred_adv != used, pred_clean=pred_clean.astype(np.int64),
                            pred_adv=pred_adv.astype(np.int64), labels=used,
                            config=self.config, seconds=seconds)


def _progress_reporter(progress, total):
    """Turn the ``progress`` argument into ``(update(n_done), close())`` callables."""
    if progress is None or progress is False:
        return (lambda done: None), (lambda: None)
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc="attack", disable=None)
        state = {"done": 0}

        def update(done):
            bar.update(done - state["done"])
            state["done"] = done
        return update, bar.close
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    raise ValueError("progress must be None, a bool or a callable (done, total), got %r"
                     % (progress,))


def _run_batches(compiled, images, labels, batch_size, seed, progress):
    """Run ``compiled`` over ``images`` in slices; returns a list of per-batch output tuples."""
    total = images.shape[0]
    update, close = _progress_reporter(progress, total)
    parts = []
    try:
        for index, begin in enumerate(range(0, total, batch_size)):
            end = min(begin + batch_size, total)
            parts.append(compiled._call(images[begin:end], labels[begin:end], (seed, index)))
            update(end)
    finally:
        close()
    return parts


def compile_attack(model_fn, name, eps=None, *, steps=None, step_size=None, **params):
    """Validate an attack configuration and bind it to ``model_fn`` (a :class:`CompiledAttack`).

    Args:
        model_fn: callable, float32 ``[B, H, W, 3]`` in ``[0, 1]`` -> logits ``[B, C]`` (a
            tf-keras model works as is; a model with a softmax output does not -- strip it).
        name: registry name (:func:`attacks.list_attacks`).
        eps: budget on the 0-255 scale, for L2 too (``eps=300`` is an L2 radius of 300/255);
            None: the attack's default.  ``eps=0`` returns the images unchanged.
        steps, step_size: overrides (``step_size`` on the 0-255 scale).
        **params: attack-specific parameters (see :data:`attacks.ATTACKS` ``extra_defaults``).

    Raises:
        ValueError: unknown name, eps < 0, step_size > eps, unknown parameter, ...
    """
    return CompiledAttack(model_fn, resolve_config(name, eps, steps=steps, step_size=step_size,
                                                   **params))


def run_attack(model_fn, images, labels, name, eps=None, *, steps=None, step_size=None,
               batch_size=32, seed=0, progress=None, **params):
    """Run attack ``name`` on ``images`` against ``model_fn``; returns an :class:`AttackResult`.

    Shorthand for ``compile_attack(model_fn, name, eps, ...).run(images, labels, ...)``; see
    :func:`compile_attack` for the attack parameters and :meth:`CompiledAttack.run` for
    ``labels``, ``batch_size``, ``seed`` and ``progress``.
    """
    compiled = compile_attack(model_fn, name, eps, steps=steps, step_size=step_size, **params)
    return compiled.run(images, labels, batch_size=batch_size, seed=seed, progress=progress)
