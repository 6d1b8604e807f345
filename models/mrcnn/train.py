"""Stateless pieces of Mask R-CNN training: layer selection, the refusal of NaN/inf,
batch prefetching and TensorBoard scalars.

The training loop and every piece of training state (optimizer, its slots, the train op of
each layer selection, the learning-rate placeholder, session callables) belong to one
:class:`models.mrcnn.trainer.Trainer`, which uses the functions below.  This module imports
neither :mod:`models.mrcnn.model` nor :mod:`models.mrcnn.trainer`; the functions that take a
``model`` use only public members of ``MaskRCNN`` (``epoch``, ``log_dir``, ``keras_model``,
``read_variables``).

A loss that becomes NaN or infinite stops training at once with :class:`NonFiniteTraining`
(a ValueError naming the epoch, step, loss terms and learning rate); the weights are checked
again before every checkpoint, so a diverged model is never saved and the checkpoints of the
earlier epochs stay the newest ones.
"""
from __future__ import annotations

import queue
import threading
from typing import Dict, List

import numpy as np

import tfcompat
from models.mrcnn import data_gen
from models.mrcnn.constants import LAYER_REGEX

tf, keras = tfcompat.import_tf()


def resolve_layers(layers: str) -> str:
    """Matterport's layer selector ("heads", "3+", "4+", "5+", "all") or a regex."""
    return LAYER_REGEX.get(layers, layers)


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


def batch_sources(config, train_dataset, val_dataset, augmentation, seed: int, epoch: int):
    """Prefetching training and validation batch generators (validation: None without a
    validation set or with ``VALIDATION_STEPS = 0``).

    The training batches are drawn with ``seed + epoch`` (``epoch``: the epoch training
    starts from), so a resumed run does not repeat the batches of its first epochs; the
    validation batches always with ``seed``.
    """
    rng = np.random.default_rng(seed + epoch)
    train_gen = Prefetcher(data_gen.batch_iterator(train_dataset, config, rng, True,
                                                   augmentation))
    val_gen = (Prefetcher(data_gen.batch_iterator(val_dataset, config,
                                                  np.random.default_rng(seed), True, None),
                          size=1)
               if val_dataset is not None and config.VALIDATION_STEPS else None)
    return train_gen, val_gen


def _scalar_metadata() -> bytes:
    """Summary metadata marking a value as a TensorBoard scalar (no tensorboard import)."""
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    return meta.SerializeToString()


def write_scalars(writer, values: Dict[str, float], step: int, prefix: str = "") -> None:
    """TensorBoard scalars (event file in ``writer``'s folder)."""
    meta = _scalar_metadata()
    with writer.as_default():
        for name, value in values.items():
            tf.summary.write(prefix + name, tf.constant(value, tf.float32), step=step,
                             metadata=meta)
    writer.flush()


def mean_dicts(items: List[Dict[str, float]]) -> Dict[str, float]:
    """Per-key mean of dicts with the same keys (``{}`` for no dicts)."""
    return {k: float(np.mean([d[k] for d in items])) for k in items[0]} if items else {}
