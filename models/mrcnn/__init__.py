"""Model K: matterport's Mask R-CNN ported to TensorFlow 2 / tf-keras (TF1-style graph).

Modules: ``utils`` (NumPy boxes, anchors, masks, AP), ``data_gen`` (targets, molding),
``graph_utils``/``layers``/``network``/``losses`` (the graph), ``model`` (``MaskRCNN``),
``weights`` (Keras-2 HDF5), ``session_guard``, ``train``, ``evaluate``, ``visualize`` and
``extractor`` (``PartExtractor``).  K is trained and evaluated end to end by
:mod:`evaluation.model_k`.  Heavy modules are imported lazily.
"""
_LAZY = {
    "MaskRCNN": "models.mrcnn.model",
    "PartExtractor": "models.mrcnn.extractor",
    "find_k_checkpoint": "models.mrcnn.extractor",
    "Dataset": "data.coco_parts",
    "PartsDataset": "data.coco_parts",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError("module 'models.mrcnn' has no attribute %r" % name)
