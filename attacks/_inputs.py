"""Validation of the user inputs of the runner -- images (the project's one rule for them,
:func:`check_images`), labels, batch size, seed.

All checks raise ValueError naming the argument and what is expected; nothing here imports
TensorFlow.
"""
import numbers

import numpy as np

# The project's one rule for images lives with the data (no TensorFlow there): the defenses
# check images without importing the attacks' package.
from data.images import RANGE_TOLERANCE, check_images  # noqa: F401


def check_model_input(model_fn, images_shape):
    """Refuse images whose size is not the input size ``model_fn`` declares (a Keras model's
    ``inputs[0]``; other callables declare none and are not checked), before the attack is
    traced.

    Raises:
        ValueError: both shapes and the fix.
    """
    inputs = getattr(model_fn, "inputs", None)
    if not inputs or len(inputs) != 1:
        return
    want = tuple(inputs[0].shape[1:])
    got = tuple(images_shape[1:])
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        size = "x".join("?" if w is None else str(w) for w in want[:2])
        raise ValueError("images of shape [N, %s] do not fit the model, whose input is "
                         "[B, %s]: resize them to the model's input size (%s)"
                         % (", ".join(str(g) for g in got),
                            ", ".join("?" if w is None else str(w) for w in want), size))


def check_labels(labels, num_images):
    """Return ``labels`` as int64 ``[N]``; None passes through (the runner then uses predictions).

    Raises:
        ValueError: not 1-D, length different from ``num_images``, non-integer or negative.
    """
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError("labels must be a 1-D array of class indices [N], got shape %s "
                         "(one-hot labels: pass labels.argmax(1))" % (arr.shape,))
    if arr.shape[0] != num_images:
        raise ValueError("labels has length %d but images has %d images; they must match"
                         % (arr.shape[0], num_images))
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("labels must be integer class indices, got dtype %s" % arr.dtype)
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError("labels must be >= 0, got minimum %d" % arr.min())
    return arr


def check_label_range(labels, num_classes):
    """Raise ValueError if a label is not a valid class index of a ``num_classes``-way model."""
    if labels is not None and labels.size and labels.max() >= num_classes:
        raise ValueError("labels must be < num_classes = %d (the model's logit count), got "
                         "maximum %d" % (num_classes, labels.max()))


def check_positive_int(value, arg):
    """Return ``value`` if it is an integer >= 1, else raise ValueError naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError("%s must be an integer >= 1, got %r" % (arg, value))
    return int(value)


def check_seed(seed, name="seed"):
    """Return ``seed`` (or another argument ``name``) as int if it is a non-negative integer,
    else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError("%s must be a non-negative integer, got %r" % (name, seed))
    return int(seed)


def check_perturbation(v, norm, eps, image_shape=None):
    """Return a universal perturbation ``v`` as C-contiguous float32 ``[H, W, 3]``.

    Args:
        v: array ``[H, W, 3]`` in ``[0, 1]`` pixel units (not 0-255).
        norm: ``'linf'`` or ``'l2'``.
        eps: ball radius in ``[0, 1]`` units.
        image_shape: None, or ``(H, W)`` the perturbation must match.

    Raises:
        ValueError: wrong rank or channel count, size different from ``image_shape``,
            non-finite values, or ``v`` outside the ``eps``-ball (the message gives its norm).
    """
    arr = np.asarray(v)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError("a universal perturbation must have shape [H, W, 3] (one image, no "
                         "batch axis), got shape %s" % (arr.shape,))
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("a universal perturbation must be a numeric array, got dtype %s"
                         % arr.dtype)
    if image_shape is not None and tuple(arr.shape[:2]) != tuple(image_shape):
        raise ValueError("the universal perturbation has size %dx%d but the images are %dx%d; "
                         "fit one for this image size" % (arr.shape[:2] + tuple(image_shape)))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("the universal perturbation contains NaN or infinite values")
    flat = arr.astype(np.float64).ravel()
    size = float(np.max(np.abs(flat))) if norm == "linf" else float(np.linalg.norm(flat))
    if size > eps * (1.0 + 1e-5) + 1e-7:
        raise ValueError("the universal perturbation has %s norm %.6g = %.4g on the 0-255 scale, "
                         "outside the attack's ball eps = %.4g (0-255 scale); v must be in [0, 1] "
                         "pixel units and within eps" % (norm, size, size * 255.0, eps * 255.0))
    return arr
