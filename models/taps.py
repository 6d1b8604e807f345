"""Taps of M for the trajectory detector (SPEC §6): one feature vector per block of M's backbone.

A *tap* is the output of one block of the nested Keras-applications backbone inside M, reduced
by global average pooling to a vector ``[B, d_l]``.  The taps of an architecture are listed in
:data:`TAPS` by layer name, ordered shallow -> deep; every architecture's trajectory ends with
one more tap, **the pooled features** (the backbone's global-average-pooled output, the vector
that feeds M's dropout + dense head).  ``L = len(TAPS[arch].layers) + 1``.

Choices (per architecture):

* **resnet50** -- the output of each bottleneck block (``conv{s}_block{i}_out``, the ReLU after
  the residual add): 3 + 4 + 6 + 3 = 16 blocks.  The last one, ``conv5_block3_out``, feeds the
  global pooling *directly*, so its pooled tap is bit-for-bit the pooled features; it is listed
  once, as the final ``pooled`` tap, and not twice.  L = 15 + 1 = 16.
* **densenet121** -- the end of each of the 4 dense blocks (the last concatenation of the block,
  ``conv2_block6_concat``, ``conv3_block12_concat``, ``conv4_block24_concat``,
  ``conv5_block16_concat``) and, between them, the output of each transition layer
  (``pool{2,3,4}_pool``: BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling).
  The transitions are included because they are the learned compression of what one dense
  block passes on to the next (the analogue of a ResNet stage boundary); without them
  DenseNet121's trajectory would have only 5 steps.  The final ``conv5_block16_concat`` is
  followed by BN + ReLU before the pooling, so it differs from the pooled features.  L = 8.
* **vgg16** -- ``block{1..4}_pool``; ``block5_pool`` feeds the global pooling directly, so its
  pooled tap *is* the pooled features (listed once, last).  L = 4 + 1 = 5.
* **mobilenetv2**, **mobilenetv2_050** -- the output of each of the 17 inverted-residual blocks:
  block 0 is ``expanded_conv_project_BN``; block i (1..16) is ``block_{i}_add`` when the block
  has a skip connection (stride 1 and equal channels: blocks 2, 4, 5, 7, 8, 9, 11, 12, 14, 15)
  and ``block_{i}_project_BN`` otherwise -- in both cases the tensor the next block consumes.
  The 1x1 ``Conv_1`` (to 1280 channels) + BN + ReLU lies between the last block and the
  pooling, so the pooled features are a distinct 18th tap.  L = 17 + 1 = 18.

:func:`tap_model` builds a ``keras.Model`` from M's own layers (weights shared, nothing copied)
mapping M's input (float ``[B, H, W, 3]`` in [0, 1]) to the list of L tap tensors, optionally
followed by M's logits computed from the same forward pass (``with_logits=True``), which is
what an adaptive attack on the detector needs.  It does not add nodes to M's layers, so
``layer.input`` / ``layer.output`` of M's layers stay unambiguous.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

import tfcompat
from models.classifier import ARCHITECTURES

tf, keras = tfcompat.import_tf()

#: Name of the final tap (the backbone's pooled output) in :func:`tap_names`.
POOLED = "pooled"


@dataclasses.dataclass(frozen=True)
class TapSpec:
    """The tapped layers of one architecture's backbone.

    Attributes:
        layers: names of backbone layers, shallow -> deep, each a 4-D conv map ``[B, h, w, c]``
            reduced by global average pooling; the pooled features follow as the last tap.
        note: why these layers (one line, for reports).
    """
    layers: Tuple[str, ...]
    note: str

    @property
    def num_taps(self) -> int:
        """L, the number of taps including the final pooled features."""
        return len(self.layers) + 1


_RESNET50_BLOCKS = tuple("conv%d_block%d_out" % (stage, block)
                         for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3))
                         for block in range(1, blocks + 1))
_MOBILENETV2_RESIDUAL = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)
_MOBILENETV2_BLOCKS = ("expanded_conv_project_BN",) + tuple(
    ("block_%d_add" if i in _MOBILENETV2_RESIDUAL else "block_%d_project_BN") % i
    for i in range(1, 17))
_MOBILENETV2_NOTE = ("output of each of the 17 inverted-residual blocks (the add where the block "
                     "has a skip, else the projection BN), then the pooled features")

TAPS: Dict[str, TapSpec] = {
    "resnet50": TapSpec(
        _RESNET50_BLOCKS[:-1],
        "output of each bottleneck block; the last (conv5_block3_out) is the pooled features"),
    "densenet121": TapSpec(
        ("conv2_block6_concat", "pool2_pool", "conv3_block12_concat", "pool3_pool",
         "conv4_block24_concat", "pool4_pool", "conv5_block16_concat"),
        "end of each dense block and output of each transition, then the pooled features"),
    "vgg16": TapSpec(
        ("block1_pool", "block2_pool", "block3_pool", "block4_pool"),
        "each block's max-pool; the last (block5_pool) is the pooled features"),
    "mobilenetv2": TapSpec(_MOBILENETV2_BLOCKS, _MOBILENETV2_NOTE),
    "mobilenetv2_050": TapSpec(_MOBILENETV2_BLOCKS, _MOBILENETV2_NOTE),
}


def tap_spec(arch: str) -> TapSpec:
    """The :class:`TapSpec` of ``arch``; ValueError when the architecture has no table entry."""
    key = str(arch).strip().lower()
    if key not in TAPS:
        known = "registered in models.classifier" if key in ARCHITECTURES else "unknown"
        raise ValueError("architecture %r (%s) has no entry in models.taps.TAPS; add its tapped "
                         "layers there (tables exist for: %s)"
                         % (arch, known, ", ".join(sorted(TAPS))))
    return TAPS[key]


def tap_names(arch: str) -> List[str]:
    """The L tap names of ``arch``, shallow -> deep, ending with :data:`POOLED`."""
    return list(tap_spec(arch).layers) + [POOLED]


def num_taps(arch: str) -> int:
    """L for ``arch``."""
    return tap_spec(arch).num_taps


def find_backbone(m: "keras.Model") -> "keras.Model":
    """The nested Keras-applications model inside M (exactly one is expected)."""
    nested = [layer for layer in m.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError("expected exactly one nested backbone model inside %r, found %d (%s)"
                         % (m.name, len(nested), ", ".join(n.name for n in nested) or "none"))
    return nested[0]


class _Chain(keras.layers.Layer):
    """Applies existing single-input layers in order *inside* its own ``call``.

    Calling M's layers here (on plain tensors, not Keras symbolic tensors) shares their weights
    without adding inbound nodes to them, unlike calling them in a functional construction."""

    def __init__(self, layers: Sequence["keras.layers.Layer"], **kwargs):
        super().__init__(**kwargs)
        self.chain = list(layers)

    def call(self, x, training=None):
        for layer in self.chain:
            x = layer(x, training=training)
        return x


def _linear_chain(m: "keras.Model", backbone: "keras.Model"):
    """Split M's layers into (layers before the backbone, layers after it), checking that M is
    the linear chain ``input -> pre... -> backbone -> head...`` that build_classifier makes."""
    layers = list(m.layers)
    inputs = [layer for layer in layers if isinstance(layer, keras.layers.InputLayer)]
    if len(inputs) != 1 or layers[0] is not inputs[0]:
        raise ValueError("tap_model needs M with one image input, %r has %d inputs"
                         % (m.name, len(inputs)))
    at = layers.index(backbone)
    pre, head = layers[1:at], layers[at + 1:]
    # Each of M's own layers (not the backbone) must take exactly the previous layer's output.
    backbone_outputs = [t for node in backbone.inbound_nodes
                        for t in tf.nest.flatten(node.outputs)]
    backbone_inputs = [t for node in backbone.inbound_nodes
                       for t in tf.nest.flatten(node.input_tensors)]
    previous = [layers[0].output]
    for layer in pre + [None] + head:
        if layer is None:  # the backbone itself
            if not any(p is t for p in previous for t in backbone_inputs):
                raise ValueError("M %r is not a linear chain around its backbone %r"
                                 % (m.name, backbone.name))
            previous = backbone_outputs
            continue
        if len(layer.inbound_nodes) != 1 or len(tf.nest.flatten(layer.input)) != 1 \
                or not any(p is layer.input for p in previous):
            raise ValueError("M %r is not a linear chain: layer %r does not take the previous "
                             "layer's single output" % (m.name, layer.name))
        previous = [layer.output]
    return pre, head


def tap_model(m: "keras.Model", arch: str, with_logits: bool = False) -> "keras.Model":
    """A model from M's input to its L taps (and M's logits when ``with_logits``).

    Args:
        m: M as built by :func:`models.classifier.build_classifier` (weights loaded or not).
        arch: M's architecture (a key of :data:`TAPS`).
        with_logits: append M's logits ``[B, C]`` as an (L+1)-th output, computed from the same
            forward pass (the pooled tap through M's dropout and dense head).

    Returns:
        ``keras.Model``: float32 ``[B, H, W, 3]`` in [0, 1] -> list of L tensors ``[B, d_l]``
        (shallow -> deep, last = pooled features) [+ logits].  Layers and weights are M's own.

    Raises:
        ValueError: ``arch`` has no table entry, or a tapped layer is missing in M's backbone
            (the message names the layer and the architecture).
    """
    spec = tap_spec(arch)
    backbone = find_backbone(m)
    present = {layer.name for layer in backbone.layers}
    for name in spec.layers:
        if name not in present:
            raise ValueError("tapped layer %r of architecture %r is missing in M's backbone %r; "
                             "is M really a %s? (fix models.taps.TAPS[%r])"
                             % (name, arch, backbone.name, arch, arch))
    pooled = backbone.outputs[0]
    if len(pooled.shape) == 4:  # a backbone built without pooling="avg"
        pooled = keras.layers.GlobalAveragePooling2D(name="tap_pool_pooled")(pooled)
    if len(pooled.shape) != 2:
        raise ValueError("backbone %r of %r: output rank %d, expected a pooled [B, d] vector"
                         % (backbone.name, arch, len(pooled.shape)))
    maps = []
    for i, name in enumerate(spec.layers):
        out = backbone.get_layer(name).output
        if len(out.shape) != 4:
            raise ValueError("tapped layer %r of architecture %r is not a conv map (shape %s)"
                             % (name, arch, out.shape))
        maps.append(keras.layers.GlobalAveragePooling2D(name="tap_pool_%d" % i)(out))
    inner = keras.Model(backbone.inputs, maps + [pooled], name="taps_of_%s" % backbone.name)
    pre, head = _linear_chain(m, backbone)
    image = keras.Input(m.input_shape[1:], name="image")
    x = _Chain(pre, name="m_pre")(image) if pre else image
    taps = inner(x)
    outputs = list(taps)
    if with_logits:
        outputs.append(_Chain(head, name="m_head")(taps[-1]) if head else taps[-1])
    return keras.Model(image, outputs, name="taps_%s" % m.name)


def tap_features(m: "keras.Model", arch: str, images: np.ndarray, batch_size: int = 64,
                 model: "keras.Model" = None) -> List[np.ndarray]:
    """The L tap features of ``images`` (float [N, H, W, 3] in [0, 1]), inference mode.

    Returns a list of L float32 arrays ``[N, d_l]``.  ``model`` reuses a model made by
    :func:`tap_model` (without logits) instead of building a new one.
    """
    if model is None:
        model = tap_model(m, arch)
    images = np.asarray(images, np.float32)
    num = len(tap_names(arch))
    if images.ndim != 4:
        raise ValueError("images must be [N, H, W, 3], got shape %s" % (images.shape,))
    chunks: List[List[np.ndarray]] = [[] for _ in range(num)]
    for start in range(0, len(images), int(batch_size)):
        outs = model.predict_on_batch(images[start:start + int(batch_size)])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i in range(num):
            chunks[i].append(np.asarray(outs[i], np.float32))
    if not len(images):
        dims = [int(t.shape[-1]) for t in model.outputs[:num]]
        return [np.zeros((0, d), np.float32) for d in dims]
    return [np.concatenate(c, axis=0) for c in chunks]
