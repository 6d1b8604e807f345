"""Small COCO-format helpers for the 44-part annotation files (``VOC2010/{split}.json``).

Format written here (the one the original UnMask data used, so real files drop in):

- ``categories``: ids 0..43, ``name == knowledge.PARTS[id]``, ``supercategory "part"``.
- ``images``: ``{"id", "file_name", "height", "width"}``; ids are 1-based and consecutive.
- ``annotations``: ``{"id", "image_id", "category_id", "segmentation", "area", "bbox",
  "iscrowd"}``; ``segmentation`` is a pycocotools *compressed* RLE whose ``counts`` is a
  ``str`` (JSON-serialisable); ``bbox`` is COCO ``[x, y, w, h]`` in pixels (floats), the
  tight box of the mask pixels; ``area`` is the number of mask pixels.

Files from the original release store ``segmentation`` as polygons (pycococreatortools);
``validate_coco`` accepts both, and ``segmentation_to_mask`` decodes both.

Masks are ``bool``/``uint8`` arrays of shape ``[H, W]`` (non-zero = part pixel).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from data.fileio import read_json
from data.knowledge import PARTS

NUM_CATEGORIES = len(PARTS)


# ----------------------------------------------------------------------------- masks and RLE

def _as_binary_mask(mask: Any, what: str = "mask") -> np.ndarray:
    """``mask`` as a Fortran-ordered uint8 ``[H, W]`` array of 0/1 (what pycocotools wants)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError("%s must be a 2-D [H, W] array, got shape %s" % (what, arr.shape))
    if arr.dtype != np.uint8 or arr.max(initial=0) > 1:
        arr = (arr != 0).astype(np.uint8)
    return np.asfortranarray(arr)


def _encode(mask: Any) -> Dict[str, Any]:
    """pycocotools RLE of a ``[H, W]`` mask, ``counts`` still ``bytes``."""
    return mask_utils.encode(_as_binary_mask(mask))


def _jsonable_rle(rle: Mapping[str, Any]) -> Dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def mask_to_rle(mask: Any) -> Dict[str, Any]:
    """Compressed RLE ``{"size": [H, W], "counts": str}`` of a ``[H, W]`` bool/uint8 mask."""
    return _jsonable_rle(_encode(mask))


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode an RLE (compressed ``str``/``bytes`` counts, or uncompressed ``list`` counts)
    to a bool ``[H, W]`` mask."""
    if not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
        raise ValueError("an RLE must be a dict with 'size' [H, W] and 'counts'; got %r"
                         % (type(rle).__name__,))
    h, w = int(rle["size"][0]), int(rle["size"][1])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (iscrowd-style)
        coded = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        coded = {"size": [h, w],
                 "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coded).astype(bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (RLE dict or list of polygons ``[[x1, y1, x2, y2, ...],
    ...]``) to a bool ``[height, width]`` mask."""
    if isinstance(segmentation, Mapping):
        mask = rle_to_mask(segmentation)
        if mask.shape != (height, width):
            raise ValueError("RLE size %s does not match the image size [%d, %d]"
                             % (list(mask.shape), height, width))
        return mask
    if isinstance(segmentation, list) and segmentation:
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in segmentation],
                                      height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise ValueError("segmentation must be an RLE dict or a non-empty polygon list, got %r"
                     % (segmentation,))


def mask_bbox(mask: Any) -> List[float]:
    """COCO box ``[x, y, w, h]`` (pixels, floats) tightly enclosing the non-zero pixels of a
    ``[H, W]`` mask; ``[0, 0, 0, 0]`` for an empty mask (same as ``pycocotools.toBbox``)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError("mask must be a 2-D [H, W] array, got shape %s" % (arr.shape,))
    rows = np.flatnonzero(arr.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(arr.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


# ----------------------------------------------------------------------------- building files

def part_categories() -> List[Dict[str, Any]]:
    """The 44 COCO categories: ``{"id": i, "name": PARTS[i], "supercategory": "part"}``."""
    return [{"id": i, "name": name, "supercategory": "part"} for i, name in enumerate(PARTS)]


def coco_skeleton(info: Dict[str, Any] = None) -> Dict[str, Any]:
    """An empty COCO dict with the 44 part categories."""
    return {"info": dict(info or {}), "images": [], "annotations": [],
            "categories": part_categories()}


def add_image(coco: Dict[str, Any], file_name: str, height: int, width: int) -> int:
    """Append an image entry; returns its id (1-based, ``len(images)`` after the append)."""
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError("image %r: height and width must be positive, got %sx%s"
                         % (file_name, height, width))
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": str(file_name),
                           "height": int(height), "width": int(width)})
    return image_id


def _image_entry(coco: Mapping[str, Any], image_id: int) -> Mapping[str, Any]:
    images = coco["images"]
    if 1 <= image_id <= len(images) and images[image_id - 1]["id"] == image_id:
        return images[image_id - 1]  # fast path: ids made by add_image
    for img in images:
        if img["id"] == image_id:
            return img
    raise ValueError("image id %r is not in this COCO dict; call add_image first" % (image_id,))


def add_annotation(coco: Dict[str, Any], image_id: int, category_id: int, mask: Any) -> int:
    """Append one part instance: RLE ``segmentation``, ``bbox`` ``[x, y, w, h]``, ``area``
    (pixel count), ``iscrowd`` 0.  ``mask`` is bool/uint8 ``[H, W]`` of the image's size.

    Raises:
        ValueError: empty mask, mask size different from the image's, unknown image id or a
            category id outside 0..43.
    """
    category_id = int(category_id)
    if not 0 <= category_id < NUM_CATEGORIES:
        raise ValueError("category_id %d is outside 0..%d (the PARTS of data.knowledge)"
                         % (category_id, NUM_CATEGORIES - 1))
    img = _image_entry(coco, image_id)
    rle = _encode(mask)
    h, w = int(rle["size"][0]), int(rle["size"][1])
    if (h, w) != (img["height"], img["width"]):
        raise ValueError("mask of shape [%d, %d] does not match image %d (%s) of size [%d, %d]"
                         % (h, w, image_id, img["file_name"], img["height"], img["width"]))
    area = int(mask_utils.area(rle))
    if area == 0:
        raise ValueError("empty mask for image %d (%s), category %d (%s); drop empty parts "
                         "before calling add_annotation"
                         % (image_id, img["file_name"], category_id, PARTS[category_id]))
    ann_id = len(coco["annotations"]) + 1
    coco["annotations"].append({
        "id": ann_id, "image_id": int(image_id), "category_id": category_id,
        "segmentation": _jsonable_rle(rle), "area": area,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
    })
    return ann_id


# ----------------------------------------------------------------------------- validation

_TOP_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANN_KEYS = ("id", "image_id", "category_id", "segmentation", "bbox")
_FIX = "regenerate the file (data.pascal_part.convert_pascal_part or data.synthetic) or fix it"


def _fail(path: str, where: str, problem: str) -> None:
    raise ValueError("%s: %s: %s; %s" % (path, where, problem, _FIX))


def _check_top(obj: Any, path: str) -> None:
    if not isinstance(obj, Mapping):
        _fail(path, "top level", "expected a JSON object, got %s" % type(obj).__name__)
    missing = [k for k in _TOP_KEYS if k not in obj]
    if missing:
        _fail(path, "top level", "missing key(s) %s" % ", ".join(missing))
    for k in _TOP_KEYS:
        if not isinstance(obj[k], list):
            _fail(path, "top level", "%r must be a list, got %s" % (k, type(obj[k]).__name__))


def _check_categories(categories: Sequence[Any], path: str) -> set:
    """Check the category list; returns the set of its ids."""
    ids = set()
    for i, cat in enumerate(categories):
        if not isinstance(cat, Mapping) or "id" not in cat:
            _fail(path, "category #%d" % i, "missing key 'id'")
        cid = cat["id"]
        if not isinstance(cid, int) or not 0 <= cid < NUM_CATEGORIES:
            _fail(path, "category id %r" % (cid,),
                  "category ids must be integers in 0..%d (data.knowledge.PARTS)"
                  % (NUM_CATEGORIES - 1))
        if "name" in cat and cat["name"] != PARTS[cid]:
            _fail(path, "category id %d" % cid, "name %r does not match PARTS[%d] = %r"
                  % (cat["name"], cid, PARTS[cid]))
        if cid in ids:
            _fail(path, "category id %d" % cid, "duplicate category id")
        ids.add(cid)
    return ids


def _check_images(images: Sequence[Any], path: str) -> Dict[Any, Mapping[str, Any]]:
    by_id: Dict[Any, Mapping[str, Any]] = {}
    for i, img in enumerate(images):
        where = "image #%d (id %r)" % (i, img.get("id") if isinstance(img, Mapping) else None)
        if not isinstance(img, Mapping):
            _fail(path, where, "expected an object")
        missing = [k for k in _IMAGE_KEYS if k not in img]
        if missing:
            _fail(path, where, "missing key(s) %s" % ", ".join(missing))
        if img["id"] in by_id:
            _fail(path, where, "duplicate image id")
        h, w = img["height"], img["width"]
        if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
            _fail(path, where, "height/width must be positive integers, got %r/%r" % (h, w))
        by_id[img["id"]] = img
    return by_id


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rle_area(seg: Mapping[str, Any], h: int, w: int) -> int:
    """Pixel count of an RLE (compressed counts are not decoded to a mask)."""
    counts = seg["counts"]
    if isinstance(counts, list):
        return int(mask_utils.area(mask_utils.frPyObjects({"size": [h, w], "counts": counts},
                                                          h, w)))
    coded = counts.encode("ascii") if isinstance(counts, str) else counts
    return int(mask_utils.area({"size": [h, w], "counts": coded}))


def _rle_problem(seg: Mapping[str, Any], h: int, w: int) -> str:
    """Why an RLE segmentation is unusable ('' when it is fine)."""
    if "counts" not in seg or "size" not in seg:
        return "RLE segmentation needs 'counts' and 'size'"
    counts = seg["counts"]
    if not counts:
        return "empty RLE counts"
    if not isinstance(seg["size"], list) or seg["size"] != [h, w]:
        return "RLE size %r differs from the image size [%d, %d]" % (seg["size"], h, w)
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
            return "uncompressed RLE counts must be non-negative integers summing to H*W"
    elif not (isinstance(counts, bytes) or isinstance(counts, str) and counts.isascii()):
        return "compressed RLE counts must be an ASCII string, got %r" % (counts,)
    if _rle_area(seg, h, w) == 0:
        return "empty segmentation: the RLE decodes to an all-zero mask"
    return ""


def _polygon_problem(seg: List[Any], h: int, w: int) -> str:
    """Why a polygon-list segmentation is unusable ('' when it is fine)."""
    if not seg:
        return "empty segmentation (no polygon)"
    for poly in seg:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "each polygon must be a list of >= 6 coordinates (x, y pairs)"
        if not all(_is_number(v) for v in poly):
            return "polygon coordinates must be numbers"
    rles = mask_utils.frPyObjects([[float(v) for v in p] for p in seg], h, w)
    if int(mask_utils.area(mask_utils.merge(rles))) == 0:
        return "empty segmentation: the polygon(s) cover no pixel of the image (degenerate " \
               "or outside it)"
    return ""


def _segmentation_problem(seg: Any, img: Mapping[str, Any]) -> str:
    """Why ``seg`` is not a usable non-empty segmentation ('' when it is fine)."""
    if isinstance(seg, Mapping):
        return _rle_problem(seg, img["height"], img["width"])
    if isinstance(seg, list):
        return _polygon_problem(seg, img["height"], img["width"])
    return "segmentation must be an RLE dict or a polygon list, got %s" % type(seg).__name__


def _annotation_problem(ann: Mapping[str, Any], img: Mapping[str, Any]) -> str:
    """Why an annotation's segmentation, area or bbox is unusable ('' when it is fine)."""
    problem = _segmentation_problem(ann["segmentation"], img)
    if problem:
        return problem
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] > 0):
        return "area must be a positive number, got %r (an empty part)" % (ann["area"],)
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return "bbox must be [x, y, w, h] (4 numbers), got %r" % (bbox,)
    if bbox[2] < 0 or bbox[3] < 0:
        return "bbox width and height must be >= 0, got %r" % (bbox,)
    return ""


def _annotation_keys_problem(ann: Any, seen: set) -> str:
    if not isinstance(ann, Mapping):
        return "expected an object"
    missing = [k for k in _ANN_KEYS if k not in ann]
    if missing:
        return "missing key(s) %s" % ", ".join(missing)
    if ann["id"] in seen:
        return "duplicate annotation id"
    return ""


def _check_annotations(anns: Sequence[Any], images: Mapping[Any, Mapping[str, Any]],
                       category_ids: set, path: str) -> None:
    seen = set()
    for i, ann in enumerate(anns):
        where = "annotation #%d (id %r)" % (i, ann.get("id") if isinstance(ann, Mapping) else None)
        problem = _annotation_keys_problem(ann, seen)
        if problem:
            _fail(path, where, problem)
        seen.add(ann["id"])
        where += " of image id %r" % (ann["image_id"],)
        cid = ann["category_id"]
        if not isinstance(cid, int) or not 0 <= cid < NUM_CATEGORIES:
            _fail(path, where, "category_id %r is outside 0..%d" % (cid, NUM_CATEGORIES - 1))
        if cid not in category_ids:
            _fail(path, where, "category_id %d (%s) is not in the file's category list; add "
                  "{\"id\": %d, \"name\": \"%s\"} to 'categories'"
                  % (cid, PARTS[cid], cid, PARTS[cid]))
        img = images.get(ann["image_id"])
        if img is None:
            _fail(path, where, "image_id %r refers to no image of the file" % (ann["image_id"],))
        problem = _annotation_problem(ann, img)
        if problem:
            _fail(path, where, problem)


def validate_coco(obj: Any, path: str = "<coco>") -> Dict[str, Any]:
    """Check a COCO part-annotation dict; returns it unchanged when valid.

    Checks: top-level ``images``/``annotations``/``categories`` lists; image keys ``id,
    file_name, height, width`` (unique ids, positive sizes); annotation keys ``id, image_id,
    category_id, segmentation, bbox`` (unique ids, a category of the file's list, existing
    image, an RLE of the image's size or polygons of >= 6 coordinates that covers at least
    one pixel, a positive ``area`` when given, 4-number bbox); unique category ids in 0..43
    with names equal to ``PARTS`` when given.  Pixel counts come from pycocotools' ``area``
    of the RLE (no mask is decoded; polygons are rasterised to an RLE).

    Raises:
        ValueError: naming ``path``, the offending image/annotation and how to fix it.
    """
    _check_top(obj, path)
    category_ids = _check_categories(obj["categories"], path)
    images = _check_images(obj["images"], path)
    _check_annotations(obj["annotations"], images, category_ids, path)
    return obj


def load_coco(path: str) -> Dict[str, Any]:
    """Read and validate a COCO part-annotation JSON file (see ``validate_coco``)."""
    return validate_coco(read_json(path), path)
