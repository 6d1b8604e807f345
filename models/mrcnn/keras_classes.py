"""Keeping eager tf-keras models usable after K's TF1-style graph is built.

tf-keras chooses a layer's base class when the layer is *constructed*: in eager mode the v2
``Layer``/``Model``, inside a ``tf.compat.v1`` graph the v1 ones.  It does so by rewriting the
``__bases__`` of the layer's class in place (``version_utils.swap_class``), for the whole
process.  Building K in its own ``tf.Graph`` therefore turns ``Conv2D``, ``Dense``,
``Functional`` ... into v1 classes, and an eager model built before (the classifier M) then
fails with "Your Layer or Model is in an invalid state".

``keras_graph_scope(graph)`` puts every version-selectable class on its v1 base while K's
graph is built or extended (the v1 classes are what K's layers were made with: e.g. only the
v1 ``Layer.updates`` returns the BatchNorm moving-average updates a train op must run; the v2
one returns ``[]``), and back on its v2 base when the block ends, so eager models keep working.
K runs through session callables, which do not depend on the Python classes' bases.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Set

import tfcompat  # noqa: F401
from tf_keras.src.engine import base_layer, base_layer_v1, training, training_v1
from tf_keras.src.utils import version_utils


def _all_subclasses(*roots) -> Set[type]:
    seen, stack = set(), list(roots)
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
    return seen


def _swap_all(use_v2: bool) -> int:
    """Put every version-selectable tf-keras class on its v2 (or v1) base; returns how many
    classes were on the other base."""
    swapped = 0
    old_layer, old_model = ((base_layer_v1.Layer, training_v1.Model) if use_v2
                            else (base_layer.Layer, training.Model))
    for cls in _all_subclasses(base_layer.Layer, base_layer_v1.Layer):
        if cls in (base_layer_v1.Layer, training_v1.Model):
            continue
        if issubclass(cls, version_utils.ModelVersionSelector) and old_model in cls.__mro__:
            version_utils.swap_class(cls, training.Model, training_v1.Model, use_v2)
            swapped += 1
        if issubclass(cls, version_utils.LayerVersionSelector) and \
                (old_layer in cls.__mro__ if use_v2 else base_layer_v1.Layer not in cls.__mro__):
            version_utils.swap_class(cls, base_layer.Layer, base_layer_v1.Layer, use_v2)
            swapped += 1
    return swapped


def restore_v2_keras_classes() -> int:
    """Swap every version-selectable tf-keras class back to its v2 base; returns how many
    classes were still on a v1 base."""
    return _swap_all(True)


@contextlib.contextmanager
def keras_graph_scope(graph) -> Iterator[None]:
    """``with graph.as_default()`` with tf-keras' v1 classes, then the v2 classes again (see
    the module doc)."""
    _swap_all(False)
    try:
        with graph.as_default():
            yield
    finally:
        _swap_all(True)
