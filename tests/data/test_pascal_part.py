"""Tests for data/coco_io.py and data/pascal_part.py (PASCAL-Part -> 44-part COCO files).

The fixtures write MATLAB v5 files in the real PASCAL-Part layout: a 1x1 struct ``anno`` with
``imname`` and ``objects`` (1xK struct array of class / class_ind / mask / parts), ``parts`` a
1xP struct array of part_name / mask, or an empty array for objects without parts.
"""
import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils

from data import coco_io, pascal_part
from data.fileio import write_json_atomic
from data.knowledge import CLASS_PARTS, PARTS, PART_IDS

H, W = 24, 32
_PART_DTYPE = [("part_name", "O"), ("mask", "O")]
_OBJ_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


# ----------------------------------------------------------------------------- fixture writers

def _struct_parts(parts, empty_kind="double"):
    """1xP struct array of parts; an empty 0x0 double (or 0x0 struct) when there are none."""
    if not parts:
        return np.zeros((0, 0)) if empty_kind == "double" else np.empty((0, 0), _PART_DTYPE)
    arr = np.empty((1, len(parts)), dtype=_PART_DTYPE)
    for j, (name, mask) in enumerate(parts):
        arr[0, j] = (name, mask.astype(np.uint8))
    return arr


def write_anno(path, imname, objects, empty_kind="double"):
    """objects: list of (class, class_ind, [(part_name, bool mask [H, W]), ...])."""
    objs = np.empty((1, len(objects)), dtype=_OBJ_DTYPE)
    for k, (cls, ind, parts) in enumerate(objects):
        silhouette = np.zeros((H, W), np.uint8)
        for _, m in parts:
            silhouette |= m.astype(np.uint8)
        objs[0, k] = (cls, np.array([[float(ind)]]), silhouette,
                      _struct_parts(parts, empty_kind))
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (imname, objs)
    scipy.io.savemat(path, {"anno": anno})


def rect_mask(rng, shape=(H, W)):
    """A random non-empty rectangle mask (bool [H, W])."""
    h, w = shape
    y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
    y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


# Expected merged parts of the parts written for every image (see _image_objects).
_KEPT = {("person", "lear"): "ear", ("person", "rear"): "ear", ("person", "llarm"): "arm",
         ("car", "leftside"): "vehicle_left", ("car", "wheel_1"): "wheel",
         ("car", "wheel_2"): "wheel", ("train", "cleftside_1"): "coach_left",
         ("cat", "lfleg"): "leg"}


def _image_objects(rng):
    """Objects of one synthetic image: kept parts, dropped/unknown names, a part-less boat."""
    parts = {key: rect_mask(rng) for key in _KEPT}
    objects = [
        ("person", 15, [(n, parts[("person", n)]) for n in ("lear", "rear", "llarm")]
         + [("zzzpart", rect_mask(rng))]),
        ("car", 7, [(n, parts[("car", n)]) for n in ("leftside", "wheel_1", "wheel_2")]),
        ("train", 19, [("cleftside_1", parts[("train", "cleftside_1")]),
                       ("hfrontside", rect_mask(rng)), ("coach_1", rect_mask(rng))]),
        ("cat", 8, [("lfleg", parts[("cat", "lfleg")])]),
        ("bicycle", 2, [("handlebar", rect_mask(rng))]),
        ("boat", 4, []),
    ]
    return objects, parts


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """20 annotated images (+ JPEGs) in PASCAL-Part layout; returns paths and expected masks."""
    root = tmp_path_factory.mktemp("voc")
    ann_dir, img_dir = root / "Annotations_Part", root / "JPEGImages"
    ann_dir.mkdir()
    img_dir.mkdir()
    rng = np.random.default_rng(123)
    expected = {}
    for i in range(20):
        stem = "2008_%06d" % i
        objects, parts = _image_objects(rng)
        write_anno(str(ann_dir / (stem + ".mat")), stem, objects,
                   empty_kind="double" if i % 2 else "struct")
        pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(str(img_dir / (stem + ".jpg")), quality=90)
        expected[stem + ".jpg"] = parts
    return {"ann": str(ann_dir), "img": str(img_dir), "expected": expected}


@pytest.fixture(scope="module")
def converted(voc, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = pascal_part.convert_pascal_part(voc["ann"], voc["img"], str(out), seed=7)
    return {"out": str(out), "summary": summary}


# ----------------------------------------------------------------------------- name merging

# Every part name of PASCAL-Part's part2ind.m, per class.
_BUS = ("frontside leftside rightside backside roofside leftmirror rightmirror fliplate "
        "bliplate".split() + ["door_%d" % i for i in range(1, 11)]
        + ["wheel_%d" % i for i in range(1, 11)] + ["headlight_%d" % i for i in range(1, 11)]
        + ["window_%d" % i for i in range(1, 21)])
_CAT = "head leye reye lear rear nose torso neck lfleg lfpa rfleg rfpa lbleg lbpa rbleg rbpa tail"
_COW = ("head leye reye lear rear muzzle lhorn rhorn torso neck lfuleg lflleg rfuleg rflleg "
        "lbuleg lblleg rbuleg rblleg tail")
PASCAL_PART_NAMES = {
    "aeroplane": ["body", "stern", "lwing", "rwing", "tail"]
                 + ["engine_%d" % i for i in range(1, 11)] + ["wheel_%d" % i for i in range(1, 11)],
    "bicycle": ["fwheel", "bwheel", "saddle", "handlebar", "chainwheel"]
               + ["headlight_%d" % i for i in range(1, 11)],
    "bird": "head leye reye beak torso neck lwing rwing lleg lfoot rleg rfoot tail".split(),
    "bottle": ["cap", "body"],
    "bus": _BUS, "car": _BUS,
    "cat": _CAT.split(), "dog": _CAT.split() + ["muzzle"],
    "cow": _COW.split(), "sheep": _COW.split(),
    "horse": [n for n in _COW.split() if "horn" not in n] + ["lfho", "rfho", "lbho", "rbho"],
    "motorbike": ["fwheel", "bwheel", "handlebar", "saddle"]
                 + ["headlight_%d" % i for i in range(1, 11)],
    "person": ("head leye reye lear rear lebrow rebrow nose mouth hair torso neck llarm luarm "
               "lhand rlarm ruarm rhand llleg luleg lfoot rlleg ruleg rfoot").split(),
    "pottedplant": ["pot", "plant"],
    "train": "head hfrontside hleftside hrightside hbackside hroofside".split()
             + ["%s_%d" % (p, i) for p in ("headlight", "coach", "cfrontside", "cleftside",
                                          "crightside", "cbackside", "croofside")
                for i in range(1, 11)],
    "tvmonitor": ["screen"],
}


@pytest.mark.parametrize("cls,name,expected", [
    ("person", "lear", "ear"), ("cat", "rear", "ear"), ("cat", "lfleg", "leg"),
    ("cow", "rblleg", "leg"), ("person", "luleg", "leg"), ("bird", "lleg", "leg"),
    ("dog", "lbpa", "paw"), ("horse", "rfho", "hoof"), ("person", "llarm", "arm"),
    ("person", "rhand", "hand"), ("person", "lebrow", "eyebrow"), ("bird", "reye", "eye"),
    ("sheep", "lhorn", "horn"), ("aeroplane", "lwing", "wing"), ("aeroplane", "engine_3", "engine"),
    ("car", "leftside", "vehicle_left"), ("bus", "rightside", "vehicle_right"),
    ("car", "roofside", "vehicle_top"), ("bus", "backside", "vehicle_back"),
    ("car", "frontside", "frontside"), ("car", "fliplate", "licenseplate"),
    ("car", "leftmirror", "mirror"), ("bus", "window_17", "window"), ("car", "door_2", "door"),
    ("train", "cleftside_1", "coach_left"), ("train", "crightside_2", "coach_right"),
    ("train", "cfrontside_1", "coach_front"), ("train", "cbackside_3", "coach_back"),
    ("train", "croofside_1", "coach_top"), ("train", "head", "head"),
    ("train", "headlight_1", "headlight"), ("bicycle", "chainwheel", "wheel"),
    ("motorbike", "fwheel", "wheel"), ("dog", "muzzle", "muzzle"), ("person", "LEar", "ear"),
])
def test_merge_part_name_maps_fine_names_to_unmask_parts(cls, name, expected):
    assert pascal_part.merge_part_name(cls, name) == expected
    assert pascal_part.resolve_part_name(cls, name) == (expected, pascal_part.KEPT)


@pytest.mark.parametrize("cls,name", [
    ("bicycle", "handlebar"), ("motorbike", "handlebar"), ("train", "hfrontside"),
    ("train", "hroofside"), ("train", "coach_4"), ("person", "person")])
def test_merge_part_name_drops_whole_objects_head_sides_and_handlebar(cls, name):
    assert pascal_part.resolve_part_name(cls, name) == (None, pascal_part.DROPPED)


def test_handlebar_as_hand_reproduces_the_original_labelling():
    assert pascal_part.merge_part_name("bicycle", "handlebar", handlebar_as_hand=True) == "hand"


@pytest.mark.parametrize("cls,name", [("person", "zzzpart"), ("train", "leftside"),
                                      ("car", "cleftside_1"), ("cat", "ear_left")])
def test_unknown_names_are_reported_not_mapped(cls, name):
    assert pascal_part.resolve_part_name(cls, name) == (None, pascal_part.UNKNOWN)
    assert pascal_part.merge_part_name(cls, name) is None


def test_every_pascal_part_name_merges_into_the_class_table():
    """All part2ind names are known, and per class they merge to exactly Table I (bicycle also
    has headlights in PASCAL-Part, which Table I leaves out)."""
    for cls, names in PASCAL_PART_NAMES.items():
        merged = set()
        for name in names:
            part, status = pascal_part.resolve_part_name(cls, name)
            assert status != pascal_part.UNKNOWN, (cls, name)
            if part is not None:
                assert part in PART_IDS
                merged.add(part)
        extra = {"headlight"} if cls == "bicycle" else set()
        assert merged == set(CLASS_PARTS[cls]) | extra, cls


# ----------------------------------------------------------------------------- split

def test_split_is_80_10_10_disjoint_and_deterministic():
    names = ["img_%03d" % i for i in range(103)]
    a = pascal_part.split_names(names, seed=3)
    b = pascal_part.split_names(list(reversed(names)), seed=3)
    c = pascal_part.split_names(names, seed=4)
    assert [len(a[s]) for s in pascal_part.SPLITS] == [82, 10, 11]
    assert a == b
    assert a != c
    together = a["train"] + a["val"] + a["test"]
    assert sorted(together) == names and len(set(together)) == len(names)


# ----------------------------------------------------------------------------- .mat reading

def test_read_part_annotation_returns_every_part_with_its_mask(voc):
    path = os.path.join(voc["ann"], "2008_000000.mat")
    items = pascal_part.read_part_annotation(path)
    parts = voc["expected"]["2008_000000.jpg"]
    assert all(cls != "boat" for cls, _, _ in items)  # the part-less boat adds nothing
    assert len(items) == 12  # 4 person + 3 car + 3 train + 1 cat + 1 bicycle
    for cls, name, mask in items:
        assert mask.dtype == bool and mask.shape == (H, W)
        if (cls, name) in parts:
            np.testing.assert_array_equal(mask, parts[(cls, name)])


def test_read_part_annotation_single_object_file(tmp_path):
    m = rect_mask(np.random.default_rng(0))
    path = str(tmp_path / "one.mat")
    write_anno(path, "one", [("tvmonitor", 20, [("screen", m)])])
    ((cls, name, mask),) = pascal_part.read_part_annotation(path)
    assert (cls, name) == ("tvmonitor", "screen")
    np.testing.assert_array_equal(mask, m)


def _write_without_field(path, drop):
    """A PASCAL-Part-like file with one field removed from the anno/object/part struct."""
    part_fields = [f for f in _PART_DTYPE if f[0] != drop]
    parts = np.empty((1, 1), dtype=part_fields)
    parts[0, 0] = tuple(v for k, v in (("part_name", "head"), ("mask", np.ones((H, W), np.uint8)))
                        if k != drop)
    obj_fields = [f for f in _OBJ_DTYPE if f[0] != drop]
    objs = np.empty((1, 1), dtype=obj_fields)
    values = {"class": "person", "class_ind": np.array([[15.0]]),
              "mask": np.ones((H, W), np.uint8), "parts": parts}
    objs[0, 0] = tuple(values[k] for k, _ in obj_fields)
    anno_fields = [f for f in [("imname", "O"), ("objects", "O")] if f[0] != drop]
    anno = np.empty((1, 1), dtype=anno_fields)
    anno[0, 0] = tuple({"imname": "x", "objects": objs}[k] for k, _ in anno_fields)
    scipy.io.savemat(path, {"anno": anno})


@pytest.mark.parametrize("drop", ["imname", "objects", "class", "parts", "part_name"])
def test_missing_field_raises_value_error_naming_file_and_field(tmp_path, drop):
    path = str(tmp_path / ("no_%s.mat" % drop))
    _write_without_field(path, drop)
    with pytest.raises(ValueError, match=drop) as err:
        pascal_part.read_part_annotation(path)
    assert path in str(err.value)


def test_missing_anno_and_corrupt_files_raise_value_error_naming_file(tmp_path):
    no_anno = str(tmp_path / "no_anno.mat")
    scipy.io.savemat(no_anno, {"something": np.ones((2, 2))})
    corrupt = str(tmp_path / "corrupt.mat")
    with open(corrupt, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    garbage = str(tmp_path / "garbage.mat")
    with open(garbage, "wb") as f:
        f.write(b"not a mat file at all")
    truncated = str(tmp_path / "truncated.mat")
    write_anno(truncated, "t", [("person", 15, [("head", np.ones((H, W), bool))])])
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    empty = str(tmp_path / "empty.mat")
    open(empty, "wb").close()
    not_struct = str(tmp_path / "not_struct.mat")
    scipy.io.savemat(not_struct, {"anno": np.ones(3)})
    for path in (no_anno, corrupt, garbage, truncated, empty, not_struct,
                 str(tmp_path / "missing.mat")):
        with pytest.raises(ValueError) as err:
            pascal_part.read_part_annotation(path)
        assert path in str(err.value)
    with pytest.raises(ValueError, match="'anno'"):
        pascal_part.read_part_annotation(no_anno)


# ----------------------------------------------------------------------------- conversion

def _load_split(out, split):
    return coco_io.load_coco(os.path.join(out, "VOC2010", split + ".json"))


def test_convert_writes_valid_coco_with_80_10_10_split(converted):
    out, summary = converted["out"], converted["summary"]
    cocos = {s: _load_split(out, s) for s in pascal_part.SPLITS}
    sizes = [len(cocos[s]["images"]) for s in pascal_part.SPLITS]
    assert sizes == [16, 2, 2]
    names = [img["file_name"] for s in pascal_part.SPLITS for img in cocos[s]["images"]]
    assert len(set(names)) == 20
    for s in pascal_part.SPLITS:
        assert summary["splits"][s]["images"] == len(cocos[s]["images"])
        assert summary["splits"][s]["annotations"] == len(cocos[s]["annotations"])
        assert [c["name"] for c in cocos[s]["categories"]] == list(PARTS)


def test_convert_split_is_deterministic_for_a_seed(voc, converted, tmp_path):
    again = pascal_part.convert_pascal_part(voc["ann"], None, str(tmp_path / "a"), seed=7)
    other = pascal_part.convert_pascal_part(voc["ann"], None, str(tmp_path / "b"), seed=8)

    def split_files(out):
        return {s: sorted(i["file_name"] for i in _load_split(out, s)["images"])
                for s in pascal_part.SPLITS}
    assert split_files(str(tmp_path / "a")) == split_files(converted["out"])
    assert split_files(str(tmp_path / "b")) != split_files(converted["out"])
    assert again["parts_per_category"] == converted["summary"]["parts_per_category"]
    assert other["splits"]["train"]["images"] == 16


def test_one_annotation_per_kept_part_instance_with_exact_mask_bbox_area(voc, converted):
    expected = voc["expected"]
    for split in pascal_part.SPLITS:
        coco = _load_split(converted["out"], split)
        by_image = {img["id"]: img for img in coco["images"]}
        per_image = {}
        for ann in coco["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann)
        for image_id, img in by_image.items():
            anns = per_image.get(image_id, [])
            parts = expected[img["file_name"]]
            assert len(anns) == len(_KEPT)  # lear+rear -> 2 ears, 2 wheels, nothing dropped
            got = sorted(PARTS[a["category_id"]] for a in anns)
            assert got == sorted(_KEPT.values())
            remaining = {key: m for key, m in parts.items()}
            for ann in anns:
                mask = coco_io.rle_to_mask(ann["segmentation"])
                match = [k for k, m in remaining.items()
                         if _KEPT[k] == PARTS[ann["category_id"]] and np.array_equal(m, mask)]
                assert match, "annotation %d does not reproduce an input mask" % ann["id"]
                del remaining[match[0]]
                assert ann["area"] == int(mask.sum())
                assert ann["bbox"] == coco_io.mask_bbox(mask)
                assert ann["iscrowd"] == 0
            assert not remaining


def test_convert_summary_counts_unknown_dropped_and_categories(converted):
    summary = converted["summary"]
    assert summary["unknown_names"] == {"person/zzzpart": 20}
    assert summary["dropped_names"] == {"train/hfrontside": 20, "train/coach_1": 20,
                                        "bicycle/handlebar": 20}
    assert summary["parts_per_category"]["ear"] == 40
    assert summary["parts_per_category"]["wheel"] == 40
    assert summary["parts_per_category"]["hand"] == 0
    total = sum(s["annotations"] for s in summary["splits"].values())
    assert sum(summary["parts_per_category"].values()) == total == 20 * len(_KEPT)
    assert summary["skipped_files"] == [] and summary["empty_part_masks"] == 0


def test_images_are_copied_into_their_split_folder(voc, converted):
    for split in pascal_part.SPLITS:
        coco = _load_split(converted["out"], split)
        folder = os.path.join(converted["out"], "VOC2010", "Images", split)
        assert sorted(os.listdir(folder)) == sorted(i["file_name"] for i in coco["images"])
        for img in coco["images"]:
            with open(os.path.join(folder, img["file_name"]), "rb") as a, \
                    open(os.path.join(voc["img"], img["file_name"]), "rb") as b:
                assert a.read() == b.read()
            with Image.open(os.path.join(folder, img["file_name"])) as im:
                assert im.size == (img["width"], img["height"])


def _small_voc(tmp_path, n=10):
    ann, img = tmp_path / "ann", tmp_path / "img"
    ann.mkdir()
    img.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        stem = "im%02d" % i
        write_anno(str(ann / (stem + ".mat")), stem, [("person", 15, [("lear", rect_mask(rng))])])
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(str(img / (stem + ".jpg")))
    return str(ann), str(img)


def test_bad_file_raises_or_is_skipped_and_listed(tmp_path):
    ann, img = _small_voc(tmp_path)
    bad = os.path.join(ann, "im99.mat")
    with open(bad, "wb") as f:
        f.write(b"garbage")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(img, "im99.jpg"))
    with pytest.raises(ValueError) as err:
        pascal_part.convert_pascal_part(ann, img, str(tmp_path / "o1"))
    assert bad in str(err.value)
    summary = pascal_part.convert_pascal_part(ann, img, str(tmp_path / "o2"), on_error="skip")
    assert [s["file"] for s in summary["skipped_files"]] == [bad]
    assert sum(s["images"] for s in summary["splits"].values()) == 10


def test_missing_or_mismatched_image_raises_value_error(tmp_path):
    ann, img = _small_voc(tmp_path, n=3)
    os.remove(os.path.join(img, "im01.jpg"))
    with pytest.raises(ValueError, match="im01"):
        pascal_part.convert_pascal_part(ann, img, str(tmp_path / "o1"))
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(os.path.join(img, "im01.jpg"))
    with pytest.raises(ValueError, match="im01.mat"):
        pascal_part.convert_pascal_part(ann, img, str(tmp_path / "o2"))


def test_convert_rejects_bad_arguments(tmp_path):
    ann, img = _small_voc(tmp_path, n=2)
    with pytest.raises(ValueError, match="on_error"):
        pascal_part.convert_pascal_part(ann, img, str(tmp_path / "o"), on_error="ignore")
    with pytest.raises(FileNotFoundError, match="annotations_dir"):
        pascal_part.convert_pascal_part(str(tmp_path / "nope"), img, str(tmp_path / "o"))
    with pytest.raises(ValueError, match="no .mat files"):
        pascal_part.convert_pascal_part(img, img, str(tmp_path / "o"))


def test_empty_part_masks_are_counted_not_written(tmp_path):
    """A part whose mask is all zero (PASCAL-Part has some) is left out and counted; the
    written file validates and holds the non-empty parts only."""
    ann, img = tmp_path / "ann", tmp_path / "img"
    ann.mkdir()
    img.mkdir()
    rng = np.random.default_rng(9)
    for i in range(10):
        stem = "im%02d" % i
        parts = [("lear", rect_mask(rng)), ("rear", np.zeros((H, W), bool))]
        write_anno(str(ann / (stem + ".mat")), stem, [("person", 15, parts)])
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(str(img / (stem + ".jpg")))
    summary = pascal_part.convert_pascal_part(str(ann), str(img), str(tmp_path / "out"))
    assert summary["empty_part_masks"] == 10
    assert summary["parts_per_category"]["ear"] == 10
    for split in pascal_part.SPLITS:
        coco = _load_split(str(tmp_path / "out"), split)  # validation rejects empty parts
        assert len(coco["annotations"]) == len(coco["images"])
        assert all(a["area"] > 0 for a in coco["annotations"])


def _split_bytes(out):
    contents = {}
    for split in pascal_part.SPLITS:
        with open(os.path.join(out, "VOC2010", split + ".json"), "rb") as f:
            contents[split] = f.read()
    return contents


def test_existing_split_files_are_refused_without_overwrite(tmp_path):
    ann, img = _small_voc(tmp_path)
    out = str(tmp_path / "out")
    pascal_part.convert_pascal_part(ann, None, out, seed=1)
    before = _split_bytes(out)
    with pytest.raises(ValueError) as err:
        pascal_part.convert_pascal_part(ann, img, out, seed=2)
    for split in pascal_part.SPLITS:
        assert os.path.join(out, "VOC2010", split + ".json") in str(err.value)
    assert "--overwrite" in str(err.value)
    assert _split_bytes(out) == before
    assert not os.path.exists(os.path.join(out, "VOC2010", "Images"))  # nothing copied


def test_overwrite_replaces_the_split_files(tmp_path):
    ann, img = _small_voc(tmp_path)
    out = str(tmp_path / "out")
    pascal_part.convert_pascal_part(ann, None, out, seed=1)
    summary = pascal_part.convert_pascal_part(ann, img, out, seed=2, overwrite=True)
    fresh = str(tmp_path / "fresh")
    pascal_part.convert_pascal_part(ann, img, fresh, seed=2)
    assert _split_bytes(out) == _split_bytes(fresh)
    assert summary["splits"]["train"]["json"] == os.path.join(out, "VOC2010", "train.json")
    assert sorted(os.listdir(os.path.join(out, "VOC2010"))) == sorted(
        ["Images"] + [s + ".json" for s in pascal_part.SPLITS])  # no temporary files left


def test_command_line_refuses_then_overwrites(tmp_path, capsys):
    ann, img = _small_voc(tmp_path, n=10)
    out = str(tmp_path / "cli")
    args = ["--annotations", ann, "--out", out]
    pascal_part.main(args + ["--seed", "1"])
    before = _split_bytes(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        pascal_part.main(args + ["--seed", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "train.json" in err and "--overwrite" in err and "Traceback" not in err
    assert _split_bytes(out) == before
    pascal_part.main(args + ["--seed", "2", "--overwrite"])
    assert _split_bytes(out) != before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_synthetic_data_set_is_never_written_into(tmp_path, overwrite):
    ann, img = _small_voc(tmp_path)
    out = tmp_path / "unmask"
    (out / "VOC2010").mkdir(parents=True)
    (out / "VOC2010" / "train.json").write_text("{}")
    write_json_atomic(str(out / "synthetic.json"), {"generator": "unmask-synthetic"})
    with pytest.raises(ValueError) as err:
        pascal_part.convert_pascal_part(ann, img, str(out), overwrite=overwrite)
    assert "synthetic" in str(err.value) and str(out / "synthetic.json") in str(err.value)
    assert sorted(os.listdir(out / "VOC2010")) == ["train.json"]
    assert (out / "VOC2010" / "train.json").read_text() == "{}"


def test_interrupted_write_keeps_the_old_splits(tmp_path, monkeypatch):
    """The three split files are replaced together: failing while writing the last one
    leaves all three old files (and no temporary file)."""
    ann, _img = _small_voc(tmp_path)
    out = str(tmp_path / "out")
    pascal_part.convert_pascal_part(ann, None, out, seed=1)
    before = _split_bytes(out)
    real_dump, calls = json.dump, []

    def failing_dump(obj, f, **kwargs):
        calls.append(obj["info"]["split"])
        if len(calls) == 3:
            raise OSError("disk full")
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(pascal_part.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        pascal_part.convert_pascal_part(ann, None, out, seed=2, overwrite=True)
    monkeypatch.undo()
    assert calls == list(pascal_part.SPLITS)
    assert _split_bytes(out) == before
    assert sorted(os.listdir(os.path.join(out, "VOC2010"))) == sorted(
        s + ".json" for s in pascal_part.SPLITS)


# ----------------------------------------------------------------------------- coco_io

@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (24, 32), (33, 17)])
def test_rle_round_trip_and_bbox(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for dtype, on in ((bool, True), (np.uint8, 255), (np.uint8, 1)):
        mask = np.where(rng.random(shape) < 0.4, on, 0).astype(dtype)
        rle = coco_io.mask_to_rle(mask)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        json.dumps(rle)
        decoded = coco_io.rle_to_mask(json.loads(json.dumps(rle)))
        assert decoded.dtype == bool
        np.testing.assert_array_equal(decoded, mask != 0)
        coded = mask_utils.encode(np.asfortranarray((mask != 0).astype(np.uint8)))
        assert coco_io.mask_bbox(mask) == [float(v) for v in mask_utils.toBbox(coded)]


def test_mask_bbox_of_known_rectangle_and_empty_mask():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert coco_io.mask_bbox(mask) == [3.0, 2.0, 6.0, 3.0]
    assert coco_io.mask_bbox(np.zeros((4, 4), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_uncompressed_rle_and_polygon_segmentations_decode():
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:4] = True
    counts = []  # column-major run lengths starting with zeros
    flat = mask.flatten(order="F")
    value, run = False, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    np.testing.assert_array_equal(coco_io.rle_to_mask({"size": [6, 5], "counts": counts}), mask)
    square = coco_io.segmentation_to_mask([[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]], 10, 12)
    ys, xs = np.nonzero(square)
    assert square.shape == (10, 12) and 2 <= xs.min() and xs.max() <= 8 and ys.max() <= 6


def test_categories_and_skeleton():
    cats = coco_io.part_categories()
    assert [c["id"] for c in cats] == list(range(44))
    assert [c["name"] for c in cats] == list(PARTS)
    coco = coco_io.coco_skeleton({"description": "x"})
    assert coco["images"] == [] and coco["annotations"] == [] and coco["categories"] == cats


def test_add_image_and_annotation_build_a_valid_file(tmp_path):
    coco = coco_io.coco_skeleton({})
    rng = np.random.default_rng(1)
    ids = [coco_io.add_image(coco, "a%d.jpg" % i, H, W) for i in range(3)]
    assert ids == [1, 2, 3]
    masks = []
    for image_id in ids:
        for cat in (0, 43):
            m = rect_mask(rng)
            masks.append(m)
            coco_io.add_annotation(coco, image_id, cat, m)
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 7))
    path = str(tmp_path / "coco.json")
    write_json_atomic(path, coco)
    loaded = coco_io.load_coco(path)
    for ann, m in zip(loaded["annotations"], masks):
        np.testing.assert_array_equal(coco_io.rle_to_mask(ann["segmentation"]), m)
        assert ann["area"] == int(m.sum()) and ann["bbox"] == coco_io.mask_bbox(m)


def test_add_annotation_refuses_bad_input():
    coco = coco_io.coco_skeleton({})
    image_id = coco_io.add_image(coco, "a.jpg", H, W)
    with pytest.raises(ValueError, match="empty mask"):
        coco_io.add_annotation(coco, image_id, 3, np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="does not match image"):
        coco_io.add_annotation(coco, image_id, 3, np.ones((H, W + 1), bool))
    with pytest.raises(ValueError, match="category_id 44"):
        coco_io.add_annotation(coco, image_id, 44, np.ones((H, W), bool))
    with pytest.raises(ValueError, match="image id 9"):
        coco_io.add_annotation(coco, 9, 3, np.ones((H, W), bool))
    assert coco["annotations"] == []


def _valid_coco():
    coco = coco_io.coco_skeleton({})
    image_id = coco_io.add_image(coco, "a.jpg", H, W)
    coco_io.add_annotation(coco, image_id, 5, rect_mask(np.random.default_rng(2)))
    return coco


@pytest.mark.parametrize("corrupt,message", [
    (lambda c: c["annotations"][0].update(category_id=44), "category_id 44"),
    (lambda c: c["annotations"][0].update(segmentation=[]), "empty segmentation"),
    (lambda c: c["annotations"][0]["segmentation"].update(counts=""), "empty RLE"),
    (lambda c: c["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), ">= 6 coordinates"),
    (lambda c: c["annotations"][0].update(image_id=77), "image_id 77"),
    (lambda c: c["annotations"][0].pop("bbox"), "missing key.*bbox"),
    (lambda c: c["images"][0].pop("height"), "missing key.*height"),
    (lambda c: c.pop("categories"), "missing key.*categories"),
    (lambda c: c["categories"][3].update(name="wheel"), "does not match PARTS"),
    (lambda c: c["categories"].append({"id": 44, "name": "handlebar"}), "0..43"),
    (lambda c: c["annotations"].append(dict(c["annotations"][0])), "duplicate annotation"),
])
def test_validate_coco_names_file_item_and_problem(tmp_path, corrupt, message):
    coco = _valid_coco()
    coco_io.validate_coco(coco, "ok.json")
    corrupt(coco)
    path = str(tmp_path / "bad.json")
    write_json_atomic(path, coco)
    with pytest.raises(ValueError, match=message) as err:
        coco_io.load_coco(path)
    assert path in str(err.value) and "regenerate" in str(err.value)


def test_validate_coco_reports_annotation_id():
    coco = _valid_coco()
    coco["annotations"][0]["category_id"] = -1
    with pytest.raises(ValueError, match=r"annotation #0 \(id 1\)"):
        coco_io.validate_coco(coco, "x.json")


def test_validate_accepts_polygon_segmentations():
    coco = _valid_coco()
    coco["annotations"][0]["segmentation"] = [[1.0, 1.0, 6.0, 1.0, 6.0, 5.0]]
    assert coco_io.validate_coco(coco, "poly.json") is coco


def test_command_line_with_skip_bad_and_hardlinks(tmp_path, capsys):
    ann, img = _small_voc(tmp_path, n=10)
    with open(os.path.join(ann, "broken.mat"), "wb") as f:
        f.write(b"x")
    out = str(tmp_path / "cli")
    summary = pascal_part.main(["--annotations", ann, "--images", img, "--out", out,
                                "--seed", "1", "--skip-bad", "--image-mode", "hardlink"])
    assert json.loads(capsys.readouterr().out) == summary
    assert len(summary["skipped_files"]) == 1
    # the split is drawn over all 11 files (8/1/2); the broken one is then left out
    assert sum(summary["splits"][s]["images"] for s in pascal_part.SPLITS) == 10
    for split in pascal_part.SPLITS:
        coco = _load_split(out, split)
        for image in coco["images"]:
            copied = os.path.join(out, "VOC2010", "Images", split, image["file_name"])
            assert os.path.samefile(copied, os.path.join(img, image["file_name"]))
