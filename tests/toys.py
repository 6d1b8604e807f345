"""Small, seeded, quickly trained tasks and tiny data sets and models shared by the tests (their
fixtures are in conftest.py)."""
import os

import numpy as np

import tfcompat

tf, keras = tfcompat.import_tf()

PATTERN_CLASSES = 10
PATTERN_SIZE = 16
CHANNEL_CLASSES = 3
CHANNEL_SIZE = 16


def channel_images(rng, count):
    """Images float32 [count, 16, 16, 3] in [0, 1] whose class (0, 1, 2) brightens one colour
    channel, and int64 labels [count]."""
    labels = rng.integers(0, CHANNEL_CLASSES, count)
    images = 0.45 + rng.normal(0.0, 0.1, (count, CHANNEL_SIZE, CHANNEL_SIZE, 3))
    images[np.arange(count), :, :, labels] += 0.15
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)


def channel_task():
    """The 3-class colour toy and a tiny conv net trained on it (>= 90% test accuracy):
    ``(model, test images [32, 16, 16, 3], test labels [32])``."""
    rng = np.random.default_rng(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    x_train, y_train = channel_images(rng, 768)
    x_test, y_test = channel_images(rng, 32)
    model = keras.Sequential([
        keras.layers.Conv2D(8, 3, activation="relu",
                            input_shape=(CHANNEL_SIZE, CHANNEL_SIZE, 3)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CHANNEL_CLASSES),
    ])
    _fit_toy(model, 0.02, x_train, y_train, x_test, y_test)
    return model, x_test, y_test


def _fit_toy(model, learning_rate, x_train, y_train, x_test, y_test):
    """Adam on the logits' cross-entropy, 8 epochs of batches of 32; refuses a toy model
    below 90% test accuracy (the tests built on it would mean nothing)."""
    model.compile(keras.optimizers.Adam(learning_rate=learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    accuracy = np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test)
    assert accuracy >= 0.9, "toy model failed to train (accuracy %.2f)" % accuracy


def _pattern_images(rng, patterns, count):
    labels = rng.integers(0, PATTERN_CLASSES, count)
    images = (0.5 + rng.normal(0.0, 0.1, (count, PATTERN_SIZE, PATTERN_SIZE, 3))
              + 0.05 * patterns[labels])
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)


def pattern_task(n_test: int, n_train: int = 768, seed: int = 0):
    """10 classes, each a faint random +-1 pattern over all pixels of 16x16 noise images, and
    a small conv net trained on them (>= 90% test accuracy).  A universal or targeted attack
    has room here (9 other classes) that the 3-class channel toy of test_attacks lacks.

    Returns ``(model, x_train [n_train], x_test [n_test], y_test [n_test])``."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    patterns = rng.choice([-1.0, 1.0], (PATTERN_CLASSES, PATTERN_SIZE, PATTERN_SIZE, 3))
    x_train, y_train = _pattern_images(rng, patterns, n_train)
    x_test, y_test = _pattern_images(rng, patterns, n_test)
    model = keras.Sequential([
        keras.layers.Conv2D(8, 3, activation="relu",
                            input_shape=(PATTERN_SIZE, PATTERN_SIZE, 3)),
        keras.layers.Flatten(),
        keras.layers.Dense(PATTERN_CLASSES),
    ])
    _fit_toy(model, 0.003, x_train, y_train, x_test, y_test)
    return model, x_train, x_test, y_test


def tiny_unmask(path: str, seed: int = 0, per_class=(12, 4, 4)) -> str:
    """A tiny synthetic UnMask data set at ``path`` (64-px images, a handful of K images,
    ``per_class`` train/val/test images per class of M); returns ``path``."""
    from data.synthetic import SyntheticConfig, generate_dataset
    generate_dataset(path, seed=seed, config=SyntheticConfig(
        image_size=64, k_images=(2, 1, 1), m_images_per_class=tuple(per_class)), workers=1,
        log=lambda s: None)
    return path


def seed_weights(model, seed: int) -> None:
    """Overwrite every weight from ``seed`` (Glorot-uniform kernels, zero biases, identity
    batch norms) so the random K is the same in every process.  The RPN's box deltas are
    scaled down so the proposals stay near their anchors (a random RPN otherwise stretches
    most boxes to the image border)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for var in model.keras_model.weights:
        shape, name = tuple(var.shape), var.name
        if "gamma" in name or "moving_variance" in name:
            value = np.ones(shape)
        elif len(shape) >= 2:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
            value = rng.uniform(-limit, limit, shape)
            if "rpn_bbox_pred" in name:
                value *= 0.05
        else:
            value = np.zeros(shape)
        pairs.append((var, value.astype(np.float32)))
    model.assign_variables(pairs)


def random_k_checkpoint(path: str, seed: int = 7) -> str:
    """A K of the synthetic parts configuration with seeded random weights saved at ``path``
    (Keras-2 HDF5, loadable by name): the real graph and session, no training."""
    from mrcnn_config import get_config
    from models.mrcnn.model import MaskRCNN

    model = MaskRCNN("inference", get_config("synthetic", IMAGES_PER_GPU=1),
                     os.path.dirname(path))
    try:
        seed_weights(model, seed)
        model.save_weights(path)
    finally:
        model.close()
    return path
