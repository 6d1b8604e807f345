"""TensorFlow graph helpers of Mask R-CNN (box codec, clipping, batching, image meta).

All boxes here are normalized ``(y1, x1, y2, x2)`` unless a function says otherwise.
"""
from __future__ import annotations

import tfcompat

tf, _keras = tfcompat.import_tf()


def batch_slice(inputs, graph_fn, batch_size: int, names=None):
    """Run ``graph_fn`` on each batch item of ``inputs`` and stack the outputs.

    Args:
        inputs: list of tensors with a leading batch dimension of static size ``batch_size``.
        graph_fn: function of the per-item tensors returning a tensor or a list of tensors.
    Returns:
        A tensor or list of tensors ``[batch_size, ...]``.
    """
    if not isinstance(inputs, list):
        inputs = [inputs]
    outputs = []
    for i in range(batch_size):
        out = graph_fn(*[x[i] for x in inputs])
        if not isinstance(out, (tuple, list)):
            out = [out]
        outputs.append(out)
    outputs = list(zip(*outputs))
    if names is None:
        names = [None] * len(outputs)
    result = [tf.stack(o, axis=0, name=n) for o, n in zip(outputs, names)]
    return result[0] if len(result) == 1 else result


def apply_box_deltas_graph(boxes, deltas):
    """Apply ``[N, (dy, dx, log(dh), log(dw))]`` deltas to ``[N, 4]`` boxes."""
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h = h * tf.exp(deltas[:, 2])
    w = w * tf.exp(deltas[:, 3])
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


def clip_boxes_graph(boxes, window):
    """Clip ``[N, 4]`` boxes to ``window (y1, x1, y2, x2)``."""
    wy1, wx1, wy2, wx2 = tf.split(window, 4)
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=1)
    y1 = tf.maximum(tf.minimum(y1, wy2), wy1)
    x1 = tf.maximum(tf.minimum(x1, wx2), wx1)
    y2 = tf.maximum(tf.minimum(y2, wy2), wy1)
    x2 = tf.maximum(tf.minimum(x2, wx2), wx1)
    clipped = tf.concat([y1, x1, y2, x2], axis=1)
    clipped.set_shape((boxes.shape[0], 4))
    return clipped


def box_refinement_graph(box, gt_box):
    """Deltas ``[N, 4]`` turning ``box`` into ``gt_box`` (both ``[N, 4]``)."""
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return tf.stack([(gcy - cy) / h, (gcx - cx) / w, tf.math.log(gh / h), tf.math.log(gw / w)],
                    axis=1)


def overlaps_graph(boxes1, boxes2):
    """IoU matrix ``[N1, N2]`` of two box sets."""
    b1 = tf.expand_dims(boxes1, 1)
    b2 = tf.expand_dims(boxes2, 0)
    y1 = tf.maximum(b1[..., 0], b2[..., 0])
    x1 = tf.maximum(b1[..., 1], b2[..., 1])
    y2 = tf.minimum(b1[..., 2], b2[..., 2])
    x2 = tf.minimum(b1[..., 3], b2[..., 3])
    inter = tf.maximum(y2 - y1, 0.) * tf.maximum(x2 - x1, 0.)
    a1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    a2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    return inter / tf.maximum(a1 + a2 - inter, 1e-12)


def trim_zeros_graph(boxes, name="trim_zeros"):
    """Remove all-zero rows of ``[N, 4]`` boxes; returns ``(boxes, bool mask [N])``."""
    non_zeros = tf.cast(tf.reduce_sum(tf.abs(boxes), axis=1), tf.bool)
    return tf.boolean_mask(boxes, non_zeros, name=name), non_zeros


def norm_boxes_graph(boxes, shape):
    """Pixel boxes -> normalized boxes for an image of static ``shape (H, W)``."""
    h, w = float(shape[0]), float(shape[1])
    scale = tf.constant([h - 1, w - 1, h - 1, w - 1], dtype=tf.float32)
    shift = tf.constant([0., 0., 1., 1.])
    return tf.divide(tf.cast(boxes, tf.float32) - shift, scale)


def parse_image_meta_graph(meta):
    """Split ``[batch, META]`` image metas into a dict of tensors."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def smooth_l1(y_true, y_pred):
    """Element-wise smooth-L1 (Huber with delta 1) loss."""
    diff = tf.abs(y_true - y_pred)
    small = tf.cast(diff < 1.0, tf.float32)
    return small * 0.5 * diff ** 2 + (1 - small) * (diff - 0.5)
