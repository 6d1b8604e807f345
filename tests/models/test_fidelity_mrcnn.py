"""Model K computes what the original UnMask code (its vendored matterport Mask R-CNN) computes.

Each test builds a small hand-made case and states the original's answer, worked out from the
original's rules (restated in the test, not taken from its code):

* RPN targets: one arg-max anchor per ground-truth box (``np.argmax`` over anchors), plus
  IoU >= 0.7; negatives IoU < 0.3 away from crowd boxes; at most half positives.
* ``resize_mask``: ``scipy.ndimage.zoom(order=0)``, i.e. output pixel ``i`` copies input
  pixel ``round(i * (n - 1) / (m - 1))``.
* ``compute_ap`` without ground truth: plain precision/recall arithmetic (0/0 recalls).
* ``unmold_detections``: detections whose pixel box has area <= 0 are dropped.
* Training augmentation of the original K: left-right flips with p = 0.5 in every stage.
* Float images reach K as ``uint8`` by truncation (torchvision ``ToPILImage``).
* ``minimize_mask``/``expand_mask``: bilinear resize in float64, ``np.around`` (> 0.5).
"""
import math
import types

import numpy as np
import pytest
import skimage.transform

from mrcnn_config import (PartsConfig, SyntheticPartsConfig, TinyTestConfig, config_key,
                          get_config)
from models.mrcnn import data_gen, utils

STD = np.array([0.1, 0.1, 0.2, 0.2])


# ----------------------------------------------------------------------------- RPN targets
def _cfg(anchors_per_image=256):
    return types.SimpleNamespace(RPN_TRAIN_ANCHORS_PER_IMAGE=anchors_per_image,
                                 RPN_BBOX_STD_DEV=STD)


# four 10x10 anchors: a0 top-left, a1 below it, a2 right of it, a3 far away
ANCHORS = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [50, 50, 60, 60]],
                   np.float64)


def test_rpn_tied_anchors_only_the_first_is_positive():
    # g0 overlaps a0 and a2 by 50 px each: IoU 50 / (100 + 200 - 50) = 0.2 for both (a tie,
    # below 0.3).  The original marks np.argmax over anchors = a0 only; a2 stays negative.
    gt = np.array([[0, 5, 10, 25]])
    match, bbox = data_gen.build_rpn_targets(ANCHORS, np.array([1]), gt, _cfg(),
                                             np.random.default_rng(0))
    assert match.tolist() == [1, -1, -1, -1]
    # a0 (centre 5,5, 10x10) -> g0 (centre 5,15, 10x20): (0, 1, log 1, log 2) / std
    np.testing.assert_allclose(bbox[0], np.array([0, 1, 0, math.log(2)]) / STD, rtol=1e-6)
    assert not bbox[1:].any()


def test_rpn_box_overlapping_no_anchor_marks_anchor_zero_only():
    # Every IoU is 0: np.argmax of an all-zero column is anchor 0; the others are negative
    # (the old port marked every zero-IoU anchor, i.e. all four, positive).
    gt = np.array([[80, 80, 90, 90]])
    match, bbox = data_gen.build_rpn_targets(ANCHORS, np.array([1]), gt, _cfg(),
                                             np.random.default_rng(0))
    assert match.tolist() == [1, -1, -1, -1]
    # a0 centre (5, 5) -> box centre (85, 85), same size: (8, 8, 0, 0) / std
    np.testing.assert_allclose(bbox[0], [80, 80, 0, 0], rtol=1e-6)


def test_rpn_high_iou_anchor_wins_and_crowd_anchors_are_neutral():
    # a4 covers 190 of g0's 200 px: IoU 0.95 >= 0.7 and it is g0's arg-max, so a0 (0.2) is
    # negative; a crowd box on a3 makes a3 neutral instead of negative.
    anchors = np.vstack([ANCHORS, [[0, 5, 10, 24]]])
    gt = np.array([[0, 5, 10, 25], [50, 50, 60, 60]])
    match, bbox = data_gen.build_rpn_targets(anchors, np.array([1, -1]), gt, _cfg(),
                                             np.random.default_rng(0))
    assert match.tolist() == [-1, -1, -1, 0, 1]
    # a4 (centre 5,14.5, 10x19) -> g0 (centre 5,15, 10x20)
    expected = np.array([0, 0.5 / 19, 0, math.log(20 / 19)]) / STD
    np.testing.assert_allclose(bbox[0], expected, rtol=1e-6)


def test_rpn_sampling_caps_positives_at_half_and_total():
    cfg = _cfg(8)
    tiny = TinyTestConfig()
    anchors = utils.get_pixel_anchors(tiny, tiny.IMAGE_SHAPE)
    # ten boxes: ten arg-max positives, more than the 4 allowed
    gt = np.array([[4 * i, 4 * i, 4 * i + 20, 4 * i + 20] for i in range(10)])
    ids = np.arange(1, 11)
    a = data_gen.build_rpn_targets(anchors, ids, gt, cfg, np.random.default_rng(7))
    b = data_gen.build_rpn_targets(anchors, ids, gt, cfg, np.random.default_rng(7))
    match, bbox = a
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # seeded
    n_pos, n_neg = np.sum(match == 1), np.sum(match == -1)
    assert n_pos == 4 and n_neg == 4
    assert bbox.shape == (8, 4) and bbox.dtype == np.float32
    assert np.abs(bbox[:4]).sum() > 0 and not bbox[4:].any()
    # one box: 1..4 positives, negatives fill the rest up to 8
    match, _ = data_gen.build_rpn_targets(anchors, np.array([1]), gt[:1], cfg,
                                          np.random.default_rng(0))
    assert np.sum(match == 1) + np.sum(match == -1) == 8


# ----------------------------------------------------------------------------- resize_mask
def test_resize_mask_is_scipy_zoom_nearest():
    mask = np.array([[1, 0, 0, 1],
                     [0, 1, 1, 0],
                     [1, 1, 0, 0],
                     [0, 0, 1, 1]], bool)[:, :, None]
    # 4 -> round(4 * 1.5) = 6 pixels; output i reads input round(i * 3 / 5):
    # 0, 0.6, 1.2, 1.8, 2.4, 3.0 -> 0, 1, 1, 2, 2, 3
    idx = [0, 1, 1, 2, 2, 3]
    expected = mask[np.ix_(idx, idx, [0])]
    padding = [(1, 1), (2, 0), (0, 0)]
    out = utils.resize_mask(mask, 1.5, padding)
    assert out.shape == (8, 8, 1) and out.dtype == bool
    assert np.array_equal(out[1:7, 2:8], expected)
    assert not out[0].any() and not out[7].any() and not out[:, :2].any()
    # crop instead of padding
    assert np.array_equal(utils.resize_mask(mask, 1.5, padding, crop=(1, 2, 3, 3)),
                          expected[1:4, 2:5])
    # scale 1: padding only
    assert np.array_equal(utils.resize_mask(mask, 1, padding)[1:5, 2:6], mask)


# ----------------------------------------------------------------------------- compute_ap
def _one_instance(h=10, w=10):
    m = np.zeros((h, w, 1), bool)
    m[2:6, 2:6, 0] = True
    return m


def test_compute_ap_without_ground_truth_follows_the_arithmetic():
    empty_masks = np.zeros((10, 10, 0), bool)
    no_boxes, no_ids = np.zeros((0, 4), np.int32), np.zeros((0,), np.int32)
    pred = _one_instance()
    pred_boxes = utils.extract_bboxes(pred)
    # no ground truth, no prediction: precisions [0, 0], recalls [0, 1] -> AP = 1 * 0 = 0
    ap, p, r, ov = utils.compute_ap(no_boxes, no_ids, empty_masks, no_boxes, no_ids,
                                    np.zeros(0), empty_masks)
    assert ap == 0.0 and p.tolist() == [0, 0] and r.tolist() == [0, 1] and ov.shape == (0, 0)
    # no ground truth, one prediction: recall 0/0 = NaN, so AP is NaN (no 1.0 or 0.0)
    ap, p, r, ov = utils.compute_ap(no_boxes, no_ids, empty_masks, pred_boxes,
                                    np.array([1]), np.array([0.9]), pred)
    assert math.isnan(ap) and p.tolist() == [0, 0, 0] and math.isnan(r[1])
    assert ov.shape == (1, 0)
    # ground truth, no prediction: AP 0
    ap, *_ = utils.compute_ap(pred_boxes, np.array([1]), pred, no_boxes, no_ids,
                              np.zeros(0), empty_masks)
    assert ap == 0.0


def test_matterport_map_of_evaluate_leaves_out_images_without_ground_truth():
    from models.mrcnn import evaluate
    gt = _one_instance(16, 16)

    class DS:
        image_ids = [0, 1]

        def load_image(self, i):
            return np.zeros((16, 16, 3), np.uint8)

        def load_mask(self, i):
            if i == 0:
                return gt, np.array([1], np.int32)
            return np.zeros((16, 16, 0), bool), np.zeros((0,), np.int32)

    class Model:
        config = types.SimpleNamespace(BATCH_SIZE=2, NUM_CLASSES=2)

        def detect(self, images):
            hit = {"rois": utils.extract_bboxes(gt), "class_ids": np.array([1], np.int32),
                   "scores": np.array([0.9], np.float32), "masks": gt}
            return [hit, dict(hit)]  # image 1 has a spurious detection (AP NaN)

    m = evaluate.evaluate_dataset(Model(), DS())
    assert m["matterport_mAP50"] == pytest.approx(1.0)
    assert m["images_without_gt"] == 1 and m["images"] == 2


# ----------------------------------------------------------------------------- unmolding
def _detections(boxes_px, shape=(64, 64)):
    det = np.zeros((4, 6), np.float32)
    det[:len(boxes_px), :4] = utils.norm_boxes(np.array(boxes_px, float), shape)
    det[:len(boxes_px), 4] = [1, 2, 3][:len(boxes_px)]
    det[:len(boxes_px), 5] = [0.9, 0.8, 0.7][:len(boxes_px)]
    return det


def test_zero_area_detections_are_dropped_when_unmolding():
    # box 1 has zero height after mapping to pixels: the original drops it (area <= 0)
    det = _detections([[10, 10, 20, 30], [40, 10, 40, 30], [5, 5, 9, 9]])
    window = (0, 0, 64, 64)
    boxes, ids, scores, masks = data_gen.unmold_detections(
        det, np.ones((4, 28, 28, 4), np.float32), (64, 64, 3), (64, 64, 3), window)
    assert ids.tolist() == [1, 3] and boxes.tolist() == [[10, 10, 20, 30], [5, 5, 9, 9]]
    assert scores.tolist() == pytest.approx([0.9, 0.7]) and masks.shape == (64, 64, 2)
    # the part extractor unmolds its boxes the same way
    from models.mrcnn.extractor import _unmold_boxes
    r = _unmold_boxes(det, (64, 64, 3), (64, 64, 3), window)
    assert r["class_ids"].tolist() == [1, 3]
    assert r["rois"].tolist() == [[10, 10, 20, 30], [5, 5, 9, 9]]


# ----------------------------------------------------------------------------- augmentation
class _FixedRng:
    """Stands in for a Generator whose next ``random()`` is ``value``."""

    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


class _OneImage:
    image_ids = [0]
    num_classes = 4
    image_info = [{"annotations": [1]}]

    def __init__(self, n=1):
        self.image_ids = list(range(n))
        self.image_info = [{"annotations": [1]}] * n
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)

    def load_image(self, i):
        return self.image

    def load_mask(self, i):
        m = np.zeros((64, 64, 1), bool)
        m[10:20, 5:15, 0] = True
        return m, np.array([2], np.int32)


def test_horizontal_flip_moves_image_masks_and_boxes_together():
    cfg = get_config("tiny", USE_MINI_MASK=False)
    ds = _OneImage()
    flip = data_gen.HorizontalFlip(0.5)
    image, _, ids, boxes, masks = data_gen.load_image_gt(ds, cfg, 0, _FixedRng(0.1), flip)
    assert np.array_equal(image, ds.image[:, ::-1]) and ids.tolist() == [2]
    assert boxes.tolist() == [[10, 49, 20, 59]]
    assert np.array_equal(masks[:, :, 0], ds.load_mask(0)[0][:, ::-1, 0])
    image, _, _, boxes, _ = data_gen.load_image_gt(ds, cfg, 0, _FixedRng(0.6), flip)
    assert np.array_equal(image, ds.image) and boxes.tolist() == [[10, 5, 20, 15]]


def test_flips_are_seeded_and_about_half():
    cfg = TinyTestConfig()
    ds = _OneImage(40)

    def boxes(seed):
        it = data_gen.batch_iterator(ds, cfg, np.random.default_rng(seed), True,
                                     data_gen.HorizontalFlip(0.5))
        return np.concatenate([next(it)["input_gt_boxes"][:, 0] for _ in range(20)])

    a, b = boxes(3), boxes(3)
    assert np.array_equal(a, b)
    flipped = np.sum(a[:, 1] == 49)
    assert set(a[:, 1].tolist()) == {5, 49} and 8 <= flipped <= 32


def test_flip_defaults_per_config_and_training_uses_it(monkeypatch, tmp_path):
    aug = data_gen.default_augmentation(PartsConfig())
    assert isinstance(aug, data_gen.HorizontalFlip) and aug.p == 0.5
    assert data_gen.default_augmentation(SyntheticPartsConfig()) is None
    assert data_gen.default_augmentation(TinyTestConfig()) is None
    assert isinstance(data_gen.default_augmentation(
        get_config("synthetic", TRAIN_HFLIP_PROB=0.5)), data_gen.HorizontalFlip)

    import models.mrcnn.model as model_mod
    from evaluation import model_k as cli
    calls = []

    class FakeMaskRCNN:
        def __init__(self, mode, config, model_dir, seed=0):
            self.epoch, self.log_dir, self.config = 0, str(model_dir), config

        def train(self, *args, **kwargs):
            calls.append((args[4], kwargs.get("augmentation"), kwargs.get("seed")))
            self.epoch = args[3]
            return []

        def close(self):
            pass

    monkeypatch.setattr(model_mod, "MaskRCNN", FakeMaskRCNN)
    cli.train_model_k(config="parts", epochs="1,1,1,1", log_dir=str(tmp_path), seed=5,
                      train_dataset=object(), val_dataset=object(), progress=False)
    assert [c[0] for c in calls] == ["heads", "4+", "all", "all"]
    assert all(isinstance(c[1], data_gen.HorizontalFlip) and c[1].p == 0.5 and c[2] == 5
               for c in calls)
    calls.clear()
    cli.train_model_k(config="synthetic", epochs="1", log_dir=str(tmp_path),
                      train_dataset=object(), val_dataset=object(), progress=False)
    assert calls and calls[0][1] is None


# ----------------------------------------------------------------------------- float -> uint8
def _extractor(config):
    from models.mrcnn.extractor import PartExtractor
    model = types.SimpleNamespace(mode="inference", config=config, session=None)
    ext = PartExtractor(model, ["BG"] + ["p%d" % i for i in range(1, config.NUM_CLASSES)])
    seen = []
    ext.detect = lambda images: (seen.extend(images),
                                 [{"class_ids": np.array([1]), "scores": np.array([1.0]),
                                   "rois": np.array([[0, 0, 5, 5]])}] * len(images))[1]
    return ext, seen


def test_float_images_reach_k_truncated_to_uint8():
    ext, seen = _extractor(TinyTestConfig())
    image = np.zeros((64, 64, 3), np.float32)
    image[0, 0] = [0.999, 0.5, 1.0]      # 254.745 -> 254, 127.5 -> 127, 255
    image[0, 1] = [0.9961, 0.0, 0.2]     # 254.0055 -> 254, 0, 51.000001 -> 51
    assert ext.extract([image]) == [frozenset({"p1"})]
    assert seen[0].dtype == np.uint8
    assert seen[0][0, 0].tolist() == [254, 127, 255]
    assert seen[0][0, 1].tolist() == [254, 0, 51]
    from models.mrcnn.extractor import to_uint8
    assert to_uint8(np.float32([0.999, 1.0005, -0.0005])).tolist() == [254, 255, 0]


def test_extractor_feeds_k_the_resized_square_as_the_original():
    # The original resized each image itself (resize_image -> uint8 square) and called
    # detect on that square, whose window is then the whole square (padding included).
    ext, seen = _extractor(TinyTestConfig())
    image = np.full((32, 64, 3), 0.6, np.float32)
    ext.extract([image])
    square = seen[0]
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8
    assert (square[16:48] == 153).all() and not square[:16].any() and not square[48:].any()
    _, _, windows = data_gen.mold_inputs([square], ext.config)
    assert tuple(windows[0]) == (0, 0, 64, 64)


# ----------------------------------------------------------------------------- mini masks
def test_minimize_and_expand_mask_resize_in_float64():
    # The 2x2 crop [[1, 1], [0, 1]] resized bilinearly to 6x4.  In float64 pixel (3, 1) is
    # 0.5000000000000001 -> on; in float32 it is 0.5 -> off.  Exact 0.5 values (corners of
    # row 0) round half-to-even to off.
    crop = np.array([[1, 1], [0, 1]], bool)
    expected = np.array([[0, 1, 1, 0],
                         [1, 1, 1, 1],
                         [0, 1, 1, 1],
                         [0, 1, 1, 1],
                         [0, 0, 1, 1],
                         [0, 0, 0, 0]], bool)
    restated = np.around(skimage.transform.resize(
        crop.astype(np.float64), (6, 4), order=1, mode="constant", anti_aliasing=False))
    assert np.array_equal(restated.astype(bool), expected)
    mask = np.zeros((10, 10, 1), bool)
    mask[3:5, 4:6, 0] = crop
    mini = utils.minimize_mask(np.array([[3, 4, 5, 6]]), mask, (6, 4))
    assert np.array_equal(mini[:, :, 0], expected)
    full = utils.expand_mask(np.array([[1, 2, 7, 6]]), crop[:, :, None], (10, 10, 3))
    assert np.array_equal(full[1:7, 2:6, 0], expected) and full.sum() == expected.sum()


# ----------------------------------------------------------------------------- Config.replace
def test_config_replace_validates_and_keeps_the_class():
    base = PartsConfig()
    c = base.replace(IMAGES_PER_GPU=2, DETECTION_MIN_CONFIDENCE=0.5)
    assert isinstance(c, PartsConfig) and config_key(c) == "parts" and c.NAME == "parts"
    assert c.BATCH_SIZE == 2 and c.DETECTION_MIN_CONFIDENCE == 0.5
    assert base.BATCH_SIZE == 4 and base.DETECTION_MIN_CONFIDENCE == 0
    with pytest.raises(ValueError, match="NOT_A_SETTING"):
        base.replace(NOT_A_SETTING=1)
    with pytest.raises(ValueError, match="images_per_gpu"):
        base.replace(images_per_gpu=1)
    with pytest.raises(ValueError, match="BATCH_SIZE"):
        base.replace(BATCH_SIZE=3)
    with pytest.raises(ValueError, match="BACKBONE"):
        base.replace(BACKBONE="vgg")
    # values set on an instance survive a copy; derived values are recomputed
    t = TinyTestConfig()
    t.IMAGE_MAX_DIM = 128
    t2 = t.replace(IMAGES_PER_GPU=1)
    assert t2.IMAGE_MAX_DIM == 128 and list(t2.IMAGE_SHAPE) == [128, 128, 3]
    assert t2.replace().to_dict() == t2.to_dict()


def test_config_copies_in_the_package_go_through_replace():
    from evaluation import model_k as cli
    from models.mrcnn.extractor import _inference_config
    with pytest.raises(ValueError, match="TYPO_NAME"):
        cli.resolve_config(PartsConfig(), TYPO_NAME=1)
    c = cli.resolve_config(PartsConfig(), IMAGES_PER_GPU=1)
    assert isinstance(c, PartsConfig) and c.BATCH_SIZE == 1
    t = TinyTestConfig()
    t.MAX_GT_INSTANCES = 5
    inf = _inference_config(t, 3)
    assert inf.BATCH_SIZE == 3 and inf.DETECTION_MIN_CONFIDENCE == 0
    assert inf.MAX_GT_INSTANCES == 5 and config_key(inf) == "tiny"
