"""Training inputs of Mask R-CNN: ground truth per image, RPN targets, batches, molding.

A *dataset* is any object with matterport's ``Dataset`` interface: ``image_ids``,
``num_classes``, ``image_info``, ``source_class_ids`` (optional), ``load_image(id) ->
uint8 [H, W, 3]`` and ``load_mask(id) -> (bool [H, W, N], int32 [N])``.
"""
from __future__ import annotations

import numpy as np

from models.mrcnn import utils


def load_image_gt(dataset, config, image_id, rng: np.random.Generator = None,
                  augmentation=None):
    """Load, resize and pack the ground truth of one image.

    Args:
        rng: generator of the random crop (mode "crop") and of ``augmentation``.
        augmentation: optional ``f(image, mask, rng) -> (image, mask)`` applied after
            resizing (shape-preserving), e.g. :class:`HorizontalFlip`.
    Returns:
        ``(image uint8 [S, S, 3], image_meta [META], class_ids int32 [N], boxes int32 [N, 4],
        masks bool [h, w, N])`` where masks are mini masks when ``config.USE_MINI_MASK``.
    """
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
        max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    mask = utils.resize_mask(mask, scale, padding, crop)
    if augmentation is not None:
        image, mask = augmentation(image, mask,
                                   rng if rng is not None else np.random.default_rng(0))
    keep = np.where(np.sum(mask, axis=(0, 1)) > 0)[0]
    mask, class_ids = mask[:, :, keep], np.asarray(class_ids, np.int32)[keep]
    boxes = utils.extract_bboxes(mask)
    active = np.ones([config.NUM_CLASSES], dtype=np.int32)
    if config.USE_MINI_MASK:
        mask = utils.minimize_mask(boxes, mask, config.MINI_MASK_SHAPE)
    meta = utils.compose_image_meta(image_id, original_shape, image.shape, window, scale, active)
    return image, meta, class_ids, boxes, mask


class HorizontalFlip:
    """Training augmentation: flip an image and its masks left-right with probability ``p``
    (the original K's ``imgaug.augmenters.Fliplr(0.5)``).

    Called as ``f(image, mask, rng) -> (image, mask)`` by :func:`load_image_gt` after
    resizing; one ``rng.random()`` draw per image decides, so a seeded generator gives the
    same flips again.  Boxes follow because they are extracted from the flipped masks; class
    ids are unchanged.
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError("flip probability must be in [0, 1], got %r" % (p,))
        self.p = float(p)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if rng.random() < self.p:
            return image[:, ::-1].copy(), mask[:, ::-1].copy()
        return image, mask

    def __repr__(self):
        return "HorizontalFlip(p=%g)" % self.p


def default_augmentation(config):
    """The training augmentation a configuration asks for: :class:`HorizontalFlip` with
    ``config.TRAIN_HFLIP_PROB`` when it is > 0, else None."""
    p = float(getattr(config, "TRAIN_HFLIP_PROB", 0.0) or 0.0)
    return HorizontalFlip(p) if p > 0 else None


def build_rpn_targets(anchors: np.ndarray, gt_class_ids: np.ndarray, gt_boxes: np.ndarray,
                      config, rng: np.random.Generator):
    """Anchor labels and box deltas for the RPN, following the matterport code of the original
    UnMask K.

    1. Crowd boxes (negative class ids) are set aside; an anchor overlapping a crowd box
       (IoU >= 0.001) is never negative.
    2. Negative: the anchor's best IoU with a ground-truth box is < 0.3 (and no crowd).
    3. Positive: for each ground-truth box, its single arg-max IoU anchor (``np.argmax`` over
       the anchors, so the first of tied anchors, anchor 0 when the box overlaps none), then
       every anchor with IoU >= 0.7.
    4. Random positives are reset to neutral until at most RPN_TRAIN_ANCHORS_PER_IMAGE // 2
       remain, then random negatives until positives + negatives <= RPN_TRAIN_ANCHORS_PER_IMAGE.
    5. Each kept positive, in anchor order, gets the deltas to its best-IoU box
       ``(dy / h, dx / w, log(gh / h), log(gw / w)) / RPN_BBOX_STD_DEV`` (float64 arithmetic).

    Matterport never builds targets for an image without (non-crowd) boxes (its generator
    skips such images); here every anchor not overlapping a crowd box is then negative before
    the sampling of step 4.

    Args:
        anchors: pixel anchors ``[A, (y1, x1, y2, x2)]``.
        gt_class_ids: ``[N]``; negative ids mark crowd boxes (never positive).
        gt_boxes: pixel boxes ``[N, 4]``.
        rng: generator of the random sub-sampling.
    Returns:
        ``rpn_match int32 [A]`` (1 positive, -1 negative, 0 neutral) and ``rpn_bbox
        float32 [RPN_TRAIN_ANCHORS_PER_IMAGE, 4]`` deltas of the positives (zero padded).
    """
    gt_class_ids = np.asarray(gt_class_ids)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), dtype=np.float64)
    crowd = gt_class_ids < 0
    no_crowd = np.ones([anchors.shape[0]], dtype=bool)
    if crowd.any():
        crowd_overlaps = utils.compute_overlaps(anchors, gt_boxes[crowd])
        no_crowd = np.amax(crowd_overlaps, axis=1) < 0.001
        gt_boxes = gt_boxes[gt_class_ids > 0]
    if gt_boxes.shape[0] == 0:
        rpn_match[no_crowd] = -1
        _subsample(rpn_match, -1, config.RPN_TRAIN_ANCHORS_PER_IMAGE, rng)
        return rpn_match, rpn_bbox.astype(np.float32)
    overlaps = utils.compute_overlaps(anchors, gt_boxes)
    best_gt = np.argmax(overlaps, axis=1)
    best_iou = overlaps[np.arange(overlaps.shape[0]), best_gt]
    rpn_match[(best_iou < 0.3) & no_crowd] = -1
    rpn_match[np.argmax(overlaps, axis=0)] = 1
    rpn_match[best_iou >= 0.7] = 1
    _subsample(rpn_match, 1, config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2, rng)
    n_pos = int(np.sum(rpn_match == 1))
    _subsample(rpn_match, -1, config.RPN_TRAIN_ANCHORS_PER_IMAGE - n_pos, rng)
    pos = np.where(rpn_match == 1)[0]
    rpn_bbox[:len(pos)] = (_anchor_deltas(anchors[pos], gt_boxes[best_gt[pos]])
                           / np.asarray(config.RPN_BBOX_STD_DEV, np.float64))
    return rpn_match, rpn_bbox.astype(np.float32)


def _anchor_deltas(anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[N, (dy, dx, log(dh), log(dw))]`` from anchors to boxes in float64 (matterport's RPN
    target arithmetic; :func:`utils.box_refinement` works in float32)."""
    a = np.asarray(anchors, np.float64)
    b = np.asarray(boxes, np.float64)
    ah, aw = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    bh, bw = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    acy, acx = a[:, 0] + .5 * ah, a[:, 1] + .5 * aw
    bcy, bcx = b[:, 0] + .5 * bh, b[:, 1] + .5 * bw
    return np.stack([(bcy - acy) / ah, (bcx - acx) / aw, np.log(bh / ah), np.log(bw / aw)],
                    axis=1)


def _subsample(rpn_match: np.ndarray, value: int, limit: int, rng) -> None:
    """Reset random entries equal to ``value`` to 0 until at most ``limit`` remain."""
    idx = np.where(rpn_match == value)[0]
    if len(idx) > limit:
        rpn_match[rng.choice(idx, size=len(idx) - limit, replace=False)] = 0


#: Upper bound of the memory :class:`GroundTruthCache` may hold for one dataset (bytes).
GT_CACHE_BYTES = 512 * 2 ** 20


class GroundTruthCache:
    """Memo of :func:`load_image_gt` for training runs where it is a pure function of the
    image id: no augmentation and a resize mode without a random crop.

    The synthetic K spends ~70% of its batch preparation decoding masks and making mini masks
    that are the same every epoch; the cached arrays are read-only (a consumer that writes
    into them fails loudly instead of corrupting later batches) and the random generator is
    not touched, so the batches are exactly those of the uncached path.  Nothing is cached
    when the dataset's ground truth would exceed :data:`GT_CACHE_BYTES` (e.g. the original
    1024-pixel K), or for a random crop or an augmentation; images with more instances than
    estimated stop the caching once the bytes actually held reach the bound.
    """

    def __init__(self, dataset, config, augmentation=None):
        self.dataset, self.config = dataset, config
        per_image = (int(np.prod(config.IMAGE_SHAPE))
                     + int(np.prod(config.MINI_MASK_SHAPE if config.USE_MINI_MASK
                                   else config.IMAGE_SHAPE[:2])) * config.MAX_GT_INSTANCES)
        self.enabled = (augmentation is None and config.IMAGE_RESIZE_MODE != "crop"
                        and per_image * len(dataset.image_ids) <= GT_CACHE_BYTES)
        self._items, self.bytes = {}, 0

    def load(self, image_id, rng: np.random.Generator, augmentation=None):
        """:func:`load_image_gt` of ``image_id`` (cached when enabled)."""
        if not self.enabled:
            return load_image_gt(self.dataset, self.config, image_id, rng, augmentation)
        item = self._items.get(image_id)
        if item is None:
            item = load_image_gt(self.dataset, self.config, image_id, rng, None)
            size = sum(int(array.nbytes) for array in item)
            if self.bytes + size <= GT_CACHE_BYTES:
                for array in item:
                    array.flags.writeable = False
                self._items[image_id] = item
                self.bytes += size
        return item


def build_batch(dataset, config, image_ids, rng: np.random.Generator,
                augmentation=None, cache: GroundTruthCache = None) -> dict:
    """Training inputs for ``image_ids`` (one batch), keyed by the model's input names.

    Returns a dict: input_image ``float [B, S, S, 3]`` (molded), input_image_meta,
    input_rpn_match ``[B, A, 1]``, input_rpn_bbox ``[B, R, 4]``, input_gt_class_ids
    ``[B, G]``, input_gt_boxes ``[B, G, 4]`` (pixels), input_gt_masks ``[B, h, w, G]``.
    """
    anchors = utils.get_pixel_anchors(config, config.IMAGE_SHAPE)
    b, g = len(image_ids), config.MAX_GT_INSTANCES
    mask_shape = (tuple(config.MINI_MASK_SHAPE) if config.USE_MINI_MASK
                  else tuple(config.IMAGE_SHAPE[:2]))
    out = {
        "input_image": np.zeros((b,) + tuple(config.IMAGE_SHAPE), np.float32),
        "input_image_meta": np.zeros((b, config.IMAGE_META_SIZE), np.float32),
        "input_rpn_match": np.zeros((b, anchors.shape[0], 1), np.int32),
        "input_rpn_bbox": np.zeros((b, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
        "input_gt_class_ids": np.zeros((b, g), np.int32),
        "input_gt_boxes": np.zeros((b, g, 4), np.int32),
        "input_gt_masks": np.zeros((b,) + mask_shape + (g,), bool),
    }
    for i, image_id in enumerate(image_ids):
        image, meta, class_ids, boxes, masks = (
            cache.load(image_id, rng, augmentation) if cache is not None
            else load_image_gt(dataset, config, image_id, rng, augmentation))
        if boxes.shape[0] > g:
            keep = rng.choice(np.arange(boxes.shape[0]), g, replace=False)
            class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[:, :, keep]
        rpn_match, rpn_bbox = build_rpn_targets(anchors, class_ids, boxes, config, rng)
        n = boxes.shape[0]
        out["input_image"][i] = utils.mold_image(image, config)
        out["input_image_meta"][i] = meta
        out["input_rpn_match"][i, :, 0] = rpn_match
        out["input_rpn_bbox"][i] = rpn_bbox
        out["input_gt_class_ids"][i, :n] = class_ids
        out["input_gt_boxes"][i, :n] = boxes
        out["input_gt_masks"][i, :, :, :n] = masks
    return out


def batch_iterator(dataset, config, rng: np.random.Generator, shuffle: bool = True,
                   augmentation=None):
    """Endless generator of training batches (dicts of :func:`build_batch`).

    Images without any instance are skipped, as matterport does.  The ground truth of each
    image is loaded once when that gives the same batches (:class:`GroundTruthCache`).
    """
    cache = GroundTruthCache(dataset, config, augmentation)
    ids = [i for i in dataset.image_ids if _has_instances(dataset, i)]
    if not ids:
        raise ValueError("the training dataset has no image with annotated parts")
    pos = len(ids)
    order = np.array(ids)
    while True:
        batch = []
        while len(batch) < config.BATCH_SIZE:
            if pos >= len(order):
                order = rng.permutation(ids) if shuffle else np.array(ids)
                pos = 0
            batch.append(int(order[pos]))
            pos += 1
        yield build_batch(dataset, config, batch, rng, augmentation, cache)


def _has_instances(dataset, image_id) -> bool:
    """True when the image has at least one annotation (uses image_info when available)."""
    info = dataset.image_info[image_id]
    if isinstance(info, dict) and "annotations" in info:
        return len(info["annotations"]) > 0
    return dataset.load_mask(image_id)[1].size > 0


def _channel_hint(shape) -> str:
    """How to turn an image of ``shape`` into RGB ``[H, W, 3]``."""
    if len(shape) == 2:
        return "grayscale: use np.stack([image] * 3, axis=-1)"
    if len(shape) == 3 and shape[-1] == 1:
        return "single channel: use np.repeat(image, 3, axis=-1)"
    if len(shape) == 3 and shape[-1] == 4:
        return "RGBA: drop the alpha channel with image[..., :3]"
    return "pass one RGB image [H, W, 3] per entry"


#: Pixels of K's input images are 0..255; float round-off of a resize may leave them this far
#: outside.
PIXEL_TOLERANCE = 0.5


def image_batch(images, name: str = "images") -> list:
    """``images`` -- a ``[B, H, W, 3]`` array or a sequence of ``[H, W, 3]`` arrays -- as a
    list of images (each checked later by :func:`check_rgb_image`).

    Raises:
        ValueError: naming ``name`` when it is no batch (None, a string, one image alone).
    """
    if images is None or isinstance(images, (str, bytes)) or not (
            isinstance(images, np.ndarray) or hasattr(images, "__iter__")):
        raise ValueError("%s must be a batch: a [B, H, W, 3] array or a list of [H, W, 3] "
                         "arrays, got %s" % (name, type(images).__name__))
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] in (1, 3, 4) and images.shape[0] > 4:
            raise ValueError("%s must be a batch [B, H, W, 3]; got one image of shape %s "
                             "(wrap it in a list)" % (name, images.shape))
        if images.ndim != 4:
            raise ValueError("%s must have shape [B, H, W, 3], got %s" % (name, images.shape))
    return list(images)


def check_rgb_image(image, index: int) -> np.ndarray:
    """Validate one input image of K; returns it as an array (not copied, not rescaled).

    Raises:
        ValueError: naming ``images[index]`` when it is not a real ``[H, W, 3]`` array of at
            least 2x2 finite pixels in 0..255 (wrong channel count: with the conversion to
            use; out of range: with the scale expected).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError("images[%d] must be RGB [H, W, 3]; got shape %s (wrong channel "
                         "count; %s)" % (index, image.shape, _channel_hint(image.shape)))
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ValueError("images[%d] must hold numbers, got dtype %s" % (index, image.dtype))
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError("images[%d] is too small: %s (K needs at least 2x2 pixels)"
                         % (index, image.shape))
    if np.iscomplexobj(image):
        raise ValueError("images[%d] must hold real numbers, got dtype %s" % (index, image.dtype))
    if not np.all(np.isfinite(image)):
        raise ValueError("images[%d] contains NaN or infinite pixels" % index)
    low, high = float(image.min()), float(image.max())
    if low < -PIXEL_TOLERANCE or high > 255 + PIXEL_TOLERANCE:
        raise ValueError("images[%d] must hold pixels in 0..255, got range %g..%g (uint8 "
                         "images as they are; [0, 1] floats times 255)" % (index, low, high))
    return image


def mold_inputs(images, config):
    """Resize and mold raw RGB images for inference.

    Args:
        images: list of ``[H, W, 3]`` arrays with 0..255 values (checked with
            :func:`check_rgb_image`).
    Returns:
        ``(molded float [B, S, S, 3], image_metas [B, META], windows int [B, 4])``.
    """
    molded, metas, windows = [], [], []
    for index, image in enumerate(images):
        image = check_rgb_image(image, index)
        resized, window, scale, _padding, _crop = utils.resize_image(
            image, min_dim=config.IMAGE_MIN_DIM, min_scale=config.IMAGE_MIN_SCALE,
            max_dim=config.IMAGE_MAX_DIM, mode=config.IMAGE_RESIZE_MODE)
        molded.append(utils.mold_image(resized, config))
        metas.append(utils.compose_image_meta(0, image.shape, resized.shape, window, scale,
                                              np.zeros([config.NUM_CLASSES], np.int32)))
        windows.append(window)
    return np.stack(molded), np.stack(metas), np.array(windows)


def unmold_boxes(detections: np.ndarray, original_image_shape, image_shape, window):
    """Boxes, class ids and scores of one image's network detections, as matterport's
    ``unmold_detections`` computes them (without the masks).

    The detections up to the first row of class 0 (zero padding) are taken, their normalized
    boxes are mapped from ``window`` of the molded input to ``int32`` pixels of the original
    image, and detections whose box area ``(y2 - y1) * (x2 - x1)`` is <= 0 are dropped.

    Returns:
        ``(boxes int32 [n, 4], class_ids int32 [n], scores float32 [n], rows int [n])`` where
        ``rows`` are the indices of the kept detections.
    """
    detections = np.asarray(detections)
    zero = np.where(detections[:, 4] == 0)[0]
    n = zero[0] if zero.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5].astype(np.float32)
    win = utils.norm_boxes(np.array(window), image_shape[:2])
    wy1, wx1, wy2, wx2 = win
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = utils.denorm_boxes(np.divide(boxes - shift, scale), original_image_shape[:2])
    rows = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)[0]
    return boxes[rows], class_ids[rows], scores[rows], rows


def unmold_detections(detections: np.ndarray, mrcnn_mask: np.ndarray, original_image_shape,
                      image_shape, window):
    """Convert one image's network detections to pixel boxes/masks of the original image.

    Detections with a zero-area box (after mapping to the original image) are dropped, as in
    matterport (see :func:`unmold_boxes`).

    Args:
        detections: ``[N, (y1, x1, y2, x2, class_id, score)]`` normalized, zero padded.
        mrcnn_mask: ``[N, h, w, num_classes]`` mask-head output.
        original_image_shape: ``(H, W, C)`` before resizing; image_shape after resizing.
        window: ``(y1, x1, y2, x2)`` pixel window of the image inside the molded input.
    Returns:
        ``(boxes int32 [n, 4], class_ids int32 [n], scores float32 [n], masks bool [H, W, n])``.
    """
    boxes, class_ids, scores, rows = unmold_boxes(detections, original_image_shape,
                                                  image_shape, window)
    masks = mrcnn_mask[rows, :, :, class_ids]
    full = [utils.unmold_mask(masks[i], boxes[i], original_image_shape)
            for i in range(len(rows))]
    full = (np.stack(full, axis=-1) if full
            else np.zeros(tuple(original_image_shape[:2]) + (0,), dtype=bool))
    return boxes, class_ids, scores, full
