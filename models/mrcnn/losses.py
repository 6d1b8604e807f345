"""The five Mask R-CNN losses (graph functions, each returning a scalar)."""
from __future__ import annotations

import tfcompat
from models.mrcnn.graph_utils import smooth_l1

tf, keras = tfcompat.import_tf()


def _mean_or_zero(x):
    """Mean of ``x``, or 0 when ``x`` is empty (avoids NaN)."""
    return tf.cond(tf.size(x) > 0, lambda: tf.reduce_mean(x), lambda: tf.constant(0.0))


def rpn_class_loss_graph(rpn_match, rpn_class_logits):
    """RPN anchor classifier cross-entropy over non-neutral anchors.

    Args:
        rpn_match: ``int [B, A, 1]`` (1 positive, -1 negative, 0 neutral).
        rpn_class_logits: ``[B, A, 2]`` background/foreground logits.
    """
    rpn_match = tf.squeeze(rpn_match, -1)
    labels = tf.cast(tf.equal(rpn_match, 1), tf.int32)
    idx = tf.where(tf.not_equal(rpn_match, 0))
    logits = tf.gather_nd(rpn_class_logits, idx)
    labels = tf.gather_nd(labels, idx)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _mean_or_zero(loss)


def rpn_bbox_loss_graph(target_bbox, rpn_match, rpn_bbox, images_per_gpu):
    """Smooth-L1 RPN box loss over positive anchors.

    Args:
        target_bbox: ``[B, R, 4]`` deltas of the positive anchors, in order, zero padded.
        rpn_match: ``int [B, A, 1]``; rpn_bbox: predicted deltas ``[B, A, 4]``.
        images_per_gpu: the config's IMAGES_PER_GPU (images of the batch that are used; B on
            this one-device port).
    """
    rpn_match = tf.squeeze(rpn_match, -1)
    idx = tf.where(tf.equal(rpn_match, 1))
    pred = tf.gather_nd(rpn_bbox, idx)
    counts = tf.reduce_sum(tf.cast(tf.equal(rpn_match, 1), tf.int32), axis=1)
    target = tf.concat([target_bbox[i, :counts[i]] for i in range(images_per_gpu)], axis=0)
    return _mean_or_zero(smooth_l1(target, pred))


def mrcnn_class_loss_graph(target_class_ids, pred_class_logits, active_class_ids):
    """Head classifier cross-entropy, ignoring predictions of classes inactive for the dataset.

    Args:
        target_class_ids: ``[B, T]`` (0 = background, also for padding ROIs).
        pred_class_logits: ``[B, T, num_classes]``; active_class_ids: ``[B, num_classes]``.
    """
    target_class_ids = tf.cast(target_class_ids, tf.int64)
    pred_ids = tf.argmax(pred_class_logits, axis=2)
    pred_active = tf.gather(active_class_ids[0], pred_ids)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class_ids,
                                                          logits=pred_class_logits)
    loss = loss * pred_active
    return tf.reduce_sum(loss) / tf.maximum(tf.reduce_sum(pred_active), 1.0)


def mrcnn_bbox_loss_graph(target_bbox, target_class_ids, pred_bbox):
    """Smooth-L1 box loss of positive ROIs for their ground-truth class.

    Args:
        target_bbox: ``[B, T, 4]``; target_class_ids: ``[B, T]``;
        pred_bbox: ``[B, T, num_classes, 4]``.
    """
    ids = tf.reshape(tf.cast(target_class_ids, tf.int64), (-1,))
    target_bbox = tf.reshape(target_bbox, (-1, 4))
    pred_bbox = tf.reshape(pred_bbox, (-1, tf.shape(pred_bbox)[2], 4))
    positive = tf.where(ids > 0)[:, 0]
    idx = tf.stack([positive, tf.gather(ids, positive)], axis=1)
    target = tf.gather(target_bbox, positive)
    pred = tf.gather_nd(pred_bbox, idx)
    return _mean_or_zero(smooth_l1(target, pred))


def mrcnn_mask_loss_graph(target_masks, target_class_ids, pred_masks):
    """Binary cross-entropy of the positive ROIs' masks for their ground-truth class.

    Args:
        target_masks: ``[B, T, h, w]`` in {0, 1}; target_class_ids: ``[B, T]``;
        pred_masks: ``[B, T, h, w, num_classes]`` sigmoid outputs.
    """
    ids = tf.reshape(tf.cast(target_class_ids, tf.int64), (-1,))
    mshape = tf.shape(target_masks)
    target_masks = tf.reshape(target_masks, (-1, mshape[2], mshape[3]))
    pshape = tf.shape(pred_masks)
    pred_masks = tf.reshape(pred_masks, (-1, pshape[2], pshape[3], pshape[4]))
    pred_masks = tf.transpose(pred_masks, [0, 3, 1, 2])
    positive = tf.where(ids > 0)[:, 0]
    idx = tf.stack([positive, tf.gather(ids, positive)], axis=1)
    target = tf.gather(target_masks, positive)
    pred = tf.gather_nd(pred_masks, idx)
    loss = keras.backend.binary_crossentropy(target, pred)
    return _mean_or_zero(loss)
