"""PNG pictures of K's detections: part masks overlaid and labelled with part names."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from data.fileio import atomic_path


def _colours(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.0, (max(n, 1), 3))


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend ``bool [H, W, N]`` masks over a ``uint8 [H, W, 3]`` image; returns uint8."""
    out = image.astype(np.float32) / 255.0
    colours = _colours(masks.shape[-1])
    for i in range(masks.shape[-1]):
        m = masks[:, :, i]
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def save_detection_png(image: np.ndarray, result: dict, path: str,
                       class_names: Optional[Sequence[str]] = None, title: str = "") -> None:
    """Write one image with its detected parts (masks, boxes, "name score") to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    masks = result.get("masks")
    ax.imshow(overlay(image, masks) if masks is not None else image)
    for i, (box, cid, score) in enumerate(zip(result["rois"], result["class_ids"],
                                              result["scores"])):
        y1, x1, y2, x2 = box
        colour = _colours(len(result["rois"]))[i]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1, ec=colour))
        name = class_names[cid] if class_names is not None else str(cid)
        ax.text(x1, y1, "%s %.2f" % (name, score), fontsize=6, color="white",
                bbox=dict(facecolor=colour, alpha=0.6, pad=0.5, lw=0))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def save_detection_pngs(dataset, image_ids, results, out_dir: str,
                        class_names: Optional[Sequence[str]] = None, limit: int = 16) -> list:
    """Write ``<out_dir>/k_detections_<image_id>.png`` for the first ``limit`` images."""
    names = class_names or getattr(dataset, "class_names", None)
    paths = []
    for image_id, result in list(zip(image_ids, results))[:limit]:
        path = os.path.join(out_dir, "k_detections_%s.png" % image_id)
        save_detection_png(dataset.load_image(image_id), result, path, names,
                           title="image %s: %d parts" % (image_id, len(result["class_ids"])))
        paths.append(path)
    return paths
