"""Keras-2 HDF5 weight files of Mask R-CNN: write and load (by name, with ``exclude``).

Layout (as written by Keras 2 ``save_weights``): root attribute ``layer_names``; one group per
layer with attribute ``weight_names`` (e.g. ``conv1/kernel:0``) and one dataset per weight,
trainable weights first; batch norm as gamma, beta, moving_mean, moving_variance; a nested
model (``rpn_model``) is one layer whose weights are those of its sub-layers.  Files saved
with the whole model nest this under a ``model_weights`` group; both are read.

Refusals (a wrong file must not leave a randomly initialised K that is then evaluated):

* Loading by name reports how many layers matched (:class:`LoadedLayers`, also logged) and
  fails, before any weight is changed, when no layer matched (the file is not a K checkpoint,
  e.g. classifier M's ``best.h5``) or when a part of K -- backbone, FPN, RPN, heads -- got no
  weights although the caller did not exclude all of its layers (``exclude=HEAD_LAYERS`` for
  COCO weights leaves the class-specific heads out on purpose).  The one accepted partial file
  is a backbone-only file (no FPN, RPN or head layer at all: ImageNet ResNet weights for
  ``--weights imagenet``), which initialises the backbone and leaves the rest as built.
* A truncated or corrupted file raises :class:`DamagedWeightsFile` (a ValueError) naming it and
  the way to recover, instead of h5py's traceback.  Checkpoints written here carry HDF5
  Fletcher-32 checksums on every weight, so flipped bytes in a weight are found on reading.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import h5py
import numpy as np

from data.fileio import atomic_path

_LOG = logging.getLogger(__name__)

#: Parts of K by layer name (matterport's names); every weighted layer belongs to one.
PART_PATTERNS = (("backbone", r"conv1|bn_conv1|res\d.*|bn\d.*"), ("FPN", r"fpn_.*"),
                 ("RPN", r"rpn_.*"), ("heads", r"mrcnn_.*"))

RECOVERY_HINT = ("if it is a K checkpoint, delete it: `--weights last` then picks the previous "
                 "epoch's checkpoint of that run (`python main.py --model K --weights last`), "
                 "or train K anew with `python main.py --model K --k-retrain`; if it is a COCO "
                 "or ImageNet weight file, copy it again")


class DamagedWeightsFile(ValueError):
    """A weight file exists but cannot be read (truncated, corrupted, checksum mismatch)."""


class NotAKCheckpoint(ValueError):
    """A readable weight file whose layers do not fill K (no layer, or a whole part, missing)."""


def layer_part(name: str) -> str:
    """``"backbone"``, ``"FPN"``, ``"RPN"``, ``"heads"`` or ``"other"`` for a layer name."""
    for part, pattern in PART_PATTERNS:
        if re.fullmatch(pattern, name):
            return part
    return "other"


class LoadedLayers(list):
    """Names of the layers loaded (a list, as before), with the counts of the load.

    Attributes:
        path: the file; matched: layers loaded; candidates: weighted layers of the model that
        were not excluded; file_layers: layers in the file; unmatched: model layers (not
        excluded) that kept their weights; excluded: the caller's exclusions.
    """

    def __init__(self, names, path: str, candidates: int, file_layers: int,
                 unmatched: Sequence[str], excluded: Sequence[str]):
        super().__init__(names)
        self.path = path
        self.matched = len(self)
        self.candidates = candidates
        self.file_layers = file_layers
        self.unmatched = list(unmatched)
        self.excluded = sorted(excluded)

    def summary(self) -> str:
        text = ("loaded %d of %d weighted layers of K from %s (%d layers in the file)"
                % (self.matched, self.candidates, self.path, self.file_layers))
        if self.excluded:
            text += "; excluded: %s" % ", ".join(self.excluded)
        if self.unmatched:
            text += "; kept as built: %s" % _short_list(self.unmatched)
        return text


def _short_list(names: Sequence[str], n: int = 8) -> str:
    names = list(names)
    more = " ... (%d in all)" % len(names) if len(names) > n else ""
    return ", ".join(names[:n]) + more


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
                    value = np.asarray(values[pos])
                    # Fletcher-32 checksums (chunked storage) make corrupted weights an error
                    checksum = value.ndim > 0 and value.size > 0
                    group.create_dataset(name, data=value, fletcher32=checksum)
                    pos += 1


def _decode(values) -> List[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_h5_layers(path: str) -> List[Tuple[str, List[str], List[np.ndarray]]]:
    """``[(layer_name, weight_names, values)]`` of a Keras-2 weight file, file order.

    Raises:
        FileNotFoundError: no such file; DamagedWeightsFile: truncated or corrupted (named,
        with how to recover); ValueError: readable HDF5 but not a Keras-2 weight file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError("weight file not found: %s" % path)
    try:
        with h5py.File(path, "r") as f:
            root = f
            if "layer_names" not in root.attrs and "model_weights" in root:
                root = root["model_weights"]
            if "layer_names" not in root.attrs:
                raise ValueError("%s is not a Keras-2 HDF5 weight file (no 'layer_names' "
                                 "attribute); %s" % (path, RECOVERY_HINT))
            out = []
            for name in _decode(root.attrs["layer_names"]):
                group = root[name]
                wnames = _decode(group.attrs.get("weight_names", []))
                out.append((name, wnames, [np.asarray(group[w]) for w in wnames]))
    except (OSError, KeyError, RuntimeError) as err:
        # h5py: "truncated file", "file signature not found", checksum/filter failures,
        # dangling links of a cut file; FileNotFoundError was excluded above
        raise DamagedWeightsFile(
            "%s is damaged (truncated or corrupted HDF5 file: %s) and cannot be loaded; %s"
            % (path, str(err).strip("'\""), RECOVERY_HINT)) from None
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


def _check_parts(model_layers, loaded: Sequence[str], file_names: Sequence[str], path: str,
                 candidates: int) -> None:
    """Refuse a by-name load that left K unfit (see the module docstring).

    Raises:
        NotAKCheckpoint: nothing matched, or a part of K (not excluded) got no weights.
    """
    if not loaded:
        raise NotAKCheckpoint(
            "%s is not a model K (Mask R-CNN) weight file: 0 of its %d layers match any of "
            "K's %d weighted layers by name (is it classifier M's checkpoint?); nothing was "
            "loaded. Pass a K checkpoint (logs/model_k/<run>/mask_rcnn_<name>_<epoch>.h5, "
            "--weights last) or train K with `python main.py --model K`"
            % (path, len(file_names), candidates))
    done = set(loaded)
    by_part: Dict[str, List[str]] = {}
    for layer in model_layers:
        by_part.setdefault(layer_part(layer.name), []).append(layer.name)
    missing = [part for part, names in by_part.items()
               if part != "other" and not done.intersection(names)]
    if not missing:
        return
    file_parts = {layer_part(n) for n in file_names}
    backbone_only = "backbone" in file_parts and not file_parts & {"FPN", "RPN", "heads"}
    if backbone_only and "backbone" not in missing:
        return  # ImageNet-style backbone initialisation (--weights imagenet)
    raise NotAKCheckpoint(
        "%s does not fill model K: %d of %d layers matched by name, but no weights for its "
        "%s (%s); nothing was loaded. Use a complete K checkpoint of the same configuration "
        "(--k-config), or exclude those layers on purpose (exclude=[...], as for the COCO "
        "heads); %s"
        % (path, len(loaded), candidates, " and ".join(missing),
           "; ".join("%s: %s" % (p, _short_list(by_part[p], 4)) for p in missing),
           RECOVERY_HINT))


def load_weights_h5(keras_model, assign: Callable[[list], None], path: str,
                    by_name: bool = False, exclude: Iterable[str] = None) -> List[str]:
    """Load a Keras-2 HDF5 weight file into ``keras_model``.

    Args:
        assign: sets variables from ``[(variable, value)]`` (session run of assign ops).
        by_name: match layers by name (layers absent from the model or file are skipped, but
            see the refusals below); otherwise pair the weighted layers in order.
        exclude: layer names not to load (e.g. the heads whose class count differs).
    Returns:
        :class:`LoadedLayers`: the names of the layers loaded, with ``matched`` /
        ``candidates`` counts and ``summary()`` (also logged at INFO level).
    Raises:
        FileNotFoundError: missing file; DamagedWeightsFile: truncated or corrupted file;
        NotAKCheckpoint: by name, no layer or a whole part of K matched; ValueError:
        mismatching layer (named in the message).  The model is unchanged when it raises.
    """
    exclude = set(exclude or [])
    all_file_layers = read_h5_layers(path)
    file_layers = [entry for entry in all_file_layers if entry[0] not in exclude]
    model_layers = [layer for layer in weighted_layers(keras_model) if layer.name not in exclude]
    pairs, loaded = [], []
    if by_name:
        index = {layer.name: layer for layer in model_layers}
        for name, wnames, values in file_layers:
            if name in index and values:
                pairs += _match_layer(index[name], wnames, values, path)
                loaded.append(name)
        _check_parts(model_layers, loaded, [e[0] for e in all_file_layers], path,
                     len(model_layers))
    else:
        file_layers = [entry for entry in file_layers if entry[2]]
        if len(file_layers) != len(model_layers):
            common = {e[0] for e in file_layers} & {layer.name for layer in model_layers}
            hint = ("load with by_name=True" if common else
                    "no layer name is shared with K: it is not a model K checkpoint")
            raise ValueError("%s has %d weighted layers but the model has %d; %s"
                             % (path, len(file_layers), len(model_layers), hint))
        if sorted(e[0] for e in file_layers) == sorted(layer.name for layer in model_layers):
            # same layers, possibly in another topological order (training vs inference)
            order = {e[0]: i for i, e in enumerate(file_layers)}
            model_layers = sorted(model_layers, key=lambda layer: order[layer.name])
        for layer, (name, wnames, values) in zip(model_layers, file_layers):
            pairs += _match_layer(layer, wnames, values, path)
            loaded.append(layer.name)
    assign(pairs)
    done = set(loaded)
    report = LoadedLayers(loaded, path, len(model_layers), len(all_file_layers),
                          [layer.name for layer in model_layers if layer.name not in done],
                          exclude)
    _LOG.info("%s", report.summary())
    return report
