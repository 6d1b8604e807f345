"""Configurations of model K: the original parts model, the CPU synthetic default, a test toy."""
from __future__ import annotations

from mrcnn_config.base import Config


class PartsConfig(Config):
    """The original UnMask K: Mask R-CNN on 44 PASCAL-Part categories (matterport sizes)."""

    # Checkpoints: mask_rcnn_parts_<epoch>.h5
    NAME = "parts"
    # The original trained 4 images per GPU.
    IMAGES_PER_GPU = 4
    # Background + 44 part categories (class id = COCO category id + 1).
    NUM_CLASSES = 1 + 44
    # UnMask used every detection (the extractor applies its own threshold).
    DETECTION_MIN_CONFIDENCE = 0
    BACKBONE = "resnet101"


class SyntheticPartsConfig(PartsConfig):
    """Small K that trains on the 128x128 synthetic part images on a 2-core CPU.

    Same architecture and layer names as matterport, with a narrow ResNet ("resnet_small"),
    a 64-channel pyramid, anchors scaled to the 128-pixel image and fewer ROIs.
    """

    IMAGES_PER_GPU = 4
    STEPS_PER_EPOCH = 100
    VALIDATION_STEPS = 5
    BACKBONE = "resnet_small"
    SMALL_BACKBONE_BLOCKS = (1, 1, 1, 1)
    SMALL_BACKBONE_WIDTH = 16
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    RPN_CONV_SIZE = 128
    MASK_HEAD_CONV_SIZE = 32
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    # Anchors scaled to the image: 8..128 pixels over P2..P6.
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 200
    POST_NMS_ROIS_INFERENCE = 100
    TRAIN_ROIS_PER_IMAGE = 32
    MINI_MASK_SHAPE = (28, 28)
    MAX_GT_INSTANCES = 24
    DETECTION_MAX_INSTANCES = 24
    TRAIN_BN = True
    BN_MOMENTUM = 0.95
    PROPOSALS_INCLUDE_GT = True
    LEARNING_RATE = 0.02
    WEIGHT_DECAY = 0.0001


class TinyTestConfig(SyntheticPartsConfig):
    """Very small K for unit tests (64-pixel images, few classes)."""

    NAME = "tiny"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 3
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    SMALL_BACKBONE_WIDTH = 8
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    RPN_CONV_SIZE = 32
    MASK_HEAD_CONV_SIZE = 16
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    PRE_NMS_LIMIT = 300
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    TRAIN_ROIS_PER_IMAGE = 16
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 8
    STEPS_PER_EPOCH = 5
    VALIDATION_STEPS = 1


_CONFIGS = {"parts": PartsConfig, "synthetic": SyntheticPartsConfig, "tiny": TinyTestConfig}


def config_key(config: Config):
    """The :func:`get_config` name ("parts", "synthetic", "tiny") a configuration derives
    from (the most specific one), or None for an unrelated ``Config`` sub-class."""
    for cls in type(config).__mro__:
        for key, known in _CONFIGS.items():
            if cls is known:
                return key
    return None


def get_config(name: str, **overrides) -> Config:
    """Return a configuration instance by name ("parts", "synthetic", "tiny").

    ``overrides`` set upper-case attributes before the derived values are computed,
    e.g. ``get_config("synthetic", IMAGES_PER_GPU=1, BACKBONE="resnet50")``.
    """
    key = str(name).lower()
    if key not in _CONFIGS:
        raise ValueError("unknown K config %r; choose one of %s" % (name, sorted(_CONFIGS)))
    attrs = {}
    for attr, value in overrides.items():
        if not attr.isupper():
            raise ValueError("config override %r must be an upper-case Config attribute" % attr)
        if not hasattr(Config, attr):
            raise ValueError("config override %r is not a Config attribute" % attr)
        attrs[attr] = value
    cls = type(_CONFIGS[key].__name__, (_CONFIGS[key],), attrs) if attrs else _CONFIGS[key]
    return cls()
