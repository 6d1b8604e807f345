"""Model K NumPy utilities: anchors, box codec, IoU, NMS, masks, resizing, AP, RPN targets."""
import numpy as np
import pytest

from mrcnn_config import Config, PartsConfig, SyntheticPartsConfig, TinyTestConfig, get_config
from models.mrcnn import data_gen, utils


def _random_boxes(rng, n, size=100):
    y1 = rng.uniform(0, size / 2, n)
    x1 = rng.uniform(0, size / 2, n)
    return np.stack([y1, x1, y1 + rng.uniform(2, size / 2, n), x1 + rng.uniform(2, size / 2, n)],
                    axis=1)


def test_config_defaults_and_derived_values():
    c = PartsConfig()
    assert c.NUM_CLASSES == 45 and c.NAME == "parts" and c.BACKBONE == "resnet101"
    assert c.BATCH_SIZE == c.IMAGES_PER_GPU * c.GPU_COUNT == 4
    assert list(c.IMAGE_SHAPE) == [1024, 1024, 3]
    assert c.IMAGE_META_SIZE == 12 + 45
    assert Config.RPN_NMS_THRESHOLD == 0.7 and Config.TRAIN_ROIS_PER_IMAGE == 200
    assert Config.MINI_MASK_SHAPE == (56, 56) and Config.DETECTION_MIN_CONFIDENCE == 0.7
    s = SyntheticPartsConfig()
    assert list(s.IMAGE_SHAPE) == [128, 128, 3] and s.NUM_CLASSES == 45
    assert get_config("synthetic", IMAGES_PER_GPU=1).BATCH_SIZE == 1
    with pytest.raises(ValueError, match="unknown K config"):
        get_config("nope")
    with pytest.raises(ValueError, match="BACKBONE"):
        get_config("tiny", BACKBONE="vgg")


def test_anchors_count_position_and_shape():
    cfg = TinyTestConfig()
    shapes = utils.compute_backbone_shapes(cfg, cfg.IMAGE_SHAPE)
    assert shapes.tolist() == [[16, 16], [8, 8], [4, 4], [2, 2], [1, 1]]
    a = utils.generate_anchors(16, [0.5, 1, 2], (4, 4), 8, 1)
    assert a.shape == (4 * 4 * 3, 4)
    h, w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    np.testing.assert_allclose(h * w, 256, rtol=1e-6)
    np.testing.assert_allclose(sorted(set(np.round(w / h, 6))), [0.5, 1, 2])
    centers = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], 1)
    assert set(np.unique(np.round(centers, 6))) == {0, 8, 16, 24}
    allp = utils.get_pixel_anchors(cfg, cfg.IMAGE_SHAPE)
    assert allp.shape[0] == 3 * sum(r * c for r, c in shapes)
    norm = utils.get_anchors(cfg, cfg.IMAGE_SHAPE)
    np.testing.assert_allclose(utils.denorm_boxes(norm, (64, 64)), np.around(allp), atol=1)


def test_box_encoding_round_trip():
    rng = np.random.default_rng(0)
    boxes, gt = _random_boxes(rng, 50), _random_boxes(rng, 50)
    deltas = utils.box_refinement(boxes, gt)
    np.testing.assert_allclose(utils.apply_box_deltas(boxes, deltas), gt, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(utils.box_refinement(gt, gt), 0, atol=1e-6)
    norm = utils.norm_boxes(np.array([[0, 0, 64, 64], [10, 20, 30, 40]]), (64, 64))
    np.testing.assert_allclose(norm[0], [0, 0, 1, 1])
    assert utils.denorm_boxes(norm, (64, 64)).tolist() == [[0, 0, 64, 64], [10, 20, 30, 40]]


def test_iou_matches_brute_force_and_properties():
    rng = np.random.default_rng(1)
    b1, b2 = np.round(_random_boxes(rng, 7, 20)), np.round(_random_boxes(rng, 5, 20))
    ov = utils.compute_overlaps(b1, b2)
    for i in range(7):
        for j in range(5):
            grid = np.zeros((2, 40, 40), bool)
            for k, b in enumerate((b1[i], b2[j])):
                y1, x1, y2, x2 = b.astype(int)
                grid[k, y1:y2, x1:x2] = True
            expected = (grid[0] & grid[1]).sum() / (grid[0] | grid[1]).sum()
            assert ov[i, j] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(np.diag(utils.compute_overlaps(b1, b1)), 1)
    np.testing.assert_allclose(utils.compute_overlaps(b2, b1), ov.T)
    masks = np.zeros((10, 10, 2), bool)
    masks[:5, :, 0] = True
    masks[:, :5, 1] = True
    mo = utils.compute_overlaps_masks(masks, masks)
    assert mo[0, 0] == 1 and mo[0, 1] == pytest.approx(25 / 75)


def test_nms_keeps_highest_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    keep = utils.non_max_suppression(boxes, np.array([0.5, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [1, 2]


def test_mini_mask_round_trip():
    mask = np.zeros((64, 64, 2), bool)
    mask[10:40, 5:30, 0] = True
    yy, xx = np.mgrid[:64, :64]
    mask[:, :, 1] = (yy - 45) ** 2 + (xx - 45) ** 2 < 12 ** 2
    boxes = utils.extract_bboxes(mask)
    assert boxes[0].tolist() == [10, 5, 40, 30]
    mini = utils.minimize_mask(boxes, mask, (28, 28))
    assert mini.shape == (28, 28, 2)
    back = utils.expand_mask(boxes, mini, mask.shape)
    iou = np.diag(utils.compute_overlaps_masks(back, mask))
    assert np.all(iou > 0.9)
    assert np.array_equal(back[:, :, 0], mask[:, :, 0])


def test_resize_mold_unmold_round_trip():
    cfg = TinyTestConfig()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    molded, metas, windows = data_gen.mold_inputs([image], cfg)
    assert molded.shape == (1, 64, 64, 3)
    y1, x1, y2, x2 = windows[0]
    assert (y2 - y1, x2 - x1) == (43, 64) or (y2 - y1, x2 - x1) == (42, 64)
    restored = utils.unmold_image(molded[0], cfg)
    assert np.all(restored[:y1] == 0) and np.all(restored[y2:] == 0)
    meta = utils.parse_image_meta(metas)
    assert meta["original_image_shape"][0].tolist() == [32, 48, 3]
    assert meta["window"][0].tolist() == list(windows[0])
    # A detection covering a known box of the original image maps back onto that box.
    box = np.array([8, 12, 24, 36])
    scale = meta["scale"][0]
    molded_box = np.array([box[0] * scale + y1, box[1] * scale + x1,
                           box[2] * scale + y1, box[3] * scale + x1])
    det = np.zeros((4, 6), np.float32)
    det[0, :4] = utils.norm_boxes(molded_box[None], (64, 64))[0]
    det[0, 4:] = [2, 0.9]
    mask_out = np.zeros((4, 28, 28, cfg.NUM_CLASSES), np.float32)
    mask_out[0, :, :, 2] = 1.0
    boxes, class_ids, scores, masks = data_gen.unmold_detections(
        det, mask_out, image.shape, (64, 64, 3), windows[0])
    assert class_ids.tolist() == [2] and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(boxes[0], box, atol=1)
    assert masks.shape == (32, 48, 1)
    assert utils.compute_overlaps(boxes, box[None])[0, 0] > 0.85
    assert masks[:, :, 0].sum() == pytest.approx((box[2] - box[0]) * (box[3] - box[1]), rel=0.2)


def test_compute_ap_perfect_partial_and_empty():
    masks = np.zeros((20, 20, 2), bool)
    masks[:8, :8, 0] = True
    masks[10:, 10:, 1] = True
    boxes = utils.extract_bboxes(masks)
    ids = np.array([1, 2])
    ap, *_ = utils.compute_ap(boxes, ids, masks, boxes, ids, np.array([.9, .8]), masks)
    assert ap == pytest.approx(1.0)
    ap_wrong, *_ = utils.compute_ap(boxes, ids, masks, boxes, np.array([2, 1]),
                                    np.array([.9, .8]), masks)
    assert ap_wrong == 0.0
    ap_half, *_ = utils.compute_ap(boxes, ids, masks, boxes[:1], ids[:1], np.array([.9]),
                                   masks[:, :, :1])
    assert ap_half == pytest.approx(0.5)


def test_rpn_targets_positive_per_gt_and_deltas_decode():
    cfg = TinyTestConfig()
    rng = np.random.default_rng(3)
    anchors = utils.get_pixel_anchors(cfg, cfg.IMAGE_SHAPE)
    gt = np.array([[5, 5, 25, 30], [30, 34, 60, 60]])
    match, deltas = data_gen.build_rpn_targets(anchors, np.array([1, 2]), gt, cfg, rng)
    pos = np.where(match == 1)[0]
    assert 2 <= len(pos) <= cfg.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert np.sum(match != 0) <= cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    ov = utils.compute_overlaps(anchors[pos], gt)
    assert set(np.argmax(ov, axis=1)) == {0, 1}
    decoded = utils.apply_box_deltas(anchors[pos], deltas[:len(pos)] * cfg.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, gt[np.argmax(ov, axis=1)], atol=1e-3)
    assert np.all(utils.compute_overlaps(anchors[match == -1], gt) < 0.3)
