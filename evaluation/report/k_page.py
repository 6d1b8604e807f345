"""K's page: ``report.html`` beside ``eval_<split>.json`` in K's results folder (``python
main.py --model K`` writes it; ``--report results/model_k`` rebuilds it).

It holds what K was (configuration, checkpoint, data), its COCO numbers, its training curves
(from the run's ``train_summary.json`` beside the checkpoint), the AP@.5 of every part and a
gallery of :data:`K_GALLERY_IMAGES` test images -- a seeded choice -- with K's predicted parts
beside the annotated ones.  Only those images go through K again.
"""
from __future__ import annotations

import glob
import io
import json
import os
import zlib
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from evaluation.report import page
from evaluation.report.gallery import Part, draw_parts

K_GALLERY_IMAGES = 6
#: Predicted parts drawn on the gallery's images (UnMask itself keeps every detection).
SHOWN_SCORE = 0.5


def eval_file(results_dir: str, split: Optional[str] = None) -> Optional[str]:
    """``eval_<split>.json`` of ``results_dir`` (without ``split``: the test split's, else the
    first there is); None when there is none."""
    if split is not None:
        path = os.path.join(results_dir, "eval_%s.json" % split)
        return path if os.path.isfile(path) else None
    found = sorted(glob.glob(os.path.join(results_dir, "eval_*.json")))
    test = os.path.join(results_dir, "eval_test.json")
    return test if test in found else (found[0] if found else None)


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def training_html(checkpoint: str) -> str:
    """K's losses per epoch from the run's ``train_summary.json`` ('' when there is none)."""
    path = os.path.join(os.path.dirname(checkpoint), "train_summary.json")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        history = pd.DataFrame(json.load(f).get("history", []))
    if history.empty:
        return ""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for col in [c for c in history.columns if c.endswith("loss")]:
        ax.plot(history["epoch"], history[col], lw=2 if col in ("loss", "val_loss") else 1,
                label=col)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return '<div class="figure">%s<p class="caption">%s</p></div>' % (
        page.img(_figure_png(fig), "K's losses per epoch"),
        page.esc("K's training and validation losses per epoch (%s)" % path))


def per_part_html(rows: List[Dict]) -> str:
    if not rows:
        return "<p>No per-part AP in this evaluation (made before it was recorded).</p>"
    df = pd.DataFrame(rows)
    for col in ("mask_AP50", "box_AP50"):
        df[col] = ["%.3f" % v if v is not None and pd.notna(v) else None for v in df[col]]
    return page.frame_html(df)


def gallery_html(ev: Dict, n: int = K_GALLERY_IMAGES) -> str:
    """K's predicted parts (score >= :data:`SHOWN_SCORE`) beside the annotated parts on a
    seeded choice of the evaluated images."""
    from data.coco_parts import load_parts_dataset
    from models.mrcnn.model import MaskRCNN
    from mrcnn_config import get_config

    ds = load_parts_dataset(ev["data_dir"], ev["split"])
    ids = list(ds.image_ids)[:int(ev.get("images", len(ds.image_ids)))]
    rng = np.random.default_rng([0, zlib.crc32(ev["split"].encode())])
    chosen = sorted(int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False))
    cfg = get_config(ev["k_config"], IMAGES_PER_GPU=len(chosen), GPU_COUNT=1,
                     DETECTION_MIN_CONFIDENCE=0)
    model = MaskRCNN("inference", cfg, os.path.dirname(os.path.dirname(ev["checkpoint"])))
    try:
        model.load_weights(ev["checkpoint"], by_name=True)
        results = model.detect([ds.load_image(i) for i in chosen])
    finally:
        model.close()
    names = ds.class_names
    rows = []
    for image_id, r in zip(chosen, results):
        image = ds.load_image(image_id)
        pred = [Part(names[c], tuple(b), r["masks"][:, :, k], float(s))
                for k, (b, c, s) in enumerate(zip(r["rois"], r["class_ids"], r["scores"]))
                if s >= SHOWN_SCORE]
        masks, class_ids = ds.load_mask(image_id)
        truth = [_mask_part(names[c], masks[:, :, k]) for k, c in enumerate(class_ids)]
        rows.append('<div class="row"><div><b>image %s</b></div><div class="imgs">%s%s</div>'
                    '</div>' % (page.esc(getattr(ds, "image_reference", str)(image_id)),
                                _figure(draw_parts(image, pred), "K: %d parts" % len(pred)),
                                _figure(draw_parts(image, truth),
                                        "annotated: %d parts" % len(truth))))
    return ('<p class="caption">%d %s images chosen with seed 0; K\'s parts with score >= %g '
            '(UnMask keeps every detection).</p>' % (len(chosen), page.esc(ev["split"]),
                                                     SHOWN_SCORE)) + "\n".join(rows)


def _mask_part(name: str, mask: np.ndarray) -> Part:
    ys, xs = np.nonzero(mask)
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) if len(ys) else (0, 0, 0, 0)
    return Part(name, box, mask.astype(bool))


def _figure(png: bytes, caption: str) -> str:
    return "<figure>%s<figcaption>%s</figcaption></figure>" % (page.img(png, caption),
                                                                page.esc(caption))


def build_k_page(results_dir: str, split: Optional[str] = None) -> str:
    """K's page from ``eval_<split>.json`` of ``results_dir`` (HTML text).

    Raises:
        FileNotFoundError: naming the folder when it holds no evaluation of K.
    """
    path = eval_file(results_dir, split)
    if path is None:
        raise FileNotFoundError("%s holds no eval_<split>.json: evaluate K with `python main.py "
                                "--model K` first" % results_dir)
    with open(path, encoding="utf-8") as f:
        ev = json.load(f)
    items = [("checkpoint", ev["checkpoint"]), ("configuration", ev.get("k_config", "?")),
             ("data", "%s, %s split, %d images" % (ev.get("data_dir", "?"), ev["split"],
                                                   ev["images"])),
             ("speed", "%.1f images/s (batch %s)" % (ev["images_per_second"],
                                                     ev.get("batch_size", "?"))),
             ("mask mAP@[.5:.95] / @.5 / @.75", "%.3f / %.3f / %.3f" % tuple(
                 ev["segm"][k] for k in ("mAP", "mAP50", "mAP75"))),
             ("box mAP@[.5:.95] / @.5 / @.75", "%.3f / %.3f / %.3f" % tuple(
                 ev["bbox"][k] for k in ("mAP", "mAP50", "mAP75"))),
             ("matterport mAP@.5", "%.3f" % ev["matterport_mAP50"])]
    if "part_sets" in ev:
        items.append(("part-set F1 (micro / per image)", "%.3f / %.3f" % (
            ev["part_sets"]["f1_micro"], ev["part_sets"]["f1_samples"])))
    if ev.get("adv_train"):
        items.append(("adversarially trained against", ", ".join(
            "%s=%s" % kv for kv in sorted(ev["adv_train"].items()))))
    for eps, attacked in sorted(ev.get("under_attack", {}).items(), key=lambda kv: float(kv[0])):
        a = attacked["attack"]
        items.append(("under PGD eps %s/255 on K's losses (%d steps): mask mAP@.5, part-set F1"
                      % (eps, a["steps"]), "%.3f, %.3f" % (attacked["segm"]["mAP50"],
                                                          attacked["part_sets"]["f1_micro"])))
    parts = [("k", "K", page.key_value_table(items))]
    curves = training_html(ev["checkpoint"])
    if curves:
        parts.append(("training", "Training", curves))
    parts.append(("parts", "AP@.5 per part", per_part_html(ev.get("per_part", []))))
    problems = []
    if "data_dir" in ev and "k_config" in ev and os.path.isfile(ev["checkpoint"]):
        parts.append(("gallery", "Gallery: K's parts and the annotated ones", gallery_html(ev)))
    else:
        problems.append("no gallery: %s names no data folder or K configuration (evaluated "
                        "before they were recorded), or its checkpoint is gone" % path)
    return page.document("K, the part extractor: %s" % os.path.basename(ev["checkpoint"]),
                         "Mask R-CNN on parts, evaluated on the %s split" % ev["split"],
                         problems, parts)
