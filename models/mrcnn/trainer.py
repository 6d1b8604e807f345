"""``Trainer``: the one owner of Mask R-CNN's training state (SGD + momentum, weight decay,
gradient clipping) in the model's TF1 graph.

Matterport trained with Keras ``fit_generator``; this port runs the same optimisation as a
graph train op fed by a prefetching NumPy batch generator, with a tqdm progress bar,
TensorBoard scalars and one checkpoint per epoch (written atomically).

Import direction (one way; nothing imports back)::

    model.py -> trainer.py -> train.py (stateless helpers) -> constants.py
    model.py -> constants.py

``MaskRCNN`` (training mode) creates one ``Trainer`` on first use (``MaskRCNN.trainer``) and
delegates ``MaskRCNN.train`` to it.  This module never imports :mod:`models.mrcnn.model` and
uses only these public members of the model it trains: ``mode``, ``config``, ``epoch``,
``log_dir``, ``session``, ``keras_model.inputs``, ``graph_scope()``, ``loss_tensors``,
``trainable_weights_matching()``, ``state_updates_matching()``, ``input_values()``,
``keras_model.weights``, ``read_variables()``, ``write_run_config()`` and
``save_checkpoint()``.

The trainer owns: the learning-rate placeholder, the momentum optimizer and its slot
variables (each initialised once, when the first train op that needs it is built, so the
momentum of a variable carries over from one ``train`` call or stage to the next), one train
op per layer selection, the session callables running them and the validation losses, the
count of steps run and the records of the epochs trained through it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

import tfcompat
from models.mrcnn.constants import LOSS_NAMES
from models.mrcnn.session_guard import make_callable
from models.mrcnn.train import (batch_sources, check_finite_losses, check_finite_weights,
                                mean_dicts, resolve_layers, write_scalars)

tf, keras = tfcompat.import_tf()


@dataclass(frozen=True)
class TrainOp:
    """The train op of one layer selection (built once per ``regex`` by a ``Trainer``).

    Attributes:
        regex: the layer-name regular expression the selection resolved to.
        op: one SGD + momentum step on ``variables`` (it also runs the batch-norm moving
            statistic updates of the selected layers).
        losses: scalar float32 tensors ``{name: tensor}``: the five ``LOSS_NAMES`` (batch
            means) and ``loss`` = their ``LOSS_WEIGHTS``-weighted sum + the L2 weight decay of
            ``variables``.
        variables: the trainable variables the op updates.
    """
    regex: str
    op: object
    losses: Dict[str, object]
    variables: list


class Trainer:
    """Trains one ``MaskRCNN`` built with ``mode="training"``, keeping the optimizer state
    across :meth:`train` calls.

    Attributes:
        model: the model trained (only its public members are used).
        steps: optimizer steps run by this trainer so far.
        history: the per-epoch records of every :meth:`train` call so far.
    """

    def __init__(self, model):
        if model.mode != "training":
            raise ValueError("train() needs a MaskRCNN built with mode='training'")
        self.model = model
        self.steps = 0
        self.history: List[dict] = []
        self._train_ops: Dict[str, TrainOp] = {}
        self._callables: Dict[object, Callable] = {}
        self._initialized_slots: set = set()
        #: A :class:`models.mrcnn.adversarial.KAdversary` for adversarial training (None: a
        #: standard K): each step's batch is mixed with its adversarial images first.
        self.adversary = None
        self._seed = 0
        with model.graph_scope():
            self._learning_rate = tf.compat.v1.placeholder(tf.float32, [],
                                                           name="learning_rate")
            self._optimizer = tf.compat.v1.train.MomentumOptimizer(
                self._learning_rate, model.config.LEARNING_MOMENTUM)

    # ------------------------------------------------------------------ state
    @property
    def optimizer(self):
        """The ``tf.compat.v1.train.MomentumOptimizer`` shared by every layer selection."""
        return self._optimizer

    @property
    def learning_rate(self):
        """The float32 scalar placeholder fed with each step's learning rate."""
        return self._learning_rate

    def slot_variables(self) -> list:
        """The optimizer's variables created so far (one momentum slot per trained variable,
        all initialised)."""
        with self.model.graph_scope():
            return list(self._optimizer.variables())

    def train_op(self, layers: str) -> TrainOp:
        """The :class:`TrainOp` of ``layers`` (a ``LAYER_REGEX`` key or a regex), built once
        per selection; building it initialises only the optimizer slots it adds.

        Raises:
            ValueError: ``layers`` selects no trainable layer.
        """
        regex = resolve_layers(layers)
        if regex in self._train_ops:
            return self._train_ops[regex]
        model, cfg = self.model, self.model.config
        variables = model.trainable_weights_matching(regex)
        if not variables:
            raise ValueError("layers=%r selects no trainable layer" % (layers,))
        parts = model.loss_tensors
        with model.graph_scope():
            # matterport: keras.regularizers.l2(WEIGHT_DECAY)(w) / size(w), i.e. without the
            # 1/2 of tf.nn.l2_loss; batch-norm gamma and beta are not decayed.
            decay = [tf.reduce_sum(tf.square(w)) / tf.cast(tf.size(w), tf.float32)
                     * cfg.WEIGHT_DECAY
                     for w in variables if "gamma" not in w.name and "beta" not in w.name]
            total = tf.add_n([parts[n] * cfg.LOSS_WEIGHTS.get(n, 1.) for n in LOSS_NAMES]
                             + [tf.add_n(decay) if decay else tf.constant(0.)])
            grads = tf.gradients(total, variables)
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            clipped, _ = tf.clip_by_global_norm([g for g, _ in pairs], cfg.GRADIENT_CLIP_NORM)
            with tf.control_dependencies(model.state_updates_matching(regex)):
                op = self._optimizer.apply_gradients(list(zip(clipped, [v for _, v in pairs])))
            new_slots = [v for v in self._optimizer.variables()
                         if v.name not in self._initialized_slots]
            init = tf.compat.v1.variables_initializer(new_slots)
        model.session.run(init)
        self._initialized_slots |= {v.name for v in new_slots}
        entry = TrainOp(regex=regex, op=op, losses=dict(parts, loss=total),
                        variables=[v for _, v in pairs])
        self._train_ops[regex] = entry
        return entry

    def _callable(self, key, feeds, fetches, targets=()):
        """Session callable of this trainer, created once per ``key``."""
        if key not in self._callables:
            self._callables[key] = make_callable(self.model.session, feeds, fetches, targets)
        return self._callables[key]

    # ------------------------------------------------------------------ steps
    def step(self, layers: str, batch: dict, learning_rate: float) -> Dict[str, float]:
        """One SGD step of ``layers`` on ``batch`` (a ``data_gen.build_batch`` dict); returns
        the losses (``LOSS_NAMES`` and ``loss``) computed before the update."""
        entry = self.train_op(layers)
        names = list(entry.losses)
        inputs = self.model.keras_model.inputs
        fn = self._callable(("train", entry.regex), inputs + [self._learning_rate],
                            [entry.losses[n] for n in names], [entry.op])
        values = fn(*self.model.input_values(batch), np.asarray(learning_rate, np.float32))
        self.steps += 1
        return dict(zip(names, [float(v) for v in values]))

    def validation_losses(self, batch: dict) -> Dict[str, float]:
        """The ``LOSS_NAMES`` losses of ``batch`` without updating weights (note: batch norm
        as in training, i.e. batch statistics with ``TRAIN_BN``)."""
        parts = self.model.loss_tensors
        names = list(parts)
        fn = self._callable("val_losses", self.model.keras_model.inputs,
                            [parts[n] for n in names])
        values = fn(*self.model.input_values(batch))
        return dict(zip(names, [float(v) for v in values]))

    # ------------------------------------------------------------------ loop
    def train(self, train_dataset, val_dataset, learning_rate: float, epochs: int,
              layers: str, augmentation: Optional[Callable] = None, seed: int = 0,
              progress: bool = True, max_seconds: Optional[float] = None,
              steps_per_epoch: Optional[int] = None,
              on_epoch: Optional[Callable[[dict], None]] = None,
              total_epochs: Optional[int] = None) -> List[dict]:
        """Train ``layers`` from ``model.epoch`` up to epoch ``epochs`` (matterport semantics).

        Each epoch runs ``STEPS_PER_EPOCH`` steps (or ``steps_per_epoch``),
        ``VALIDATION_STEPS`` validation batches (when ``val_dataset`` is given), writes
        TensorBoard scalars to ``model.log_dir`` and saves the epoch's checkpoint atomically
        (``model.save_checkpoint``, which advances ``model.epoch``); the run's configuration
        is recorded as ``<log_dir>/config.json`` (``model.write_run_config``).
        ``max_seconds`` stops early (after saving); ``on_epoch(record)`` is called after each
        saved epoch (progress lines).  The progress bar counts epochs out of ``total_epochs``
        (every stage of a staged training; default ``epochs``), as the progress lines do.

        Returns:
            One dict per epoch: epoch, layers, mean training losses, ``val_*`` losses,
            checkpoint, seconds (also appended to :attr:`history`).
        Raises:
            NonFiniteTraining: a loss or weight became NaN or infinite (the epoch is not
                saved).
        """
        model = self.model
        if model.epoch >= epochs:
            return []
        self.train_op(layers)
        os.makedirs(model.log_dir, exist_ok=True)
        model.write_run_config()
        train_gen, val_gen = batch_sources(model.config, train_dataset, val_dataset,
                                           augmentation, seed, model.epoch)
        self._seed = int(seed)
        writer = tf.summary.create_file_writer(model.log_dir)
        steps = steps_per_epoch or model.config.STEPS_PER_EPOCH
        history, start = [], time.time()
        try:
            for epoch in range(model.epoch, epochs):
                record = self._run_epoch(train_gen, val_gen, learning_rate, steps, epoch,
                                         total_epochs or epochs, progress, layers)
                check_finite_weights(model, epoch + 1, learning_rate, layers)  # before saving
                write_scalars(writer, record["train"], (epoch + 1) * steps)
                if record["val"]:
                    write_scalars(writer, record["val"], (epoch + 1) * steps, "val_")
                path = model.save_checkpoint(epoch + 1)
                history.append(dict(epoch=epoch + 1, checkpoint=path, layers=layers,
                                    seconds=time.time() - start, **record["train"],
                                    **{"val_" + k: v for k, v in record["val"].items()}))
                self.history.append(history[-1])
                if on_epoch is not None:
                    on_epoch(history[-1])
                if max_seconds is not None and time.time() - start > max_seconds:
                    break
        finally:
            train_gen.close()
            if val_gen is not None:
                val_gen.close()
            writer.close()
        return history

    def _run_epoch(self, train_gen, val_gen, learning_rate, steps, epoch, epochs, progress,
                   layers: str) -> dict:
        """Steps of one epoch plus validation; returns mean train and val losses.

        Raises:
            NonFiniteTraining: at the first step whose loss is NaN or infinite.
        """
        from tqdm import tqdm
        bar = tqdm(range(steps), desc="epoch %d/%d" % (epoch + 1, epochs),
                   disable=not progress, leave=False, mininterval=2.0)
        train_losses = []
        for step in bar:
            batch = next(train_gen)
            if self.adversary is not None:     # seeded by the run's seed, epoch and step:
                batch = self.adversary.mix(batch, [self._seed, epoch, step])  # resumable
            train_losses.append(self.step(layers, batch, learning_rate))
            check_finite_losses(train_losses[-1], epoch + 1, step + 1, learning_rate, layers,
                                self.model)
            bar.set_postfix(loss="%.3f" % train_losses[-1]["loss"], refresh=False)
        bar.close()
        val = ([self.validation_losses(next(val_gen))
                for _ in range(self.model.config.VALIDATION_STEPS)]
               if val_gen is not None else [])
        return {"train": mean_dicts(train_losses), "val": mean_dicts(val)}
