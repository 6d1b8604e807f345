"""Tests for the loaders: data/coco_parts.py (K's matterport-style data set), data/images.py
(image decoding) and data/classset.py (M's class-set folders), on a small synthetic data set
and on fixture files written here (bad inputs: missing folders, malformed COCO files,
unusual or broken images, foreign class folders).
"""
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data import classset, coco_io, images
from data.coco_parts import PartsDataset
from data.images import ImageError, read_image
from data.knowledge import CLASS_SETS, PARTS, get_class_set
from data.synthetic import SPLITS, SyntheticConfig, generate_dataset

PREPARE = "python main.py --prepare-data"
SIZE = 64
K_IMAGES = (6, 2, 2)
M_IMAGES = (3, 2, 2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data_layer") / "unmask")
    generate_dataset(path, seed=3, workers=1, log=lambda _m: None,
                     config=SyntheticConfig(image_size=SIZE, k_images=K_IMAGES,
                                            m_images_per_class=M_IMAGES))
    return path


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def k_copy(root, tmp_path, split="train"):
    """A copy of K's ``split`` (annotation file and images) under ``tmp_path/data``."""
    dst = tmp_path / "data" / "VOC2010"
    shutil.copytree(os.path.join(root, "VOC2010", "Images", split), dst / "Images" / split)
    shutil.copy(os.path.join(root, "VOC2010", split + ".json"), dst / (split + ".json"))
    return tmp_path / "data", dst / (split + ".json")


# ----------------------------------------------------------------------------- PartsDataset

@pytest.mark.parametrize("split", SPLITS)
def test_load_parts_registers_44_parts_and_every_image(root, split):
    ds = PartsDataset().load_parts(root, split)
    ds.prepare()
    assert ds.num_classes == 45
    assert ds.class_names[0] == "BG"
    assert ds.class_names[1:] == list(PARTS)
    assert ds.num_images == K_IMAGES[SPLITS.index(split)]
    assert list(ds.image_ids) == list(range(ds.num_images))
    coco = load_json(os.path.join(root, "VOC2010", split + ".json"))
    assert [info["path"] for info in ds.image_info] == [
        os.path.join(root, "VOC2010", "Images", split, img["file_name"]) for img in coco["images"]]


def test_load_image_and_load_mask_match_the_coco_file(root):
    ds = PartsDataset().load_parts(root, "train")
    ds.prepare()
    coco = load_json(os.path.join(root, "VOC2010", "train.json"))
    anns_of = {}
    for ann in coco["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    total = 0
    for image_id in ds.image_ids:
        info = ds.image_info[image_id]
        image = ds.load_image(image_id)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        masks, class_ids = ds.load_mask(image_id)
        anns = anns_of.get(info["id"], [])
        assert masks.dtype == bool and masks.shape == (SIZE, SIZE, len(anns))
        assert class_ids.dtype == np.int32 and class_ids.shape == (len(anns),)
        for k, ann in enumerate(anns):
            assert class_ids[k] == ann["category_id"] + 1
            assert ds.class_names[class_ids[k]] == PARTS[ann["category_id"]]
            np.testing.assert_array_equal(masks[..., k], coco_io.rle_to_mask(ann["segmentation"]))
        assert ds.part_names(image_id) == {PARTS[a["category_id"]] for a in anns}
        total += len(anns)
    assert total == len(coco["annotations"]) > 0


def test_missing_data_folder_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        PartsDataset().load_parts(str(tmp_path / "nowhere"), "train")
    assert PREPARE in str(e.value) and "nowhere" in str(e.value)


def test_missing_split_file_of_real_data_asks_for_the_real_file(root, tmp_path):
    """A folder without synthetic.json is real data: --prepare-data would not create the
    file, so the message asks for the real VOC2010/ folder (or a fresh --data-dir)."""
    data_dir, ann_path = k_copy(root, tmp_path)
    os.remove(ann_path)
    with pytest.raises(FileNotFoundError) as e:
        PartsDataset().load_parts(str(data_dir), "train")
    msg = str(e.value)
    assert str(ann_path) in msg and "real UnMask data" in msg
    assert "VOC2010/" in msg and "data.pascal_part" in msg and "fresh --data-dir" in msg
    assert "Generate the synthetic data set" not in msg


def _real_data(tmp_path, root, folders):
    """A real-data folder (no synthetic.json) holding copies of ``folders`` of ``root``."""
    data_dir = tmp_path / "real"
    for folder in folders:
        shutil.copytree(os.path.join(root, folder), data_dir / folder)
    return str(data_dir)


def test_real_data_without_the_class_set_folder_names_it(root, tmp_path):
    data_dir = _real_data(tmp_path, root, ["VOC2010"])
    with pytest.raises(FileNotFoundError) as e:
        classset.load_split(data_dir, "CS5b", "train")
    msg = str(e.value)
    assert os.path.join(data_dir, "cs5-2", "train") in msg
    assert "real UnMask data" in msg and "cs5-2/" in msg and "<class>/*.jpg" in msg
    assert "fresh --data-dir" in msg and "neither creates nor completes" in msg
    assert "Generate the synthetic data set" not in msg
    assert len(classset.load_split(_real_data(tmp_path / "b", root, ["cs5-2"]), "CS5b",
                                   "train")) > 0  # the same call works once the folder is there


def test_real_data_without_voc2010_names_it(root, tmp_path):
    data_dir = _real_data(tmp_path, root, ["cs3-1"])
    with pytest.raises(FileNotFoundError) as e:
        PartsDataset().load_parts(data_dir, "val")
    msg = str(e.value)
    assert os.path.join(data_dir, "VOC2010", "val.json") in msg
    assert "real UnMask data" in msg and "VOC2010/" in msg and "data.pascal_part" in msg


def test_incomplete_synthetic_data_set_says_to_regenerate_it(root, tmp_path):
    data_dir = tmp_path / "synthetic"
    shutil.copytree(root, data_dir)
    shutil.rmtree(data_dir / "cs3-2")
    with pytest.raises(FileNotFoundError) as e:
        classset.load_split(str(data_dir), "cs3-2", "val")
    msg = str(e.value)
    assert "synthetic data set" in msg and "incomplete" in msg
    assert "delete %s" % data_dir in msg and PREPARE in msg


def _drop_annotations(coco):
    del coco["annotations"]


def _unknown_category(coco):
    coco["annotations"][0]["category_id"] = 99


def _empty_polygon_list(coco):
    coco["annotations"][0]["segmentation"] = []


def _empty_rle_counts(coco):
    coco["annotations"][0]["segmentation"]["counts"] = ""


def _category_not_in_the_list(coco):
    used = coco["annotations"][0]["category_id"]
    coco["categories"] = [c for c in coco["categories"] if c["id"] != used]


def _missing_segmentation(coco):
    del coco["annotations"][-1]["segmentation"]


def _image_without_file_name(coco):
    del coco["images"][0]["file_name"]


@pytest.mark.parametrize("corrupt,expected", [
    (_drop_annotations, "annotations"), (_unknown_category, "99"),
    (_empty_polygon_list, "empty segmentation"), (_empty_rle_counts, "empty RLE"),
    (_missing_segmentation, "segmentation"), (_image_without_file_name, "file_name"),
    (_category_not_in_the_list, "not in the file's category list"),
])
def test_malformed_coco_file_is_rejected_naming_the_file(root, tmp_path, corrupt, expected):
    data_dir, ann_path = k_copy(root, tmp_path)
    coco = load_json(ann_path)
    corrupt(coco)
    write_json(ann_path, coco)
    with pytest.raises(ValueError) as e:
        PartsDataset().load_parts(str(data_dir), "train")
    assert str(ann_path) in str(e.value)
    assert expected in str(e.value)


def test_annotation_category_missing_from_the_category_list(root, tmp_path):
    """An annotation whose category id the file does not list is an unknown category: the
    loader refuses the file, naming it, the annotation, its image and the category."""
    data_dir, ann_path = k_copy(root, tmp_path)
    coco = load_json(ann_path)
    dropped = min(a["category_id"] for a in coco["annotations"])
    coco["categories"] = [c for c in coco["categories"] if c["id"] != dropped]
    first = next(a for a in coco["annotations"] if a["category_id"] == dropped)
    write_json(ann_path, coco)
    with pytest.raises(ValueError) as e:
        PartsDataset().load_parts(str(data_dir), "train")
    msg = str(e.value)
    assert str(ann_path) in msg
    assert "(id %d) of image id %d" % (first["id"], first["image_id"]) in msg
    assert "category_id %d (%s)" % (dropped, PARTS[dropped]) in msg


def test_invalid_json_is_rejected_naming_the_file(root, tmp_path):
    data_dir, ann_path = k_copy(root, tmp_path)
    text = ann_path.read_text()
    ann_path.write_text(text[:len(text) // 2])
    with pytest.raises(ValueError) as e:
        PartsDataset().load_parts(str(data_dir), "train")
    assert str(ann_path) in str(e.value)


def _all_zero_rle(img):
    return coco_io.mask_to_rle(np.zeros((img["height"], img["width"]), bool)), 5


def _uncompressed_all_zero_rle(img):
    return {"size": [img["height"], img["width"]], "counts": [img["height"] * img["width"]]}, 5


def _collinear_polygon(img):
    return [[1.0, 1.0, 5.0, 1.0, 9.0, 1.0]], 5


def _polygon_outside_the_image(img):
    w = img["width"]
    return [[w + 5.0, 2.0, w + 9.0, 2.0, w + 9.0, 6.0]], 5


def _two_point_polygon(img):
    return [[1.0, 1.0, 9.0, 9.0]], 5


def _zero_area(img):
    return coco_io.mask_to_rle(np.ones((img["height"], img["width"]), bool)), 0


@pytest.mark.parametrize("make,expected", [
    (_all_zero_rle, "all-zero mask"), (_uncompressed_all_zero_rle, "all-zero mask"),
    (_collinear_polygon, "cover no pixel"), (_polygon_outside_the_image, "cover no pixel"),
    (_two_point_polygon, ">= 6 coordinates"), (_zero_area, "area must be a positive number"),
])
def test_empty_segmentation_is_rejected_naming_file_annotation_and_image(
        root, tmp_path, make, expected):
    data_dir, ann_path = k_copy(root, tmp_path)
    coco = load_json(ann_path)
    img = coco["images"][1]
    segmentation, area = make(img)
    coco["annotations"].append({"id": 10 ** 6, "image_id": img["id"], "category_id": 5,
                                "segmentation": segmentation, "bbox": [0, 0, 0, 0],
                                "area": area, "iscrowd": 0})
    write_json(ann_path, coco)
    with pytest.raises(ValueError) as e:
        PartsDataset().load_parts(str(data_dir), "train")
    msg = str(e.value)
    assert str(ann_path) in msg and expected in msg
    assert "(id %d) of image id %d" % (10 ** 6, img["id"]) in msg


def test_a_polygon_covering_pixels_is_accepted(root, tmp_path):
    """The checks above reject empty parts only: a small real triangle loads."""
    data_dir, ann_path = k_copy(root, tmp_path)
    coco = load_json(ann_path)
    img = coco["images"][0]
    coco["annotations"].append({"id": 10 ** 6, "image_id": img["id"], "category_id": 5,
                                "segmentation": [[1.0, 1.0, 9.0, 1.0, 5.0, 8.0]],
                                "bbox": [1, 1, 8, 7], "area": 30.5, "iscrowd": 0})
    write_json(ann_path, coco)
    ds = PartsDataset().load_parts(str(data_dir), "train")
    ds.prepare()
    masks, class_ids = ds.load_mask(0)
    assert class_ids[-1] == 5 + 1 and masks[..., -1].sum() > 10


def test_load_mask_never_drops_an_empty_mask_silently(root, tmp_path):
    """Should an empty mask get past validation, load_mask raises instead of dropping it."""
    data_dir, ann_path = k_copy(root, tmp_path)
    ds = PartsDataset().load_parts(str(data_dir), "train")
    ds.prepare()
    index = next(i for i, info in enumerate(ds.image_info) if info["annotations"])
    info = ds.image_info[index]
    empty = coco_io.mask_to_rle(np.zeros((info["height"], info["width"]), bool))
    info["annotations"][0] = dict(info["annotations"][0], segmentation=empty)
    with pytest.raises(ValueError) as e:
        ds.load_mask(index)
    assert str(ann_path) in str(e.value) and "empty mask" in str(e.value)
    assert "annotation id %r" % info["annotations"][0]["id"] in str(e.value)


def test_corrupt_k_image_is_reported_by_name(root, tmp_path):
    data_dir, ann_path = k_copy(root, tmp_path)
    ds = PartsDataset().load_parts(str(data_dir), "train")
    ds.prepare()
    path = ds.image_info[1]["path"]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ImageError) as e:
        ds.load_image(1)
    assert path in str(e.value)
    assert ds.load_image(0).shape == (SIZE, SIZE, 3)  # the other images still load


# ----------------------------------------------------------------------------- read_image

def _check_rgb(arr, shape):
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8 and arr.shape == shape + (3,)


def test_grayscale_png_becomes_rgb(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    path = str(tmp_path / "gray.png")
    Image.fromarray(gray, mode="L").save(path)
    arr = read_image(path)
    _check_rgb(arr, (9, 7))
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray)


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = (200, 40, 10)
    rgba[0, :, 3] = 0      # fully transparent row -> white
    rgba[1, :, 3] = 255    # opaque row -> the colour itself
    rgba[2:, :, 3] = 128   # half transparent -> between colour and white
    path = str(tmp_path / "rgba.png")
    Image.fromarray(rgba, mode="RGBA").save(path)
    arr = read_image(path)
    _check_rgb(arr, (4, 5))
    assert (arr[0] == 255).all()
    assert (arr[1] == (200, 40, 10)).all()
    blend = arr[2:].reshape(-1, 3).astype(int)
    expected = np.array([200, 40, 10]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(blend - expected).max() <= 2


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    values = np.linspace(0, 65535, 6 * 8).reshape(6, 8).astype(np.uint16)
    path = str(tmp_path / "gray16.png")
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    arr = read_image(path)
    _check_rgb(arr, (6, 8))
    expected = values.astype(np.float64) / 65535 * 255
    assert np.abs(arr[..., 0].astype(np.float64) - expected).max() <= 1.0
    assert arr[..., 0].min() == 0 and arr[..., 0].max() == 255
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_dark_16_bit_png_stays_dark(tmp_path):
    """A 16-bit image whose values all happen to be < 256 is nearly black, not bright."""
    values = np.full((5, 5), 200, np.uint16)
    path = str(tmp_path / "dark16.png")
    Image.fromarray(values).save(path)
    assert read_image(path).max() <= 1


def test_palette_png_becomes_rgb(tmp_path):
    img = Image.new("P", (6, 3))
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    img.putpalette(palette + [0] * (768 - len(palette)))
    indices = np.array([[0, 1, 2, 3, 1, 2]] * 3, np.uint8)
    img.putdata(indices.ravel().tolist())
    path = str(tmp_path / "palette.png")
    img.save(path)
    arr = read_image(path)
    _check_rgb(arr, (3, 6))
    lut = np.array(palette, np.uint8).reshape(4, 3)
    np.testing.assert_array_equal(arr, lut[indices])


def test_la_and_cmyk_images_become_rgb(tmp_path):
    la = str(tmp_path / "la.png")
    Image.new("LA", (4, 3), (90, 255)).save(la)
    arr = read_image(la)
    _check_rgb(arr, (3, 4))
    assert (arr == 90).all()
    cmyk = str(tmp_path / "cmyk.jpg")
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(cmyk)  # red
    arr = read_image(cmyk)
    _check_rgb(arr, (3, 4))
    assert (arr[..., 0] > 200).all() and (arr[..., 1:] < 60).all()


def _jpeg_bytes(seed=0, size=48):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_valid_jpeg_reads_as_rgb(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes())
    _check_rgb(read_image(str(path)), (48, 48))


@pytest.mark.parametrize("content", ["truncated", "text", "empty"])
def test_broken_image_raises_image_error_naming_the_file(tmp_path, content):
    path = tmp_path / ("broken_%s.jpg" % content)
    if content == "truncated":
        data = _jpeg_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif content == "text":
        path.write_text("this is not an image\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(ImageError) as e:
        read_image(str(path))
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_image_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        read_image(str(tmp_path / "absent.jpg"))


def test_resize_center_crop_gives_square_uint8(tmp_path):
    wide = np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8)
    out = images.resize_center_crop(wide, 20)
    assert out.dtype == np.uint8 and out.shape == (20, 20, 3)
    assert images.resize_center_crop(out, 20) is out


# ----------------------------------------------------------------------------- class sets

@pytest.mark.parametrize("cs", CLASS_SETS, ids=lambda cs: cs.code_name)
def test_load_split_labels_follow_the_class_set_order(root, cs):
    split = classset.load_split(root, cs.paper_name.lower(), "train")
    assert split.class_set == cs
    assert len(split) == len(cs.classes) * M_IMAGES[0]
    for path, label, key in zip(split.paths, split.labels, split.keys):
        cls = os.path.basename(os.path.dirname(path))
        assert label == cs.label_of(cls)
        assert key == "%s/%s" % (cls, os.path.basename(path))
        assert os.path.isfile(path)
    assert classset.class_counts(split) == (M_IMAGES[0],) * len(cs.classes)


@pytest.mark.parametrize("split_name", SPLITS)
def test_load_split_keys_are_the_parts_file_names(root, split_name):
    split = classset.load_split(root, "CS5b", split_name)
    coco = load_json(split.parts_file)
    assert split.parts_file == os.path.join(root, "cs5-2", split_name + "_parts.json")
    assert sorted(split.keys) == sorted(img["file_name"] for img in coco["images"])


def test_subset_is_class_balanced_and_seeded(root):
    split = classset.load_split(root, "cs5-2", "train")
    n_classes = len(split.class_set.classes)
    for n in (1, n_classes, n_classes + 2, len(split) - 1):
        sub = split.subset(n, seed=4)
        assert len(sub) == n
        counts = classset.class_counts(sub)
        assert max(counts) - min(counts) <= 1, (n, counts)
        assert set(sub.keys) <= set(split.keys)
        for key, label in zip(sub.keys, sub.labels):
            assert split.labels[split.keys.index(key)] == label
        assert sub.keys == split.subset(n, seed=4).keys  # same seed, same subset
    picks = {tuple(split.subset(n_classes, seed=s).keys) for s in range(8)}
    assert len(picks) > 1  # the seed matters
    assert split.subset(None) is split and split.subset(len(split)) is split
    with pytest.raises(ValueError):
        split.subset(0)


def test_foreign_class_folder_is_rejected(root, tmp_path):
    shutil.copytree(os.path.join(root, "cs5-2"), tmp_path / "cs5-2")
    (tmp_path / "cs5-2" / "train" / "cat").mkdir()
    shutil.copy(os.path.join(root, "cs3-2", "train", "dog", "dog_00000.jpg"),
                tmp_path / "cs5-2" / "train" / "cat" / "x.jpg")
    with pytest.raises(ValueError) as e:
        classset.load_split(str(tmp_path), "cs5-2", "train")
    msg = str(e.value)
    assert "cat" in msg
    assert all(c in msg for c in get_class_set("cs5-2").classes)
    assert len(classset.load_split(str(tmp_path), "cs5-2", "val")) > 0  # other splits are fine


def test_class_without_images_is_rejected(root, tmp_path):
    shutil.copytree(os.path.join(root, "cs3-2"), tmp_path / "cs3-2")
    shutil.rmtree(tmp_path / "cs3-2" / "test" / "bird")
    with pytest.raises(ValueError, match="bird"):
        classset.load_split(str(tmp_path), "cs3-2", "test")


def test_missing_split_folder_names_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        classset.load_split(str(tmp_path), "CS3a", "train")
    assert PREPARE in str(e.value) and "cs3-1" in str(e.value)


def test_unknown_class_set_lists_the_valid_names(root):
    with pytest.raises(ValueError) as e:
        classset.load_split(root, "CS9", "train")
    assert "CS5b" in str(e.value) and "cs3-1" in str(e.value)


def test_arrays_reports_a_broken_m_image_by_name(root, tmp_path):
    shutil.copytree(os.path.join(root, "cs3-1"), tmp_path / "cs3-1")
    bad = tmp_path / "cs3-1" / "val" / "train" / "train_00001.jpg"
    bad.write_text("not a jpeg")
    split = classset.load_split(str(tmp_path), "cs3-1", "val")
    with pytest.raises(ImageError, match="train_00001.jpg"):
        split.arrays(32)


def test_tf_dataset_yields_unit_float_images_and_int_labels(root):
    split = classset.load_split(root, "CS3b", "train")
    pixels = split.arrays(32)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(split), 32, 32, 3)
    xs, ys = [], []
    for x, y in split.tf_dataset(32, batch_size=4):
        assert x.dtype.name == "float32" and tuple(x.shape[1:]) == (32, 32, 3)
        assert y.dtype.is_integer and x.shape[0] == y.shape[0] <= 4
        xs.append(x.numpy())
        ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > x.min()
    np.testing.assert_array_equal(y, split.labels)
    np.testing.assert_allclose(x, pixels.astype(np.float32) / 255.0, atol=1e-6)
