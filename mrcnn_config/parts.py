"""Configurations of model K: the original parts model, the CPU synthetic default, a test toy."""
from __future__ import annotations

from mrcnn_config.base import Config


class PartsConfig(Config):
    """The original UnMask K: Mask R-CNN on 44 PASCAL-Part categories (matterport sizes).

    Augmentation: the original trained every stage with ``imgaug.augmenters.Fliplr(0.5)``, so
    ``TRAIN_HFLIP_PROB = 0.5`` flips half of the training images left-right with their masks
    (boxes are taken from the flipped masks).  As in the original, class ids are kept: the
    sided parts (vehicle_left/right, coach_left/right) are *not* swapped by a flip.
    """

    # Checkpoints: mask_rcnn_parts_<epoch>.h5
    NAME = "parts"
    # The original trained 4 images per GPU.
    IMAGES_PER_GPU = 4
    # Background + 44 part categories (class id = COCO category id + 1).
    NUM_CLASSES = 1 + 44
    # UnMask used every detection (the extractor applies its own threshold).
    DETECTION_MIN_CONFIDENCE = 0
    BACKBONE = "resnet101"
    # Random left-right flips of training images in every stage, as the original K.
    TRAIN_HFLIP_PROB = 0.5


class SyntheticPartsConfig(PartsConfig):
    """Small K that trains on the 128x128 synthetic part images on a 2-core CPU.

    Same architecture and layer names as matterport, with a narrow ResNet ("resnet_small"),
    a 64-channel pyramid, anchors scaled to the 128-pixel image and fewer ROIs.

    Augmentation: no image flips (``TRAIN_HFLIP_PROB = 0``).  The synthetic generator already
    mirrors every object left-right with probability 0.5 when it draws the scene, so flipping
    the whole image adds no layout the data lacks, while turning it on would change the
    batches (and so every result) of the synthetic K trained so far; the default is kept as it
    was.  Pass ``TRAIN_HFLIP_PROB=0.5`` to ``get_config``/``Config.replace`` to flip anyway.
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
    # No flips: see the class docstring.
    TRAIN_HFLIP_PROB = 0.0


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
    config = _CONFIGS[key]()
    return config.replace(**overrides) if overrides else config
