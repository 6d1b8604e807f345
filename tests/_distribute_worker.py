"""Run by tests/test_distribute.py in a fresh process (TensorFlow's devices and cluster are
fixed when its runtime starts): train M's recipe on two separable classes with a strategy
and write the validation accuracy and replica count as JSON.

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


def main(kind, checkpoint_dir, out):
    from models import distribute
    from models.classifier import build_classifier
    from models.train_classifier import TrainConfig, accuracy, train_classifier

    if kind == "mirrored":
        distribute.split_cpu(2)
    strategy = distribute.make_strategy(kind)
    x, y = separable()
    xv, yv = separable(48, seed=1)
    scope = strategy.scope() if strategy is not None else tf.name_scope("single")
    with scope:
        model = build_classifier("mobilenetv2_050", 2, 32, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=0.01)
    state = train_classifier(model, x, y, xv, yv, checkpoint_dir, cfg, progress=False,
                             log=lambda s: None, strategy=strategy)
    record = {"replicas": distribute.num_replicas(strategy), "chief":
              distribute.is_chief(strategy), "val_acc": accuracy(model, xv, yv),
              "best_val_acc": state["best_val_acc"]}
    with open(out, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
