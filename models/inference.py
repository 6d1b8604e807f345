"""M's forward pass in inference mode as one graph (no TensorFlow import of its own).

A tf-keras model called eagerly runs layer by layer from Python: MobileNetV2 (width 0.5,
96 px) took 1.33 s for 300 images in batches of 32 eagerly and 0.27 s through a
``tf.function``, with the same logits up to 4e-17 (2-core CPU).  M's predictions -- the
validation accuracy of every training epoch, the bench's labels, UnMask's ``predict`` -- go
through :func:`inference_fn`.

This module imports TensorFlow only when it is already loaded (a tf-keras model exists), so
:mod:`defense.unmask` stays usable with any callable and without TensorFlow.
"""
from __future__ import annotations

import sys
import weakref
from typing import Callable

import numpy as np

_INFERENCE = weakref.WeakKeyDictionary()


def inference_fn(model: Callable) -> Callable:
    """``model``'s forward pass ``x [B, ...] -> logits`` in inference mode: for a tf-keras
    model with one input, a ``tf.function`` with a free batch dimension (traced once per
    model, kept while the model lives); any other callable (a subclassed or unbuilt model
    too) as it is."""
    keras = sys.modules.get("tf_keras")
    inputs = getattr(model, "inputs", None)   # None: a subclassed or not yet built model
    if keras is None or not isinstance(model, keras.Model) or not inputs or len(inputs) != 1:
        return model
    fn = _INFERENCE.get(model)
    if fn is None:
        import tensorflow as tf   # loaded already: tf_keras imports it

        shape = tuple(model.inputs[0].shape[1:])
        spec = tf.TensorSpec((None,) + shape, model.inputs[0].dtype)
        ref = weakref.ref(model)
        graph = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])

        def fn(x):
            check_input_shape(x, shape)
            return graph(x)
        fn.experimental_get_tracing_count = graph.experimental_get_tracing_count
        _INFERENCE[model] = fn
    return fn


def check_input_shape(images, shape, name: str = "images") -> None:
    """Refuse a batch whose per-image shape is not ``shape`` (the model's input, ``None`` for
    a free size): ValueError with both shapes and the fix, instead of an error from inside
    the compiled graph."""
    got = tuple(np.shape(images))[1:]
    want = tuple(shape)
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        raise ValueError("%s of shape [B, %s] do not fit the model, whose input is [B, %s]: "
                         "resize them to the model's input size (%s)"
                         % (name, ", ".join(str(g) for g in got),
                            ", ".join("?" if w is None else str(w) for w in want),
                            "x".join("?" if w is None else str(w) for w in want[:2])))
