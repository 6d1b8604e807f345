"""The trajectory detector's core (SPEC §6, seed 003: Massoli et al. 2020 after Carrara et al.
2018): class representatives per tap, the [L, K] "trajectory" embedding, the sequence detector
and its training, and the macro-AUC they are judged by.

Pipeline (the :class:`defense.base.Defense` wrapper around it lives elsewhere):

1. :func:`models.taps.tap_features` -- L feature vectors per image (one per block of M).
2. :func:`representatives` -- per tap and class, the centroid or the medoid of the training
   images M classifies correctly; cached with :func:`save_representatives` /
   :func:`load_representatives` under a fingerprint (:func:`representatives_fingerprint`).
3. :func:`embed` (numpy) or :func:`embed_tensors` (TensorFlow, differentiable) -- per tap l and
   class k the Euclidean distance ``||f_l(x) - r_{l,k}||`` or the cosine similarity: ``[N, L, K]``.
4. :func:`build_detector` / :func:`train_detector` -- LSTM (or BiLSTM, or an MLP baseline) from
   ``[L, K]`` to one logit (higher = more likely adversarial); :func:`detector_scores`.
5. :func:`macro_auc` -- the mean over attack types of the AUC of that type's adversarials
   against all natural images; :func:`split_by_source` keeps an image and its adversarials on
   one side of a train/validation split.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from sklearn.metrics import roc_auc_score

import tfcompat
from data import fileio
from data.fileio import atomic_path
from models.taps import tap_names

tf, keras = tfcompat.import_tf()

REPRESENTATIVE_KINDS = ("medoid", "centroid")
METRICS = ("cosine", "l2")
DETECTOR_KINDS = ("lstm", "bilstm", "mlp")

#: Default epochs of :func:`train_detector`.  An epoch draws as many sequences as the training
#: set holds (balanced over natural + attack types); on 4000 sequences [17, 5] one LSTM epoch
#: takes ~0.6 s on 2 busy CPU cores, so 50 epochs (~30 s; BiLSTM ~100 s) stay below the
#: 3-minute budget.
DEFAULT_EPOCHS = 50

_FORMAT = 1  # version of the representatives file layout


# --------------------------------------------------------------------------- representatives
def _as_feature_list(features: Sequence[np.ndarray]) -> List[np.ndarray]:
    feats = [np.asarray(f) for f in features]
    if not feats:
        raise ValueError("features must hold at least one tap")
    for i, f in enumerate(feats):
        if f.ndim != 2:
            raise ValueError("tap %d: features must be [N, d], got shape %s" % (i, f.shape))
        if len(f) != len(feats[0]):
            raise ValueError("tap %d has %d rows, tap 0 has %d" % (i, len(f), len(feats[0])))
    return feats


def summed_distances(points: np.ndarray, chunk: int = 256) -> np.ndarray:
    """float64 [n]: for every row, the sum of its Euclidean distances to all rows.

    Computed ``chunk`` rows at a time (memory O(chunk * n) besides the points), in float64 via
    ``|a|^2 + |b|^2 - 2 a.b`` clipped at 0.
    """
    x = np.asarray(points, np.float64)
    if x.ndim != 2:
        raise ValueError("points must be [n, d], got shape %s" % (x.shape,))
    chunk = max(1, int(chunk))
    squares = np.einsum("ij,ij->i", x, x)
    totals = np.empty(len(x), np.float64)
    for start in range(0, len(x), chunk):
        stop = min(len(x), start + chunk)
        d2 = squares[start:stop, None] + squares[None, :] - 2.0 * (x[start:stop] @ x.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(stop - start), np.arange(start, stop)] = 0.0  # a point to itself
        totals[start:stop] = np.sqrt(d2).sum(axis=1)
    return totals


def medoid_index(points: np.ndarray, chunk: int = 256) -> int:
    """Index of the row minimising the summed Euclidean distance to all rows (first on ties)."""
    if len(points) == 0:
        raise ValueError("medoid of an empty set")
    return int(np.argmin(summed_distances(points, chunk)))


def representatives(features: Sequence[np.ndarray], labels: np.ndarray, num_classes: int,
                    kind: str = "medoid", chunk: int = 256) -> List[np.ndarray]:
    """Per tap and class, one representative vector.

    Args:
        features: L arrays ``[N, d_l]`` (the taps of N images, e.g. the training images M
            classifies correctly).
        labels: int [N], the class of each image (0..num_classes-1).
        num_classes: K.
        kind: ``"centroid"`` (the class mean) or ``"medoid"`` (the real sample of the class
            whose summed *Euclidean* distance to its class-mates is smallest, chosen per tap;
            Euclidean whatever metric the embedding later uses).
        chunk: rows per block in the medoid's distance computation (the result does not
            depend on it).

    Returns:
        L float32 arrays ``[K, d_l]``, rows in class order.

    Raises:
        ValueError: a class has no sample (the message names its index), bad shapes/labels.
    """
    if kind not in REPRESENTATIVE_KINDS:
        raise ValueError("kind must be one of %s, got %r" % (REPRESENTATIVE_KINDS, kind))
    feats = _as_feature_list(features)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(feats[0]):
        raise ValueError("%d labels for %d feature rows" % (len(labels), len(feats[0])))
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError("labels must lie in [0, %d), got range [%d, %d]"
                         % (num_classes, labels.min(), labels.max()))
    members = [np.flatnonzero(labels == k) for k in range(int(num_classes))]
    for k, idx in enumerate(members):
        if not len(idx):
            raise ValueError("class %d has no sample to compute its %s from" % (k, kind))
    reps = []
    for f in feats:
        rows = []
        for idx in members:
            points = f[idx]
            if kind == "centroid":
                rows.append(points.astype(np.float64).mean(axis=0))
            else:
                rows.append(points[medoid_index(points, chunk)])
        reps.append(np.stack(rows).astype(np.float32))
    return reps


# --------------------------------------------------------------------------- embedding
def _check_reps(features: Sequence, reps: Sequence[np.ndarray]) -> None:
    if len(features) != len(reps):
        raise ValueError("%d taps of features but %d of representatives"
                         % (len(features), len(reps)))
    for i, (f, r) in enumerate(zip(features, reps)):
        if int(f.shape[-1]) != int(r.shape[-1]):
            raise ValueError("tap %d: features have dimension %d, representatives %d"
                             % (i, int(f.shape[-1]), int(r.shape[-1])))
        if int(r.shape[0]) != int(reps[0].shape[0]):
            raise ValueError("tap %d has %d representatives, tap 0 has %d"
                             % (i, int(r.shape[0]), int(reps[0].shape[0])))


def embed(features: Sequence[np.ndarray], reps: Sequence[np.ndarray],
          metric: str = "cosine") -> np.ndarray:
    """The trajectory ``[N, L, K]`` float32 of N inputs.

    Entry ``[n, l, k]`` is ``||f_l(x_n) - r_{l,k}||`` (``metric="l2"``) or the cosine
    similarity of ``f_l(x_n)`` and ``r_{l,k}`` (``"cosine"``; 0 when either vector is 0).
    """
    if metric not in METRICS:
        raise ValueError("metric must be one of %s, got %r" % (METRICS, metric))
    feats = _as_feature_list(features)
    reps = [np.asarray(r, np.float64) for r in reps]
    _check_reps(feats, reps)
    out = np.empty((len(feats[0]), len(feats), reps[0].shape[0]), np.float32)
    for l, (f, r) in enumerate(zip(feats, reps)):
        f = f.astype(np.float64)
        if metric == "l2":
            for k in range(len(r)):  # K is small; no [N, K, d] temporary
                out[:, l, k] = np.sqrt(np.sum((f - r[k]) ** 2, axis=1))
        else:
            fn = np.linalg.norm(f, axis=1, keepdims=True)
            rn = np.linalg.norm(r, axis=1, keepdims=True)
            den = fn * rn.T
            cos = np.divide(f @ r.T, den, out=np.zeros_like(den), where=den > 0)
            out[:, l, :] = np.clip(cos, -1.0, 1.0)
    return out


def embed_tensors(features: Sequence["tf.Tensor"], reps: Sequence[np.ndarray],
                  metric: str = "cosine") -> "tf.Tensor":
    """:func:`embed` in TensorFlow, differentiable w.r.t. the features: L tensors ``[B, d_l]``
    (e.g. the outputs of :func:`models.taps.tap_model`) -> ``[B, L, K]``.

    The Euclidean distance is ``sqrt(max(s, 1e-12))`` so its gradient stays finite at 0.
    """
    if metric not in METRICS:
        raise ValueError("metric must be one of %s, got %r" % (METRICS, metric))
    _check_reps(features, reps)
    steps = []
    for f, r in zip(features, reps):
        f = tf.convert_to_tensor(f, tf.float32)
        r = tf.constant(np.asarray(r, np.float32))
        if metric == "l2":
            d2 = tf.reduce_sum(tf.square(f[:, None, :] - r[None, :, :]), axis=-1)
            steps.append(tf.sqrt(tf.maximum(d2, 1e-12)))
        else:
            fn = tf.sqrt(tf.reduce_sum(tf.square(f), axis=1, keepdims=True) + 1e-24)
            rn = tf.sqrt(tf.reduce_sum(tf.square(r), axis=1, keepdims=True) + 1e-24)
            steps.append(tf.matmul(f, r, transpose_b=True) / (fn * tf.transpose(rn)))
    return tf.stack(steps, axis=1)


# --------------------------------------------------------------------------- caching
def file_digest(path: str) -> str:
    """SHA-256 (hex) of a file's bytes, e.g. M's weights."""
    return fileio.file_digest(path, "sha256")


def representatives_fingerprint(weights_path: str, arch: str, kind: str,
                                extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What representatives depend on: M's weights (digest), its architecture and tap list,
    the representative kind, plus ``extra`` (e.g. the class set and the training data's own
    fingerprint)."""
    fp = {"weights_sha256": file_digest(weights_path), "arch": str(arch), "kind": str(kind),
          "taps": tap_names(arch)}
    if extra:
        fp["extra"] = dict(extra)
    return fp


def _normalised(meta: Mapping[str, Any]) -> Any:
    """``meta`` as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(meta, sort_keys=True))


def save_representatives(path: str, reps: Sequence[np.ndarray],
                         meta: Mapping[str, Any]) -> None:
    """Write the L representative arrays and their fingerprint ``meta`` (JSON-able) to an
    ``.npz`` file atomically (plain arrays and a JSON string: readable without pickle)."""
    arrays = {"rep_%03d" % i: np.asarray(r, np.float32) for i, r in enumerate(reps)}
    header = {"format": _FORMAT, "num_taps": len(arrays), "fingerprint": _normalised(meta)}
    arrays["header"] = np.array(json.dumps(header, sort_keys=True))
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy appends no ".npz" to the name
            np.savez(f, **arrays)


def load_representatives(path: str, expected_meta: Mapping[str, Any]
                         ) -> Optional[List[np.ndarray]]:
    """The representatives saved at ``path`` if their fingerprint equals ``expected_meta``.

    Returns None when the file does not exist or its fingerprint differs (recompute them);
    raises ValueError naming the file when it is damaged.
    """
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            if header.get("format") != _FORMAT:
                raise ValueError("unknown format %r" % header.get("format"))
            if header.get("fingerprint") != _normalised(expected_meta):
                return None
            reps = [np.asarray(z["rep_%03d" % i], np.float32)
                    for i in range(int(header["num_taps"]))]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError("representatives file %s is damaged (%s: %s); delete it to recompute"
                         % (path, type(e).__name__, e)) from None
    if not reps or any(r.ndim != 2 or len(r) != len(reps[0]) for r in reps):
        raise ValueError("representatives file %s is damaged (inconsistent arrays); delete it "
                         "to recompute" % path)
    return reps


# --------------------------------------------------------------------------- metrics, splits
def macro_auc(scores: np.ndarray, groups: np.ndarray) -> Tuple[float, Dict[int, float]]:
    """Macro-AUC of a detector (higher score = more suspicious).

    ``groups`` [N]: 0 = natural, 1..G = attack type.  For each attack type g present, the AUC
    of its adversarials against *all* natural samples; the macro-AUC is their plain mean.

    Returns ``(macro, {g: auc})``.  ValueError when there is no natural sample or no
    adversarial one.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if len(scores) != len(groups):
        raise ValueError("%d scores for %d groups" % (len(scores), len(groups)))
    natural = scores[groups == 0]
    types = [int(g) for g in np.unique(groups) if g != 0]
    if not len(natural) or not types:
        raise ValueError("macro_auc needs natural (group 0) and adversarial samples; groups "
                         "present: %s" % sorted(set(int(g) for g in np.unique(groups))))
    per = {}
    for g in types:
        adv = scores[groups == g]
        y = np.concatenate([np.zeros(len(natural)), np.ones(len(adv))])
        per[g] = float(roc_auc_score(y, np.concatenate([natural, adv])))
    return float(np.mean(list(per.values()))), per


def split_by_source(source_ids: Sequence, fraction: float = 0.2, seed: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, val)`` over the samples: a ``fraction`` of the distinct source
    images (at least one, and never all of them when there are two or more) goes to
    validation with every sample made from it, so no source is on both sides."""
    ids = np.asarray(source_ids).reshape(-1)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must lie in [0, 1], got %r" % fraction)
    unique = np.unique(ids)
    n_val = int(round(fraction * len(unique)))
    if fraction > 0 and len(unique) >= 2:
        n_val = min(max(n_val, 1), len(unique) - 1)
    chosen = np.random.default_rng(seed).permutation(len(unique))[:n_val]
    val = np.isin(ids, unique[chosen])
    return ~val, val


# --------------------------------------------------------------------------- detector
def build_detector(num_taps: int, num_classes: int, kind: str = "lstm", hidden: int = 100,
                   seed: int = 0) -> "keras.Model":
    """The detector: ``[B, L, K]`` trajectories -> one logit ``[B, 1]`` (1 = adversarial).

    ``"lstm"``: LSTM(hidden) over the L taps, its last state -> Dense(1).  ``"bilstm"``: the
    same bidirectional (both final states concatenated).  ``"mlp"``: the baseline on the
    flattened ``[L*K]``: Dense(hidden, relu) -> Dense(1).  A Normalization layer (one mean and
    variance per (tap, class) entry) comes first; :func:`train_detector` adapts it on the
    training set, so a saved model is self-contained.  Everything is differentiable w.r.t. the
    input.
    """
    if kind not in DETECTOR_KINDS:
        raise ValueError("kind must be one of %s, got %r" % (DETECTOR_KINDS, kind))
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((int(num_taps), int(num_classes)), name="trajectory")
    x = keras.layers.Normalization(axis=(1, 2), name="standardise")(inputs)
    if kind == "lstm":
        x = keras.layers.LSTM(hidden, name="lstm")(x)
    elif kind == "bilstm":
        x = keras.layers.Bidirectional(keras.layers.LSTM(hidden), name="bilstm")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    logit = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(inputs, logit, name="trajectory_%s" % kind)


def detector_scores(model: "keras.Model", x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """float64 [N] logits of ``model`` on trajectories ``[N, L, K]`` (higher = more suspicious)."""
    x = np.asarray(x, np.float32)
    out = [np.asarray(model(x[i:i + batch_size], training=False)).reshape(-1)
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0, np.float64)


def _check_groups(y: np.ndarray, groups: np.ndarray, what: str) -> None:
    if len(y) != len(groups):
        raise ValueError("%s: %d labels for %d groups" % (what, len(y), len(groups)))
    if np.any((groups > 0) != (y == 1)) or np.any((y != 0) & (y != 1)):
        raise ValueError("%s: labels must be 1 exactly where groups > 0 (adversarial) and 0 "
                         "where groups == 0 (natural)" % what)


def _balanced_epoch(group_members: List[np.ndarray], per_group: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices of one epoch: ``per_group`` draws from every group (each group's samples in a
    fresh random order, repeated when the group is smaller), shuffled together."""
    parts = []
    for members in group_members:
        repeats = int(math.ceil(per_group / len(members)))
        order = np.concatenate([rng.permutation(members) for _ in range(repeats)])
        parts.append(order[:per_group])
    return rng.permutation(np.concatenate(parts))


def _detector_step(model, optimizer, strategy):
    """``step(x [B, L, K], y [B, 1]) -> mean loss``: one Adam step of binary cross-entropy
    on the logit, on one device or split over ``strategy``'s replicas."""
    if strategy is None:
        bce = keras.losses.BinaryCrossentropy(from_logits=True)

        @tf.function(reduce_retracing=True)
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = bce(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return step
    from models.distribute import global_batch_step

    per_example = keras.losses.BinaryCrossentropy(from_logits=True,
                                                  reduction=keras.losses.Reduction.NONE)

    def replica_step(xb, yb, global_size):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_example(yb, model(xb, training=True))) / global_size
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return global_batch_step(strategy, replica_step)


def train_detector(x_train: np.ndarray, y_train: np.ndarray, groups_train: np.ndarray,
                   x_val: Optional[np.ndarray] = None, y_val: Optional[np.ndarray] = None,
                   groups_val: Optional[np.ndarray] = None, kind: str = "lstm",
                   epochs: int = DEFAULT_EPOCHS, batch_size: int = 128,
                   learning_rate: float = 1e-3, hidden: int = 100, seed: int = 0,
                   log: Optional[Callable[[str], None]] = None, strategy=None
                   ) -> Tuple["keras.Model", Dict[str, Any]]:
    """Train a detector on trajectories ``[N, L, K]``.

    Args:
        x_train, y_train, groups_train: trajectories, labels (1 = adversarial) and groups
            (0 = natural, 1..G = attack type; must agree with the labels).
        x_val, y_val, groups_val: validation set; the weights of the epoch with the best
            validation macro-AUC (:func:`macro_auc`) are kept.  Without it, the last epoch's.
        kind: ``"lstm"``, ``"bilstm"`` or ``"mlp"`` (:func:`build_detector`).
        epochs: passes; each draws ``ceil(N / (G + 1))`` samples from every group (natural and
            each attack type equally often, seeded), i.e. about N samples.
        batch_size, learning_rate: Adam's mini-batches and step size (binary cross-entropy on
            the logit).
        seed: weights' initialisation and the sampling order (same seed -> same model).
        log: called with one line per epoch.
        strategy: a ``tf.distribute`` strategy (:func:`models.distribute.make_strategy`) or
            None: the model and optimizer are made in its scope and each mini-batch is split
            over its replicas (:func:`models.distribute.global_batch_step`; the loss is the
            mean over the whole mini-batch, as on one device; a last mini-batch with fewer
            rows than replicas is skipped).  Every worker of a multi-worker strategy must
            call this with the same data.

    Returns:
        ``(model, history)``; history holds per-epoch ``loss``, ``val_macro_auc``,
        ``val_auc`` ({group: auc}), ``best_epoch`` (1-based), ``best_val_macro_auc`` and
        ``seconds``.
    """
    started = time.time()
    x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train).reshape(-1)
    groups_train = np.asarray(groups_train).reshape(-1)
    if x_train.ndim != 3 or len(x_train) != len(y_train):
        raise ValueError("x_train must be [N, L, K] with N = len(y_train), got %s and %d"
                         % (x_train.shape, len(y_train)))
    _check_groups(y_train, groups_train, "training set")
    has_val = x_val is not None
    if has_val:
        x_val = np.asarray(x_val, np.float32)
        y_val = np.asarray(y_val).reshape(-1)
        groups_val = np.asarray(groups_val).reshape(-1)
        if x_val.shape[1:] != x_train.shape[1:] or len(x_val) != len(y_val):
            raise ValueError("x_val must be [N, %d, %d] with N = len(y_val), got %s and %d"
                             % (x_train.shape[1], x_train.shape[2], x_val.shape, len(y_val)))
        _check_groups(y_val, groups_val, "validation set")
    present = np.unique(groups_train)
    if 0 not in present or len(present) < 2:
        raise ValueError("the training set needs natural (group 0) and adversarial samples")
    members = [np.flatnonzero(groups_train == g) for g in present]
    per_group = int(math.ceil(len(x_train) / len(members)))

    with (strategy.scope() if strategy is not None else contextlib.nullcontext()):
        model = build_detector(x_train.shape[1], x_train.shape[2], kind, hidden, seed)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        model.get_layer("standardise").adapt(x_train, batch_size=max(len(x_train), 1))
    step = _detector_step(model, optimizer, strategy)
    replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)

    rng = np.random.default_rng(seed)
    y_float = y_train.astype(np.float32)[:, None]
    history: Dict[str, Any] = {"loss": [], "val_macro_auc": [], "val_auc": [],
                               "best_epoch": 0, "best_val_macro_auc": None}
    best_weights, best = None, -np.inf
    for epoch in range(1, int(epochs) + 1):
        order = _balanced_epoch(members, per_group, rng)
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < replicas:      # too few rows to give every replica one: skipped
                continue
            losses.append(float(step(x_train[idx], y_float[idx])))
        history["loss"].append(float(np.mean(losses)))
        line = "epoch %d/%d loss %.4f" % (epoch, epochs, history["loss"][-1])
        if has_val:
            macro, per = macro_auc(detector_scores(model, x_val), groups_val)
            history["val_macro_auc"].append(macro)
            history["val_auc"].append(per)
            line += " val macro-AUC %.4f" % macro
            if macro > best:
                best, best_weights = macro, [w.copy() for w in model.get_weights()]
                history["best_epoch"], history["best_val_macro_auc"] = epoch, macro
        if log is not None:
            log(line)
    if has_val and best_weights is not None:
        model.set_weights(best_weights)
    elif not has_val:
        history["best_epoch"] = int(epochs)
    history["seconds"] = time.time() - started
    return model, history
