"""Keras-2 HDF5 weight files of Mask R-CNN: write and load (by name, with ``exclude``).

Layout (as written by Keras 2 ``save_weights``): root attribute ``layer_names``; one group per
layer with attribute ``weight_names`` (e.g. ``conv1/kernel:0``) and one dataset per weight,
trainable weights first; batch norm as gamma, beta, moving_mean, moving_variance; a nested
model (``rpn_model``) is one layer whose weights are those of its sub-layers.  Files saved
with the whole model nest this under a ``model_weights`` group; both are read.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Sequence, Tuple

import h5py
import numpy as np

from data.fileio import atomic_path


def _short_name(variable) -> str:
    """``kernel:0`` from a variable name such as ``rpn_model/rpn_conv_shared/kernel:0``."""
    name = variable.name.split("/")[-1]
    return name if ":" in name else name + ":0"


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and layer.__class__.__name__ in (
        "Functional", "Model", "Sequential")


def layer_weight_names(layer) -> List[str]:
    """Keras-2 style names ``<layer>/<weight>:0`` of a layer's weights, in ``layer.weights``
    order; for a nested model the sub-layer names are used."""
    owner = {}
    if _is_model(layer):
        for sub in layer.layers:
            for w in sub.weights:
                owner[id(w)] = sub.name
    return ["%s/%s" % (owner.get(id(w), layer.name), _short_name(w)) for w in layer.weights]


def weighted_layers(keras_model) -> list:
    """Top-level layers of ``keras_model`` that own weights (nested models count as one)."""
    return [layer for layer in keras_model.layers if layer.weights]


def save_weights_h5(keras_model, read_values: Callable[[list], list], path: str) -> None:
    """Write the model's weights to ``path`` in the Keras-2 HDF5 layout, atomically.

    Args:
        read_values: maps a list of variables to their current NumPy values (session run).
    """
    layers = weighted_layers(keras_model)
    values = read_values([w for layer in layers for w in layer.weights])
    with atomic_path(path, ".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in layers])
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.21.0"
            pos = 0
            for layer in layers:
                names = layer_weight_names(layer)
                group = f.create_group(layer.name)
                group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                for name in names:
                    group.create_dataset(name, data=values[pos])
                    pos += 1


def _decode(values) -> List[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_h5_layers(path: str) -> List[Tuple[str, List[str], List[np.ndarray]]]:
    """``[(layer_name, weight_names, values)]`` of a Keras-2 weight file, file order."""
    if not os.path.isfile(path):
        raise FileNotFoundError("weight file not found: %s" % path)
    with h5py.File(path, "r") as f:
        root = f
        if "layer_names" not in root.attrs and "model_weights" in root:
            root = root["model_weights"]
        if "layer_names" not in root.attrs:
            raise ValueError("%s is not a Keras-2 HDF5 weight file (no 'layer_names' attribute)"
                             % path)
        out = []
        for name in _decode(root.attrs["layer_names"]):
            group = root[name]
            wnames = _decode(group.attrs.get("weight_names", []))
            out.append((name, wnames, [np.asarray(group[w]) for w in wnames]))
    return out


def _match_layer(layer, file_names: Sequence[str], file_values: Sequence[np.ndarray],
                 path: str) -> list:
    """Pair a layer's variables with file values (by sub-layer/weight name, else by order).

    Raises:
        ValueError: naming the layer when counts or shapes differ.
    """
    variables = layer.weights
    if len(variables) != len(file_values):
        raise ValueError("layer '%s': %d weights in %s but %d in the model; exclude it with "
                         "exclude=['%s'] or use a matching configuration"
                         % (layer.name, len(file_values), path, len(variables), layer.name))
    model_keys = layer_weight_names(layer)
    file_keys = ["/".join(n.split("/")[-2:]) for n in file_names]
    if sorted(model_keys) == sorted(file_keys) and len(set(file_keys)) == len(file_keys):
        lookup = dict(zip(file_keys, file_values))
        values = [lookup[k] for k in model_keys]
    else:
        values = list(file_values)
    pairs = []
    for var, key, value in zip(variables, model_keys, values):
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError("layer '%s': weight '%s' has shape %s in %s but %s in the model; "
                             "exclude it with exclude=['%s'] or use a matching configuration"
                             % (layer.name, key, tuple(value.shape), path, tuple(var.shape),
                                layer.name))
        pairs.append((var, value))
    return pairs


def load_weights_h5(keras_model, assign: Callable[[list], None], path: str,
                    by_name: bool = False, exclude: Iterable[str] = None) -> List[str]:
    """Load a Keras-2 HDF5 weight file into ``keras_model``.

    Args:
        assign: sets variables from ``[(variable, value)]`` (session run of assign ops).
        by_name: match layers by name (layers absent from the model or file are skipped);
            otherwise pair the weighted layers in order.
        exclude: layer names not to load (e.g. the heads whose class count differs).
    Returns:
        Names of the layers loaded.
    Raises:
        FileNotFoundError: missing file; ValueError: mismatching layer (named in the message).
    """
    exclude = set(exclude or [])
    file_layers = [entry for entry in read_h5_layers(path) if entry[0] not in exclude]
    model_layers = [layer for layer in weighted_layers(keras_model) if layer.name not in exclude]
    pairs, loaded = [], []
    if by_name:
        index = {layer.name: layer for layer in model_layers}
        for name, wnames, values in file_layers:
            if name in index and values:
                pairs += _match_layer(index[name], wnames, values, path)
                loaded.append(name)
    else:
        file_layers = [entry for entry in file_layers if entry[2]]
        if len(file_layers) != len(model_layers):
            raise ValueError("%s has %d weighted layers but the model has %d; load with "
                             "by_name=True" % (path, len(file_layers), len(model_layers)))
        if sorted(e[0] for e in file_layers) == sorted(layer.name for layer in model_layers):
            # same layers, possibly in another topological order (training vs inference)
            order = {e[0]: i for i, e in enumerate(file_layers)}
            model_layers = sorted(model_layers, key=lambda layer: order[layer.name])
        for layer, (name, wnames, values) in zip(model_layers, file_layers):
            pairs += _match_layer(layer, wnames, values, path)
            loaded.append(layer.name)
    assign(pairs)
    return loaded
