"""Synthetic UnMask data set: writes the original data layout from rendered part scenes.

Layout written under ``data_dir`` (the original's, SPEC section 5, so real data drops in)::

    VOC2010/{train,val,test}.json          COCO part annotations for K (ids 0..43)
    VOC2010/Images/{train,val,test}/*.jpg  K's images (1-2 objects of any of the 16 classes)
    <cs3-1|cs3-2|cs5-1|cs5-2>/{train,val,test}/<class>/*.jpg   M's images (one object)
    <cs3-1|...>/{train,val,test}_parts.json  ground-truth parts of those images (for the oracle;
                                             file_name is ``<class>/<file>.jpg``)
    synthetic.json                          manifest: generator version, seed, sizes, counts
    preview.png                             sample images with their part masks outlined

As in the paper, K's pool, M's training pool (train and val) and the evaluation pool (test)
come from three disjoint random streams (PASCAL-Part / VOC+ImageNet / Flickr).  An image is a
pure function of (seed, stream, class, split, index), so the same seed gives identical files,
and an image of a class is the same file in every class set that holds the class.

Generation writes into a temporary sibling folder and renames it onto ``data_dir`` once
complete; an existing data set is reused, never overwritten.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from data import coco_io
from data.fileio import atomic_path, exclusive, read_json, write_json_atomic
from data.knowledge import CLASS_SETS, CLASSES, PART_IDS
from data.synthetic_render import SceneParams, render_scene
from data.synthetic_style import check_tables

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "synthetic.json"
DEFAULT_DATA_DIR = os.path.join("data", "unmask")
# Random streams: K's pool, M's training pool, the evaluation pool (disjoint by construction).
STREAM_K, STREAM_M, STREAM_EVAL = 1, 2, 3


class DatasetExistsError(RuntimeError):
    """An existing folder holds something other than the data set that was asked for."""


@dataclasses.dataclass
class SyntheticConfig:
    """Sizes of the synthetic data set (defaults generate in well under a minute on 2 cores).

    k_images: images per split for K (each with 1, sometimes 2, objects of the 16 classes).
    m_images_per_class: images per class and split for M (one object each); the test split
        is the evaluation pool.
    two_object_fraction: share of K's images that hold a second object.
    """
    image_size: int = 128
    k_images: Tuple[int, int, int] = (800, 100, 100)
    m_images_per_class: Tuple[int, int, int] = (240, 40, 60)
    two_object_fraction: float = 0.3
    jpeg_quality: int = 92

    def validate(self) -> None:
        if not 32 <= self.image_size <= 1024:
            raise ValueError("image_size must be in 32..1024, got %r" % self.image_size)
        for name in ("k_images", "m_images_per_class"):
            sizes = getattr(self, name)
            if len(sizes) != 3 or any(int(n) < 1 for n in sizes):
                raise ValueError("%s must be three positive counts (train, val, test), got %r"
                                 % (name, sizes))

    def as_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["k_images"], d["m_images_per_class"] = list(self.k_images), list(self.m_images_per_class)
        return d


def m_classes() -> Tuple[str, ...]:
    """Classes used by the four class sets, in a stable order."""
    return tuple(c for c in CLASSES if any(c in cs.classes for cs in CLASS_SETS))


# ----------------------------------------------------------------------------- one image

def _render_task(task):
    """Worker: render one image. ``task`` = (seed words, classes, size, quality, min_drawn).
    Returns (jpeg bytes, [(part name, RLE), ...])."""
    words, classes, size, quality, min_drawn = task
    from PIL import Image  # local: keeps worker start-up light

    rng = np.random.default_rng(np.random.SeedSequence(words))
    image, instances = render_scene(rng, size, classes, SceneParams(), min_drawn=min_drawn)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), [(inst.part, coco_io.mask_to_rle(inst.mask)) for inst in instances]


def _k_tasks(cfg: SyntheticConfig, seed: int, split_index: int, n: int):
    tasks = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM_K, split_index, i, 0]))
        classes = [CLASSES[rng.integers(len(CLASSES))]]
        if rng.random() < cfg.two_object_fraction:
            classes.append(CLASSES[rng.integers(len(CLASSES))])
        tasks.append(([seed, STREAM_K, split_index, i, 1], classes, cfg.image_size,
                      cfg.jpeg_quality, 1))
    return tasks


def _m_tasks(cfg: SyntheticConfig, seed: int, split_index: int, cls: str, n: int):
    stream = STREAM_EVAL if SPLITS[split_index] == "test" else STREAM_M
    ci = CLASSES.index(cls)
    return [([seed, stream, split_index, ci, i], [cls], cfg.image_size, cfg.jpeg_quality, 2)
            for i in range(n)]


# ----------------------------------------------------------------------------- writing

def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _add_annotations(coco, image_id, instances):
    for part, rle in instances:
        ann_id = len(coco["annotations"]) + 1
        coco["annotations"].append({
            "id": ann_id, "image_id": image_id, "category_id": PART_IDS[part],
            "segmentation": rle, "area": int(coco_io.mask_utils.area(rle)),
            "bbox": [float(v) for v in coco_io.mask_utils.toBbox(rle)], "iscrowd": 0})


def _write_k(root, cfg, seed, run):
    counts = {}
    for si, split in enumerate(SPLITS):
        folder = os.path.join(root, "VOC2010", "Images", split)
        os.makedirs(folder)
        coco = coco_io.coco_skeleton({"description": "UnMask synthetic parts, K pool",
                                      "split": split, "seed": seed})
        for i, (jpeg, instances) in enumerate(run(_k_tasks(cfg, seed, si, cfg.k_images[si]))):
            name = "%s_%06d.jpg" % (split, i)
            _write_bytes(os.path.join(folder, name), jpeg)
            image_id = coco_io.add_image(coco, name, cfg.image_size, cfg.image_size)
            _add_annotations(coco, image_id, instances)
        write_json_atomic(os.path.join(root, "VOC2010", split + ".json"), coco)
        counts[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    return counts


def _write_m(root, cfg, seed, run):
    counts = {}
    for si, split in enumerate(SPLITS):
        cocos = {cs.code_name: coco_io.coco_skeleton(
            {"description": "UnMask synthetic, ground-truth parts of M's images",
             "class_set": cs.code_name, "split": split, "seed": seed}) for cs in CLASS_SETS}
        for cls in m_classes():
            holders = [cs for cs in CLASS_SETS if cls in cs.classes]
            for cs in holders:
                os.makedirs(os.path.join(root, cs.code_name, split, cls))
            tasks = _m_tasks(cfg, seed, si, cls, cfg.m_images_per_class[si])
            for i, (jpeg, instances) in enumerate(run(tasks)):
                rel = "%s/%s_%05d.jpg" % (cls, cls, i)
                for cs in holders:
                    _write_bytes(os.path.join(root, cs.code_name, split, rel), jpeg)
                    coco = cocos[cs.code_name]
                    image_id = coco_io.add_image(coco, rel, cfg.image_size, cfg.image_size)
                    _add_annotations(coco, image_id, instances)
        for code, coco in cocos.items():
            write_json_atomic(os.path.join(root, code, split + "_parts.json"), coco)
            counts.setdefault(code, {})[split] = len(coco["images"])
    return counts


def _runner(workers: int):
    """A function mapping a task list to results in order, serially or on ``workers``
    processes (spawned, so it is safe after TensorFlow was imported)."""
    if workers <= 1:
        return lambda tasks: map(_render_task, tasks), None
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return lambda tasks: pool.map(_render_task, tasks, chunksize=16), pool


def _remove_stale_temporaries(data_dir: str) -> None:
    """Remove ``<data_dir>.tmp-<pid>`` folders left by generations that were killed (their
    process no longer runs)."""
    parent = os.path.dirname(os.path.abspath(data_dir)) or "."
    prefix = os.path.basename(os.path.abspath(data_dir).rstrip(os.sep)) + ".tmp-"
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        pid = name[len(prefix):]
        if not (name.startswith(prefix) and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            continue  # someone else's live process


def generate_dataset(data_dir: str, seed: int = 0, config: Optional[SyntheticConfig] = None,
                     workers: Optional[int] = None, log: Callable[[str], None] = print) -> Dict:
    """Generate the synthetic data set into ``data_dir`` (which must not exist yet).

    Writes into ``<data_dir>.tmp-<pid>`` and renames it onto ``data_dir`` when complete, so an
    interrupted run leaves no half-written data set behind.  Returns the manifest.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    check_tables()
    if os.path.exists(data_dir):
        raise DatasetExistsError("%s already exists; generate_dataset never overwrites" % data_dir)
    if int(seed) < 0:
        raise ValueError("seed must be a non-negative integer, got %r" % seed)
    _remove_stale_temporaries(data_dir)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    tmp = os.path.abspath(data_dir).rstrip(os.sep) + ".tmp-%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    start = time.time()
    run, pool = _runner(workers)
    try:
        k_counts = _write_k(tmp, cfg, seed, run)
        # M's part renders about as fast per image (default: 5.8 s for K's 1,000 images, 13.6 s
        # for M's 2,040; this estimate says 11.8)
        k_images, m_images = sum(cfg.k_images), sum(cfg.m_images_per_class) * len(m_classes())
        elapsed = time.time() - start
        log("data: K's %d part images written (%.0f s elapsed, ~%.0f s left for M's %d)"
            % (k_images, elapsed, elapsed * m_images / max(k_images, 1), m_images))
        m_counts = _write_m(tmp, cfg, seed, run)
        manifest = {"generator": "unmask-synthetic", "version": GENERATOR_VERSION, "seed": seed,
                    "config": cfg.as_dict(), "k": k_counts, "m": m_counts}
        write_json_atomic(os.path.join(tmp, MANIFEST), manifest, indent=1)
        write_preview(tmp, os.path.join(tmp, "preview.png"))
        os.makedirs(os.path.dirname(os.path.abspath(data_dir)), exist_ok=True)
        os.rename(tmp, data_dir)
    finally:
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    log("synthetic data set written to %s in %.1f s" % (data_dir, time.time() - start))
    return manifest


def _looks_like_data(data_dir: str) -> bool:
    names = set(os.listdir(data_dir))
    return "VOC2010" in names or any(cs.code_name in names for cs in CLASS_SETS)


def _empty_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


@contextlib.contextmanager
def _generation_lock(data_dir: str, log: Callable[[str], None]):
    """Exclusive lock on ``<data_dir>.lock`` (beside the folder) while a data set is
    generated: a second process that wants the same folder waits, then reuses the result."""
    parent = os.path.dirname(os.path.abspath(data_dir))
    lock = os.path.abspath(data_dir).rstrip(os.sep) + ".lock"
    try:
        os.makedirs(parent, exist_ok=True)
        open(lock, "a").close()
    except OSError as e:
        raise DatasetExistsError("--data-dir %s cannot be generated: the data set is written "
                                 "beside it, in %s, which cannot be written (%s); choose a "
                                 "folder you can write to" % (data_dir, parent,
                                                              e.strerror or e)) from None
    with exclusive(lock, "the data folder %s (being generated)" % data_dir, log):
        yield


def ensure_dataset(data_dir: str = DEFAULT_DATA_DIR, seed: int = 0,
                   config: Optional[SyntheticConfig] = None, workers: Optional[int] = None,
                   log: Callable[[str], None] = print) -> Dict:
    """Return the data set at ``data_dir``, generating the synthetic one when it is missing.

    * missing (or an empty folder): generate it with ``seed``;
    * a synthetic data set made with the same seed and sizes: reuse it;
    * a synthetic data set made with another seed or sizes: DatasetExistsError (never
      overwritten silently: choose another ``--data-dir`` or delete the folder);
    * anything else that has the original layout (real UnMask data): reuse it as it is.

    Returns the manifest (``{"generator": "real"}`` for real data).
    """
    cfg = config or SyntheticConfig()
    if not os.path.exists(data_dir) or _empty_folder(data_dir):
        with _generation_lock(data_dir, log):
            if _empty_folder(data_dir):        # generated beside it, renamed into place
                os.rmdir(data_dir)
            if not os.path.exists(data_dir):   # else another process made it meanwhile
                log("no data set at %s: generating the synthetic UnMask data set (seed %d)"
                    % (data_dir, seed))
                return generate_dataset(data_dir, seed, cfg, workers, log)
            log("%s was generated by another process meanwhile: checking it" % data_dir)
    if not os.path.isdir(data_dir):
        raise DatasetExistsError("--data-dir %s is a file, not a folder" % data_dir)
    manifest_path = os.path.join(data_dir, MANIFEST)
    if os.path.isfile(manifest_path):
        manifest = read_json(manifest_path)
        wanted = {"seed": seed, "config": cfg.as_dict(), "version": GENERATOR_VERSION}
        found = {k: manifest.get(k) for k in wanted}
        if found != wanted:
            raise DatasetExistsError(
                "%s holds a synthetic data set made with %s, not the requested %s; it is not "
                "overwritten: pass another --data-dir, or delete %s to regenerate it"
                % (data_dir, found, wanted, data_dir))
        return manifest
    if _looks_like_data(data_dir):
        return {"generator": "real", "path": data_dir}
    raise DatasetExistsError(
        "%s exists but holds neither the UnMask layout (VOC2010/, cs3-1/, ...) nor a synthetic "
        "data set; pass another --data-dir or empty the folder" % data_dir)


def summary(manifest: Dict) -> str:
    """Human-readable summary of a manifest (printed by ``main.py --prepare-data``)."""
    if manifest.get("generator") != "unmask-synthetic":
        return "real UnMask data at %s" % manifest.get("path")
    cfg = manifest["config"]
    lines = ["synthetic UnMask data set (generator v%d, seed %d, %dx%d RGB)"
             % (manifest["version"], manifest["seed"], cfg["image_size"], cfg["image_size"])]
    for split in SPLITS:
        c = manifest["k"][split]
        lines.append("  K  %-5s %5d images %7d part instances (%.1f per image)"
                     % (split, c["images"], c["annotations"], c["annotations"] / c["images"]))
    for cs in CLASS_SETS:
        per = manifest["m"][cs.code_name]
        lines.append("  M  %-5s %-6s train %5d  val %4d  test %4d  (%s)"
                     % (cs.paper_name, cs.code_name, per["train"], per["val"], per["test"],
                        ", ".join(cs.classes)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- preview

def _draw_sample(ax, pixels, anns, names, cmap) -> None:
    """One preview cell: the image, each part mask outlined and labelled with its name."""
    ax.imshow(pixels)
    for k, ann in enumerate(anns):
        mask = coco_io.rle_to_mask(ann["segmentation"])
        ax.contour(mask, levels=[0.5], colors=[cmap(k % 20)], linewidths=1.2)
        ys, xs = np.nonzero(mask)
        ax.text(xs.mean(), ys.mean(), names[ann["category_id"]], fontsize=6, color="white",
                ha="center", va="center",
                bbox=dict(facecolor=cmap(k % 20), alpha=0.7, pad=0.5, linewidth=0))


def preview_figure(data_dir: str, n: int = 12, split: str = "train"):
    """Matplotlib figure of ``n`` of K's images (one axes each, titled with the file name)
    with their part masks outlined and labelled; the caller closes it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    coco = read_json(os.path.join(data_dir, "VOC2010", split + ".json"))
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: Dict[int, List[Dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = coco["images"][:n]
    cols = 4
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, img in zip(axes.ravel(), images):
        with Image.open(os.path.join(data_dir, "VOC2010", "Images", split,
                                     img["file_name"])) as im:
            pixels = np.asarray(im)
        _draw_sample(ax, pixels, by_image.get(img["id"], []), names, plt.get_cmap("tab20"))
        ax.set_title(img["file_name"], fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Synthetic UnMask parts (K pool, %s split): part masks outlined and labelled"
                 % split)
    fig.tight_layout()
    return fig


def write_preview(data_dir: str, path: str, n: int = 12, split: str = "train") -> None:
    """Grid of ``n`` of K's images with their part masks outlined and labelled (PNG)."""
    fig = preview_figure(data_dir, n, split)  # selects the Agg backend first
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
