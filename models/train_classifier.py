"""Training of the classifier M: the original recipe, resumable, best-on-validation checkpoint.

Recipe (original code): SGD, learning rate 0.001, momentum 0.9, weight decay 2e-4, batch 32.
tf-keras' ``SGD(weight_decay=...)`` decays the weights directly (``w -= lr * wd * w``), which
equals PyTorch's L2-in-the-gradient form without momentum and differs only slightly with it.

Files in ``checkpoint_dir``:
    best.h5      weights with the best validation accuracy so far (what evaluation loads)
    last.h5      weights after the last finished epoch (what an interrupted run resumes from)
    tensorboard/ TensorBoard summaries: loss, train and validation accuracy per epoch
    resume.npz   everything else the next epoch depends on: the optimizer's variables
                 (iteration count, momentum slots) and the state of every random generator
                 of the model (M's dropout)
    state.json   {"epoch": finished epochs, "best_val_acc", "best_epoch", "epochs", "done",
                  "last_sha256", "best_sha256", "resume_sha256": SHA-256 of those files,
                  "recipe": the training settings but the epoch count, "data_sha256": digest
                  of the training and validation images and labels}

A run whose ``state.json`` says ``done`` for at least the requested epochs only loads
``best.h5``.  An interrupted run restarts at the next epoch from ``last.h5`` and
``resume.npz``, and every epoch's randomness is a function of (seed, epoch, batch) -- the data
order, the dropout masks, the ``perturb`` hook's random starts -- so a run killed at any point
and restarted ends with **the same weights, bit for bit**, as one that was never interrupted.

Saving an epoch is a transaction: the new files are written as ``<name>.next``, then
``state.json`` (atomically, with their digests), then renamed over the old ones.  A run
killed before ``state.json`` was written leaves ``.next`` files whose digests the state does
not know: the next run discards them and redoes the epoch; killed after it, the next run
finishes the renames.

A folder trained with other settings (``recipe``) or other images (``data_sha256``) is
refused rather than reused or resumed; folders of older versions without these keys are
accepted (and their resume restarts the optimizer's momentum, which the log says).

Refusals (:class:`CheckpointError`, a ValueError naming the file and the way out): a folder
is never silently retrained from scratch over existing weights nor resumed at a wrong epoch.
A ``state.json`` that is not valid JSON, lacks a key, has a wrong type or inconsistent
numbers, a missing weight file the state refers to, a weight file that does not match the
SHA-256 recorded for it (flipped bytes, replaced file, a run killed between writing
``last.h5`` and ``state.json``; files of older runs have no checksum and are not checked), a
truncated or corrupted ``.h5`` and weights left without ``state.json`` all stop the run.
Training stops with :class:`NonFiniteTraining` as soon as a batch loss is NaN or infinite,
and the weights are checked before ``best.h5``/``last.h5`` are written, so a diverged model is
never saved (the files of the earlier epochs stay as they were).

A folder holding M trained for the requested epochs is only read (nothing is written there,
not even the clean-up of an abandoned ``.next`` file when the folder cannot be written), so
trained models on a read-only share can be evaluated; when training, resuming or finishing an
interrupted save would have to write in a folder that cannot be written, CheckpointError says
so before any epoch is trained (:func:`training_writes` tells beforehand).

``perturb`` lets a caller transform each training batch before the gradient step, e.g. to
replace it by adversarial examples (adversarial training lives in ``defense``, which may
import ``attacks``; this module may not).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import numbers
import os
import shutil
import tempfile
import zipfile
from typing import Callable, List, Optional

import numpy as np

import tfcompat
from data.fileio import atomic_path, exclusive, file_digest, write_json_atomic, write_problem
from models.inference import inference_fn
from models.progress import Eta

tf, keras = tfcompat.import_tf()


#: Sanity bound of the learning rate (the recipe uses 0.001): a larger one can only diverge.
MAX_LEARNING_RATE = 10.0
STATE_FILE = "state.json"
#: TensorBoard summaries (loss, train and validation accuracy per epoch) inside the folder.
TENSORBOARD = "tensorboard"
RESUME_FILE = "resume.npz"
#: Suffix of the files of an epoch whose save is not yet committed (see the module docstring).
PENDING = ".next"
#: The files an epoch writes and the ``state.json`` key holding each one's SHA-256.
EPOCH_FILES = (("last.h5", "last_sha256"), ("best.h5", "best_sha256"),
               (RESUME_FILE, "resume_sha256"))
#: Keys of ``state.json`` and their types (``best_val_acc``: a number).
STATE_KEYS = (("epoch", int), ("best_val_acc", float), ("best_epoch", int), ("epochs", int),
              ("done", bool))


class CheckpointError(ValueError):
    """M's checkpoint folder is damaged or inconsistent (nothing is resumed or overwritten)."""


class NonFiniteTraining(ValueError):
    """M's loss or weights became NaN or infinite (nothing of the epoch is saved)."""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


@dataclasses.dataclass
class TrainConfig:
    """Hyper-parameters of M's training (defaults: the original recipe)."""
    epochs: int = 30          # the original recipe
    batch_size: int = 32
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int = 0

    def recipe(self) -> dict:
        """The settings a trained M depends on, all but ``epochs`` (a run may be extended)."""
        return {"batch_size": int(self.batch_size), "learning_rate": float(self.learning_rate),
                "momentum": float(self.momentum), "weight_decay": float(self.weight_decay),
                "seed": int(self.seed)}

    def folder_suffix(self) -> str:
        """``""`` for the original recipe, else the settings that differ from it, e.g.
        ``"_lr0.01_seed1"``: M trained otherwise goes to a folder of its own."""
        default = TrainConfig().recipe()
        short = {"batch_size": "bs", "learning_rate": "lr", "momentum": "mom",
                 "weight_decay": "wd", "seed": "seed"}
        return "".join("_%s%s" % (short[k], repr(v) if isinstance(v, float) else v)
                       for k, v in self.recipe().items() if v != default[k])

    def validate(self) -> None:
        """Refuse settings that cannot train (ValueError naming the option).

        The learning rate must be finite and in (0, MAX_LEARNING_RATE]: NaN, infinity or
        1e30 would train a model full of NaN.  Momentum must be in [0, 1), weight decay a
        finite number >= 0.
        """
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError("--epochs must be an integer >= 1, got %r" % (self.epochs,))
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError("--batch-size must be an integer >= 1, got %r" % (self.batch_size,))
        if not _finite_number(self.learning_rate) or not (
                0 < self.learning_rate <= MAX_LEARNING_RATE):
            raise ValueError("--lr must be a finite number > 0 and <= %g (the recipe uses "
                             "0.001), got %r" % (MAX_LEARNING_RATE, self.learning_rate))
        if not _finite_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError("TrainConfig.momentum must be a finite number in [0, 1), got %r"
                             % (self.momentum,))
        if not _finite_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError("TrainConfig.weight_decay must be a finite number >= 0, got %r"
                             % (self.weight_decay,))


def predict_labels(model, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Arg-max predictions int64 [N] for uint8 or [0, 1]-float images [N, H, W, 3]."""
    forward, out = inference_fn(model), []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        out.append(np.argmax(forward(x).numpy(), axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``images`` that ``model`` classifies as ``labels``."""
    return float(np.mean(predict_labels(model, images) == labels))


def _make_step(model, optimizer, strategy=None):
    """``step(x [B,S,S,3], y [B]) -> (mean loss, correct count)``: one SGD step on a batch.

    With a strategy, replica ``r`` of ``n`` takes rows ``[r B / n, (r + 1) B / n)`` of the
    global batch (every worker holds the same batch), its loss is summed over its rows and
    divided by ``B``, and the optimizer sums the replicas' gradients: the mean-loss gradient
    of the whole batch, as on one device (:func:`models.distribute.global_batch_step`).
    """
    from models.distribute import global_batch_step

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if strategy is None:
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

    per_example = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE)

    def replica_step(x, y, global_size):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(per_example(y, logits)) / global_size
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))

    return global_batch_step(strategy, replica_step)


def _sha256(path: str) -> str:
    return file_digest(path, "sha256")


def _save_weights(model, path: str) -> str:
    """Write ``model``'s weights to ``path`` atomically; returns the file's SHA-256."""
    with atomic_path(path, suffix=".h5") as tmp:
        model.save_weights(tmp, save_format="h5")
        digest = _sha256(tmp)
    return digest


def _recovery(checkpoint_dir: str) -> str:
    return ("delete the folder %s to train M from scratch (the next run retrains it), or "
            "train into another --checkpoint-dir" % checkpoint_dir)


def _check_state(state, path: str, checkpoint_dir: str) -> dict:
    """Validate the content of ``state.json`` (keys, types, consistent numbers)."""
    def bad(problem):
        return CheckpointError("M's training state %s is damaged: %s; it cannot tell which "
                               "epoch the weights hold, so training is neither resumed nor "
                               "restarted over them: %s" % (path, problem,
                                                            _recovery(checkpoint_dir)))
    if not isinstance(state, dict):
        raise bad("it holds a JSON %s instead of an object" % type(state).__name__)
    for key, kind in STATE_KEYS:
        if key not in state:
            raise bad("the key %r is missing" % key)
        value = state[key]
        ok = (isinstance(value, bool) if kind is bool else
              _finite_number(value) if kind is float else _is_int(value))
        if not ok:
            raise bad("%r must be %s, got %r" % (key, {bool: "true or false", float: "a finite "
                                                       "number", int: "an integer"}[kind], value))
    for key in ("last_sha256", "best_sha256", "resume_sha256", "data_sha256"):
        value = state.get(key)
        if value is not None and not (isinstance(value, str) and len(value) == 64):
            raise bad("%r must be a SHA-256 hex digest, got %r" % (key, value))
    if "recipe" in state and not isinstance(state["recipe"], dict):
        raise bad("'recipe' must be an object of training settings, got %r"
                  % (state["recipe"],))
    epoch, epochs, best_epoch = state["epoch"], state["epochs"], state["best_epoch"]
    if not 1 <= epoch <= epochs:
        raise bad("'epoch' %d is not within 1..'epochs' (%d)" % (epoch, epochs))
    if not 1 <= best_epoch <= epoch:
        raise bad("'best_epoch' %d is not within 1..'epoch' (%d)" % (best_epoch, epoch))
    if not 0 <= state["best_val_acc"] <= 1:
        raise bad("'best_val_acc' %r is not an accuracy in [0, 1]" % (state["best_val_acc"],))
    if state["done"] and epoch != epochs:
        raise bad("'done' is true but 'epoch' %d differs from 'epochs' %d" % (epoch, epochs))
    return state


def _load_state(checkpoint_dir: str) -> dict:
    """``state.json`` of ``checkpoint_dir`` (validated), or {} when there is none."""
    path = os.path.join(checkpoint_dir, STATE_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError("M's training state %s is damaged (not valid JSON: %s); it "
                              "cannot tell which epoch the weights hold, so training is neither "
                              "resumed nor restarted over them: %s"
                              % (path, err, _recovery(checkpoint_dir))) from None
    return _check_state(state, path, checkpoint_dir)


def _settle(checkpoint_dir: str, state: dict, log: Callable[[str], None]) -> None:
    """Finish (roll forward) or undo (roll back) an epoch save a kill interrupted: a
    ``<name>.next`` whose digest ``state.json`` records replaces ``<name>``; any other
    ``.next`` belongs to an epoch whose state was never written and is removed -- or, in a
    folder that cannot be written (a read-only share), left there and ignored."""
    recorded = _interrupted_saves(checkpoint_dir, state)
    if recorded:
        _check_writable(checkpoint_dir, "an interrupted save of %s must be finished there "
                                        "first" % ", ".join(recorded))
    for name, key in EPOCH_FILES:
        pending = os.path.join(checkpoint_dir, name + PENDING)
        if name in recorded:
            os.replace(pending, os.path.join(checkpoint_dir, name))
            log("finished the interrupted save of %s (epoch %d)" % (name, state["epoch"]))
        elif os.path.isfile(pending):
            problem = write_problem(checkpoint_dir, "checkpoint_dir")
            if problem is None:
                os.remove(pending)
            log("%s %s: its epoch was interrupted before %s recorded it, so that epoch is "
                "trained again%s" % ("removed" if problem is None else "ignored", pending,
                                     STATE_FILE, "" if problem is None else
                                     " (not removed: %s)" % problem))


def _interrupted_saves(checkpoint_dir: str, state: dict) -> List[str]:
    """The files whose ``.next`` version ``state.json`` records: an epoch save to finish."""
    out = []
    for name, key in EPOCH_FILES:
        pending = os.path.join(checkpoint_dir, name + PENDING)
        if state.get(key) is not None and os.path.isfile(pending) \
                and _sha256(pending) == state[key]:
            out.append(name)
    return out


def _check_writable(checkpoint_dir: str, why: str) -> None:
    """CheckpointError when ``checkpoint_dir`` cannot be written although ``why`` says it
    must be (found before any training, not at the first epoch's save)."""
    problem = write_problem(checkpoint_dir, "checkpoint_dir")
    if problem is not None:
        raise CheckpointError(
            "checkpoint_dir %s cannot be written (%s), and %s. A trained M is only read, so a "
            "read-only folder works for evaluation once M is trained in it; to train, pass a "
            "checkpoint folder you can write to (copy this one there to keep what it holds)"
            % (checkpoint_dir, problem, why))


def _finished(state: dict, cfg: "TrainConfig") -> bool:
    """True when ``state`` holds M trained for ``cfg.epochs`` epochs (done, or its last
    epoch saved but not yet marked done)."""
    return bool(state) and (state["done"] and state["epochs"] >= cfg.epochs
                            or not state["done"] and state["epoch"] == cfg.epochs)


def training_writes(checkpoint_dir: str, config: "TrainConfig") -> Optional[str]:
    """What :func:`train_classifier` would write in ``checkpoint_dir`` for ``config``, or None
    when the folder holds M trained for it and is only read (models trained by a team and
    kept on a read-only share are evaluated from there).

    Raises:
        CheckpointError: a damaged ``state.json`` (as :func:`train_classifier` would).
    """
    state = _load_state(checkpoint_dir)
    if not state:
        return "M is not trained there yet"
    if not _finished(state, config):
        return ("it holds %d of the %d epochs asked for, so training would go on there"
                % (state["epoch"], config.epochs))
    recorded = _interrupted_saves(checkpoint_dir, state)
    if recorded:
        return "an interrupted save of %s would be finished there" % ", ".join(recorded)
    return None


def data_digest(*arrays) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``arrays`` (M's training data)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(("%s%s" % (a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _check_same_training(state: dict, cfg: "TrainConfig", digest: str,
                         checkpoint_dir: str) -> None:
    """Refuse a folder trained with other settings or images (older folders lack the keys)."""
    recipe = state.get("recipe")
    if recipe is not None and recipe != cfg.recipe():
        diff = ", ".join("%s %r there, %r now" % (k, recipe.get(k), v)
                         for k, v in cfg.recipe().items() if recipe.get(k) != v)
        raise CheckpointError("%s holds M trained with other settings (%s); it is neither "
                              "reused nor resumed with the new ones: use another "
                              "--checkpoint-dir (main.py names M's folder after settings that "
                              "differ from the recipe), or %s"
                              % (checkpoint_dir, diff, _recovery(checkpoint_dir)))
    if state.get("data_sha256") not in (None, digest):
        raise CheckpointError("%s holds M trained on other images (the digest of the training "
                              "and validation data differs: the data folder was regenerated "
                              "or replaced); it is neither reused nor resumed: use another "
                              "--checkpoint-dir, or %s"
                              % (checkpoint_dir, _recovery(checkpoint_dir)))


def _load_checkpoint(model, path: str, digest: Optional[str], checkpoint_dir: str,
                     role: str) -> None:
    """Load ``best.h5``/``last.h5`` into ``model``, refusing a missing, mismatching or
    damaged file (CheckpointError naming it)."""
    if not os.path.isfile(path):
        raise CheckpointError("%s is missing although %s records it as the %s: %s"
                              % (path, os.path.join(checkpoint_dir, STATE_FILE), role,
                                 _recovery(checkpoint_dir)))
    if digest is not None and _sha256(path) != digest:
        raise CheckpointError("%s is damaged: its SHA-256 differs from the one %s recorded for "
                              "the %s (corrupted or replaced file, or a run killed between "
                              "writing it and the state); %s"
                              % (path, STATE_FILE, role, _recovery(checkpoint_dir)))
    try:
        model.load_weights(path)
    except (OSError, KeyError, RuntimeError) as err:
        raise CheckpointError("%s is damaged (truncated or corrupted HDF5 file: %s) and "
                              "cannot be loaded as M's %s; %s"
                              % (path, str(err).strip("'\""), role,
                                 _recovery(checkpoint_dir))) from None
    except ValueError as err:
        raise CheckpointError("%s cannot be loaded into M (%s): was it trained with another "
                              "--arch, --input-size or class set? %s"
                              % (path, err, _recovery(checkpoint_dir))) from None


def train_classifier(model, train_images: np.ndarray, train_labels: np.ndarray,
                     val_images: np.ndarray, val_labels: np.ndarray, checkpoint_dir: str,
                     config: Optional[TrainConfig] = None,
                     perturb: Optional[Callable] = None, log: Callable[[str], None] = print,
                     progress: bool = True, strategy=None) -> dict:
    """Train ``model`` (logits output) or load it from ``checkpoint_dir`` when already trained.

    With a ``tf.distribute`` ``strategy`` (:mod:`models.distribute`; ``model`` must have been
    built in its ``scope()``) each step is split across its replicas; under a multi-worker
    strategy only the chief writes ``checkpoint_dir`` (a folder all workers share) and the
    others keep the best weights in memory.

    Args:
        train_images, val_images: uint8 [N, S, S, 3] (scaled to [0, 1] batch by batch).
        train_labels, val_labels: int [N] in the class set's order.
        perturb: optional ``f(x float32 [B,S,S,3], y int64 [B], batch_index) -> x'`` applied
            to every training batch (adversarial training); ``batch_index`` counts batches
            from the start of training (epoch * batches per epoch + batch), so a random
            perturbation seeded by it is the same after a resume.
    Returns:
        the final ``state.json`` content; ``model`` holds the best-validation weights.
    Raises:
        CheckpointError: a damaged or inconsistent ``checkpoint_dir`` (see the module
            docstring); NonFiniteTraining: the loss or the weights became NaN or infinite.
    """
    cfg = config or TrainConfig()
    cfg.validate()
    from models.distribute import is_chief
    if is_chief(strategy) and write_problem(checkpoint_dir) is None:
        # one writer per checkpoint folder: a second run training the same model waits,
        # then loads what the first trained
        with exclusive(checkpoint_dir.rstrip(os.sep) + ".lock", "checkpoint folder %s"
                       % checkpoint_dir, log):
            return _train_or_load(model, train_images, train_labels, val_images, val_labels,
                                  checkpoint_dir, cfg, perturb, log, progress, strategy)
    return _train_or_load(model, train_images, train_labels, val_images, val_labels,
                          checkpoint_dir, cfg, perturb, log, progress, strategy)


def _train_or_load(model, train_images, train_labels, val_images, val_labels,
                   checkpoint_dir: str, cfg: "TrainConfig", perturb, log, progress,
                   strategy) -> dict:
    """:func:`train_classifier`'s work (the caller holds the folder's lock)."""
    best_path = os.path.join(checkpoint_dir, "best.h5")
    last_path = os.path.join(checkpoint_dir, "last.h5")
    state_path = os.path.join(checkpoint_dir, STATE_FILE)
    from models.distribute import all_agree, is_chief, num_replicas
    chief = is_chief(strategy)
    if cfg.batch_size < num_replicas(strategy):
        raise ValueError("--batch-size %d is smaller than the %d replicas of the distribution "
                         "strategy: every replica needs a share of each batch"
                         % (cfg.batch_size, num_replicas(strategy)))
    digest = data_digest(train_images, train_labels, val_images, val_labels)
    state = _load_state(checkpoint_dir) if chief else {}
    if chief and state:
        _check_same_training(state, cfg, digest, checkpoint_dir)
    if chief:
        _settle(checkpoint_dir, state, log)
    if strategy is not None:
        # the other workers read the folder once the chief has finished an interrupted save
        # (the collective is a barrier), and all must start from the same epoch
        all_agree(strategy, 0)
        if not chief:
            state = _load_state(checkpoint_dir)
            if state:
                _check_same_training(state, cfg, digest, checkpoint_dir)
        if not all_agree(strategy, int(state.get("epoch", 0)) * 2 + bool(state.get("done"))):
            raise CheckpointError("the workers found different training states in %s: every "
                                  "worker must see the chief's checkpoint folder (a shared "
                                  "file system)" % checkpoint_dir)
    if not state:
        stray = [p for p in (best_path, last_path) if os.path.isfile(p)]
        if stray:
            raise CheckpointError("%s holds %s but no %s, so the epoch of the weights is "
                                  "unknown and M is neither resumed nor trained over them: %s"
                                  % (checkpoint_dir, " and ".join(os.path.basename(p)
                                                                  for p in stray),
                                     STATE_FILE, _recovery(checkpoint_dir)))
    if _finished(state, cfg):
        return _load_finished(model, checkpoint_dir, state, cfg, chief, log)
    start = 0
    if state and state["epoch"] > cfg.epochs:
        raise CheckpointError("%s holds %d epochs of an unfinished %d-epoch run, more than "
                              "the %d asked for: ask for --epochs %d to finish it, or %s"
                              % (checkpoint_dir, state["epoch"], state["epochs"], cfg.epochs,
                                 state["epochs"], _recovery(checkpoint_dir)))
    if chief:
        _check_writable(checkpoint_dir, "M must be trained there (%s)"
                        % ("epochs %d..%d" % (state["epoch"] + 1, cfg.epochs) if state
                           else "from scratch"))
    if state:
        _load_checkpoint(model, last_path, state.get("last_sha256"), checkpoint_dir,
                         "weights after epoch %d" % state["epoch"])
        start = int(state["epoch"])
        log("resuming training from %s after epoch %d" % (last_path, start))
    else:
        state = {"epoch": 0, "best_val_acc": -1.0, "best_epoch": 0}
    state["epochs"] = cfg.epochs
    state["done"] = False
    state["recipe"], state["data_sha256"] = cfg.recipe(), digest
    best = _run_epochs(model, train_images, train_labels, val_images, val_labels,
                       checkpoint_dir, cfg, perturb, log, progress, start, state, strategy, chief)
    state["done"] = True
    if chief or best is None:
        if chief:
            write_json_atomic(state_path, state, indent=1)
        _load_checkpoint(model, best_path, state.get("best_sha256"), checkpoint_dir,
                         "best weights")
    else:                     # a worker of a multi-worker run: the chief's file may be late
        model.set_weights(best)
    return state


def _load_finished(model, checkpoint_dir: str, state: dict, cfg: "TrainConfig", chief: bool,
                   log: Callable[[str], None]) -> dict:
    """Load M trained for ``cfg`` (its best weights); a state whose last epoch was saved but
    not marked done is marked so when the folder can be written, else left as it is."""
    best_path = os.path.join(checkpoint_dir, "best.h5")
    _load_checkpoint(model, best_path, state.get("best_sha256"), checkpoint_dir,
                     "best weights")
    if not state["done"] and chief and write_problem(checkpoint_dir) is None:
        state.update(epochs=cfg.epochs, done=True)      # the last epoch's final state
        write_json_atomic(os.path.join(checkpoint_dir, STATE_FILE), state, indent=1)
    log("loaded trained model %s (val acc %.3f at epoch %d)"
        % (best_path, state["best_val_acc"], state["best_epoch"]))
    return state


def _non_finite(what: str, epoch: int, cfg: "TrainConfig", checkpoint_dir: str,
                state: dict) -> NonFiniteTraining:
    kept = ("best.h5 and last.h5 of epoch %d and before are kept as they were"
            % state["epoch"] if state.get("epoch") else "no checkpoint was written")
    return NonFiniteTraining(
        "M's training diverged: %s in epoch %d (learning rate %g). Training stopped and "
        "nothing of this epoch was saved in %s (%s). Lower --lr (now %g) or check the "
        "training data and the batch transformation, then run again"
        % (what, epoch, cfg.learning_rate, checkpoint_dir, kept, cfg.learning_rate))


def _check_finite_weights(model, epoch, cfg, checkpoint_dir, state) -> None:
    for var in model.weights:
        if not np.all(np.isfinite(var.numpy())):
            raise _non_finite("weight %s became non-finite" % var.name, epoch, cfg,
                              checkpoint_dir, state)


def _random_layers(model) -> list:
    """Layers of ``model`` that draw random numbers (dropout, noise), as keras layers with a
    ``_random_generator``."""
    return [m for m in model.submodules
            if isinstance(m, keras.layers.Layer) and getattr(m, "_random_generator", None)
            is not None]


def _generator(layer):
    """The ``tf.random.Generator`` of a layer built with ``force_generator=True`` (created
    now if the layer has not drawn yet), or None for other random layers."""
    rng = layer._random_generator
    if getattr(rng, "_rng_type", None) != "stateful":
        return None
    rng._maybe_init()
    return rng._generator


def _resume_arrays(optimizer, model) -> dict:
    """The optimizer's variables and the random generators' states, as numpy arrays."""
    arrays = {"optimizer/%04d" % i: v.numpy() for i, v in enumerate(optimizer.variables)}
    # by position, not name: keras numbers unnamed layers per process (dropout_3, ...)
    for i, layer in enumerate(_random_layers(model)):
        gen = _generator(layer)
        if gen is not None:
            arrays["rng/%04d" % i] = gen.state.numpy()
    return arrays


def _save_arrays(arrays: dict, path: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:       # a file object: np.savez would append ".npz"
            np.savez(f, **arrays)
        digest = _sha256(tmp)
    return digest


def _restore_resume(optimizer, model, path: str, digest: Optional[str],
                    checkpoint_dir: str, log: Callable[[str], None]) -> None:
    """Load ``resume.npz`` into the (built) optimizer and the random generators, refusing a
    missing, mismatching or damaged file; folders of older versions have none (log)."""
    if digest is None:
        log("%s has no optimizer state (an older version's folder): the optimizer's momentum "
            "restarts at this epoch, so the result will differ slightly from an uninterrupted "
            "run's" % checkpoint_dir)
        return
    if not os.path.isfile(path):
        raise CheckpointError("%s is missing although %s records it: %s"
                              % (path, STATE_FILE, _recovery(checkpoint_dir)))
    if _sha256(path) != digest:
        raise CheckpointError("%s is damaged: its SHA-256 differs from the one %s recorded; %s"
                              % (path, STATE_FILE, _recovery(checkpoint_dir)))
    want = _resume_arrays(optimizer, model)
    try:
        with np.load(path, allow_pickle=False) as f:
            got = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError("%s is damaged (%s); %s"
                              % (path, err, _recovery(checkpoint_dir))) from None
    if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
        differ = sorted(set(got) ^ set(want)) or [k for k in sorted(want)
                                                  if got[k].shape != want[k].shape]
        raise CheckpointError("%s does not fit this model and optimizer (%d arrays there, %d "
                              "here; differing: %s): was it written for another --arch? %s"
                              % (path, len(got), len(want), ", ".join(differ[:5]),
                                 _recovery(checkpoint_dir)))
    for i, v in enumerate(optimizer.variables):
        v.assign(got["optimizer/%04d" % i])
    for i, layer in enumerate(_random_layers(model)):
        gen = _generator(layer)
        if gen is not None:
            gen.state.assign(got["rng/%04d" % i])


def _commit_epoch(model, optimizer, checkpoint_dir: str, state: dict, new_best: bool) -> None:
    """Save an epoch as one transaction (module docstring): ``.next`` files, the state, the
    renames."""
    written = []
    for name, key in EPOCH_FILES:
        if name == "best.h5" and not new_best:
            continue
        pending = os.path.join(checkpoint_dir, name + PENDING)
        if name == RESUME_FILE:
            state[key] = _save_arrays(_resume_arrays(optimizer, model), pending)
        else:
            state[key] = _save_weights(model, pending)
        written.append((pending, os.path.join(checkpoint_dir, name)))
    write_json_atomic(os.path.join(checkpoint_dir, STATE_FILE), state, indent=1)
    for pending, final in written:
        os.replace(pending, final)


def _run_epochs(model, xtr, ytr, xval, yval, checkpoint_dir, cfg, perturb, log, progress,
                start, state, strategy=None, chief=True):
    """The epochs ``start..cfg.epochs``; returns the best epoch's weights of this run (None
    when no epoch of it was the best)."""
    from tqdm import tqdm

    tf.random.set_seed(cfg.seed)
    with (strategy.scope() if strategy is not None else contextlib.nullcontext()):
        optimizer = keras.optimizers.SGD(learning_rate=cfg.learning_rate,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        optimizer.build(model.trainable_variables)
    inexact = [layer.name for layer in _random_layers(model) if _generator(layer) is None]
    if inexact:
        log("note: the random layers %s do not use a tf.random.Generator (build them with "
            "force_generator=True), so a resumed run is not bit-for-bit an uninterrupted one"
            % inexact)
    if start:
        _restore_resume(optimizer, model, os.path.join(checkpoint_dir, RESUME_FILE),
                        state.get("resume_sha256"), checkpoint_dir, log)
    scratch = None if chief else tempfile.mkdtemp(prefix="unmask-worker-")
    from models.mrcnn.train import write_scalars
    # Opened at the first epoch's summaries: a run refused or stopped before then leaves
    # the folder as it found it.
    board_dir, board = (os.path.join(checkpoint_dir, TENSORBOARD) if chief else None), None
    step = _make_step(model, optimizer, strategy)
    n_replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    eta = Eta(cfg.epochs, done=start)
    ytr = np.asarray(ytr, np.int64)
    best = None
    n_batches = -(-len(xtr) // cfg.batch_size)
    for epoch in range(start, cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(xtr))
        batches = range(0, len(order), cfg.batch_size)
        bar = tqdm(batches, desc="epoch %d/%d" % (epoch + 1, cfg.epochs), leave=False,
                   disable=None if progress else True, unit="batch")
        loss_sum, correct = 0.0, 0.0
        for i in bar:
            idx = order[i:i + cfg.batch_size]
            if len(idx) < n_replicas:     # a last batch too small to give every replica a row
                continue
            x = tf.convert_to_tensor(xtr[idx].astype(np.float32) / 255.0)
            y = tf.convert_to_tensor(ytr[idx])
            if perturb is not None:
                x = perturb(x, y, epoch * n_batches + i // cfg.batch_size)
            loss, c = step(x, y)
            if not np.isfinite(float(loss)):
                raise _non_finite("the loss became %s at batch %d" % (float(loss),
                                                                      i // cfg.batch_size + 1),
                                  epoch + 1, cfg, checkpoint_dir, state)
            loss_sum += float(loss) * len(idx)
            correct += float(c)
            bar.set_postfix(loss="%.3f" % float(loss))
        _check_finite_weights(model, epoch + 1, cfg, checkpoint_dir, state)  # before saving
        val_acc = accuracy(model, xval, yval)
        state["epoch"] = epoch + 1
        new_best = val_acc > state["best_val_acc"]
        if new_best:
            state["best_val_acc"], state["best_epoch"] = val_acc, epoch + 1
            best = model.get_weights()
        if chief:
            _commit_epoch(model, optimizer, checkpoint_dir, state, new_best)
        else:   # reading mirrored weights is a collective: every worker saves, into its own
            _commit_epoch(model, optimizer, scratch, dict(state), new_best)   # scratch folder
        if board_dir is not None:      # as K's trainer writes its losses
            if board is None:
                board = tf.summary.create_file_writer(board_dir)
            write_scalars(board, {"loss": loss_sum / len(xtr), "train_acc": correct / len(xtr),
                                  "val_acc": val_acc}, epoch + 1)
        timing = eta.step()
        log("epoch %d/%d: loss %.4f, train acc %.3f, val acc %.3f%s%s"
            % (epoch + 1, cfg.epochs, loss_sum / len(xtr), correct / len(xtr), val_acc,
               " (best)" if new_best else "", " (%s)" % timing if progress else ""))
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if board is not None:
        board.close()
    return best

