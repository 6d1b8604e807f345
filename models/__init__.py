"""Models of UnMask: the protected classifier M (``models.classifier``) and the part extractor
K (``models.mrcnn``, a port of matterport's Mask R-CNN).

This file imports nothing, so ``main.py`` can read the defaults below without loading
TensorFlow."""

#: Architecture of M by default: trains in minutes on a 2-core CPU (the synthetic default).
DEFAULT_ARCH = "mobilenetv2_050"
