"""Tests for the synthetic UnMask data set (data/synthetic.py, synthetic_render.py,
synthetic_style.py): layout, counts, determinism, annotation validity, pool disjointness,
shared-part appearance, idempotence and interrupted generation.

A small configuration (64 x 64 images, a handful per split) keeps each generation near 1 s;
the statistical checks render scenes directly with ``render_scene`` at the default size.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data import coco_io, synthetic, synthetic_style
from data.knowledge import CLASS_PARTS, CLASS_SETS, CLASSES, PARTS
from data.synthetic import (SPLITS, DatasetExistsError, SyntheticConfig, ensure_dataset,
                            generate_dataset, m_classes)
from data.synthetic_render import SceneParams, render_scene
from data.synthetic_style import PART_STYLES, check_tables

K_IMAGES = (6, 2, 2)
M_IMAGES = (3, 2, 2)
SIZE = 64


def small_config(**changes):
    """A fresh small config (SyntheticConfig is mutable, so never share one instance)."""
    kw = dict(image_size=SIZE, k_images=K_IMAGES, m_images_per_class=M_IMAGES)
    kw.update(changes)
    return SyntheticConfig(**kw)


def quiet(_msg):
    pass


def tree_digest(root):
    """{relative path: sha256} of every file under ``root`` (byte for byte, manifest too)."""
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def tree_hash(root):
    h = hashlib.sha256()
    for rel, digest in sorted(tree_digest(root).items()):
        h.update(rel.encode() + b"\0" + digest.encode())
    return h.hexdigest()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def coco_files(root):
    """All COCO files of a data set: K's three split files and the 12 M parts files."""
    paths = [os.path.join(root, "VOC2010", s + ".json") for s in SPLITS]
    paths += [os.path.join(root, cs.code_name, s + "_parts.json")
              for cs in CLASS_SETS for s in SPLITS]
    return paths


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Small data sets: seed 0 twice (workers 1 and 2) and seed 1 (workers 1)."""
    base = tmp_path_factory.mktemp("synthetic")
    out = {}
    for key, seed, workers in (("a", 0, 1), ("b", 0, 2), ("other", 1, 1)):
        path = str(base / key / "unmask")
        manifest = generate_dataset(path, seed=seed, config=small_config(), workers=workers,
                                    log=quiet)
        out[key] = (path, manifest)
    return out


@pytest.fixture(scope="module")
def root(datasets):
    return datasets["a"][0]


# ----------------------------------------------------------------------------- layout and counts

def test_layout_matches_the_documented_one(root):
    codes = {cs.code_name for cs in CLASS_SETS}
    assert set(os.listdir(root)) == {"VOC2010", "synthetic.json", "preview.png"} | codes
    assert set(os.listdir(os.path.join(root, "VOC2010"))) == (
        {"Images"} | {s + ".json" for s in SPLITS})
    assert set(os.listdir(os.path.join(root, "VOC2010", "Images"))) == set(SPLITS)
    for cs in CLASS_SETS:
        entries = set(os.listdir(os.path.join(root, cs.code_name)))
        assert entries == set(SPLITS) | {s + "_parts.json" for s in SPLITS}
        for split in SPLITS:
            assert set(os.listdir(os.path.join(root, cs.code_name, split))) == set(cs.classes)


def test_counts_match_the_config_and_the_manifest(root, datasets):
    manifest = datasets["a"][1]
    assert load_json(os.path.join(root, synthetic.MANIFEST)) == manifest
    assert manifest["seed"] == 0 and manifest["config"] == small_config().as_dict()
    for si, split in enumerate(SPLITS):
        files = sorted(os.listdir(os.path.join(root, "VOC2010", "Images", split)))
        assert len(files) == K_IMAGES[si] and all(f.endswith(".jpg") for f in files)
        coco = load_json(os.path.join(root, "VOC2010", split + ".json"))
        assert sorted(img["file_name"] for img in coco["images"]) == files
        assert manifest["k"][split] == {"images": K_IMAGES[si],
                                        "annotations": len(coco["annotations"])}
        for cs in CLASS_SETS:
            for cls in cs.classes:
                folder = os.path.join(root, cs.code_name, split, cls)
                names = [f for f in os.listdir(folder) if f.endswith(".jpg")]
                assert len(names) == M_IMAGES[si], (cs.code_name, split, cls)
            parts = load_json(os.path.join(root, cs.code_name, split + "_parts.json"))
            assert len(parts["images"]) == len(cs.classes) * M_IMAGES[si]
            assert manifest["m"][cs.code_name][split] == len(parts["images"])


def test_images_are_rgb_jpegs_of_the_configured_size(root):
    paths = [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if f.endswith(".jpg")]
    assert paths
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB", path
            assert img.size == (SIZE, SIZE), path


def test_preview_is_a_valid_png(root):
    path = os.path.join(root, "preview.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100


def test_preview_outlines_and_labels_every_part_of_each_sample(root):
    """Each preview cell shows one of K's images titled with its file name, one outline per
    annotated part (a contour around its mask) and the part's name placed on the part."""
    coco = load_json(os.path.join(root, "VOC2010", "train.json"))
    fig = synthetic.preview_figure(root, n=5)
    try:
        cells = [ax for ax in fig.axes if ax.images]
        assert len(cells) == 5 and len(fig.axes) == 8  # a 2 x 4 grid, 3 cells left blank
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for ax, img in zip(cells, coco["images"][:5]):
            assert ax.get_title() == img["file_name"]
            anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
            assert anns
            assert [t.get_text() for t in ax.texts] == [names[a["category_id"]] for a in anns]
            outlines = list(ax.collections)
            assert len(outlines) == len(anns)
            for outline, text, ann in zip(outlines, ax.texts, anns):
                vertices = np.concatenate([p.vertices for p in outline.get_paths()])
                x, y, w, h = ann["bbox"]
                assert len(vertices) >= 3
                assert (vertices[:, 0] >= x - 1).all() and (vertices[:, 0] <= x + w).all()
                assert (vertices[:, 1] >= y - 1).all() and (vertices[:, 1] <= y + h).all()
                tx, ty = text.get_position()
                assert x <= tx <= x + w and y <= ty <= y + h
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def _dead_pid():
    """The id of a process that has exited (checked with signal 0)."""
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return proc.pid
    pytest.fail("could not find the id of an exited process")


def test_stale_temporary_folders_of_dead_generations_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / ("unmask.tmp-%d" % dead)
    (stale / "VOC2010").mkdir(parents=True)
    (stale / "VOC2010" / "train.json").write_text("{}")
    keep = ["unmask.tmp-%d" % os.getpid(),  # a generation still running (this process)
            "other.tmp-%d" % dead,           # another data set's temporary folder
            "unmask.tmp-notes",              # not a pid
            "unmask"]                        # the data set itself
    for name in keep:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("keep")
    synthetic._remove_stale_temporaries(str(tmp_path / "unmask"))
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    assert all((tmp_path / name / "x.txt").read_text() == "keep" for name in keep)


def test_generation_removes_stale_temporaries_of_its_data_dir(tmp_path):
    stale = tmp_path / ("unmask.tmp-%d" % _dead_pid())
    stale.mkdir()
    (stale / "half.jpg").write_bytes(b"\xff\xd8")
    generate_dataset(str(tmp_path / "unmask"), seed=0, config=small_config(), workers=1,
                     log=quiet)
    assert os.listdir(tmp_path) == ["unmask"]


def test_summary_mentions_every_class_set_and_count(datasets):
    manifest = datasets["a"][1]
    text = synthetic.summary(manifest)
    assert "seed 0" in text
    for cs in CLASS_SETS:
        assert cs.code_name in text and cs.paper_name in text
    for split in SPLITS:
        assert "%5d images" % manifest["k"][split]["images"] in text


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_files_across_worker_counts(datasets):
    """Run a (workers=1) and run b (workers=2) with one seed: identical bytes everywhere."""
    a, b = tree_digest(datasets["a"][0]), tree_digest(datasets["b"][0])
    assert set(a) == set(b)
    different = sorted(rel for rel in a if a[rel] != b[rel])
    assert different == []
    assert tree_hash(datasets["a"][0]) == tree_hash(datasets["b"][0])


def test_another_seed_gives_other_images(datasets):
    a, other = tree_digest(datasets["a"][0]), tree_digest(datasets["other"][0])
    assert tree_hash(datasets["a"][0]) != tree_hash(datasets["other"][0])
    assert set(a) == set(other)  # same layout and names ...
    images = [rel for rel in a if rel.endswith(".jpg")]
    assert images and all(a[rel] != other[rel] for rel in images)  # ... other pixels


def test_an_m_image_is_the_same_file_in_every_class_set_holding_its_class(root):
    for split in SPLITS:
        annotations = {}
        for cs in CLASS_SETS:
            coco = load_json(os.path.join(root, cs.code_name, split + "_parts.json"))
            by_id = {img["id"]: img["file_name"] for img in coco["images"]}
            for ann in coco["annotations"]:
                annotations.setdefault((cs.code_name, by_id[ann["image_id"]]), []).append(
                    (ann["category_id"], ann["segmentation"]["counts"]))
        for cls in m_classes():
            holders = [cs for cs in CLASS_SETS if cls in cs.classes]
            names = os.listdir(os.path.join(root, holders[0].code_name, split, cls))
            for name in names:
                digests = {sha(os.path.join(root, cs.code_name, split, cls, name))
                           for cs in holders}
                assert len(digests) == 1, (split, cls, name)
                key = "%s/%s" % (cls, name)
                anns = [sorted(annotations.get((cs.code_name, key), [])) for cs in holders]
                assert all(a == anns[0] for a in anns), (split, key)


def test_k_m_train_and_evaluation_pools_are_disjoint(root):
    k_pool, m_pool, eval_pool = set(), set(), set()
    for split in SPLITS:
        folder = os.path.join(root, "VOC2010", "Images", split)
        k_pool |= {sha(os.path.join(folder, f)) for f in os.listdir(folder)}
        target = eval_pool if split == "test" else m_pool
        for cs in CLASS_SETS:
            for cls in cs.classes:
                folder = os.path.join(root, cs.code_name, split, cls)
                target |= {sha(os.path.join(folder, f)) for f in os.listdir(folder)}
    n_classes = len(m_classes())
    # every image of a pool is distinct (train and val included) ...
    assert len(k_pool) == sum(K_IMAGES)
    assert len(m_pool) == n_classes * (M_IMAGES[0] + M_IMAGES[1])
    assert len(eval_pool) == n_classes * M_IMAGES[2]
    # ... and no image appears in two pools
    assert not k_pool & m_pool and not k_pool & eval_pool and not m_pool & eval_pool


# ----------------------------------------------------------------------------- annotations

def test_coco_files_validate_and_reference_existing_images(root):
    for path in coco_files(root):
        coco = coco_io.load_coco(path)  # raises on any malformed entry
        assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(PARTS)
        folder = (os.path.join(root, "VOC2010", "Images", os.path.basename(path)[:-5])
                  if os.path.basename(os.path.dirname(path)) == "VOC2010"
                  else os.path.join(os.path.dirname(path), os.path.basename(path).split("_")[0]))
        for img in coco["images"]:
            assert os.path.isfile(os.path.join(folder, img["file_name"])), (path, img)
            assert (img["height"], img["width"]) == (SIZE, SIZE)
        ids = [a["id"] for a in coco["annotations"]]
        assert len(ids) == len(set(ids))
        assert coco["annotations"], path


def test_every_annotation_decodes_to_a_non_empty_mask_inside_its_bbox(root):
    n = 0
    for path in coco_files(root):
        coco = load_json(path)
        sizes = {img["id"]: (img["height"], img["width"]) for img in coco["images"]}
        for ann in coco["annotations"]:
            assert 0 <= ann["category_id"] < len(PARTS)
            mask = coco_io.rle_to_mask(ann["segmentation"])
            assert mask.shape == sizes[ann["image_id"]]
            assert mask.any(), (path, ann["id"])
            assert ann["area"] == int(mask.sum())
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert ys.min() >= y and ys.max() < y + h and xs.min() >= x and xs.max() < x + w
            assert coco_io.mask_bbox(mask) == pytest.approx(ann["bbox"])  # and tight
            n += 1
    assert n > 0


def test_parts_of_an_m_image_belong_to_its_class(root):
    for cs in CLASS_SETS:
        for split in SPLITS:
            coco = load_json(os.path.join(root, cs.code_name, split + "_parts.json"))
            cls_of = {img["id"]: img["file_name"].split("/")[0] for img in coco["images"]}
            assert set(cls_of.values()) == set(cs.classes)
            for ann in coco["annotations"]:
                cls = cls_of[ann["image_id"]]
                assert PARTS[ann["category_id"]] in CLASS_PARTS[cls], (cs.code_name, ann)


def test_average_share_of_expected_parts_annotated_in_m_images():
    """M's images at the default size show 70-90% of their class's distinct parts on average
    (some are occluded or missing, as in real photos)."""
    cfg = SyntheticConfig()
    fractions = []
    for cls in m_classes():
        # the generator's own M tasks (seed words, classes, size, quality, min_drawn)
        for words, classes, size, _q, min_drawn in synthetic._m_tasks(cfg, 11, 0, cls, 40):
            rng = np.random.default_rng(np.random.SeedSequence(words))
            image, instances = render_scene(rng, size, classes, SceneParams(),
                                            min_drawn=min_drawn)
            assert image.shape == (size, size, 3) and image.dtype == np.uint8
            found = {inst.part for inst in instances}
            assert found <= CLASS_PARTS[cls]
            fractions.append(len(found) / len(CLASS_PARTS[cls]))
    assert len(fractions) == 40 * len(m_classes())
    assert 0.70 <= float(np.mean(fractions)) <= 0.90
    assert min(fractions) < 1.0  # some parts really are missing


# ----------------------------------------------------------------------------- shared parts

def _part_statistics(cls, part, n=30, size=128, seed=5):
    """Robust look of ``part`` drawn in objects of ``cls``: median over instances of
    (chromaticity of the instance's median pixel [3], fill ratio of its bbox).  Chromaticity
    r/(r+g+b) ignores the texture's darkening and the object's brightness gain."""
    chroma, fill = [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, CLASSES.index(cls), i]))
        image, instances = render_scene(rng, size, [cls], min_drawn=2)
        for inst in instances:
            if inst.part != part or inst.mask.sum() < 20:
                continue
            med = np.median(image[inst.mask].astype(np.float64), axis=0)
            chroma.append(med / max(med.sum(), 1.0))
            ys, xs = np.nonzero(inst.mask)
            fill.append(inst.mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    assert len(chroma) >= 5, (cls, part, len(chroma))
    return np.median(chroma, axis=0), float(np.median(fill))


@pytest.mark.parametrize("part,cls_a,cls_b,other,compare_shape", [
    ("eye", "dog", "bird", "beak", True),
    ("wheel", "car", "bicycle", "saddle", True),
    ("headlight", "car", "train", "coach_front", False),
])
def test_shared_parts_look_the_same_in_every_class(part, cls_a, cls_b, other, compare_shape):
    assert part in CLASS_PARTS[cls_a] & CLASS_PARTS[cls_b]
    assert other in CLASS_PARTS[cls_b] and other not in CLASS_PARTS[cls_a]
    chroma_a, fill_a = _part_statistics(cls_a, part)
    chroma_b, fill_b = _part_statistics(cls_b, part)
    chroma_o, fill_o = _part_statistics(cls_b, other)
    same = float(np.linalg.norm(chroma_a - chroma_b))
    far = float(np.linalg.norm(chroma_b - chroma_o))
    assert same < 0.06, (part, chroma_a, chroma_b)
    assert far > 3 * max(same, 0.02), (part, other, chroma_b, chroma_o)
    if compare_shape:
        assert abs(fill_a - fill_b) < 0.06, (part, fill_a, fill_b)
        assert abs(fill_b - fill_o) > 0.15, (part, other, fill_b, fill_o)


def test_style_tables_are_consistent_and_keyed_by_part_only():
    check_tables()
    assert set(PART_STYLES) == set(PARTS)
    assert all(isinstance(k, str) for k in PART_STYLES)
    for name, style in PART_STYLES.items():
        assert style.shape in synthetic_style.SHAPES and style.texture in synthetic_style.TEXTURES
    for cls, layout in synthetic_style.CLASS_LAYOUTS.items():
        assert {p for p, *_ in layout} == set(CLASS_PARTS[cls])
        for _part, cy, cx, h, w in layout:
            assert 0 <= cy <= 1 and 0 <= cx <= 1 and 0 < h <= 1 and 0 < w <= 1


def test_check_tables_rejects_broken_tables(monkeypatch):
    styles = dict(PART_STYLES)
    del styles["eye"]
    monkeypatch.setattr(synthetic_style, "PART_STYLES", styles)
    with pytest.raises(ValueError, match="44 parts"):
        check_tables()
    styles = dict(PART_STYLES)
    styles["beak"] = styles["headlight"]  # two parts that look alike
    monkeypatch.setattr(synthetic_style, "PART_STYLES", styles)
    with pytest.raises(ValueError, match="looks like"):
        check_tables()
    monkeypatch.setattr(synthetic_style, "PART_STYLES", PART_STYLES)
    layouts = dict(synthetic_style.CLASS_LAYOUTS)
    layouts["bottle"] = layouts["bottle"] + (("wheel", 0.5, 0.5, 0.1, 0.1),)
    monkeypatch.setattr(synthetic_style, "CLASS_LAYOUTS", layouts)
    with pytest.raises(ValueError, match="bottle"):
        check_tables()


# ----------------------------------------------------------------------------- config checks

@pytest.mark.parametrize("changes", [dict(image_size=16), dict(k_images=(5, 0, 1)),
                                     dict(m_images_per_class=(1, 1))])
def test_bad_config_is_rejected(tmp_path, changes):
    with pytest.raises(ValueError):
        generate_dataset(str(tmp_path / "d"), config=small_config(**changes), workers=1,
                         log=quiet)
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- idempotence

def test_ensure_dataset_reuses_a_matching_data_set(root):
    before = tree_digest(root)
    manifest_path = os.path.join(root, synthetic.MANIFEST)
    image = os.path.join(root, "VOC2010", "Images", "train", sorted(
        os.listdir(os.path.join(root, "VOC2010", "Images", "train")))[0])
    mtimes = (os.stat(manifest_path).st_mtime_ns, os.stat(image).st_mtime_ns)
    manifest = ensure_dataset(root, seed=0, config=small_config(), workers=1, log=quiet)
    assert manifest == load_json(manifest_path)
    assert (os.stat(manifest_path).st_mtime_ns, os.stat(image).st_mtime_ns) == mtimes
    assert tree_digest(root) == before


@pytest.mark.parametrize("seed,changes", [(1, {}), (0, dict(k_images=(7, 2, 2)))])
def test_ensure_dataset_never_overwrites_another_data_set(root, seed, changes):
    before = tree_digest(root)
    mtime = os.stat(os.path.join(root, synthetic.MANIFEST)).st_mtime_ns
    with pytest.raises(DatasetExistsError) as e:
        ensure_dataset(root, seed=seed, config=small_config(**changes), workers=1, log=quiet)
    assert root in str(e.value) and "not overwritten" in str(e.value)
    assert tree_digest(root) == before
    assert os.stat(os.path.join(root, synthetic.MANIFEST)).st_mtime_ns == mtime


def test_generate_dataset_refuses_an_existing_folder(root):
    before = tree_digest(root)
    with pytest.raises(DatasetExistsError):
        generate_dataset(root, seed=0, config=small_config(), workers=1, log=quiet)
    assert tree_digest(root) == before


def test_ensure_dataset_refuses_a_foreign_non_empty_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(DatasetExistsError) as e:
        ensure_dataset(str(folder), seed=0, config=small_config(), workers=1, log=quiet)
    assert str(folder) in str(e.value)
    assert os.listdir(folder) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "precious"


def test_ensure_dataset_refuses_a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(DatasetExistsError):
        ensure_dataset(str(path), seed=0, config=small_config(), workers=1, log=quiet)
    assert path.read_text() == "x"


def test_ensure_dataset_reuses_real_data_without_manifest(tmp_path):
    folder = tmp_path / "real"
    (folder / "VOC2010").mkdir(parents=True)
    manifest = ensure_dataset(str(folder), seed=3, config=small_config(), workers=1, log=quiet)
    assert manifest["generator"] == "real"
    assert os.listdir(folder) == ["VOC2010"]
    assert "real UnMask data" in synthetic.summary(manifest)


def test_ensure_dataset_fills_an_empty_folder(tmp_path, datasets):
    folder = tmp_path / "empty"
    folder.mkdir()
    manifest = ensure_dataset(str(folder), seed=0, config=small_config(), workers=1, log=quiet)
    assert manifest["seed"] == 0
    assert tree_digest(str(folder)) == tree_digest(datasets["a"][0])


# ----------------------------------------------------------------------------- interruption

@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch, error):
    def broken_preview(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(synthetic, "write_preview", broken_preview)
    data_dir = tmp_path / "unmask"
    with pytest.raises(type(error)):
        generate_dataset(str(data_dir), seed=0, config=small_config(), workers=1, log=quiet)
    assert not data_dir.exists()
    assert os.listdir(tmp_path) == []  # no <data_dir>.tmp-<pid> folder either
