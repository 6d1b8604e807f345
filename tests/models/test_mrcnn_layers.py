"""Model K graph layers: ROIAlign vs a NumPy reference, detection targets, detection layer."""
import json

import numpy as np
import pytest

import tfcompat
from mrcnn_config import get_config
from models.mrcnn import utils
from models.mrcnn.graph_utils import apply_box_deltas_graph
from models.mrcnn.layers import (DetectionLayer, DetectionTargetLayer, ProposalLayer,
                                 PyramidROIAlign, detection_targets_graph,
                                 refine_detections_graph)
from models.mrcnn.model import (detection_target_args, proposal_layer_args,
                                refine_detection_args)

tf, keras = tfcompat.import_tf()


def _run(build):
    """Build tensors with ``build()`` in a fresh graph and evaluate them in a session."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        fetches = build()
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(fetches)


def _bilinear_crop(fmap, box, pool):
    """NumPy reference of crop_and_resize for one box on ``fmap [H, W, C]``."""
    h, w = fmap.shape[:2]
    y1, x1, y2, x2 = box
    out = np.zeros((pool, pool, fmap.shape[2]))
    for i in range(pool):
        y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (pool - 1)
        for j in range(pool):
            x = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (pool - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            yb, xb = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * fmap[y0, x0] + (1 - dy) * dx * fmap[y0, xb]
                         + dy * (1 - dx) * fmap[yb, x0] + dy * dx * fmap[yb, xb])
    return out


def test_roi_align_matches_numpy_reference_and_level_rule():
    rng = np.random.default_rng(0)
    size = 512  # canonical 224 px ROI -> level 4
    maps = [rng.normal(size=(2, size // s, size // s, 3)).astype(np.float32) + 10 * k
            for k, s in enumerate([4, 8, 16, 32])]
    # sides 56, 112, 224, 448 px -> levels 2, 3, 4, 5
    sides = np.array([56, 112, 224, 448]) / size
    boxes = np.zeros((2, 4, 4), np.float32)
    for b in range(2):
        for k, s in enumerate(sides):
            y, x = rng.uniform(0, 1 - s, 2)
            boxes[b, k] = [y, x, y + s, x + s]
    boxes[1] = boxes[1, ::-1]
    meta = np.zeros((2, 12 + 4), np.float32)
    meta[:, 4:7] = [size, size, 3]
    out = _run(lambda: PyramidROIAlign([7, 7])([tf.constant(boxes), tf.constant(meta)]
                                               + [tf.constant(m) for m in maps]))
    assert out.shape == (2, 4, 7, 7, 3)
    for b in range(2):
        for k in range(4):
            side = boxes[b, k, 2] - boxes[b, k, 0]
            level = int(np.argmin(np.abs(sides - side)))
            ref = _bilinear_crop(maps[level][b], boxes[b, k], 7)
            np.testing.assert_allclose(out[b, k], ref, atol=1e-4)


def test_detection_targets_sampling_proportions_and_targets():
    cfg = get_config("tiny", TRAIN_ROIS_PER_IMAGE=16, ROI_POSITIVE_RATIO=0.33,
                     PROPOSALS_INCLUDE_GT=False)
    rng = np.random.default_rng(1)
    gt = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8]], np.float32)
    pos = np.concatenate([gt[i % 2] + rng.uniform(-0.02, 0.02, 4) for i in range(20)]).reshape(
        -1, 4)
    neg = np.array([[0.6, 0.05, 0.7, 0.15]] * 20, np.float32) + rng.uniform(0, 0.05, (20, 4))
    proposals = np.concatenate([pos, neg, np.zeros((10, 4))]).astype(np.float32)
    gt_pad = np.concatenate([gt, np.zeros((2, 4), np.float32)])
    ids = np.array([1, 3, 0, 0], np.int32)
    masks = np.zeros(tuple(cfg.MINI_MASK_SHAPE) + (4,), bool)
    masks[:, :, :2] = True
    rois, class_ids, deltas, mask_t = _run(lambda: detection_targets_graph(
        tf.constant(proposals), tf.constant(ids), tf.constant(gt_pad), tf.constant(masks),
        **detection_target_args(cfg)))
    t = cfg.TRAIN_ROIS_PER_IMAGE
    assert rois.shape == (t, 4) and class_ids.shape == (t,) and mask_t.shape == (t, 28, 28)
    n_pos = int(t * cfg.ROI_POSITIVE_RATIO)
    assert np.sum(class_ids > 0) == n_pos
    n_total = int(n_pos / cfg.ROI_POSITIVE_RATIO)
    assert np.sum(np.any(rois != 0, axis=1)) == n_total
    ov = utils.compute_overlaps(rois[:n_pos], gt)
    assert np.all(ov.max(1) >= 0.5)
    assert np.all(utils.compute_overlaps(rois[n_pos:n_total], gt).max(1) < 0.5)
    assert np.all(class_ids[n_pos:] == 0)
    assert set(class_ids[:n_pos]) <= {1, 3}
    assigned = gt[ov.argmax(1)]
    np.testing.assert_array_equal(class_ids[:n_pos], ids[ov.argmax(1)])
    decoded = utils.apply_box_deltas(rois[:n_pos], deltas[:n_pos] * cfg.BBOX_STD_DEV)
    np.testing.assert_allclose(decoded, assigned, atol=1e-4)
    # ROIs inside a full mini mask get (almost) all-ones targets
    assert mask_t[:n_pos].mean() > 0.8 and mask_t[n_pos:].sum() == 0


def test_refine_detections_per_class_nms_and_padding():
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0.5, DETECTION_NMS_THRESHOLD=0.3)
    rois = np.array([[.1, .1, .4, .4], [.11, .1, .41, .4], [.1, .1, .4, .4], [.6, .6, .9, .9],
                     [.5, .5, .6, .6]], np.float32)
    probs = np.array([[.05, .9, .05, 0], [.1, .8, .1, 0], [.1, .1, .8, 0], [.2, 0, 0, .8],
                      [.7, .1, .1, .1]], np.float32)
    deltas = np.zeros((5, 4, 4), np.float32)
    window = np.array([0, 0, 1, 1], np.float32)
    det = _run(lambda: refine_detections_graph(tf.constant(rois), tf.constant(probs),
                                               tf.constant(deltas), tf.constant(window),
                                               **refine_detection_args(cfg)))
    assert det.shape == (cfg.DETECTION_MAX_INSTANCES, 6)
    kept = det[det[:, 4] > 0]
    # roi 1 is suppressed by roi 0 (same class); roi 2 survives (other class); bg roi 4 dropped
    assert sorted(kept[:, 4].tolist()) == [1, 2, 3]
    assert np.all(np.diff(kept[:, 5]) <= 0)
    np.testing.assert_allclose(kept[kept[:, 4] == 1, :4][0], rois[0], atol=1e-6)
    assert np.all(det[len(kept):] == 0)


def test_graph_box_deltas_match_numpy():
    rng = np.random.default_rng(2)
    boxes = rng.uniform(0, 0.5, (6, 2))
    boxes = np.concatenate([boxes, boxes + 0.3], 1).astype(np.float32)
    deltas = rng.normal(0, 0.2, (6, 4)).astype(np.float32)
    out = _run(lambda: apply_box_deltas_graph(tf.constant(boxes), tf.constant(deltas)))
    np.testing.assert_allclose(out, utils.apply_box_deltas(boxes, deltas), atol=1e-5)


def test_config_layers_take_explicit_values_and_report_them():
    """ProposalLayer, DetectionTargetLayer and DetectionLayer are built from plain values
    (no Config object) and get_config() returns those values, so from_config rebuilds them."""
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0.25)
    layers = [
        ProposalLayer(name="ROI", **proposal_layer_args(cfg, 17)),
        DetectionTargetLayer(cfg.BATCH_SIZE, name="proposal_targets",
                             **detection_target_args(cfg)),
        DetectionLayer(cfg.BATCH_SIZE, name="mrcnn_detection", **refine_detection_args(cfg)),
    ]
    for layer in layers:
        assert not any(hasattr(layer, a) for a in ("config", "_config")), layer.name
        config = layer.get_config()
        assert json.loads(json.dumps(config)) == config, layer.name
        assert type(layer).from_config(config).get_config() == config
    proposal, targets, detection = (layer.get_config() for layer in layers)
    assert proposal["proposal_count"] == 17 and proposal["pre_nms_limit"] == cfg.PRE_NMS_LIMIT
    assert proposal["nms_threshold"] == pytest.approx(cfg.RPN_NMS_THRESHOLD)
    assert proposal["anchor_count"] == utils.get_anchors(cfg, cfg.IMAGE_SHAPE).shape[0]
    assert targets["train_rois_per_image"] == cfg.TRAIN_ROIS_PER_IMAGE
    assert targets["mask_shape"] == list(cfg.MASK_SHAPE)
    assert targets["batch_size"] == cfg.BATCH_SIZE
    assert detection["min_confidence"] == pytest.approx(0.25)
    assert detection["max_instances"] == cfg.DETECTION_MAX_INSTANCES
    assert detection["bbox_std_dev"] == pytest.approx(list(cfg.BBOX_STD_DEV))


def test_proposal_layer_keeps_top_boxes_after_nms():
    """Two overlapping anchors and one apart: NMS keeps the better of the pair, pads to
    proposal_count, and applies the std-dev-scaled deltas."""
    anchors = np.array([[[.1, .1, .5, .5], [.12, .1, .52, .5], [.6, .6, .9, .9]]], np.float32)
    probs = np.array([[[.1, .9], [.3, .7], [.2, .8]]], np.float32)
    deltas = np.zeros((1, 3, 4), np.float32)
    deltas[0, 2] = [1.0, 0, 0, 0]  # dy = 1 * std 0.1 * height 0.3 = +0.03
    args = dict(proposal_count=4, nms_threshold=0.5, pre_nms_limit=10,
                rpn_bbox_std_dev=[0.1, 0.1, 0.2, 0.2], batch_size=1, anchor_count=3)
    out = _run(lambda: ProposalLayer(**args)([tf.constant(probs), tf.constant(deltas),
                                               tf.constant(anchors)]))
    assert out.shape == (1, 4, 4)
    np.testing.assert_allclose(out[0, 0], anchors[0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [.63, .6, .93, .9], atol=1e-5)
    assert np.all(out[0, 2:] == 0)
