"""Custom Keras layers of Mask R-CNN: proposals, pyramid ROIAlign, training targets, detections.

The layers run in a TF1-style graph (see :mod:`models.mrcnn.model`); every layer declares
its static output shape.  Boxes are normalized ``(y1, x1, y2, x2)``.
"""
from __future__ import annotations

import numpy as np

import tfcompat
from models.mrcnn.graph_utils import (apply_box_deltas_graph, batch_slice, box_refinement_graph,
                                      clip_boxes_graph, overlaps_graph, parse_image_meta_graph,
                                      trim_zeros_graph)

tf, keras = tfcompat.import_tf()
KL = keras.layers
_no_autograph = tf.autograph.experimental.do_not_convert


class BatchNorm(KL.BatchNormalization):
    """Batch normalization whose training flag is fixed at construction (matterport TRAIN_BN).

    ``train_bn=False`` freezes it (moving statistics, as for small batches); ``True`` trains.
    """

    def __init__(self, *args, train_bn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_bn = train_bn

    @_no_autograph
    def call(self, inputs, training=None):
        return super().call(inputs, training=self.train_bn)

    def get_config(self):
        cfg = super().get_config()
        cfg["train_bn"] = self.train_bn
        return cfg


class AnchorsLayer(KL.Layer):
    """Constant pyramid anchors ``[batch, A, 4]`` (normalized), tiled over the batch."""

    def __init__(self, anchors: np.ndarray, batch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.batch_size = batch_size

    @_no_autograph
    def call(self, image):
        const = tf.constant(self.anchors[None], dtype=tf.float32)
        return tf.tile(const, [self.batch_size, 1, 1])

    def compute_output_shape(self, input_shape):
        return (self.batch_size,) + self.anchors.shape


class ProposalLayer(KL.Layer):
    """RPN scores and deltas -> top ``proposal_count`` boxes after NMS.

    Inputs: ``rpn_probs [B, A, 2]``, ``rpn_bbox [B, A, 4]`` (deltas divided by
    ``rpn_bbox_std_dev``), anchors ``[B, A, 4]`` normalized ``(y1, x1, y2, x2)``.
    Output: ``[B, proposal_count, (y1, x1, y2, x2)]`` normalized, zero padded.

    Args:
        proposal_count: boxes kept after NMS; nms_threshold: IoU threshold of the NMS;
        pre_nms_limit: top-scoring anchors kept before NMS; rpn_bbox_std_dev: 4 values;
        batch_size: static batch size B; anchor_count: A, used when the anchors input has
        no static length (inference feeds anchors).
    """

    def __init__(self, proposal_count, nms_threshold, pre_nms_limit, rpn_bbox_std_dev,
                 batch_size, anchor_count=None, **kwargs):
        super().__init__(**kwargs)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in np.reshape(rpn_bbox_std_dev, [4])]
        self.batch_size = int(batch_size)
        self.anchor_count = None if anchor_count is None else int(anchor_count)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold,
                   pre_nms_limit=self.pre_nms_limit, rpn_bbox_std_dev=self.rpn_bbox_std_dev,
                   batch_size=self.batch_size, anchor_count=self.anchor_count)
        return cfg

    def _top_limit(self, anchors) -> int:
        """``min(pre_nms_limit, A)`` from the static anchor count."""
        n_anchors = anchors.shape[1] or self.anchor_count
        if n_anchors is None:
            raise ValueError("ProposalLayer '%s' needs anchor_count when the anchors input has "
                             "no static length" % self.name)
        return min(self.pre_nms_limit, int(n_anchors))

    @_no_autograph
    def call(self, inputs):
        bs = self.batch_size
        scores = inputs[0][:, :, 1]
        deltas = inputs[1] * np.reshape(self.rpn_bbox_std_dev, [1, 1, 4]).astype(np.float32)
        anchors = inputs[2]
        ix = tf.nn.top_k(scores, self._top_limit(anchors), sorted=True,
                         name="top_anchors").indices
        scores = batch_slice([scores, ix], lambda x, y: tf.gather(x, y), bs)
        deltas = batch_slice([deltas, ix], lambda x, y: tf.gather(x, y), bs)
        pre = batch_slice([anchors, ix], lambda a, x: tf.gather(a, x), bs)
        boxes = batch_slice([pre, deltas], apply_box_deltas_graph, bs)
        window = np.array([0, 0, 1, 1], dtype=np.float32)
        boxes = batch_slice(boxes, lambda b: clip_boxes_graph(b, window), bs)
        out = batch_slice([boxes, scores], self._nms, bs)
        out.set_shape((bs, self.proposal_count, 4))
        return out

    def _nms(self, boxes, scores):
        """NMS of one image: ``[proposal_count, 4]`` zero padded."""
        keep = tf.image.non_max_suppression(boxes, scores, self.proposal_count,
                                            self.nms_threshold, name="rpn_non_max_suppression")
        proposals = tf.gather(boxes, keep)
        pad = tf.maximum(self.proposal_count - tf.shape(proposals)[0], 0)
        return tf.pad(proposals, [(0, pad), (0, 0)])

    def compute_output_shape(self, input_shape):
        return (None, self.proposal_count, 4)


def log2_graph(x):
    """Base-2 logarithm."""
    return tf.math.log(x) / tf.math.log(2.0)


def roi_levels_graph(boxes, image_shape):
    """Pyramid level (2..5) of each ROI, matterport/FPN rule with a 224-pixel canonical size.

    Args:
        boxes: ``[B, N, 4]`` normalized; image_shape: ``[3]`` (H, W, C) of the molded input.
    Returns:
        ``int32 [B, N]``.
    """
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=2)
    h, w = y2 - y1, x2 - x1
    area = tf.cast(image_shape[0] * image_shape[1], tf.float32)
    level = log2_graph(tf.sqrt(h * w) / (224.0 / tf.sqrt(area)))
    level = tf.minimum(5, tf.maximum(2, 4 + tf.cast(tf.round(level), tf.int32)))
    return tf.squeeze(level, 2)


class PyramidROIAlign(KL.Layer):
    """ROIAlign over the feature pyramid.

    Inputs: ``boxes [B, N, 4]``, ``image_meta [B, META]``, feature maps P2..P5
    ``[B, h_i, w_i, C]``. Output: ``[B, N, pool_h, pool_w, C]``, in the order of ``boxes``.
    Each box is cropped with ``tf.image.crop_and_resize`` (bilinear) from its level.
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(pool_shape)

    @_no_autograph
    def call(self, inputs):
        boxes, image_meta, feature_maps = inputs[0], inputs[1], inputs[2:]
        image_shape = parse_image_meta_graph(image_meta)["image_shape"][0]
        roi_level = roi_levels_graph(boxes, image_shape)
        pooled, box_to_level = [], []
        for i, level in enumerate(range(2, 6)):
            ix = tf.where(tf.equal(roi_level, level))
            level_boxes = tf.stop_gradient(tf.gather_nd(boxes, ix))
            box_indices = tf.stop_gradient(tf.cast(ix[:, 0], tf.int32))
            box_to_level.append(ix)
            pooled.append(tf.image.crop_and_resize(feature_maps[i], level_boxes, box_indices,
                                                   self.pool_shape, method="bilinear"))
        pooled = tf.concat(pooled, axis=0)
        box_to_level = tf.concat(box_to_level, axis=0)
        sort_key = box_to_level[:, 0] * 100000 + box_to_level[:, 1]
        order = tf.nn.top_k(sort_key, k=tf.shape(box_to_level)[0]).indices[::-1]
        pooled = tf.gather(pooled, order)
        shape = tf.concat([tf.shape(boxes)[:2], tf.shape(pooled)[1:]], axis=0)
        pooled = tf.reshape(pooled, shape)
        pooled.set_shape(self.compute_output_shape([b.shape for b in inputs]))
        return pooled

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2]) + self.pool_shape + (input_shape[2][-1],)


def _sample_rois(proposals, gt_boxes, rois_per_image, positive_ratio):
    """Indices of positive (IoU >= .5) and negative ROIs, sampled to matterport's ratio.

    Args:
        proposals ``[N, 4]``; gt_boxes: dict of ``boxes [G, 4]`` and ``crowd [K, 4]``.
    Returns:
        ``(positive int64 [P], negative int64 [Q], overlaps [N, G])``.
    """
    overlaps = overlaps_graph(proposals, gt_boxes["boxes"])
    crowd = overlaps_graph(proposals, gt_boxes["crowd"])
    no_crowd = tf.reduce_max(tf.concat([crowd, tf.zeros_like(crowd[:, :1])], 1), axis=1) < 1e-3
    iou_max = tf.reduce_max(tf.concat([overlaps, tf.zeros_like(overlaps[:, :1])], 1), axis=1)
    positive = tf.where(iou_max >= 0.5)[:, 0]
    negative = tf.where(tf.logical_and(iou_max < 0.5, no_crowd))[:, 0]
    pos_count = int(rois_per_image * positive_ratio)
    positive = tf.random.shuffle(positive)[:pos_count]
    pos_count = tf.shape(positive)[0]
    ratio = 1.0 / positive_ratio
    neg_count = tf.cast(ratio * tf.cast(pos_count, tf.float32), tf.int32) - pos_count
    negative = tf.random.shuffle(negative)[:neg_count]
    return positive, negative, overlaps


def _roi_mask_targets(positive_rois, roi_gt_boxes, roi_masks, mask_shape, use_mini_mask):
    """Crop the assigned GT masks to the positive ROIs.

    Args:
        positive_rois, roi_gt_boxes: ``[P, 4]`` normalized; roi_masks ``[P, h, w, 1]``
        (mini masks, in GT-box coordinates, when ``use_mini_mask``).
    Returns:
        ``[P, mask_h, mask_w]`` in {0, 1}.
    """
    boxes = positive_rois
    if use_mini_mask:
        y1, x1, y2, x2 = tf.split(positive_rois, 4, axis=1)
        gy1, gx1, gy2, gx2 = tf.split(roi_gt_boxes, 4, axis=1)
        gh, gw = gy2 - gy1, gx2 - gx1
        boxes = tf.concat([(y1 - gy1) / gh, (x1 - gx1) / gw, (y2 - gy1) / gh, (x2 - gx1) / gw], 1)
    box_ids = tf.range(0, tf.shape(roi_masks)[0])
    masks = tf.image.crop_and_resize(tf.cast(roi_masks, tf.float32), boxes, box_ids,
                                     tuple(mask_shape))
    return tf.round(tf.squeeze(masks, axis=3))


def _split_gt(gt_class_ids, gt_boxes, gt_masks):
    """Drop zero padding; separate crowd boxes (negative class id).

    Returns:
        ``(class_ids [G], boxes [G, 4], masks [h, w, G], crowd_boxes [K, 4])``.
    """
    gt_boxes, non_zeros = trim_zeros_graph(gt_boxes, name="trim_gt_boxes")
    gt_class_ids = tf.boolean_mask(gt_class_ids, non_zeros)
    gt_masks = tf.gather(gt_masks, tf.where(non_zeros)[:, 0], axis=2)
    crowd_ix = tf.where(gt_class_ids < 0)[:, 0]
    keep_ix = tf.where(gt_class_ids > 0)[:, 0]
    crowd_boxes = tf.gather(gt_boxes, crowd_ix)
    return (tf.gather(gt_class_ids, keep_ix), tf.gather(gt_boxes, keep_ix),
            tf.gather(gt_masks, keep_ix, axis=2), crowd_boxes)


def _pad_targets(positive_rois, negative_rois, class_ids, deltas, masks, rois_per_image):
    """Concatenate positive and negative ROIs and zero pad every target to
    ``rois_per_image`` rows (negative ROIs get class 0, zero deltas and masks)."""
    rois = tf.concat([positive_rois, negative_rois], axis=0)
    n_neg = tf.shape(negative_rois)[0]
    pad = tf.maximum(rois_per_image - tf.shape(rois)[0], 0)
    rois = tf.pad(rois, [(0, pad), (0, 0)])
    class_ids = tf.pad(class_ids, [(0, n_neg + pad)])
    deltas = tf.pad(tf.cast(deltas, tf.float32), [(0, n_neg + pad), (0, 0)])
    masks = tf.pad(masks, [[0, n_neg + pad], (0, 0), (0, 0)])
    return rois, class_ids, deltas, masks


def detection_targets_graph(proposals, gt_class_ids, gt_boxes, gt_masks, *,
                            train_rois_per_image, roi_positive_ratio, bbox_std_dev, mask_shape,
                            use_mini_mask=True, proposals_include_gt=False):
    """Sample training ROIs of one image and build their class, box and mask targets.

    Args:
        proposals: ``[N, 4]`` normalized ``(y1, x1, y2, x2)``, zero padded; gt_class_ids
        ``int32 [G]`` (negative = crowd); gt_boxes ``[G, 4]`` normalized; gt_masks
        ``[h, w, G]`` (mini masks when ``use_mini_mask``, else full size).
        The keyword arguments are the config's TRAIN_ROIS_PER_IMAGE, ROI_POSITIVE_RATIO,
        BBOX_STD_DEV (4 values), MASK_SHAPE, USE_MINI_MASK and PROPOSALS_INCLUDE_GT.
    Returns:
        rois ``[T, 4]``, class_ids ``int32 [T]``, deltas ``[T, 4]`` (divided by bbox_std_dev),
        masks ``[T, MASK_H, MASK_W]``; ``T = train_rois_per_image``, zero padded.
    """
    proposals, _ = trim_zeros_graph(proposals, name="trim_proposals")
    gt_class_ids, gt_boxes, gt_masks, crowd_boxes = _split_gt(gt_class_ids, gt_boxes, gt_masks)
    if proposals_include_gt:
        proposals = tf.concat([gt_boxes, proposals], axis=0)
    positive, negative, overlaps = _sample_rois(
        proposals, {"boxes": gt_boxes, "crowd": crowd_boxes}, train_rois_per_image,
        roi_positive_ratio)
    positive_rois = tf.gather(proposals, positive)
    negative_rois = tf.gather(proposals, negative)
    pos_overlaps = tf.gather(overlaps, positive)
    assignment = tf.cond(tf.greater(tf.shape(pos_overlaps)[1], 0),
                         lambda: tf.argmax(pos_overlaps, axis=1),
                         lambda: tf.cast(tf.constant([]), tf.int64))
    roi_gt_boxes = tf.gather(gt_boxes, assignment)
    roi_gt_class_ids = tf.gather(gt_class_ids, assignment)
    deltas = box_refinement_graph(positive_rois, roi_gt_boxes) / np.asarray(bbox_std_dev)
    roi_masks = tf.gather(tf.expand_dims(tf.transpose(gt_masks, [2, 0, 1]), -1), assignment)
    masks = _roi_mask_targets(positive_rois, roi_gt_boxes, roi_masks, mask_shape, use_mini_mask)
    return _pad_targets(positive_rois, negative_rois, roi_gt_class_ids, deltas, masks,
                        train_rois_per_image)


class DetectionTargetLayer(KL.Layer):
    """Training ROIs and their targets for a batch (see :func:`detection_targets_graph`).

    Inputs: proposals ``[B, N, 4]``, gt_class_ids ``[B, G]``, gt_boxes ``[B, G, 4]``
    (normalized ``(y1, x1, y2, x2)``), gt_masks ``[B, h, w, G]``. Outputs: rois ``[B, T, 4]``,
    target_class_ids ``[B, T]``, target_deltas ``[B, T, 4]``,
    target_mask ``[B, T, MASK_H, MASK_W]``.

    Args:
        batch_size: static B; the other keyword arguments are those of
        :func:`detection_targets_graph`.
    """

    def __init__(self, batch_size, train_rois_per_image, roi_positive_ratio, bbox_std_dev,
                 mask_shape, use_mini_mask=True, proposals_include_gt=False, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = int(batch_size)
        self.target_args = dict(
            train_rois_per_image=int(train_rois_per_image),
            roi_positive_ratio=float(roi_positive_ratio),
            bbox_std_dev=[float(v) for v in np.reshape(bbox_std_dev, [4])],
            mask_shape=[int(v) for v in mask_shape], use_mini_mask=bool(use_mini_mask),
            proposals_include_gt=bool(proposals_include_gt))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(batch_size=self.batch_size, **self.target_args)
        return cfg

    @_no_autograph
    def call(self, inputs):
        names = ["rois", "target_class_ids", "target_bbox", "target_mask"]
        outs = batch_slice(list(inputs), lambda p, c, b, m: detection_targets_graph(
            p, c, b, m, **self.target_args), self.batch_size, names=names)
        for out, shape in zip(outs, self.compute_output_shape(None)):
            out.set_shape((self.batch_size,) + tuple(shape[1:]))
        return outs

    def compute_output_shape(self, input_shape):
        t = self.target_args["train_rois_per_image"]
        return [(None, t, 4), (None, t), (None, t, 4),
                (None, t) + tuple(self.target_args["mask_shape"])]

    def compute_mask(self, inputs, mask=None):
        return [None, None, None, None]


def _keep_detections(class_ids, scores, min_confidence):
    """Indices ``int64 [K]`` of non-background ROIs scoring at least ``min_confidence``
    (no score filter when it is 0)."""
    keep = class_ids > 0
    if min_confidence:
        keep = tf.logical_and(keep, scores >= min_confidence)
    return tf.where(keep)[:, 0]


def refine_detections_graph(rois, probs, deltas, window, *, bbox_std_dev, min_confidence,
                            max_instances, nms_threshold):
    """Final detections of one image: best class per ROI, refined box, per-class NMS.

    Args:
        rois ``[N, 4]`` normalized ``(y1, x1, y2, x2)``, probs ``[N, num_classes]``, deltas
        ``[N, num_classes, 4]`` (divided by bbox_std_dev), window ``[4]`` normalized window
        of the image inside the padded input. Keyword arguments: the config's BBOX_STD_DEV,
        DETECTION_MIN_CONFIDENCE, DETECTION_MAX_INSTANCES and DETECTION_NMS_THRESHOLD.
    Returns:
        ``[max_instances, (y1, x1, y2, x2, class_id, score)]`` zero padded.
    """
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
    idx = tf.stack([tf.range(tf.shape(probs)[0]), class_ids], axis=1)
    scores = tf.gather_nd(probs, idx)
    class_deltas = tf.gather_nd(deltas, idx)
    boxes = apply_box_deltas_graph(rois, class_deltas * np.asarray(bbox_std_dev, np.float32))
    boxes = clip_boxes_graph(boxes, window)
    keep = _keep_detections(class_ids, scores, min_confidence)
    boxes, class_ids, scores = (tf.gather(boxes, keep), tf.gather(class_ids, keep),
                                tf.gather(scores, keep))
    # Per-class NMS as one NMS over boxes shifted apart by class (no cross-class overlap).
    shifted = boxes + 2.0 * tf.cast(class_ids, tf.float32)[:, None]
    nms_keep = tf.image.non_max_suppression(shifted, scores, max_instances, nms_threshold)
    det = tf.concat([tf.gather(boxes, nms_keep),
                     tf.cast(tf.gather(class_ids, nms_keep), tf.float32)[:, None],
                     tf.gather(scores, nms_keep)[:, None]], axis=1)
    pad = max_instances - tf.shape(det)[0]
    return tf.pad(det, [(0, pad), (0, 0)])


class DetectionLayer(KL.Layer):
    """Classifier outputs -> detections ``[B, max_instances, (y1, x1, y2, x2, class_id,
    score)]`` (normalized boxes, zero padded).

    Inputs: rois ``[B, N, 4]``, class probs ``[B, N, C]``, deltas ``[B, N, C, 4]``,
    image_meta ``[B, META]``.

    Args:
        batch_size: static B; the other keyword arguments are those of
        :func:`refine_detections_graph`.
    """

    def __init__(self, batch_size, bbox_std_dev, min_confidence, max_instances, nms_threshold,
                 **kwargs):
        super().__init__(**kwargs)
        self.batch_size = int(batch_size)
        self.refine_args = dict(
            bbox_std_dev=[float(v) for v in np.reshape(bbox_std_dev, [4])],
            min_confidence=float(min_confidence), max_instances=int(max_instances),
            nms_threshold=float(nms_threshold))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(batch_size=self.batch_size, **self.refine_args)
        return cfg

    @_no_autograph
    def call(self, inputs):
        rois, probs, deltas, image_meta = inputs
        meta = parse_image_meta_graph(image_meta)
        shape = meta["image_shape"][0]
        scale = tf.stack([shape[0] - 1, shape[1] - 1, shape[0] - 1, shape[1] - 1])
        window = (meta["window"] - tf.constant([0., 0., 1., 1.])) / scale
        det = batch_slice([rois, probs, deltas, window],
                          lambda r, p, d, w: refine_detections_graph(r, p, d, w,
                                                                     **self.refine_args),
                          self.batch_size)
        return tf.reshape(det, [self.batch_size, self.refine_args["max_instances"], 6])

    def compute_output_shape(self, input_shape):
        return (None, self.refine_args["max_instances"], 6)
