"""Models of UnMask: the protected classifier M (``models.classifier``) and the part extractor
K (``models.mrcnn``, a port of matterport's Mask R-CNN)."""
