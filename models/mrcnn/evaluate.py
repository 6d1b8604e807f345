"""Evaluation of model K: pycocotools COCOeval (bbox and segm) plus matterport's compute_ap.

Ground truth is taken from the dataset's ``load_mask`` (class ids 1..N), so the same code
evaluates the synthetic split, the real PASCAL-Part split or an in-memory toy set.
"""
from __future__ import annotations

import contextlib
import io
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.mrcnn import utils


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _bbox_xywh(box) -> List[float]:
    y1, x1, y2, x2 = [float(v) for v in box]
    return [x1, y1, x2 - x1, y2 - y1]


def build_coco_gt(dataset, image_ids: Sequence[int], num_classes: int) -> COCO:
    """In-memory COCO ground truth of ``image_ids`` (instance masks from ``load_mask``)."""
    images, anns = [], []
    for image_id in image_ids:
        masks, class_ids = dataset.load_mask(image_id)
        h, w = masks.shape[:2]
        images.append({"id": int(image_id), "height": int(h), "width": int(w)})
        boxes = utils.extract_bboxes(masks)
        for i in range(masks.shape[-1]):
            anns.append({"id": len(anns) + 1, "image_id": int(image_id),
                         "category_id": int(class_ids[i]), "segmentation": _rle(masks[:, :, i]),
                         "area": float(masks[:, :, i].sum()), "bbox": _bbox_xywh(boxes[i]),
                         "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c} for c in range(1, num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_to_coco(image_id: int, result: dict) -> List[dict]:
    """One image's detections (``detect`` dict) as COCO result entries."""
    out = []
    for i in range(len(result["class_ids"])):
        out.append({"image_id": int(image_id), "category_id": int(result["class_ids"][i]),
                    "bbox": _bbox_xywh(result["rois"][i]), "score": float(result["scores"][i]),
                    "segmentation": _rle(result["masks"][:, :, i])})
    return out


def _coco_stats(coco_gt: COCO, results: List[dict], iou_type: str, image_ids) -> Dict:
    """COCOeval summary: mAP@[.5:.95], mAP@.5, mAP@.75 and the printed AP/AR table.

    Only the table's lines are kept: pycocotools also prints its progress with wall-clock
    times ("DONE (t=0.01s)"), which would make two runs of the same evaluation differ."""
    if not results:
        return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0, "summary": "no detections"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = [int(i) for i in image_ids]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(s), 0.0) for s in ev.stats[:3]]
    table = "".join(line for line in buf.getvalue().splitlines(keepends=True)
                    if line.lstrip().startswith("Average "))
    return {"mAP": stats[0], "mAP50": stats[1], "mAP75": stats[2], "summary": table,
            "AP50_per_class": _ap50_per_class(ev)}


def _ap50_per_class(ev: COCOeval) -> Dict[int, Optional[float]]:
    """Category id -> AP at IoU .5 (all areas, the most detections) from an accumulated
    COCOeval; None for a category without ground truth in the images evaluated."""
    precision = ev.eval["precision"]         # [IoU thresholds, recalls, categories, areas, maxDets]
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        out[int(cat)] = float(np.mean(p[p > -1])) if np.any(p > -1) else None
    return out


def per_part_ap(coco_gt: COCO, bbox: Dict, segm: Dict,
                class_names: Optional[Sequence[str]] = None) -> List[Dict]:
    """One row per part with ground truth in the images evaluated: its name, the number of
    annotated instances and its mask and box AP@.5 (None when it was never detected)."""
    rows = []
    for cat in sorted(coco_gt.getCatIds()):
        n = len(coco_gt.getAnnIds(catIds=[cat]))
        if not n:
            continue
        name = class_names[cat] if class_names is not None and cat < len(class_names) \
            else str(cat)
        rows.append({"part": name, "instances": n,
                     "mask_AP50": segm.get("AP50_per_class", {}).get(cat),
                     "box_AP50": bbox.get("AP50_per_class", {}).get(cat)})
    return rows


def part_set_scores(truth: Sequence[set], predicted: Sequence[set], num_classes: int) -> Dict:
    """How well K's part *sets* (what UnMask uses: the class ids detected in an image, every
    detection counted as the extractor does) match the ground-truth part sets.

    Args:
        truth, predicted: one set of class ids (1 .. num_classes - 1) per image.
    Returns:
        ``{"f1_micro", "precision_micro", "recall_micro"}`` over all (image, part) pairs and
        ``f1_samples``, the mean per-image F1 (an image with no part in either set counts 1);
        scikit-learn's multi-label metrics.
    """
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer
    if len(truth) != len(predicted):
        raise ValueError("part_set_scores: %d ground-truth sets but %d predicted sets"
                         % (len(truth), len(predicted)))
    binarizer = MultiLabelBinarizer(classes=list(range(1, int(num_classes))))
    # one all-zero column more: it counts no pair either way, and keeps a one-part K
    # multi-label for scikit-learn (whose per-image average refuses a single column)
    pad = np.zeros((len(truth), 1), int)
    y_true = np.hstack([binarizer.fit_transform(truth), pad])
    y_pred = np.hstack([binarizer.transform(predicted), pad])
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro",
                                                 zero_division=0)
    return {"f1_micro": float(f), "precision_micro": float(p), "recall_micro": float(r),
            "f1_samples": float(f1_score(y_true, y_pred, average="samples", zero_division=1))}


def run_detections(model, dataset, image_ids: Sequence[int]):
    """Detect on ``image_ids`` in batches of ``BATCH_SIZE``; returns (results, seconds)."""
    bs = model.config.BATCH_SIZE
    results, seconds = [], 0.0
    for start in range(0, len(image_ids), bs):
        ids = list(image_ids[start:start + bs])
        images = [dataset.load_image(i) for i in ids]
        n = len(images)
        images += [images[-1]] * (bs - n)
        t0 = time.perf_counter()
        out = model.detect(images)
        seconds += time.perf_counter() - t0
        results.extend(out[:n])
    return results, seconds


def evaluate_dataset(model, dataset, image_ids: Optional[Sequence[int]] = None,
                     limit: Optional[int] = None, visualize_dir: Optional[str] = None,
                     class_names: Optional[Sequence[str]] = None) -> Dict:
    """COCO bbox/segm mAP and matterport mAP@.5 of an inference model on a dataset.

    Returns a dict: ``bbox`` and ``segm`` (mAP, mAP50, mAP75, summary), ``per_part`` (per
    part with ground truth: name, instances, mask and box AP@.5; :func:`per_part_ap`),
    ``matterport_mAP50`` (mean of :func:`utils.compute_ap` with mask IoU over the images that have ground truth;
    0.0 when none has), ``images_without_gt`` (images left out of that mean: their AP is
    0.0 without predictions and NaN with some under matterport's arithmetic, so the original
    ``np.mean`` over all images would be NaN as soon as one of them has a detection),
    ``part_sets`` (K's part set of each image against the annotated one:
    :func:`part_set_scores`), ``images``, ``images_per_second`` (detection incl.
    molding/unmolding) and ``seconds``.
    """
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if limit:
        ids = ids[:int(limit)]
    if not ids:
        raise ValueError("no image to evaluate (empty split or limit=0)")
    results, seconds = run_detections(model, dataset, ids)
    coco_gt = build_coco_gt(dataset, ids, model.config.NUM_CLASSES)
    coco_results, aps = [], []
    for image_id, r in zip(ids, results):
        coco_results += detections_to_coco(image_id, r)
        masks, class_ids = dataset.load_mask(image_id)
        if masks.shape[-1] == 0:
            continue
        ap, *_ = utils.compute_ap(utils.extract_bboxes(masks), class_ids, masks, r["rois"],
                                  r["class_ids"], r["scores"], r["masks"])
        aps.append(ap)
    if visualize_dir:
        from models.mrcnn.visualize import save_detection_pngs
        save_detection_pngs(dataset, ids, results, visualize_dir, class_names)
    part_sets = part_set_scores([set(np.unique(dataset.load_mask(i)[1]).tolist()) for i in ids],
                                [set(np.asarray(r["class_ids"]).tolist()) for r in results],
                                model.config.NUM_CLASSES)
    bbox = _coco_stats(coco_gt, coco_results, "bbox", ids)
    segm = _coco_stats(coco_gt, coco_results, "segm", ids)
    names = class_names or getattr(dataset, "class_names", None)
    per_part = per_part_ap(coco_gt, bbox, segm, names)
    for stats in (bbox, segm):
        stats.pop("AP50_per_class", None)
    return {"bbox": bbox, "segm": segm, "per_part": per_part, "part_sets": part_sets,
            "matterport_mAP50": float(np.mean(aps)) if aps else 0.0,
            "images_without_gt": len(ids) - len(aps), "images": len(ids),
            "images_per_second": len(ids) / max(seconds, 1e-9), "seconds": seconds}
