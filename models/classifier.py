"""The protected classifier M: Keras-applications backbones with a new head per class set.

Every model returned here maps float32 images ``[B, S, S, 3]`` with pixels in [0, 1] to
**logits** ``[B, C]``.  The scaling from [0, 1] to what the backbone expects (caffe BGR mean
subtraction, torch mean/std, or [-1, 1]) is a layer *inside* the model, so attacks and UnMask
only ever see [0, 1] images.

The registry ``ARCHITECTURES`` holds the paper's ResNet50 and DenseNet121, VGG16, and the
small MobileNetV2 that trains quickly on a CPU (the synthetic default).  ``weights=None`` is
the default (nothing is downloaded); ``weights="imagenet"`` is for users with network access
(as in the paper, whose M were ImageNet-pretrained with the dense head replaced).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, Optional

import numpy as np

import tfcompat
from models import DEFAULT_ARCH  # noqa: F401  (re-exported)

tf, keras = tfcompat.import_tf()

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class UnitToBackbone(keras.layers.Layer):
    """Maps pixels in [0, 1] (RGB) to a backbone's input convention.

    mode: ``"caffe"`` (RGB->BGR, x*255 minus the ImageNet BGR mean; ResNet50, VGG16),
    ``"torch"`` ((x - mean) / std; DenseNet121), ``"tf"`` (2x - 1; MobileNetV2).
    Shape-preserving: ``[B, H, W, 3] -> [B, H, W, 3]``.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "tf"):
            raise ValueError("mode must be caffe, torch or tf, got %r" % mode)
        self.mode = mode

    def call(self, x):
        if self.mode == "caffe":
            return x[..., ::-1] * 255.0 - tf.constant(_CAFFE_MEAN_BGR, x.dtype)
        if self.mode == "torch":
            return (x - tf.constant(_TORCH_MEAN, x.dtype)) / tf.constant(_TORCH_STD, x.dtype)
        return x * 2.0 - 1.0

    def get_config(self):
        return dict(super().get_config(), mode=self.mode)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered backbone: its constructor, its input convention, its smallest input."""
    name: str
    build: Callable
    mode: str
    min_size: int
    paper: bool


ARCHITECTURES: Dict[str, Architecture] = {
    a.name: a for a in (
        Architecture("resnet50", lambda **kw: keras.applications.ResNet50(**kw), "caffe", 32,
                     True),
        Architecture("densenet121", lambda **kw: keras.applications.DenseNet121(**kw), "torch",
                     32, True),
        Architecture("vgg16", lambda **kw: keras.applications.VGG16(**kw), "caffe", 32, False),
        Architecture("mobilenetv2", lambda **kw: keras.applications.MobileNetV2(**kw), "tf", 32,
                     False),
        Architecture("mobilenetv2_050",
                     lambda **kw: keras.applications.MobileNetV2(alpha=0.5, **kw), "tf", 32,
                     False),
    )
}


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by (case-insensitive) name; ValueError lists valid names."""
    key = str(name).strip().lower()
    if key not in ARCHITECTURES:
        raise ValueError("unknown architecture %r; valid: %s" % (name, ", ".join(ARCHITECTURES)))
    return ARCHITECTURES[key]


def _faster_batchnorm_statistics(model, momentum: float = 0.9) -> None:
    """Keras applications use BatchNorm momentum 0.99-0.999, tuned for ImageNet-length
    training.  Trained from scratch for a few hundred steps, the moving statistics then lag
    far behind the batch statistics and inference-mode accuracy stays at chance, so random-
    init backbones use ``momentum`` (0.9, PyTorch's equivalent of the original's default)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def build_classifier(arch: str, num_classes: int, input_size: int = 128,
                     weights: Optional[str] = None, dropout: float = 0.2, seed: int = 0
                     ) -> "keras.Model":
    """Build M: ``[B, input_size, input_size, 3]`` pixels in [0, 1] -> logits ``[B, C]``.

    Args:
        arch: a name of ``ARCHITECTURES``.
        num_classes: classes of the class set (the new dense head's width).
        weights: None (random init, default) or "imagenet" (downloads; needs network).
        dropout: dropout before the new head.
    """
    spec = get_architecture(arch)
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2, got %d" % num_classes)
    if input_size < spec.min_size:
        raise ValueError("input_size %d is below %s's minimum %d" % (input_size, spec.name,
                                                                      spec.min_size))
    if weights not in (None, "imagenet"):
        raise ValueError("weights must be None or 'imagenet', got %r (load a checkpoint with "
                         "model.load_weights instead)" % (weights,))
    # tf-keras draws the seeds of unseeded initializers from Python's `random`, so seeding
    # TensorFlow alone leaves the initial weights different in every process.
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = UnitToBackbone(spec.mode, name="preprocess")(inputs)
    try:
        backbone = spec.build(include_top=False, weights=weights,
                              input_shape=(input_size, input_size, 3), pooling="avg")
    except Exception as err:  # keras' get_file raises a bare Exception when a download fails
        if weights != "imagenet":
            raise
        raise ValueError("weights='imagenet' for %s: the ImageNet weights are neither in "
                         "~/.keras/models nor downloadable here (%s); copy the file there from "
                         "a machine with network access, or start from random weights "
                         "(weights=None, main.py --weights none)" % (spec.name, err)) from err
    if weights is None:
        _faster_batchnorm_statistics(backbone)
    x = backbone(x)
    # a tf.random.Generator (force_generator) rather than a stateful op: its state can be
    # saved with the optimizer's, so a resumed training run draws the same masks
    x = keras.layers.Dropout(dropout, seed=seed, force_generator=True, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="M_%s" % spec.name)


def load_classifier_file(path: str, num_classes: int, input_size: int) -> "keras.Model":
    """Your own trained classifier in M's place: a tf-keras model saved whole in one file
    (``model.save("m.h5")`` or ``"m.keras"``) that maps float32 ``[B, S, S, 3]`` pixels in
    [0, 1] (S = ``input_size``; a free size is fixed to it) to **logits** ``[B, num_classes]``
    whose columns are the class set's classes in their order.

    Everything the run relies on is checked here, before any work, and refused with a
    ValueError naming ``path`` and the fix: a missing file or a folder, a file tf-keras cannot
    read, another input shape or output width, outputs that are not finite, and outputs that
    are probabilities (every row in [0, 1] summing to 1 on random images: the attacks' losses
    and the detectors' margins need logits).  The model's own scaling of [0, 1] pixels must be
    inside it, as in :func:`build_classifier`.

    The checked model is kept while the file is unchanged (its size and modification time):
    the run's check before any work and its loading of M, and every work unit of a Ray
    worker, load it once.
    """
    if os.path.isdir(path):
        raise ValueError("%s is a folder (a SavedModel?): save your classifier whole in one "
                         "file, model.save('m.h5') or model.save('m.keras'), and pass that"
                         % path)
    if not os.path.isfile(path):
        raise ValueError("%s: no such file (a tf-keras model saved whole: model.save('m.h5'))"
                         % path)
    st = os.stat(path)
    return _checked_classifier(path, os.path.abspath(path), st.st_size, st.st_mtime_ns,
                               int(num_classes), int(input_size))


@functools.lru_cache(maxsize=4)
def _checked_classifier(path: str, _abspath: str, _size: int, _mtime_ns: int,
                        num_classes: int, input_size: int) -> "keras.Model":
    """:func:`load_classifier_file`'s loading and checks, once per file version (the key's
    underscored arguments; a refusal is raised, never kept)."""
    try:
        model = keras.models.load_model(path, compile=False,
                                        custom_objects={"UnitToBackbone": UnitToBackbone})
    except (OSError, ValueError, TypeError, KeyError, ImportError) as e:
        raise ValueError("%s cannot be read as a tf-keras model (%s: %s); save it with tf-keras "
                         "(TF_USE_LEGACY_KERAS=1) as one file, with any custom layer registered"
                         % (path, type(e).__name__, e)) from None
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("%s: M must be a keras.Model with one input and one output (images "
                         "-> logits)" % path)
    want = (input_size, input_size, 3)
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(s is not None and s != w for s, w in zip(shape, want)):
        raise ValueError("%s takes inputs [B, %s], the run's images are [B, %d, %d, 3]: give "
                         "--input-size to match your model (images are resized to it), or a "
                         "model of RGB images" % (path, ", ".join(map(str, shape)), input_size,
                                                 input_size))
    if shape != want:       # a free size: fixed to the run's, which UnMask's attack reads
        inputs = keras.Input(want, name="image")
        model = keras.Model(inputs, model(inputs), name=model.name)
    width = model.outputs[0].shape[-1]
    if len(model.outputs[0].shape) != 2 or width != num_classes:
        raise ValueError("%s gives outputs %s, the class set has %d classes: M must give one "
                         "logit per class, in the class set's order (python main.py "
                         "--describe-classsets lists them)"
                         % (path, list(model.outputs[0].shape), num_classes))
    probe = np.random.default_rng(0).random((4,) + want).astype(np.float32)
    out = np.asarray(model(probe, training=False), dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError("%s gives non-finite outputs on images in [0, 1]: is its input "
                         "scaling inside the model?" % path)
    if np.all((out >= 0) & (out <= 1)) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("%s gives probabilities (each row sums to 1); the attacks' losses and "
                         "the detectors' margins need logits: save the model without its final "
                         "softmax (activation=None on the last layer)" % path)
    return model
