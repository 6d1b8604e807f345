"""Training loop of Mask R-CNN in its TF1 graph: SGD + momentum, weight decay, clipping.

Matterport trained with Keras ``fit_generator``; this port runs the same optimisation as a
graph train op fed by a prefetching NumPy batch generator, with a tqdm progress bar,
TensorBoard scalars and one checkpoint per epoch (written atomically).

A loss that becomes NaN or infinite stops training at once with :class:`NonFiniteTraining`
(a ValueError naming the epoch, step, loss terms and learning rate); the weights are checked
again before every checkpoint, so a diverged model is never saved and the checkpoints of the
earlier epochs stay the newest ones.
"""
from __future__ import annotations

import os
import queue
import re
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import tfcompat
from models.mrcnn.keras_classes import keras_graph_scope
from models.mrcnn import data_gen
from models.mrcnn.model import LAYER_REGEX, LOSS_NAMES

tf, keras = tfcompat.import_tf()


def resolve_layers(layers: str) -> str:
    """Matterport's layer selector ("heads", "3+", "4+", "5+", "all") or a regex."""
    return LAYER_REGEX.get(layers, layers)


def trainable_variables(model, regex: str) -> list:
    """Trainable variables of the layers whose name fully matches ``regex`` (nested
    ``rpn_model`` layers matched by their own names)."""
    out = []
    for layer in model.ancestor_layers():
        if layer.trainable_weights and re.fullmatch(regex, layer.name):
            out.extend(layer.trainable_weights)
    return out


def stage_updates(model, regex: str) -> list:
    """State updates (batch-norm moving statistics) of the layers selected by ``regex``.

    Matterport freezes a stage's other layers with ``layer.trainable = False``, and a frozen
    Keras layer contributes no updates, so the moving statistics of frozen batch-norm layers
    stay as they are (this matters only with ``TRAIN_BN = True``, where batch norm runs in
    training mode).  A ``TimeDistributed`` wrapper matches by its own name and brings the
    updates of the layer it wraps.
    """
    out, seen = [], set()
    for layer in model.ancestor_layers():
        if re.fullmatch(regex, layer.name):
            for update in layer.updates:
                if id(update) not in seen:
                    seen.add(id(update))
                    out.append(update)
    return out


class NonFiniteTraining(ValueError):
    """K's training produced a NaN or infinite loss or weight (nothing of the epoch is saved)."""


def _non_finite_message(what: str, epoch: int, learning_rate: float, layers: str,
                        model) -> str:
    kept = ("the last one kept is epoch %d under %s" % (model.epoch, model.log_dir)
            if model.epoch else "this run has no checkpoint yet")
    return ("model K's training diverged: %s in epoch %d (layers %r, learning rate %g). "
            "Training stopped and no checkpoint of this epoch was written; %s. Lower the "
            "learning rate (--k-lr, now %g) or check the training data, then resume with "
            "--weights last or train anew"
            % (what, epoch, layers, learning_rate, kept, learning_rate))


def check_finite_losses(losses: Dict[str, float], epoch: int, step: int, learning_rate: float,
                        layers: str, model) -> None:
    """Raise :class:`NonFiniteTraining` when any loss of a step is NaN or infinite."""
    bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
    if bad:
        terms = ", ".join("%s=%s" % (k, v) for k, v in bad.items())
        raise NonFiniteTraining(_non_finite_message(
            "the loss became non-finite at step %d (%s)" % (step, terms), epoch, learning_rate,
            layers, model))


def check_finite_weights(model, epoch: int, learning_rate: float, layers: str) -> None:
    """Raise :class:`NonFiniteTraining` when a weight of K is NaN or infinite."""
    variables = model.keras_model.weights
    for var, value in zip(variables, model.read_variables(variables)):
        if not np.all(np.isfinite(value)):
            raise NonFiniteTraining(_non_finite_message(
                "weight %s became non-finite" % var.name, epoch, learning_rate, layers, model))


def _loss_tensors(model) -> Dict[str, "tf.Tensor"]:
    km = model.keras_model
    return {name: tf.reduce_mean(km.get_layer(name).output) for name in LOSS_NAMES}


def build_train_op(model, layers: str):
    """Train op for the layers selected by ``layers``, built once per selection.

    Returns a dict with the learning-rate placeholder, the op, the loss tensors (incl.
    ``loss`` = weighted sum + L2 decay) and the variables trained.
    """
    regex = resolve_layers(layers)
    if regex in model._train_ops:
        return model._train_ops[regex]
    cfg = model.config
    with keras_graph_scope(model.graph):
        parts = _loss_tensors(model)
        variables = trainable_variables(model, regex)
        if not variables:
            raise ValueError("layers=%r selects no trainable layer" % (layers,))
        # matterport: keras.regularizers.l2(WEIGHT_DECAY)(w) / size(w), i.e. without the 1/2
        # of tf.nn.l2_loss; batch-norm gamma and beta are not decayed.
        decay = [tf.reduce_sum(tf.square(w)) / tf.cast(tf.size(w), tf.float32)
                 * cfg.WEIGHT_DECAY
                 for w in variables if "gamma" not in w.name and "beta" not in w.name]
        total = tf.add_n([parts[n] * cfg.LOSS_WEIGHTS.get(n, 1.) for n in LOSS_NAMES]
                         + [tf.add_n(decay) if decay else tf.constant(0.)])
        if not hasattr(model, "_lr_placeholder"):
            model._lr_placeholder = tf.compat.v1.placeholder(tf.float32, [], name="learning_rate")
            model._optimizer = tf.compat.v1.train.MomentumOptimizer(
                model._lr_placeholder, cfg.LEARNING_MOMENTUM)
        grads = tf.gradients(total, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        clipped, _ = tf.clip_by_global_norm([g for g, _ in pairs], cfg.GRADIENT_CLIP_NORM)
        with tf.control_dependencies(stage_updates(model, regex)):
            op = model._optimizer.apply_gradients(list(zip(clipped, [v for _, v in pairs])))
        slots = [v for v in model._optimizer.variables()
                 if v.name not in getattr(model, "_initialized_slots", set())]
        model._initialized_slots = getattr(model, "_initialized_slots", set()) | {
            v.name for v in slots}
        init = tf.compat.v1.variables_initializer(slots)
    model.session.run(init)
    entry = {"op": op, "lr": model._lr_placeholder, "losses": dict(parts, loss=total),
             "variables": [v for _, v in pairs], "regex": regex}
    model._train_ops[regex] = entry
    return entry


def _feed_values(model, batch: dict) -> list:
    """Batch arrays in the order of the model inputs, cast to the placeholder dtypes."""
    out = []
    for inp in model.keras_model.inputs:
        name = inp.name.split(":")[0]
        out.append(np.ascontiguousarray(batch[name], dtype=inp.dtype.as_numpy_dtype))
    return out


def train_step(model, entry: dict, batch: dict, learning_rate: float) -> Dict[str, float]:
    """One SGD step on ``batch``; returns the losses before the update."""
    names = list(entry["losses"])
    fn = model.get_callable(("train", entry["regex"]), model.keras_model.inputs + [entry["lr"]],
                            [entry["losses"][n] for n in names], [entry["op"]])
    values = fn(*_feed_values(model, batch), np.asarray(learning_rate, np.float32))
    return dict(zip(names, [float(v) for v in values]))


def eval_losses(model, batch: dict) -> Dict[str, float]:
    """Losses of ``batch`` without updating weights (note: train-mode BN statistics)."""
    with keras_graph_scope(model.graph):
        if "val_losses" not in model._callables:
            model._val_loss_tensors = _loss_tensors(model)
    names = list(model._val_loss_tensors)
    fn = model.get_callable("val_losses", model.keras_model.inputs,
                            [model._val_loss_tensors[n] for n in names])
    return dict(zip(names, [float(v) for v in fn(*_feed_values(model, batch))]))


class Prefetcher:
    """Runs a batch generator in a daemon thread, keeping up to ``size`` batches ready."""

    def __init__(self, generator, size: int = 3):
        self._queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generator,), daemon=True)
        self._thread.start()

    def _run(self, generator):
        try:
            for item in generator:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except Exception as err:  # forwarded to the consumer
            self._queue.put(err)

    def __next__(self):
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self._stop.set()


def _scalar_metadata() -> bytes:
    """Summary metadata marking a value as a TensorBoard scalar (no tensorboard import)."""
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    return meta.SerializeToString()


def _write_scalars(writer, values: Dict[str, float], step: int, prefix: str = "") -> None:
    """TensorBoard scalars (event file in ``writer``'s folder)."""
    meta = _scalar_metadata()
    with writer.as_default():
        for name, value in values.items():
            tf.summary.write(prefix + name, tf.constant(value, tf.float32), step=step,
                             metadata=meta)
    writer.flush()


def _mean_dicts(items: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: float(np.mean([d[k] for d in items])) for k in items[0]} if items else {}


def train_stage(model, train_dataset, val_dataset, learning_rate: float, epochs: int,
                layers: str, augmentation: Optional[Callable] = None, seed: int = 0,
                progress: bool = True, max_seconds: Optional[float] = None,
                steps_per_epoch: Optional[int] = None) -> List[dict]:
    """Train ``layers`` from ``model.epoch`` up to epoch ``epochs`` (matterport semantics).

    Each epoch runs ``STEPS_PER_EPOCH`` steps, ``VALIDATION_STEPS`` validation batches (when
    ``val_dataset`` is given), writes TensorBoard scalars to ``model.log_dir`` and saves
    ``model.checkpoint_path`` atomically; the run's configuration is recorded as
    ``<log_dir>/config.json`` (see :meth:`MaskRCNN.write_run_config`).  ``max_seconds`` stops
    early (after saving).

    Returns:
        One dict per epoch: epoch, mean training losses, ``val_*`` losses, checkpoint, seconds.
    """
    if model.mode != "training":
        raise ValueError("train() needs a MaskRCNN built with mode='training'")
    if model.epoch >= epochs:
        return []
    entry = build_train_op(model, layers)
    os.makedirs(model.log_dir, exist_ok=True)
    model.write_run_config()
    train_gen, val_gen = _batch_sources(model, train_dataset, val_dataset, augmentation, seed)
    writer = tf.summary.create_file_writer(model.log_dir)
    steps = steps_per_epoch or model.config.STEPS_PER_EPOCH
    history, start = [], time.time()
    try:
        for epoch in range(model.epoch, epochs):
            record = _run_epoch(model, entry, train_gen, val_gen, learning_rate, steps, epoch,
                                epochs, progress, layers)
            check_finite_weights(model, epoch + 1, learning_rate, layers)  # before saving
            _write_scalars(writer, record["train"], (epoch + 1) * steps)
            if record["val"]:
                _write_scalars(writer, record["val"], (epoch + 1) * steps, "val_")
            path = model.checkpoint_path.format(epoch=epoch + 1)
            model.save_weights(path)
            model.epoch = epoch + 1
            history.append(dict(epoch=epoch + 1, checkpoint=path, layers=layers,
                                seconds=time.time() - start, **record["train"],
                                **{"val_" + k: v for k, v in record["val"].items()}))
            if max_seconds is not None and time.time() - start > max_seconds:
                break
    finally:
        train_gen.close()
        if val_gen is not None:
            val_gen.close()
        writer.close()
    return history


def _batch_sources(model, train_dataset, val_dataset, augmentation, seed: int):
    """Prefetching training and validation batch generators (validation: None without a
    validation set or with ``VALIDATION_STEPS = 0``)."""
    cfg = model.config
    rng = np.random.default_rng(seed + model.epoch)
    train_gen = Prefetcher(data_gen.batch_iterator(train_dataset, cfg, rng, True, augmentation))
    val_gen = (Prefetcher(data_gen.batch_iterator(val_dataset, cfg, np.random.default_rng(seed),
                                                  True, None), size=1)
               if val_dataset is not None and cfg.VALIDATION_STEPS else None)
    return train_gen, val_gen


def _run_epoch(model, entry, train_gen, val_gen, learning_rate, steps, epoch, epochs,
               progress, layers: str = "") -> dict:
    """Steps of one epoch plus validation; returns mean train and val losses.

    Raises:
        NonFiniteTraining: at the first step whose loss is NaN or infinite.
    """
    from tqdm import tqdm
    bar = tqdm(range(steps), desc="epoch %d/%d" % (epoch + 1, epochs), disable=not progress,
               leave=False, mininterval=2.0)
    train_losses = []
    for step in bar:
        train_losses.append(train_step(model, entry, next(train_gen), learning_rate))
        check_finite_losses(train_losses[-1], epoch + 1, step + 1, learning_rate, layers, model)
        bar.set_postfix(loss="%.3f" % train_losses[-1]["loss"], refresh=False)
    bar.close()
    val = [eval_losses(model, next(val_gen)) for _ in range(model.config.VALIDATION_STEPS)] \
        if val_gen is not None else []
    return {"train": _mean_dicts(train_losses), "val": _mean_dicts(val)}
