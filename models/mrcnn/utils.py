"""NumPy utilities of Mask R-CNN: boxes, IoU, anchors, masks, image resizing and AP.

Conventions: boxes are ``[N, (y1, x1, y2, x2)]`` in pixels where ``(y2, x2)`` is *outside*
the box (a box covering row 0 only is ``(0, x1, 1, x2)``); "normalized" boxes divide by
``(H - 1, W - 1)`` with the outside corner shifted by 1, as matterport does.  Masks are
``bool [H, W, N]``.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import skimage.transform


# ---------------------------------------------------------------------------- boxes
def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """Tight boxes of instance masks.

    Args:
        mask: ``bool [H, W, N]``.
    Returns:
        ``int32 [N, (y1, x1, y2, x2)]``; all zeros for an empty mask.
    """
    boxes = np.zeros([mask.shape[-1], 4], dtype=np.int32)
    for i in range(mask.shape[-1]):
        rows = np.where(np.any(mask[:, :, i], axis=1))[0]
        cols = np.where(np.any(mask[:, :, i], axis=0))[0]
        if rows.size:
            boxes[i] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    return boxes


def compute_iou(box: np.ndarray, boxes: np.ndarray, box_area: float,
                boxes_area: np.ndarray) -> np.ndarray:
    """IoU of one box ``[(y1, x1, y2, x2)]`` with ``boxes [N, 4]``; returns ``[N]``."""
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = box_area + boxes_area - inter
    return inter / np.maximum(union, 1e-12)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[N, (y1, x1, y2, x2)]`` boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix ``[N1, N2]`` of two box sets ``[N, (y1, x1, y2, x2)]``."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    overlaps = np.zeros((boxes1.shape[0], boxes2.shape[0]))
    for j in range(boxes2.shape[0]):
        overlaps[:, j] = compute_iou(boxes2[j], boxes1, area2[j], area1)
    return overlaps


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """Mask IoU matrix ``[N1, N2]`` of ``[H, W, N1]`` and ``[H, W, N2]`` masks."""
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    m1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    inter = m1.T @ m2
    union = m1.sum(0)[:, None] + m2.sum(0)[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS; returns the kept indices (``int32``) in decreasing score order."""
    if boxes.shape[0] == 0:
        return np.zeros([0], np.int32)
    boxes = boxes.astype(np.float32)
    areas = box_area(boxes)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        iou = compute_iou(boxes[i], boxes[order[1:]], areas[i], areas[order[1:]])
        order = order[1:][iou <= threshold]
    return np.array(keep, dtype=np.int32)


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Deltas ``[N, (dy, dx, log(dh), log(dw))]`` that turn ``box`` into ``gt_box``."""
    box = box.astype(np.float32)
    gt_box = gt_box.astype(np.float32)
    h, w = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    cy, cx = box[:, 0] + .5 * h, box[:, 1] + .5 * w
    gh, gw = gt_box[:, 2] - gt_box[:, 0], gt_box[:, 3] - gt_box[:, 1]
    gcy, gcx = gt_box[:, 0] + .5 * gh, gt_box[:, 1] + .5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)], axis=1)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of :func:`box_refinement`: apply ``[N, 4]`` deltas to ``[N, 4]`` boxes."""
    boxes = boxes.astype(np.float32)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cy, cx = boxes[:, 0] + .5 * h, boxes[:, 1] + .5 * w
    cy, cx = cy + deltas[:, 0] * h, cx + deltas[:, 1] * w
    h, w = h * np.exp(deltas[:, 2]), w * np.exp(deltas[:, 3])
    return np.stack([cy - .5 * h, cx - .5 * w, cy + .5 * h, cx + .5 * w], axis=1)


def norm_boxes(boxes: np.ndarray, shape) -> np.ndarray:
    """Pixel boxes -> normalized ``[0, 1]`` boxes for an image of ``shape (H, W)``."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide(boxes - shift, scale).astype(np.float32)


def denorm_boxes(boxes: np.ndarray, shape) -> np.ndarray:
    """Normalized boxes -> ``int32`` pixel boxes (inverse of :func:`norm_boxes`)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


def trim_zeros(x: np.ndarray) -> np.ndarray:
    """Drop the all-zero rows (padding) of a ``[N, ...]`` array."""
    return x[~np.all(x == 0, axis=tuple(range(1, x.ndim)))] if x.ndim > 1 else x[x != 0]


# ---------------------------------------------------------------------------- anchors
def generate_anchors(scale: float, ratios, shape, feature_stride: int,
                     anchor_stride: int) -> np.ndarray:
    """Anchors of one pyramid level.

    Args:
        scale: anchor side in pixels (for ratio 1).
        ratios: width/height ratios.
        shape: feature-map ``(rows, cols)``.
        feature_stride: pixels per feature-map cell.
        anchor_stride: place anchors every ``anchor_stride`` cells.
    Returns:
        ``float [rows * cols * len(ratios), (y1, x1, y2, x2)]`` pixel boxes, ratios varying
        fastest, then columns, then rows.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)
    widths = scale * np.sqrt(ratios)
    ys = np.arange(0, shape[0], anchor_stride) * feature_stride
    xs = np.arange(0, shape[1], anchor_stride) * feature_stride
    xs, ys = np.meshgrid(xs, ys)
    w, cx = np.meshgrid(widths, xs)
    h, cy = np.meshgrid(heights, ys)
    centers = np.stack([cy, cx], axis=2).reshape([-1, 2])
    sizes = np.stack([h, w], axis=2).reshape([-1, 2])
    return np.concatenate([centers - .5 * sizes, centers + .5 * sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides,
                             anchor_stride) -> np.ndarray:
    """Anchors of all levels concatenated, level P2 first; ``[A, (y1, x1, y2, x2)]`` pixels."""
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i], anchor_stride)
        for i in range(len(scales))], axis=0)


def compute_backbone_shapes(config, image_shape) -> np.ndarray:
    """Feature-map ``[levels, (rows, cols)]`` of the backbone for ``image_shape``."""
    if callable(config.COMPUTE_BACKBONE_SHAPE):
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in config.BACKBONE_STRIDES])


_ANCHOR_CACHE = {}


def get_anchors(config, image_shape) -> np.ndarray:
    """Normalized pyramid anchors ``[A, 4]`` for ``image_shape`` (cached per shape)."""
    key = (tuple(image_shape[:2]), tuple(config.RPN_ANCHOR_SCALES),
           tuple(np.ravel(config.RPN_ANCHOR_RATIOS)), tuple(config.BACKBONE_STRIDES),
           config.RPN_ANCHOR_STRIDE)
    if key not in _ANCHOR_CACHE:
        shapes = compute_backbone_shapes(config, image_shape)
        anchors = generate_pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS,
                                           shapes, config.BACKBONE_STRIDES,
                                           config.RPN_ANCHOR_STRIDE)
        _ANCHOR_CACHE[key] = (anchors, norm_boxes(anchors, image_shape[:2]))
    return _ANCHOR_CACHE[key][1]


def get_pixel_anchors(config, image_shape) -> np.ndarray:
    """Pixel pyramid anchors ``[A, 4]`` for ``image_shape``."""
    get_anchors(config, image_shape)
    key = (tuple(image_shape[:2]), tuple(config.RPN_ANCHOR_SCALES),
           tuple(np.ravel(config.RPN_ANCHOR_RATIOS)), tuple(config.BACKBONE_STRIDES),
           config.RPN_ANCHOR_STRIDE)
    return _ANCHOR_CACHE[key][0]


# ---------------------------------------------------------------------------- resizing
def _resize(image: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """Resize keeping the value range and dtype (bilinear by default)."""
    if tuple(image.shape[:2]) == tuple(shape[:2]):
        return image
    out = skimage.transform.resize(image, shape, order=order, mode="constant", cval=0,
                                   clip=True, preserve_range=True, anti_aliasing=False)
    return out.astype(image.dtype)


def resize_image(image: np.ndarray, min_dim=None, max_dim=None, min_scale=None,
                 mode: str = "square", rng: np.random.Generator = None):
    """Resize an image as matterport does.

    Args:
        image: ``[H, W, C]`` array.
        mode: "none" (unchanged), "square" (scale so the short side >= min_dim and the long
            side <= max_dim, then zero-pad to ``max_dim x max_dim``), "pad64" (pad to
            multiples of 64), "crop" (random ``min_dim`` square crop; training only).
    Returns:
        ``(image, window, scale, padding, crop)``: window ``(y1, x1, y2, x2)`` of the image
        inside the padded result, the scale factor, ``[(top, bottom), (left, right), (0, 0)]``
        padding and the crop ``(y, x, h, w)`` or None.
    """
    image_dtype = image.dtype
    h, w = image.shape[:2]
    window, scale, padding, crop = (0, 0, h, w), 1, [(0, 0), (0, 0), (0, 0)], None
    if mode == "none":
        return image, window, scale, padding, crop
    if min_dim:
        scale = max(1, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square" and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    if scale != 1:
        image = _resize(image, (round(h * scale), round(w * scale)))
    h, w = image.shape[:2]
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (top, left, h + top, w + left)
    elif mode == "pad64":
        if min_dim % 64:
            raise ValueError("resize_image: min_dim must be a multiple of 64 for pad64")
        pad_h = (64 - h % 64) % 64
        pad_w = (64 - w % 64) % 64
        padding = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (pad_h // 2, pad_w // 2, h + pad_h // 2, w + pad_w // 2)
    elif mode == "crop":
        rng = rng or np.random.default_rng(0)
        y = int(rng.integers(0, h - min_dim + 1))
        x = int(rng.integers(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    else:
        raise ValueError("resize_image: unknown mode %r" % mode)
    return image.astype(image_dtype), window, scale, padding, crop


def resize_mask(mask: np.ndarray, scale: float, padding, crop=None) -> np.ndarray:
    """Apply the scale/padding/crop of :func:`resize_image` to ``bool [H, W, N]`` masks.

    As matterport: nearest-neighbour ``scipy.ndimage.zoom(mask, [scale, scale, 1],
    order=0)`` (output size ``round(H * scale) x round(W * scale)``, output pixel ``i`` taken
    from input pixel ``round(i * (H - 1) / (round(H * scale) - 1))``), then the crop or the
    zero padding.
    """
    mask = np.asarray(mask)
    if scale != 1:
        mask = scipy.ndimage.zoom(mask, zoom=[scale, scale, 1], order=0)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding, mode="constant", constant_values=0)


def _resize_binary(mask: np.ndarray, shape) -> np.ndarray:
    """Bilinear resize of a binary mask computed in float64 (as matterport's skimage call on
    a bool mask), rounded half-to-even: a pixel is on when its interpolated value is
    strictly above 0.5 (``np.around(0.5) == 0``)."""
    out = _resize(mask.astype(bool).astype(np.float64), shape)
    return np.around(out).astype(bool)


def minimize_mask(bbox: np.ndarray, mask: np.ndarray, mini_shape) -> np.ndarray:
    """Crop each mask to its box and resize to ``mini_shape``: ``bool [h, w, N]``.

    Matterport's arithmetic: the crop is cast to bool, resized bilinearly in float64 and
    rounded (on when > 0.5).  An empty box leaves an empty mini mask (matterport raises).
    """
    mini = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        m = mask[y1:y2, x1:x2, i]
        if m.size == 0:
            continue
        mini[:, :, i] = _resize_binary(m, mini_shape)
    return mini


def expand_mask(bbox: np.ndarray, mini_mask: np.ndarray, image_shape) -> np.ndarray:
    """Inverse of :func:`minimize_mask`: paste mini masks back at their boxes (bilinear resize
    in float64, on when > 0.5, as matterport)."""
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        if y2 <= y1 or x2 <= x1:
            continue
        mask[y1:y2, x1:x2, i] = _resize_binary(mini_mask[:, :, i], (y2 - y1, x2 - x1))
    return mask


def unmold_mask(mask: np.ndarray, bbox, image_shape) -> np.ndarray:
    """Paste a ``float [h, w]`` mask-head output into a ``bool [H, W]`` image mask (bilinear
    resize to the box in float64, on when >= 0.5, as matterport)."""
    threshold = 0.5
    y1, x1, y2, x2 = bbox
    full = np.zeros(tuple(image_shape[:2]), dtype=bool)
    if y2 <= y1 or x2 <= x1:
        return full
    m = _resize(mask.astype(np.float64), (y2 - y1, x2 - x1))
    full[y1:y2, x1:x2] = m >= threshold
    return full


# ---------------------------------------------------------------------------- meta / molding
def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids) -> np.ndarray:
    """Pack image attributes into one ``float [IMAGE_META_SIZE]`` vector."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape) + list(window)
                    + [scale] + list(active_class_ids), dtype=np.float32)


def parse_image_meta(meta: np.ndarray) -> dict:
    """Unpack ``[batch, IMAGE_META_SIZE]`` image metas into a dict of arrays."""
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


def mold_image(images: np.ndarray, config) -> np.ndarray:
    """RGB pixels (0..255) -> float32 network input (mean pixel subtracted)."""
    return images.astype(np.float32) - config.MEAN_PIXEL


def unmold_image(normalized: np.ndarray, config) -> np.ndarray:
    """Inverse of :func:`mold_image`: network input -> ``uint8`` RGB."""
    return np.clip(normalized + config.MEAN_PIXEL, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- evaluation
def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
                    pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Greedy matching of predictions to ground truth by mask IoU (same class only).

    Returns:
        ``(gt_match [G], pred_match [P], overlaps [P, G])``: index of the matched partner or
        -1; predictions are sorted by decreasing score first.
    """
    gt_boxes = trim_zeros(gt_boxes)
    gt_masks = gt_masks[..., :gt_boxes.shape[0]]
    pred_boxes = trim_zeros(pred_boxes)
    pred_scores = pred_scores[:pred_boxes.shape[0]]
    order = np.argsort(pred_scores)[::-1]
    pred_boxes, pred_class_ids = pred_boxes[order], pred_class_ids[order]
    pred_scores, pred_masks = pred_scores[order], pred_masks[..., order]
    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    for i in range(len(pred_boxes)):
        for j in np.argsort(overlaps[i])[::-1]:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold or overlaps[i, j] < score_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j], pred_match[i] = i, j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """Average precision at ``iou_threshold`` (matterport / VOC all-point interpolation).

    The precision/recall arithmetic is matterport's, with no special case for empty inputs
    (the original UnMask code's ``compute_ap``, whose ``compute_overlaps_masks`` returns an
    empty ``[P, G]`` matrix when either side is empty):

    * no ground truth and no prediction: AP 0.0 (precisions ``[0, 0]``, recalls ``[0, 1]``);
    * no ground truth, ``P > 0`` predictions: every recall is 0/0, so AP is NaN;
    * ground truth but no prediction: AP 0.0.

    Returns:
        ``(mAP, precisions, recalls, overlaps)``.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = hits.astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    idx = np.where(recalls[:-1] != recalls[1:])[0] + 1
    m_ap = float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))
    return m_ap, precisions, recalls, overlaps
