"""Training of the classifier M: the original recipe, resumable, best-on-validation checkpoint.

Recipe (original code): SGD, learning rate 0.001, momentum 0.9, weight decay 2e-4, batch 32.
tf-keras' ``SGD(weight_decay=...)`` decays the weights directly (``w -= lr * wd * w``), which
equals PyTorch's L2-in-the-gradient form without momentum and differs only slightly with it.

Files in ``checkpoint_dir`` (all written atomically):
    best.h5      weights with the best validation accuracy so far (what evaluation loads)
    last.h5      weights after the last finished epoch (what an interrupted run resumes from)
    state.json   {"epoch": finished epochs, "best_val_acc", "best_epoch", "epochs", "done"}

A run whose ``state.json`` says ``done`` for at least the requested epochs only loads
``best.h5``.  An interrupted run restarts from ``last.h5`` at the next epoch (the optimizer's
momentum starts afresh there).

``perturb`` lets a caller transform each training batch before the gradient step, e.g. to
replace it by adversarial examples (adversarial training lives in ``defense``, which may
import ``attacks``; this module may not).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import numpy as np

import tfcompat
from data.fileio import atomic_path, read_json, write_json_atomic

tf, keras = tfcompat.import_tf()


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of M's training (defaults: the original recipe)."""
    epochs: int = 30          # the original recipe
    batch_size: int = 32
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError("--epochs must be >= 1, got %d" % self.epochs)
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1, got %d" % self.batch_size)
        if not self.learning_rate > 0:
            raise ValueError("--lr must be > 0, got %r" % self.learning_rate)


def predict_labels(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Arg-max predictions int64 [N] for uint8 or [0, 1]-float images [N, H, W, 3]."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        out.append(np.argmax(model(x, training=False).numpy(), axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``images`` that ``model`` classifies as ``labels``."""
    return float(np.mean(predict_labels(model, images) == labels))


def _make_step(model, optimizer):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
        return loss, correct
    return step


def _save_weights(model, path: str) -> None:
    with atomic_path(path, suffix=".h5") as tmp:
        model.save_weights(tmp, save_format="h5")


def _load_state(checkpoint_dir: str) -> dict:
    path = os.path.join(checkpoint_dir, "state.json")
    return read_json(path) if os.path.isfile(path) else {}


def train_classifier(model, train_images: np.ndarray, train_labels: np.ndarray,
                     val_images: np.ndarray, val_labels: np.ndarray, checkpoint_dir: str,
                     config: Optional[TrainConfig] = None,
                     perturb: Optional[Callable] = None, log: Callable[[str], None] = print,
                     progress: bool = True) -> dict:
    """Train ``model`` (logits output) or load it from ``checkpoint_dir`` when already trained.

    Args:
        train_images, val_images: uint8 [N, S, S, 3] (scaled to [0, 1] batch by batch).
        train_labels, val_labels: int [N] in the class set's order.
        perturb: optional ``f(x float32 [B,S,S,3], y int64 [B]) -> x'`` applied to every
            training batch (adversarial training).
    Returns:
        the final ``state.json`` content; ``model`` holds the best-validation weights.
    """
    cfg = config or TrainConfig()
    cfg.validate()
    best_path = os.path.join(checkpoint_dir, "best.h5")
    last_path = os.path.join(checkpoint_dir, "last.h5")
    state = _load_state(checkpoint_dir)
    if state.get("done") and state.get("epochs", 0) >= cfg.epochs and os.path.isfile(best_path):
        model.load_weights(best_path)
        log("loaded trained model %s (val acc %.3f at epoch %d)"
            % (best_path, state["best_val_acc"], state["best_epoch"]))
        return state
    start = 0
    if state and os.path.isfile(last_path) and state.get("epoch", 0) < cfg.epochs:
        model.load_weights(last_path)
        start = int(state["epoch"])
        log("resuming training from %s after epoch %d" % (last_path, start))
    else:
        state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0}
    state["epochs"] = cfg.epochs
    state["done"] = False
    _run_epochs(model, train_images, train_labels, val_images, val_labels, checkpoint_dir,
                cfg, perturb, log, progress, start, state)
    state["done"] = True
    write_json_atomic(os.path.join(checkpoint_dir, "state.json"), state, indent=1)
    model.load_weights(best_path)
    return state


def _run_epochs(model, xtr, ytr, xval, yval, checkpoint_dir, cfg, perturb, log, progress,
                start, state):
    from tqdm import tqdm

    tf.random.set_seed(cfg.seed)
    optimizer = keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
    step = _make_step(model, optimizer)
    ytr = np.asarray(ytr, np.int64)
    for epoch in range(start, cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(xtr))
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc="epoch %d/%d" % (epoch + 1, cfg.epochs), leave=False,
                   disable=None if progress else True, unit="batch")
        loss_sum, correct = 0.0, 0.0
        for i in bar:
            idx = order[i:i + cfg.batch_size]
            x = tf.convert_to_tensor(xtr[idx].astype(np.float32) / 255.0)
            y = tf.convert_to_tensor(ytr[idx])
            if perturb is not None:
                x = perturb(x, y)
            loss, c = step(x, y)
            loss_sum += float(loss) * len(idx)
            correct += float(c)
            bar.set_postfix(loss="%.3f" % float(loss))
        val_acc = accuracy(model, xval, yval)
        state["epoch"] = epoch + 1
        _save_weights(model, os.path.join(checkpoint_dir, "last.h5"))
        if val_acc > state["best_val_acc"]:
            state["best_val_acc"], state["best_epoch"] = val_acc, epoch + 1
            _save_weights(model, os.path.join(checkpoint_dir, "best.h5"))
        write_json_atomic(os.path.join(checkpoint_dir, "state.json"), state, indent=1)
        log("epoch %d/%d: loss %.4f, train acc %.3f, val acc %.3f%s"
            % (epoch + 1, cfg.epochs, loss_sum / len(xtr), correct / len(xtr), val_acc,
               " (best)" if state["best_epoch"] == epoch + 1 else ""))
