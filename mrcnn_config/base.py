"""Base configuration of Mask R-CNN with matterport's attribute names and defaults."""
from __future__ import annotations

import numpy as np

# Attributes that decide the shapes of K's weights: a checkpoint trained with other values
# cannot be loaded (SMALL_BACKBONE_* only count for the "resnet_small" backbone).
ARCHITECTURE_KEYS = ("BACKBONE", "NUM_CLASSES", "IMAGE_CHANNEL_COUNT", "TOP_DOWN_PYRAMID_SIZE",
                     "RPN_CONV_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE", "POOL_SIZE",
                     "MASK_HEAD_CONV_SIZE")
SMALL_BACKBONE_KEYS = ("SMALL_BACKBONE_BLOCKS", "SMALL_BACKBONE_WIDTH")
# Values the constructor derives from others (override IMAGES_PER_GPU, IMAGE_MAX_DIM, ...).
DERIVED_KEYS = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")


def _plain(value):
    """JSON-comparable value: tuples/arrays become lists."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_plain(v) for v in value]
    return value


#: Extension attributes left out of :meth:`Config.to_dict` while None (records unchanged).
OMITTED_WHEN_NONE = ("ADV_TRAIN",)


def architecture_signature(values: dict) -> dict:
    """The weight-shape-defining values of a configuration given as ``Config.to_dict()``
    (or a ``config.json`` read back); missing attributes are ``None``.

    Includes ``ANCHORS_PER_LOCATION`` = ``len(RPN_ANCHOR_RATIOS)`` (the RPN output width).
    """
    keys = ARCHITECTURE_KEYS
    if values.get("BACKBONE") == "resnet_small":
        keys = keys + SMALL_BACKBONE_KEYS
    out = {k: _plain(values.get(k)) for k in keys}
    ratios = values.get("RPN_ANCHOR_RATIOS")
    out["ANCHORS_PER_LOCATION"] = None if ratios is None else len(ratios)
    return out


class Config:
    """Mask R-CNN hyper-parameters; sub-class and override the class attributes you need.

    Units: image sizes in pixels; boxes ``(y1, x1, y2, x2)``; anchor scales are the side of
    a square anchor in pixels of the resized image.
    """

    # Name of the configuration; checkpoints are named mask_rcnn_<name>_<epoch>.h5.
    NAME = None
    # Number of devices (kept for API compatibility; this port runs on one device).
    GPU_COUNT = 1
    # Images processed together per device; BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT.
    IMAGES_PER_GPU = 2
    # Training steps per epoch (an "epoch" is this many batches, not a pass over the data).
    STEPS_PER_EPOCH = 1000
    # Validation batches run at the end of each epoch.
    VALIDATION_STEPS = 50
    # Backbone: "resnet50", "resnet101" (matterport) or "resnet_small" (extension, see
    # SMALL_BACKBONE_*); a callable is not supported.
    BACKBONE = "resnet101"
    # Function computing backbone feature-map shapes (None: derived from BACKBONE_STRIDES).
    COMPUTE_BACKBONE_SHAPE = None
    # Strides of the pyramid levels P2..P6 relative to the input image.
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    # Size of the fully-connected layers of the classification head.
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    # Channels of the top-down feature pyramid.
    TOP_DOWN_PYRAMID_SIZE = 256
    # Number of classes including the background (class 0).
    NUM_CLASSES = 1
    # Side of square anchors in pixels, one scale per pyramid level.
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    # Width/height ratios of the anchors at each location.
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    # Anchor stride: 1 = an anchor at every feature-map cell, 2 = every other cell.
    RPN_ANCHOR_STRIDE = 1
    # Non-max-suppression threshold for RPN proposals.
    RPN_NMS_THRESHOLD = 0.7
    # Anchors per image used to train the RPN.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    # Top-scoring anchors kept before proposal NMS.
    PRE_NMS_LIMIT = 6000
    # Proposals kept after NMS in training and inference.
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000
    # Store instance masks cropped to their box and resized to MINI_MASK_SHAPE (saves memory).
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)
    # Input resizing: "none", "square" (resize + pad to IMAGE_MAX_DIM square), "pad64", "crop".
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    # Minimum scale-up factor (0: none); useful for small images.
    IMAGE_MIN_SCALE = 0
    # Channels of the input image (3 = RGB).
    IMAGE_CHANNEL_COUNT = 3
    # RGB mean subtracted from images before the network ("molding").
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])
    # ROIs per image fed to the heads in training, and the share of positive ROIs.
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    # ROIAlign output size of the classifier and mask heads.
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    # Output mask size of the mask head (the mask branch up-samples 2x).
    MASK_SHAPE = [28, 28]
    # Ground-truth instances kept per image.
    MAX_GT_INSTANCES = 100
    # Box-delta normalisation of the RPN and of the final detections.
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    # Detections kept per image, their minimum score and per-class NMS threshold.
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3
    # SGD learning rate and momentum, L2 weight decay.
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    # Weights of the five losses.
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.,
        "rpn_bbox_loss": 1.,
        "mrcnn_class_loss": 1.,
        "mrcnn_bbox_loss": 1.,
        "mrcnn_mask_loss": 1.,
    }
    # Train the heads on RPN proposals (matterport's only mode in this port).
    USE_RPN_ROIS = True
    # Batch-norm layers: False = frozen (moving statistics), True = trained, None = Keras default.
    TRAIN_BN = False
    # Gradient clipping by global norm.
    GRADIENT_CLIP_NORM = 5.0

    # ---- extensions (defaults reproduce matterport) -------------------------------------
    # Adversarial training of K (SPEC section 12, hardening part extraction).  None: a standard
    # K.  A robust K holds its attack here, {"eps", "steps", "step_size", "mix"} (0-255 pixel
    # scale; see models/mrcnn/adversarial.py): PGD on K's own training losses, replacing a
    # share "mix" of each batch.  Each step then costs 1 + steps passes of K instead of 1.  The
    # run's config.json records it, and a checkpoint search for one kind of K skips runs of the
    # other; left out of to_dict() while None, so a standard K's record is matterport's.
    ADV_TRAIN = None
    # Channels of the shared RPN convolution (matterport: 512).
    RPN_CONV_SIZE = 512
    # Channels of the four mask-head convolutions and the deconvolution (matterport: 256).
    MASK_HEAD_CONV_SIZE = 256
    # "resnet_small": residual blocks per stage 2..5 and the bottleneck width of stage 2.
    SMALL_BACKBONE_BLOCKS = (1, 1, 1, 1)
    SMALL_BACKBONE_WIDTH = 16
    # Add the ground-truth boxes to the RPN proposals before sampling training ROIs (speeds
    # up training from scratch; matterport: False).
    PROPOSALS_INCLUDE_GT = False
    # Momentum of the batch-norm moving statistics (Keras default 0.99).
    BN_MOMENTUM = 0.99
    # Probability of flipping a training image left-right together with its masks (and so
    # its boxes), drawn per image from the training run's seeded generator; used by
    # evaluation.model_k.train_model_k in every stage (matterport's default: no augmentation).
    TRAIN_HFLIP_PROB = 0.0

    def __init__(self):
        """Derive BATCH_SIZE, IMAGE_SHAPE and IMAGE_META_SIZE; ValueError on bad values."""
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM,
                                         self.IMAGE_CHANNEL_COUNT])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM,
                                         self.IMAGE_CHANNEL_COUNT])
        # image id, original shape (3), resized shape (3), window (4), scale, active class ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES
        self.validate()

    def validate(self):
        """Check the values that would otherwise fail deep inside the graph."""
        if self.BACKBONE not in ("resnet50", "resnet101", "resnet_small"):
            raise ValueError("Config.BACKBONE must be 'resnet50', 'resnet101' or "
                             "'resnet_small', got %r" % (self.BACKBONE,))
        if self.IMAGE_RESIZE_MODE not in ("none", "square", "pad64", "crop"):
            raise ValueError("Config.IMAGE_RESIZE_MODE must be none|square|pad64|crop, got %r"
                             % (self.IMAGE_RESIZE_MODE,))
        if self.IMAGE_RESIZE_MODE != "none" and self.IMAGE_MAX_DIM % 64 != 0:
            raise ValueError("Config.IMAGE_MAX_DIM must be a multiple of 64 (got %d)"
                             % self.IMAGE_MAX_DIM)
        if len(self.RPN_ANCHOR_SCALES) != len(self.BACKBONE_STRIDES):
            raise ValueError("Config.RPN_ANCHOR_SCALES needs one scale per backbone stride")
        if self.NUM_CLASSES < 2:
            raise ValueError("Config.NUM_CLASSES must count background plus >= 1 class")

    def replace(self, **overrides) -> "Config":
        """A new configuration equal to this one except for ``overrides``.

        The copy is an instance of a sub-class of ``type(self)`` (so ``isinstance`` checks and
        :func:`mrcnn_config.config_key` still see the original class) holding the overrides as
        class attributes; values set on this instance after construction are carried over.
        The derived values (``BATCH_SIZE``, ``IMAGE_SHAPE``, ``IMAGE_META_SIZE``) are computed
        anew and the result is validated.

        Raises:
            ValueError: naming an override that is not an upper-case attribute of the
                configuration, or one of the derived values, or from :meth:`validate`.
        """
        for name in overrides:
            if name in DERIVED_KEYS:
                raise ValueError("Config.replace: %s is derived by the constructor and cannot "
                                 "be overridden (change IMAGES_PER_GPU, GPU_COUNT, "
                                 "IMAGE_MAX_DIM, IMAGE_MIN_DIM, IMAGE_RESIZE_MODE, "
                                 "IMAGE_CHANNEL_COUNT or NUM_CLASSES instead)" % name)
            if not name.isupper() or not hasattr(self, name):
                raise ValueError("Config.replace: unknown configuration attribute %r "
                                 "(not an upper-case attribute of %s)"
                                 % (name, type(self).__name__))
        attrs = {k: v for k, v in vars(self).items()
                 if k.isupper() and k not in DERIVED_KEYS}
        attrs.update(overrides)
        if not attrs:
            return type(self)()
        return type(type(self).__name__, (type(self),), attrs)()

    def to_dict(self):
        """Upper-case attributes as a plain dict (numpy arrays converted to lists)."""
        out = {}
        for name in sorted(dir(self)):
            if name.isupper() and not callable(getattr(self, name)):
                value = getattr(self, name)
                if name in OMITTED_WHEN_NONE and value is None:
                    continue
                out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def architecture(self) -> dict:
        """Values that decide the weight shapes (see :func:`architecture_signature`)."""
        return architecture_signature(self.to_dict())

    def display(self):
        """Print the configuration, one attribute per line."""
        print("\nConfigurations:")
        for name, value in self.to_dict().items():
            print("%-30s %s" % (name, value))
        print()
