"""Names shared by :mod:`models.mrcnn.model` and :mod:`models.mrcnn.trainer`.

A leaf module (no imports), so the model and its trainer both use these names without
importing each other's internals.
"""

# Matterport's layer-selection regular expressions for ``train(layers=...)``; any other
# ``layers`` string is used as a regular expression itself.
LAYER_REGEX = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}

# Names of the training model's five loss layers (and of their terms in ``LOSS_WEIGHTS``),
# in the order the training history reports them.
LOSS_NAMES = ["rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss"]
