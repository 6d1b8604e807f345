"""Configuration of model K (Mask R-CNN on object parts), following matterport's ``Config``.

``Config`` carries every attribute of matterport's base configuration with the same name,
meaning and default; a sub-class overrides class attributes and the constructor derives
``BATCH_SIZE``, ``IMAGE_SHAPE`` and ``IMAGE_META_SIZE``.  A handful of extra attributes
(marked "extension") make the network small enough to train on a CPU; their defaults
reproduce matterport's architecture exactly.

This package depends on nothing else of the project.
"""
from mrcnn_config.base import Config, architecture_signature
from mrcnn_config.parts import (PartsConfig, SyntheticPartsConfig, TinyTestConfig, config_key,
                                get_config)

__all__ = ["Config", "PartsConfig", "SyntheticPartsConfig", "TinyTestConfig",
           "architecture_signature", "config_key", "get_config"]
