"""Run by tests/models/test_distribute.py in a fresh process (TensorFlow's devices and cluster are
fixed when its runtime starts): train M's recipe on two separable classes with a strategy
and the trajectory detector (an LSTM on two separable groups of trajectories) with a strategy,
and write the validation accuracy, the detector's validation macro-AUC and the replica count
as JSON.

    python tests/_distribute_worker.py KIND CHECKPOINT_DIR OUT_JSON
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import tfcompat  # noqa: E402

tf, keras = tfcompat.import_tf()


def separable(n=96, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.uniform(0, 0.4, (n, size, size, 3)) + 0.5 * y[:, None, None, None]) * 255
    return x.astype(np.uint8), y.astype(np.int64)


def small_model():
    """A small M: convolution, batch norm, dropout (a random generator, as M's head) and
    logits."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, name="conv")(inp)
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.ReLU()(h))
    h = keras.layers.Dropout(0.2, seed=0, force_generator=True, name="head_dropout")(h)
    return keras.Model(inp, keras.layers.Dense(2, name="logits")(h))


def trajectories(n, seed):
    """``n`` trajectories [n, 4 taps, 3 classes]: natural (group 0) and shifted adversarial
    ones (group 1) that overlap, so the AUC is high but not 1."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4, 3)) + 1.2 * groups[:, None, None] * np.linspace(0, 1, 4)[:, None]
    return x.astype(np.float32), groups.astype(np.int64), groups.astype(np.int64)


def train_trajectory_detector(strategy):
    from defense.trajectory import train_detector

    return train_detector(*trajectories(301, 2), *trajectories(120, 3), kind="lstm",
                          epochs=4, batch_size=32, learning_rate=1e-2, hidden=8, seed=0,
                          strategy=strategy)


def main(kind, checkpoint_dir, out):
    from models import distribute
    from models.train_classifier import TrainConfig, accuracy, train_classifier

    if kind == "mirrored":
        distribute.split_cpu(2)
    strategy = distribute.make_strategy(kind)
    x, y = separable()
    xv, yv = separable(48, seed=1)
    scope = strategy.scope() if strategy is not None else tf.name_scope("single")
    with scope:
        model = small_model()
    cfg = TrainConfig(epochs=6, batch_size=16, learning_rate=0.05)
    state = train_classifier(model, x, y, xv, yv, checkpoint_dir, cfg, progress=False,
                             log=lambda s: None, strategy=strategy)
    detector, history = train_trajectory_detector(strategy)
    record = {"replicas": distribute.num_replicas(strategy), "chief":
              distribute.is_chief(strategy), "val_acc": accuracy(model, xv, yv),
              "best_val_acc": state["best_val_acc"],
              "detector_val_auc": history["best_val_macro_auc"],
              "detector_weights": float(sum(np.abs(w).sum() for w in detector.get_weights()))}
    with open(out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
