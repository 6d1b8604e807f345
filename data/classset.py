"""Images of a class set for the classifier M: ``<data_dir>/<code>/<split>/<class>/*.jpg``.

``load_split`` lists and validates the files (every class folder must belong to the class
set; every class of the set must have images), ``ClassSetSplit.arrays`` decodes them once
with ``data.images`` (so a bad file is reported by name, never inside TensorFlow) and
``ClassSetSplit.tf_dataset`` serves them as ``tf.data`` batches of float32 pixels in [0, 1]
and int labels in the class set's order.

Each image has a *key* ``<class>/<file name>``: the ``file_name`` of the split's
ground-truth parts file ``<code>/<split>_parts.json`` (written by the synthetic generator;
real data without such a file simply has no oracle).
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Tuple

import numpy as np

from data.coco_parts import missing_data_message
from data.images import IMAGE_EXTENSIONS, load_resized
from data.knowledge import ClassSet, get_class_set


@dataclasses.dataclass
class ClassSetSplit:
    """File list of one split of a class set: ``paths[i]`` has label ``labels[i]``."""
    class_set: ClassSet
    split: str
    root: str
    paths: List[str]
    labels: np.ndarray
    keys: List[str]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def parts_file(self) -> str:
        """Ground-truth parts (COCO) of this split's images; may not exist for real data."""
        return os.path.join(os.path.dirname(self.root), self.split + "_parts.json")

    def subset(self, n: Optional[int], seed: int = 0) -> "ClassSetSplit":
        """A class-balanced, seeded subset of about ``n`` images (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError("--n-test must be at least 1, got %d" % n)
        rng = np.random.default_rng(seed)
        per_class = [rng.permutation(np.flatnonzero(self.labels == c))
                     for c in range(len(self.class_set.classes))]
        order = [idx for rank in range(max(len(p) for p in per_class))
                 for p in per_class if rank < len(p) for idx in [p[rank]]]
        keep = np.sort(np.array(order[:n]))
        return dataclasses.replace(self, paths=[self.paths[i] for i in keep],
                                   labels=self.labels[keep], keys=[self.keys[i] for i in keep])

    def arrays(self, size: int) -> np.ndarray:
        """All images as uint8 [N, size, size, 3] (resized to ``size``, center-cropped)."""
        out = np.empty((len(self), size, size, 3), np.uint8)
        for i, path in enumerate(self.paths):
            out[i] = load_resized(path, size)
        return out

    def tf_dataset(self, size: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                   images: Optional[np.ndarray] = None):
        """``tf.data.Dataset`` of (float32 [B, size, size, 3] in [0, 1], int32 [B]) batches."""
        import tfcompat  # noqa: F401
        import tensorflow as tf

        images = self.arrays(size) if images is None else images
        ds = tf.data.Dataset.from_tensor_slices((images, self.labels.astype(np.int32)))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y),
                                      num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)


def _list_images(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def load_split(data_dir: str, class_set, split: str) -> ClassSetSplit:
    """List the images of ``<data_dir>/<code>/<split>/<class>/``.

    Raises:
        FileNotFoundError: missing split folder (saying how to get it: generate the synthetic
            data set, or add the class set's folder to real data).
        ValueError: a class folder not in the class set, a class without images, or an
            unknown class-set name (listing the valid names).
    """
    cs = class_set if isinstance(class_set, ClassSet) else get_class_set(class_set)
    root = os.path.join(data_dir, cs.code_name, split)
    if not os.path.isdir(root):
        raise FileNotFoundError(missing_data_message(root, data_dir))
    folders = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    unknown = [d for d in folders if d not in cs.classes]
    if unknown:
        raise ValueError("folder(s) %s in %s are not classes of %s (%s); valid class folders: "
                         "%s -- move or remove them" % (", ".join(unknown), root, cs.paper_name,
                                                        cs.code_name, ", ".join(cs.classes)))
    paths, labels, keys = [], [], []
    for label, cls in enumerate(cs.classes):
        folder = os.path.join(root, cls)
        files = _list_images(folder) if os.path.isdir(folder) else []
        if not files:
            raise ValueError("class %r of %s has no images in %s; every class of the set needs "
                             "images" % (cls, cs.paper_name, folder))
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
        keys += ["%s/%s" % (cls, f) for f in files]
    return ClassSetSplit(cs, split, root, paths, np.array(labels, np.int64), keys)


def class_counts(split: ClassSetSplit) -> Tuple[int, ...]:
    """Number of images per class, in the class set's order."""
    return tuple(int((split.labels == c).sum()) for c in range(len(split.class_set.classes)))
