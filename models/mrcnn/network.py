"""Mask R-CNN network pieces with matterport's layer names: ResNet, FPN, RPN and heads."""
from __future__ import annotations

import tfcompat
from models.mrcnn.layers import BatchNorm, PyramidROIAlign

tf, keras = tfcompat.import_tf()
KL, KM = keras.layers, keras.models

RESNET_STAGE_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _bn(x, name, train_bn, config):
    """Named :class:`BatchNorm` with the configured momentum."""
    return BatchNorm(name=name, train_bn=train_bn, momentum=config.BN_MOMENTUM)(x)


def residual_block(x, kernel_size, filters, stage, block, train_bn, config, strides=None):
    """ResNet bottleneck block; a projection shortcut ("branch1") when ``strides`` is given.

    Names: ``res{stage}{block}_branch2{a,b,c}``, ``bn{stage}{block}_branch2{a,b,c}``,
    ``res{stage}{block}_branch1``, ``res{stage}{block}_out``.
    """
    f1, f2, f3 = filters
    conv, bn = "res%d%s_branch" % (stage, block), "bn%d%s_branch" % (stage, block)
    y = KL.Conv2D(f1, 1, strides=strides or (1, 1), name=conv + "2a", use_bias=True)(x)
    y = KL.Activation("relu")(_bn(y, bn + "2a", train_bn, config))
    y = KL.Conv2D(f2, kernel_size, padding="same", name=conv + "2b", use_bias=True)(y)
    y = KL.Activation("relu")(_bn(y, bn + "2b", train_bn, config))
    y = KL.Conv2D(f3, 1, name=conv + "2c", use_bias=True)(y)
    y = _bn(y, bn + "2c", train_bn, config)
    if strides is not None:
        x = KL.Conv2D(f3, 1, strides=strides, name=conv + "1", use_bias=True)(x)
        x = _bn(x, bn + "1", train_bn, config)
    y = KL.Add()([y, x])
    return KL.Activation("relu", name="res%d%s_out" % (stage, block))(y)


def resnet_graph(input_image, config, train_bn):
    """ResNet backbone; returns the stage outputs ``[C1, C2, C3, C4, C5]``.

    resnet50/resnet101 reproduce matterport's layers and shapes; "resnet_small" keeps the
    names with ``SMALL_BACKBONE_BLOCKS`` blocks per stage and narrower filters.
    """
    if config.BACKBONE == "resnet_small":
        blocks, width = tuple(config.SMALL_BACKBONE_BLOCKS), int(config.SMALL_BACKBONE_WIDTH)
        stem = 2 * width
    else:
        blocks, width, stem = RESNET_STAGE_BLOCKS[config.BACKBONE], 64, 64
    x = KL.ZeroPadding2D((3, 3))(input_image)
    x = KL.Conv2D(stem, (7, 7), strides=(2, 2), name="conv1", use_bias=True)(x)
    x = KL.Activation("relu")(_bn(x, "bn_conv1", train_bn, config))
    c1 = x = KL.MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
    outputs = [c1]
    for i, n_blocks in enumerate(blocks):
        stage = i + 2
        f = width * 2 ** i
        filters = [f, f, 4 * f]
        strides = (1, 1) if stage == 2 else (2, 2)
        x = residual_block(x, 3, filters, stage, "a", train_bn, config, strides=strides)
        for j in range(1, n_blocks):
            x = residual_block(x, 3, filters, stage, chr(97 + j), train_bn, config)
        outputs.append(x)
    return outputs


def fpn_graph(c2, c3, c4, c5, size):
    """Top-down feature pyramid; returns ``[P2, P3, P4, P5, P6]`` with ``size`` channels."""
    p5 = KL.Conv2D(size, (1, 1), name="fpn_c5p5")(c5)
    p4 = KL.Add(name="fpn_p4add")([KL.UpSampling2D(size=(2, 2), name="fpn_p5upsampled")(p5),
                                   KL.Conv2D(size, (1, 1), name="fpn_c4p4")(c4)])
    p3 = KL.Add(name="fpn_p3add")([KL.UpSampling2D(size=(2, 2), name="fpn_p4upsampled")(p4),
                                   KL.Conv2D(size, (1, 1), name="fpn_c3p3")(c3)])
    p2 = KL.Add(name="fpn_p2add")([KL.UpSampling2D(size=(2, 2), name="fpn_p3upsampled")(p3),
                                   KL.Conv2D(size, (1, 1), name="fpn_c2p2")(c2)])
    p2 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p2")(p2)
    p3 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p3")(p3)
    p4 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p4")(p4)
    p5 = KL.Conv2D(size, (3, 3), padding="SAME", name="fpn_p5")(p5)
    p6 = KL.MaxPooling2D(pool_size=(1, 1), strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


def build_rpn_model(anchor_stride, anchors_per_location, depth, conv_size=512):
    """The shared RPN as a nested Keras model named ``rpn_model``.

    Input ``input_rpn_feature_map [B, h, w, depth]``; outputs ``rpn_class_logits [B, h*w*k, 2]``,
    ``rpn_probs [B, h*w*k, 2]``, ``rpn_bbox [B, h*w*k, 4]`` (k = anchors per location).
    """
    fmap = KL.Input(shape=[None, None, depth], name="input_rpn_feature_map")
    shared = KL.Conv2D(conv_size, (3, 3), padding="same", activation="relu",
                       strides=anchor_stride, name="rpn_conv_shared")(fmap)
    x = KL.Conv2D(2 * anchors_per_location, (1, 1), padding="valid", activation="linear",
                  name="rpn_class_raw")(shared)
    logits = KL.Reshape((-1, 2))(x)
    probs = KL.Activation("softmax", name="rpn_class_xxx")(logits)
    x = KL.Conv2D(anchors_per_location * 4, (1, 1), padding="valid", activation="linear",
                  name="rpn_bbox_pred")(shared)
    bbox = KL.Reshape((-1, 4))(x)
    return KM.Model([fmap], [logits, probs, bbox], name="rpn_model")


def fpn_classifier_graph(rois, feature_maps, image_meta, config, train_bn):
    """Classifier and box-regression head.

    Returns ``mrcnn_class_logits [B, N, C]``, ``mrcnn_class [B, N, C]`` (softmax) and
    ``mrcnn_bbox [B, N, C, 4]`` for ROIs ``[B, N, 4]``.
    """
    pool, fc = config.POOL_SIZE, config.FPN_CLASSIF_FC_LAYERS_SIZE
    x = PyramidROIAlign([pool, pool], name="roi_align_classifier")([rois, image_meta]
                                                                   + feature_maps)
    x = KL.TimeDistributed(KL.Conv2D(fc, (pool, pool), padding="valid"),
                           name="mrcnn_class_conv1")(x)
    x = KL.TimeDistributed(BatchNorm(train_bn=train_bn, momentum=config.BN_MOMENTUM),
                           name="mrcnn_class_bn1")(x)
    x = KL.Activation("relu")(x)
    x = KL.TimeDistributed(KL.Conv2D(fc, (1, 1)), name="mrcnn_class_conv2")(x)
    x = KL.TimeDistributed(BatchNorm(train_bn=train_bn, momentum=config.BN_MOMENTUM),
                           name="mrcnn_class_bn2")(x)
    x = KL.Activation("relu")(x)
    shared = KL.Reshape((-1, fc), name="pool_squeeze")(x)
    logits = KL.TimeDistributed(KL.Dense(config.NUM_CLASSES), name="mrcnn_class_logits")(shared)
    probs = KL.TimeDistributed(KL.Activation("softmax"), name="mrcnn_class")(logits)
    x = KL.TimeDistributed(KL.Dense(config.NUM_CLASSES * 4, activation="linear"),
                           name="mrcnn_bbox_fc")(shared)
    bbox = KL.Reshape((-1, config.NUM_CLASSES, 4), name="mrcnn_bbox")(x)
    return logits, probs, bbox


def build_fpn_mask_graph(rois, feature_maps, image_meta, config, train_bn):
    """Mask head: ``[B, N, 2*MASK_POOL_SIZE, 2*MASK_POOL_SIZE, NUM_CLASSES]`` sigmoid masks."""
    pool, width = config.MASK_POOL_SIZE, config.MASK_HEAD_CONV_SIZE
    x = PyramidROIAlign([pool, pool], name="roi_align_mask")([rois, image_meta] + feature_maps)
    for i in range(1, 5):
        x = KL.TimeDistributed(KL.Conv2D(width, (3, 3), padding="same"),
                               name="mrcnn_mask_conv%d" % i)(x)
        x = KL.TimeDistributed(BatchNorm(train_bn=train_bn, momentum=config.BN_MOMENTUM),
                               name="mrcnn_mask_bn%d" % i)(x)
        x = KL.Activation("relu")(x)
    x = KL.TimeDistributed(KL.Conv2DTranspose(width, (2, 2), strides=2, activation="relu"),
                           name="mrcnn_mask_deconv")(x)
    return KL.TimeDistributed(KL.Conv2D(config.NUM_CLASSES, (1, 1), activation="sigmoid"),
                              name="mrcnn_mask")(x)
