"""matterport-style ``Dataset`` over COCO part annotations (K's data).

``Dataset`` keeps matterport's API (``add_class``, ``add_image``, ``prepare``, ``load_image``,
``load_mask``, ``image_ids``, ``class_names``, ``num_classes``, ``image_info``,
``class_info``, ``source_class_ids``), so the Mask R-CNN port trains on it unchanged.
``PartsDataset.load_parts(data_dir, split)`` fills it from ``<data_dir>/VOC2010/<split>.json``
with images under ``<data_dir>/VOC2010/Images/<split>/`` -- the synthetic data set and the
real UnMask/PASCAL-Part data alike.

Class ids: matterport reserves 0 for the background, so the COCO category id ``c`` (0..43,
``data.knowledge.PARTS[c]``) is class id ``c + 1``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from data import coco_io
from data.images import read_image
from data.knowledge import PARTS
from data.synthetic import MANIFEST

SOURCE = "parts"


_REAL_LAYOUT = {
    "VOC2010": "VOC2010/{train,val,test}.json and VOC2010/Images/{train,val,test}/ for model K; "
               "`python -m data.pascal_part --out DIR` converts PASCAL-Part into it",
}
_CLASS_SET_LAYOUT = "%s/{train,val,test}/<class>/*.jpg for model M"


def _needed_folder(path: str, data_dir: str) -> str:
    """The top-level folder of ``data_dir`` that ``path`` lies in (``VOC2010``, ``cs5-2``)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(data_dir))
    return rel.split(os.sep)[0]


def missing_data_message(path: str, data_dir: Optional[str] = None) -> str:
    """Error text for a missing data file or folder ``path`` of the data set ``data_dir``.

    The fix depends on what ``data_dir`` holds: nothing (generate the synthetic data set),
    a synthetic data set (``synthetic.json``: regenerate it), or real UnMask data, which
    ``--prepare-data`` neither creates nor completes (add the missing folder, or use a fresh
    ``--data-dir`` for the synthetic set).
    """
    if data_dir is None or not os.path.isdir(data_dir) or not os.listdir(data_dir):
        return ("%s not found. Generate the synthetic data set with `python main.py "
                "--prepare-data` (or pass --data-dir pointing at the real UnMask data)" % path)
    if os.path.isfile(os.path.join(data_dir, MANIFEST)):
        return ("%s not found: the synthetic data set in %s is incomplete; delete %s and run "
                "`python main.py --prepare-data --data-dir %s` to regenerate it"
                % (path, data_dir, data_dir, data_dir))
    folder = _needed_folder(path, data_dir)
    layout = _REAL_LAYOUT.get(folder, _CLASS_SET_LAYOUT % folder)
    return ("%s not found. %s holds real UnMask data (it has no %s), which `python main.py "
            "--prepare-data` neither creates nor completes: the real UnMask data set's %s/ "
            "folder is needed there (%s); or pass a fresh --data-dir to use the synthetic "
            "data set instead" % (path, data_dir, MANIFEST, folder, layout))


class Dataset:
    """Base class of matterport's data sets: a registry of classes and images.

    Subclasses add classes and images, then call ``prepare()``; ``load_mask`` is theirs.
    """

    def __init__(self):
        self.image_info: List[Dict] = []
        self.class_info: List[Dict] = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids: Dict[str, List[int]] = {}

    def add_class(self, source: str, class_id: int, class_name: str) -> None:
        if "." in source:
            raise ValueError("source name %r cannot contain a dot" % source)
        if any(c["source"] == source and c["id"] == class_id for c in self.class_info):
            return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source: str, image_id, path: str, **kwargs) -> None:
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id: int) -> str:
        return self.image_info[image_id]["path"]

    def prepare(self) -> None:
        """Build the internal indices; call after all classes and images were added."""
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [c["name"] for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {"%s.%d" % (c["source"], c["id"]): i
                                      for i, c in enumerate(self.class_info)}
        self.sources = sorted({c["source"] for c in self.class_info} - {""})
        self.source_class_ids = {s: [i for i, c in enumerate(self.class_info)
                                     if i == 0 or c["source"] == s] for s in self.sources}

    def map_source_class_id(self, source_class_id: str) -> int:
        """'parts.5' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    @property
    def image_ids(self) -> np.ndarray:
        return self._image_ids

    def source_image_link(self, image_id: int) -> str:
        return self.image_info[image_id]["path"]

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 RGB [H, W, 3] (grayscale/RGBA/16-bit converted)."""
        return read_image(self.image_info[image_id]["path"])

    def load_mask(self, image_id: int) -> Tuple[np.ndarray, np.ndarray]:
        """Instance masks bool [H, W, N] and class ids int32 [N]; the base class has none."""
        return np.empty([0, 0, 0], bool), np.empty([0], np.int32)


class PartsDataset(Dataset):
    """The 44-part data set of K, read from COCO files in the original layout."""

    def load_parts(self, data_dir: str, split: str) -> "PartsDataset":
        """Add the classes and images of ``<data_dir>/VOC2010/<split>.json``; returns self
        (call ``prepare()`` afterwards).

        Raises:
            FileNotFoundError: the annotation file or image folder is missing (the message
                gives the command that creates them).
            ValueError: the COCO file is malformed (names the file and the problem).
        """
        root = os.path.join(data_dir, "VOC2010")
        ann_path = os.path.join(root, split + ".json")
        image_dir = os.path.join(root, "Images", split)
        for path in (ann_path, image_dir):
            if not os.path.exists(path):
                raise FileNotFoundError(missing_data_message(path, data_dir))
        coco = coco_io.load_coco(ann_path)
        # All 44 parts, whatever the file lists: class id == category id + 1 must hold even
        # when a file's category list is partial (validate_coco checked ids are in 0..43).
        for cid, name in enumerate(PARTS):
            self.add_class(SOURCE, cid + 1, name)
        by_image: Dict = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for img in coco["images"]:
            self.add_image(SOURCE, image_id=img["id"],
                           path=os.path.join(image_dir, img["file_name"]),
                           width=int(img["width"]), height=int(img["height"]),
                           annotations=by_image.get(img["id"], []), annotation_file=ann_path)
        return self

    def load_mask(self, image_id: int) -> Tuple[np.ndarray, np.ndarray]:
        """bool [H, W, N] masks and int32 [N] class ids (category id + 1) of one image.

        Images without annotations give ``[H, W, 0]`` and ``[0]``.

        Raises:
            ValueError: an annotation decodes to an empty mask (naming file and ids).
        """
        info = self.image_info[image_id]
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        h, w = info["height"], info["width"]
        masks, ids = [], []
        for ann in info["annotations"]:
            m = coco_io.segmentation_to_mask(ann["segmentation"], h, w)
            if not m.any():  # validate_coco rejects these; never drop a part silently
                raise ValueError("%s: annotation id %r of image id %r has an empty mask; fix "
                                 "or remove it" % (info.get("annotation_file"), ann["id"],
                                                   info["id"]))
            masks.append(m)
            ids.append(self.map_source_class_id("%s.%d" % (SOURCE, ann["category_id"] + 1)))
        if not masks:
            return np.zeros([h, w, 0], bool), np.zeros([0], np.int32)
        return np.stack(masks, axis=-1).astype(bool), np.array(ids, np.int32)

    def part_names(self, image_id: int) -> frozenset:
        """Set of part names annotated in one image (the ground truth K should find)."""
        info = self.image_info[image_id]
        return frozenset(PARTS[a["category_id"]] for a in info["annotations"])


def load_parts_dataset(data_dir: str, split: str) -> PartsDataset:
    """The prepared :class:`PartsDataset` of ``<data_dir>/VOC2010/<split>.json``."""
    ds = PartsDataset().load_parts(data_dir, split)
    ds.prepare()
    return ds
