"""Public runner: compile an attack once for a model and run it over a data set in batches.

The per-batch computation (attack + clean and adversarial predictions) is one ``tf.function``
with input signature ``x: float32 [None, H, W, 3]``, ``y: int64 [None]``, ``seed: int64 [2]``.
It is built once per (model_fn, attack config, image size) and reused for every batch, the last
(smaller) one included, so it is traced once.  It is *not* XLA-compiled (``jit_compile``): on
this project's CPU machines XLA was reported about 10x slower for these gradient loops.

Universal attacks (``AttackSpec.universal``, e.g. ``uap``) fit one perturbation first; their
batch function then takes it as a fourth input ``perturbation: float32 [H, W, 3]``, so fitting
or setting another one does not retrace.

Targeted runs (``targeted=True``, or ``ga``) draw their targets in the same function from the
batch seed (:func:`attacks.ga_targets` of the attacked labels with ``(seed, batch_index)``) and
return them as a fourth output, so ``AttackResult.targets`` are exactly the attack's targets.

Example::

    result = run_attack(model, images, labels, "pgd_linf", eps=8)
    print(result.success.mean(), result.adv_accuracy)

    result = run_attack(model, images, labels, "bim", eps=8, targeted=True)
    print(result.targets, result.success.mean())      # success: pred_adv == targets

    compiled = compile_attack(model, "uap", eps=10)
    info = compiled.fit(train_images, seed=0)          # a UniversalPerturbation
    result = compiled.run(images, labels)               # clip(images + info.v)
"""
import tfcompat  # noqa: F401

import dataclasses
import time
import warnings

import numpy as np
import tensorflow as tf

from attacks import _inputs, _utils
from attacks.registry import ATTACKS, AttackConfig, get_attack, resolve_config
from attacks.target import ModelTarget
from attacks.universal import UniversalPerturbation


@dataclasses.dataclass
class AttackResult:
    """Outcome of :func:`run_attack` on ``N`` images.

    Attributes:
        x_adv: float32 ``[N, H, W, 3]``, pixels in ``[0, 1]``.
        success: bool ``[N]``.  Untargeted run: the model's prediction on ``x_adv`` differs
            from the label (``pred_adv != labels``).  Targeted run (``targeted=True`` in the
            config): the prediction is the image's target (``pred_adv == targets``).  ``ga``,
            targeted by construction, keeps the untargeted definition for backward
            compatibility; see :attr:`target_success_rate`.
        pred_clean: int64 ``[N]``, arg-max prediction on the clean images.
        pred_adv: int64 ``[N]``, arg-max prediction on ``x_adv``.
        labels: int64 ``[N]``, the labels attacked (the given ones, or ``pred_clean`` when
            None was given).
        config: the resolved :class:`~attacks.registry.AttackConfig`.
        seconds: wall time of the attack loop (excluding validation).
        targets: int64 ``[N]``, the random target class of each image (``!= labels``) for a
            targeted run (``targeted=True``, or ``ga``), -1 everywhere for an untargeted run
            (also the value filled in when the field is not given).
    """

    x_adv: np.ndarray
    success: np.ndarray
    pred_clean: np.ndarray
    pred_adv: np.ndarray
    labels: np.ndarray
    config: AttackConfig
    seconds: float = 0.0
    targets: np.ndarray = None

    def __post_init__(self):
        if self.targets is None:
            self.targets = np.full(np.shape(self.labels), -1, np.int64)

    @property
    def success_rate(self):
        """Fraction of successful images (see ``success``: untargeted, the adversarial
        prediction differs from the label; targeted, it is the target)."""
        return float(np.mean(self.success))

    @property
    def target_success_rate(self):
        """Fraction of images whose adversarial prediction is their target (NaN for an
        untargeted run).  Equal to :attr:`success_rate` for ``targeted=True`` runs; the
        targeted success rate of ``ga``."""
        if not np.any(self.targets >= 0):
            return float("nan")
        return float(np.mean(self.pred_adv == self.targets))

    @property
    def clean_accuracy(self):
        """Accuracy of the model on the clean images w.r.t. ``labels``."""
        return float(np.mean(self.pred_clean == self.labels))

    @property
    def adv_accuracy(self):
        """Accuracy of the model on ``x_adv`` w.r.t. ``labels`` (= 1 - success_rate for an
        untargeted run; targeted, a miss of the target can still leave the label)."""
        return float(np.mean(self.pred_adv == self.labels))


class CompiledAttack:
    """An attack bound to one model and one config, compiled lazily per image size.

    Use :meth:`run` for whole data sets and :meth:`attack_batch` inside training loops
    (adversarial training): the model's variables are read at call time, so weight updates
    between calls are seen without retracing.  ``tracing_count`` counts Python traces of the
    batch function (1 per image size when no retracing happens); ``probe_count`` counts the
    eager calls that check the model's output (1: only the first run makes one).

    A *universal* attack (``spec.universal``, e.g. ``uap``) needs its perturbation before
    :meth:`run`: :meth:`fit` computes it on a set of images, :meth:`set_perturbation` sets a
    precomputed one; ``perturbation`` holds it (a :class:`UniversalPerturbation`, or None).
    With ``eps = 0`` the only perturbation in the ball is zero, so no fit is needed.
    """

    def __init__(self, model_fn, config):
        if not callable(model_fn):
            raise ValueError("model_fn must be a callable mapping float32 [B, H, W, 3] images "
                             "in [0, 1] to logits [B, C], got %r" % (model_fn,))
        self.model_fn = model_fn
        self.config = config
        self.spec = get_attack(config.name)
        self._traces = 0
        self.probe_count = 0
        self._num_classes = None
        self._functions = {}
        self.perturbation = None
        self._stages = None
        self.stage_counts = None

    def _attack_graph(self, x, y, seed, perturbation=None):
        """Body of the compiled function: returns ``(x_adv, pred_clean, pred_adv, targets)``.

        ``targets`` ``[B]`` are the random targets of a targeted run (drawn here as the attack
        draws them: :func:`attacks._utils.random_targets` of the attacked labels with the batch
        seed), -1 otherwise.  ``perturbation`` (``[H, W, 3]``) is given to universal attacks
        only."""
        self._traces += 1
        logits = self.model_fn(x)
        pred_clean = tf.argmax(logits, axis=1)
        y = tf.where(y < 0, pred_clean, y)
        cfg = self.config
        if cfg.targeted:
            targets = _utils.random_targets(y, tf.shape(logits)[1], seed)
        else:
            targets = tf.fill(tf.shape(y), tf.constant(-1, tf.int64))
        if cfg.eps == 0:
            x_adv = tf.identity(x)
        else:
            params = dict(cfg.params)
            params.pop("targeted", None)
            if cfg.targeted:
                params["targets"] = targets       # the same draw as the attack's own
            if self.spec.universal:
                params["perturbation"] = perturbation
            x_adv = self.spec.fn(
                ModelTarget(self.model_fn), x, y, eps=_utils.to_unit_scale(cfg.eps),
                step_size=_utils.to_unit_scale(cfg.step_size), steps=cfg.steps,
                norm=cfg.norm, seed=seed, **params)
            x_adv = tf.cast(x_adv, tf.float32)
        return x_adv, pred_clean, _utils.predict_labels(self.model_fn, x_adv), targets

    @property
    def tracing_count(self):
        """Python traces of the batch function (a composite attack: the most of any stage)."""
        if self.spec.stages is not None:
            return max((s.tracing_count for s in self._stages or ()), default=0)
        return self._traces

    def _function_for(self, height, width):
        key = (int(height), int(width))
        if key not in self._functions:
            _inputs.check_model_input(self.model_fn, (None,) + key + (3,))
            signature = [tf.TensorSpec([None, key[0], key[1], 3], tf.float32, name="x"),
                         tf.TensorSpec([None], tf.int64, name="y"),
                         tf.TensorSpec([2], tf.int64, name="seed")]
            if self.spec.universal:
                signature.append(tf.TensorSpec([key[0], key[1], 3], tf.float32,
                                               name="perturbation"))
            self._functions[key] = tf.function(self._attack_graph, input_signature=signature)
        return self._functions[key]

    def _call(self, x, y, seed_pair):
        if self.spec.stages is not None:
            return self._call_stages(x, y, seed_pair)
        fn = self._function_for(x.shape[1], x.shape[2])
        inputs = [tf.convert_to_tensor(x), tf.convert_to_tensor(y),
                  tf.constant(seed_pair, dtype=tf.int64)]
        if self.spec.universal:
            inputs.append(tf.constant(self._perturbation_for(x.shape[1], x.shape[2])))
        out = fn(*inputs)
        return tuple(t.numpy() for t in out)

    # ------------------------------------------------------------------ composite attacks
    def _stage_attacks(self):
        """The compiled stages of a composite attack (built once; needs the class count)."""
        if self._stages is None:
            if self._num_classes is None:
                raise ValueError("run the composite attack %r through run() or run_attack(): "
                                 "its stages depend on the model's class count"
                                 % self.config.name)
            self._stages = [CompiledAttack(self.model_fn, cfg)
                            for cfg in self.spec.stages(self.config, self._num_classes)]
            self.stage_counts = [{"attack": c.config.name,
                                  "params": dict(c.config.params), "images": 0, "fooled": 0}
                                 for c in self._stages]
        return self._stages

    def _call_stages(self, x, y, seed_pair):
        """One batch of a composite attack: each stage on the images no earlier stage fooled
        (stage ``s`` seeded ``(seed + s * 1000003, batch)``); per image the first success,
        else the first stage's result."""
        stages = self._stage_attacks()
        x_adv = pred_clean = pred_adv = None
        fooled = np.zeros(len(x), bool)
        for s, stage in enumerate(stages):
            todo = np.flatnonzero(~fooled)
            if todo.size == 0:
                break
            labels = y if s == 0 else np.where(y < 0, pred_clean, y)
            out = stage._call(x[todo], labels[todo], (seed_pair[0] + s * 1000003, seed_pair[1]))
            if s == 0:
                x_adv, pred_clean, pred_adv = out[0].copy(), out[1], out[2].copy()
                labels = np.where(y < 0, pred_clean, y)
            hit = out[2] != labels[todo]
            x_adv[todo[hit]], pred_adv[todo[hit]] = out[0][hit], out[2][hit]
            fooled[todo[hit]] = True
            self.stage_counts[s]["images"] += int(todo.size)
            self.stage_counts[s]["fooled"] += int(hit.sum())
        return x_adv, pred_clean, pred_adv, np.full(len(x), -1, np.int64)

    def stage_report(self):
        """A composite attack's parts: which ran on how many images and fooled how many, and
        what AutoAttack's standard version has that was not run (None for other attacks)."""
        if self.spec.stages is None:
            return None
        from attacks.registry import AUTOATTACK_NOT_RUN
        return {"stages": [dict(c) for c in (self.stage_counts or [])],
                "not_run": list(AUTOATTACK_NOT_RUN)}

    # ------------------------------------------------------------------ universal attacks

    def _require_universal(self, method):
        if not self.spec.universal:
            universal = [name for name in ATTACKS if ATTACKS[name].universal]
            raise ValueError("%s is only for universal attacks (%s); %r perturbs each image "
                             "separately and needs no fit"
                             % (method, ", ".join(universal), self.config.name))

    def _perturbation_for(self, height, width):
        """The ``v`` ``[H, W, 3]`` to apply to images of this size (validated)."""
        if self.perturbation is None:
            if self.config.eps == 0:
                return np.zeros((height, width, 3), np.float32)
            raise ValueError(
                "%r is a universal attack: compute its perturbation first with "
                "compiled.fit(images) or set one with compiled.set_perturbation(v) (or pass "
                "fit_images=... to run_attack)" % self.config.name)
        return _inputs.check_perturbation(self.perturbation.v, self.config.norm,
                                          _utils.to_unit_scale(self.config.eps),
                                          image_shape=(height, width))

    def fit(self, images, *, seed=0, progress=None):
        """Fit the universal perturbation on ``images``; stores and returns it.

        Args:
            images: float array ``[N, H, W, 3]``, pixels in ``[0, 1]`` (e.g. training images;
                the attack may subsample them, see its ``max_fit_images``).
            seed: non-negative int; the same seed gives the same perturbation.
            progress: None/False, True (tqdm bar) or a callable ``(done, total)``.

        Returns:
            :class:`UniversalPerturbation` (``v`` in ``[0, 1]`` units, ``eps`` on 0-255;
            ``fooling_rate`` is that of the returned ``v`` on the fit images, ``pass_rates``
            the rate after each pass).  A fit that ends below the attack's ``fooling_target``
            still returns its (non-zero) perturbation, with a warning giving the rates.

        Raises:
            ValueError: not a universal attack, or invalid images / seed.
            RuntimeError: the fit produced no usable perturbation (NaN, or ``v`` exactly 0 with
                ``eps > 0``); nothing is stored.
        """
        self._require_universal("fit()")
        images = _inputs.check_images(images)
        seed = _inputs.check_seed(seed)
        self._probe_model(images, None)
        report, close = _lazy_progress(progress, "fit %s" % self.config.name)
        try:
            v, rate, passes, count, pass_rates = self.spec.fit_fn(
                self.model_fn, images, eps=_utils.to_unit_scale(self.config.eps),
                norm=self.config.norm, seed=seed, progress=report, **dict(self.config.params))
        finally:
            close()
        eps = _utils.to_unit_scale(self.config.eps)
        try:
            v = _inputs.check_perturbation(v, self.config.norm, eps,
                                           image_shape=images.shape[1:3])
        except ValueError as error:
            raise RuntimeError("%s fit returned an invalid perturbation: %s"
                               % (self.config.name, error)) from error
        if eps > 0 and not np.any(v):
            raise RuntimeError("%s fit returned v = 0 for eps = %g: no perturbation was fitted "
                               "(fooling rate %.3f after %d passes)"
                               % (self.config.name, self.config.eps, rate, passes))
        target = dict(self.config.params).get("fooling_target")
        if eps > 0 and target is not None and rate < target:
            warnings.warn(
                "%s (eps=%g): the universal perturbation fools %.3f of the %d fit images, below "
                "the target %.3f after %d passes (pass-end rates %s); returning the best "
                "pass-end iterate" % (self.config.name, self.config.eps, rate, count, target,
                                      passes, ", ".join("%.3f" % r for r in pass_rates)),
                RuntimeWarning, stacklevel=2)
        self.perturbation = UniversalPerturbation(
            v=v, fooling_rate=float(rate), passes=int(passes), n_images=int(count),
            norm=self.config.norm, eps=self.config.eps,
            pass_rates=tuple(float(r) for r in pass_rates))
        return self.perturbation

    def set_perturbation(self, v):
        """Use a precomputed universal perturbation; returns the stored record.

        Args:
            v: array ``[H, W, 3]`` in ``[0, 1]`` pixel units, inside the attack's ball, or a
                :class:`UniversalPerturbation` (its ``v`` is used).

        Raises:
            ValueError: not a universal attack; wrong shape; NaN/inf; outside the eps-ball.
        """
        self._require_universal("set_perturbation()")
        if isinstance(v, UniversalPerturbation):
            v = v.v
        v = _inputs.check_perturbation(v, self.config.norm,
                                       _utils.to_unit_scale(self.config.eps))
        self.perturbation = UniversalPerturbation(
            v=v, fooling_rate=float("nan"), passes=0, n_images=0, norm=self.config.norm,
            eps=self.config.eps)
        return self.perturbation

    def attack_batch(self, x, y=None, seed=0, batch_index=0):
        """Attack one batch; returns ``x_adv`` float32 ``[B, H, W, 3]`` (numpy).

        ``x``: float32 ``[B, H, W, 3]`` in ``[0, 1]``; ``y``: int ``[B]`` or None (attack the
        model's own predictions).  ``(seed, batch_index)`` keys the random start and, for a
        targeted run, the random targets (``ga_targets(y, num_classes, (seed, batch_index))``).
        """
        x = _inputs.check_images(x)
        y = _inputs.check_labels(y, x.shape[0])
        y = np.full(x.shape[0], -1, np.int64) if y is None else y
        if self.spec.stages is not None:
            self._probe_model(x, None)
        return self._call(x, y, (_inputs.check_seed(seed), int(batch_index)))[0]

    def _probe_model(self, images, labels):
        """Check the model's output and the label range.

        The model is called (eagerly, on one image) only on the first run: its class count
        cannot change while it is bound to this attack, and an eager call of a deep Keras
        model costs a noticeable share of a batch's attack time.
        """
        _inputs.check_model_input(self.model_fn, images.shape)
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

    def run(self, images, labels=None, *, batch_size=32, seed=0, progress=None,
            first_batch=0):
        """Attack ``images`` in batches; returns an :class:`AttackResult`.

        Args:
            images: float array ``[N, H, W, 3]``, pixels in ``[0, 1]``.
            labels: int ``[N]`` true labels, or None to attack the model's clean predictions.
            batch_size: images per compiled call.
            seed: non-negative int; batch ``i`` uses the stateless seed ``(seed, i)``, so a
                result is reproducible for the same seed and batch size (random starts and
                the targets of a targeted run are drawn from it).
            progress: None/False (silent), True (tqdm bar) or a callable ``(done, total)``
                called after each batch with image counts.
            first_batch: index of the first batch in a larger run: batch ``i`` of this call
                uses the seed ``(seed, first_batch + i)``.  A run split into shards at batch
                boundaries (each shard's images and its first batch index) gives, concatenated,
                exactly the whole run's result.

        A universal attack applies its stored perturbation (``clip(x + v)``); without one
        (see :meth:`fit`, :meth:`set_perturbation`) it raises ValueError, unless ``eps = 0``.
        """
        images = _inputs.check_images(images)
        labels = _inputs.check_labels(labels, images.shape[0])
        batch_size = _inputs.check_positive_int(batch_size, "batch_size")
        seed = _inputs.check_seed(seed)
        first_batch = _inputs.check_seed(first_batch, "first_batch")
        self._probe_model(images, labels)
        attacked = np.full(images.shape[0], -1, np.int64) if labels is None else labels
        start = time.perf_counter()
        parts = _run_batches(self, images, attacked, batch_size, seed, progress, first_batch)
        seconds = time.perf_counter() - start
        x_adv, pred_clean, pred_adv, targets = (np.concatenate(p) for p in zip(*parts))
        used = pred_clean.astype(np.int64) if labels is None else labels
        result = AttackResult(x_adv=x_adv.astype(np.float32, copy=False),
                              success=pred_adv != used, pred_clean=pred_clean.astype(np.int64),
                              pred_adv=pred_adv.astype(np.int64), labels=used,
                              config=self.config, seconds=seconds,
                              targets=targets.astype(np.int64))
        if dict(self.config.params).get("targeted", False):      # not ga: see AttackResult
            result.success = result.pred_adv == result.targets
        return result


def _progress_reporter(progress, total, desc="attack"):
    """Turn the ``progress`` argument into ``(update(n_done), close())`` callables."""
    if progress is None or progress is False:
        return (lambda done: None), (lambda: None)
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc=desc, disable=None)
        state = {"done": 0}

        def update(done):
            bar.update(done - state["done"])
            state["done"] = done
        return update, bar.close
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    raise ValueError("progress must be None, a bool or a callable (done, total), got %r"
                     % (progress,))


def _lazy_progress(progress, desc):
    """Turn ``progress`` into ``(report(done, total) or None, close())`` when the total is only
    known to the callee (a fit); True opens a tqdm bar on the first report."""
    if progress is None or progress is False:
        return None, (lambda: None)
    if progress is True:
        state = {}

        def report(done, total):
            if "update" not in state:
                state["update"], state["close"] = _progress_reporter(True, total, desc)
            state["update"](done)
        return report, (lambda: state["close"]() if "close" in state else None)
    if callable(progress):
        return progress, (lambda: None)
    raise ValueError("progress must be None, a bool or a callable (done, total), got %r"
                     % (progress,))


def _run_batches(compiled, images, labels, batch_size, seed, progress, first_batch=0):
    """Run ``compiled`` over ``images`` in slices; returns a list of per-batch output tuples
    (batch ``i`` seeded ``(seed, first_batch + i)``)."""
    total = images.shape[0]
    update, close = _progress_reporter(progress, total)
    parts = []
    try:
        for index, begin in enumerate(range(0, total, batch_size)):
            end = min(begin + batch_size, total)
            parts.append(compiled._call(images[begin:end], labels[begin:end],
                                        (seed, first_batch + index)))
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
        **params: attack-specific parameters (see :data:`attacks.ATTACKS` ``extra_defaults``),
            and ``targeted=True`` for the attacks with a targeted variant (``pgd_linf``,
            ``pgd_l2``, ``mia_linf``, ``mia_l2``, ``bim``, ``bim_l2``, ``cw_l2``): a random
            target ``!= label`` per image, reported in ``AttackResult.targets``.

    Raises:
        ValueError: unknown name, eps < 0, step_size > eps, unknown parameter, ...
    """
    return CompiledAttack(model_fn, resolve_config(name, eps, steps=steps, step_size=step_size,
                                                   **params))


def run_attack(model_fn, images, labels, name, eps=None, *, steps=None, step_size=None,
               batch_size=32, seed=0, progress=None, fit_images=None, **params):
    """Run attack ``name`` on ``images`` against ``model_fn``; returns an :class:`AttackResult`.

    Shorthand for ``compile_attack(model_fn, name, eps, ...).run(images, labels, ...)``; see
    :func:`compile_attack` for the attack parameters and :meth:`CompiledAttack.run` for
    ``labels``, ``batch_size``, ``seed`` and ``progress``.  A universal attack (``uap``,
    ``uap_l2``) is first fitted on ``fit_images`` (float ``[M, H, W, 3]`` in ``[0, 1]``, e.g.
    training images) with the same ``seed`` and ``progress``; ``fit_images`` is an error for
    the other attacks.
    """
    compiled = compile_attack(model_fn, name, eps, steps=steps, step_size=step_size, **params)
    if fit_images is not None:
        compiled._require_universal("fit_images=...")
        compiled.fit(fit_images, seed=seed, progress=progress)
    return compiled.run(images, labels, batch_size=batch_size, seed=seed, progress=progress)
