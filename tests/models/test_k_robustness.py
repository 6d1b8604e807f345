"""K's evaluation under attack (models/mrcnn/robustness.py): the attacked image mapped back
from K's input, and the part-set F1 (models/mrcnn/evaluate.py) on hand-made cases.  The
evaluation of a trained K under attack is in test_mrcnn_train.py (it needs the trained toy K)."""
import numpy as np
import pytest

from models.mrcnn.evaluate import part_set_scores
from models.mrcnn.robustness import AttackedDataset, unmold_perturbation


def _meta(window):
    meta = np.zeros(16, np.float32)
    meta[7:11] = window
    return meta


def test_perturbation_is_cropped_to_the_window_and_rounded_inside_the_ball():
    original = np.full((4, 6, 3), 100, np.uint8)
    original[0, 0] = 254                                   # near the top of the range
    clean = np.zeros((8, 8, 3), np.float32)                # K's input: image at rows 2..6
    clean[2:6, 1:7] = original
    adv = clean.copy()
    adv[2:6, 1:7] += 3.6                                   # rounds to +4
    adv[2, 1] += 10.0                                      # beyond eps: clipped
    adv[0:2] += 50.0                                       # padding: not part of the image
    out = unmold_perturbation(original, clean, adv, _meta((2, 1, 6, 7)), eps=4.5)
    assert out.dtype == np.uint8 and out.shape == original.shape
    expected = np.full((4, 6, 3), 104, np.uint8)
    expected[0, 0] = 255                                   # 254 + 4 clipped to the range
    np.testing.assert_array_equal(out, expected)


def test_a_resized_window_maps_back_to_the_original_shape_inside_the_ball():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
    clean = np.zeros((10, 10, 3), np.float32)
    adv = clean + rng.uniform(-8, 8, clean.shape).astype(np.float32)
    out = unmold_perturbation(original, clean, adv, _meta((0, 0, 10, 10)), eps=8)
    delta = out.astype(int) - original.astype(int)
    assert out.shape == (5, 5, 3) and np.abs(delta).max() <= 8 and np.abs(delta).max() > 0


def test_attacked_dataset_serves_the_attacked_images_and_nothing_else():
    class Base:
        image_ids = [0, 1]
        num_classes = 3

        def load_image(self, i):
            return np.zeros((2, 2, 3), np.uint8)

    image = np.ones((2, 2, 3), np.uint8)
    ds = AttackedDataset(Base(), {0: image})
    assert ds.load_image(0) is image and ds.num_classes == 3 and ds.image_ids == [0, 1]
    with pytest.raises(KeyError, match="image 1 was not attacked"):
        ds.load_image(1)


def test_part_set_f1_by_hand():
    truth = [{1, 2}, {3}, set()]
    predicted = [{1}, {3, 2}, set()]
    scores = part_set_scores(truth, predicted, num_classes=4)
    # pairs: TP = 2 (1 in image 0, 3 in image 1), FP = 1 (2 in image 1), FN = 1 (2 in image 0)
    assert scores["precision_micro"] == pytest.approx(2 / 3)
    assert scores["recall_micro"] == pytest.approx(2 / 3)
    assert scores["f1_micro"] == pytest.approx(2 / 3)
    # per image: F1 2/3, 2/3 and 1 (nothing expected, nothing found)
    assert scores["f1_samples"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    one_part = part_set_scores([{1}, set()], [{1}, {1}], num_classes=2)   # a one-part K
    assert one_part["f1_micro"] == pytest.approx(2 / 3)
    assert one_part["f1_samples"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 ground-truth sets but 1 predicted"):
        part_set_scores(truth[:2], predicted[:1], 4)


def test_coco_summary_keeps_the_table_and_no_wall_clock_times():
    """Two evaluations of the same detections write the same metrics: pycocotools prints
    its progress with timings ("DONE (t=0.01s)"), which must not reach the stored summary."""
    from pycocotools.coco import COCO
    from models.mrcnn.evaluate import _coco_stats
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 20, "height": 20}],
                  "categories": [{"id": 1, "name": "wheel"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                                   "bbox": [2, 2, 8, 8], "area": 64}]}
    gt.createIndex()
    dets = [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 7], "score": 0.9}]
    first = _coco_stats(gt, dets, "bbox", [1])
    second = _coco_stats(gt, dets, "bbox", [1])
    assert first == second
    lines = first["summary"].splitlines()
    assert len(lines) == 12 and all(line.lstrip().startswith("Average") for line in lines)
    assert "DONE" not in first["summary"] and "(t=" not in first["summary"]
    assert first["mAP50"] == pytest.approx(1.0)
