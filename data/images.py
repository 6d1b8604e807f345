"""Image reading that never crashes deep in TensorFlow.

Every image of the project is decoded here, with PIL, into uint8 RGB ``[H, W, 3]``:
grayscale, palette, CMYK, RGBA (alpha composited on white) and 16-bit images are converted,
not rejected; corrupt or truncated files raise ``ImageError`` (a ValueError) naming the file.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff")


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file and what to do."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_image(path: str) -> np.ndarray:
    """Decode ``path`` to uint8 RGB ``[H, W, 3]``.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file is not an image, or is corrupt or truncated.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError("image file not found: %s" % path)
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                arr = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image %s is too large to decode safely (%s): a decompression bomb "
                         "or a wrongly exported file; replace or delete it" % (path, e)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError("cannot read image %s (corrupt, truncated or not an image: %s); "
                         "replace or delete the file" % (path, e)) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError("image %s decoded to an unusable shape %s" % (path, arr.shape))
    return np.ascontiguousarray(arr)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``image`` (uint8 [H, W, 3]) so its shorter side is ``size`` and cut the central
    ``size`` x ``size`` square (the original M pipeline: resize to 150, center-crop 150)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top:top + size, left:left + size]


def load_resized(path: str, size: Optional[int]) -> np.ndarray:
    """``read_image`` then ``resize_center_crop`` (when ``size`` is given)."""
    img = read_image(path)
    return resize_center_crop(img, size) if size else img


def image_shape(path: str) -> Tuple[int, int]:
    """(height, width) of an image file without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError("cannot read image %s: %s" % (path, e)) from None
