"""In-memory toy data set (coloured squares, discs, bars) with matterport's Dataset interface.

Used by the tests and quick checks of model K; needs no files.  Class ids 1..3 (0 = BG).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

TOY_CLASSES = ("square", "disc", "bar")
_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}


def _shape_mask(kind: int, size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if kind == 1:
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if kind == 2:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    return (np.abs(yy - cy) <= max(2, r // 3)) & (np.abs(xx - cx) <= r + r // 2)


class ToyDataset:
    """``n`` images of ``size`` pixels with 1-3 non-overlapping shapes each."""

    def __init__(self, n: int = 8, size: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.class_names = ["BG"] + list(TOY_CLASSES)
        self.num_classes = len(self.class_names)
        self.image_info: List[dict] = []
        self._images, self._masks = [], []
        for i in range(n):
            image, masks, ids = self._render(rng, size)
            self._images.append(image)
            self._masks.append((masks, ids))
            self.image_info.append({"id": i, "source": "toy", "path": "toy/%d" % i,
                                    "annotations": list(ids)})
        self.image_ids = np.arange(n)

    @staticmethod
    def _render(rng, size) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.full((size, size, 3), 90, np.uint8) + rng.integers(0, 20, (size, size, 3),
                                                                      dtype=np.uint8)
        taken = np.zeros((size, size), bool)
        masks, ids = [], []
        for kind in rng.permutation([1, 2, 3])[:int(rng.integers(1, 4))]:
            for _ in range(20):
                r = int(rng.integers(size // 10, size // 5))
                cy, cx = rng.integers(r + 1, size - r - 1, 2)
                m = _shape_mask(int(kind), size, int(cy), int(cx), r)
                if not (m & taken).any():
                    taken |= m
                    image[m] = _COLOURS[int(kind)]
                    masks.append(m)
                    ids.append(int(kind))
                    break
        return image, np.stack(masks, -1), np.array(ids, np.int32)

    def load_image(self, image_id: int) -> np.ndarray:
        """``uint8 [H, W, 3]``."""
        return self._images[image_id].copy()

    def load_mask(self, image_id: int):
        """``(bool [H, W, N], int32 [N])``."""
        masks, ids = self._masks[image_id]
        return masks.copy(), ids.copy()
