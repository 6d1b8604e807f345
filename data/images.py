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


#: Pixel values at most this far outside ``[0, 1]`` are float rounding: clipped, not refused.
RANGE_TOLERANCE = 1e-6


def check_images(images, name: str = "images", empty_ok: bool = False):
    """``images`` as a C-contiguous float32 array ``[B, H, W, 3]`` with pixels in ``[0, 1]``:
    the project's one rule for images -- the attacks', the defenses' and the evaluation's
    image sets' (:func:`data.images.check_images`, re-exported as :func:`attacks.check_images`).

    Any floating dtype is accepted (a float32 C-contiguous array is returned as it is); values
    at most :data:`RANGE_TOLERANCE` outside ``[0, 1]`` (float rounding) are clipped.  ``B = 0``
    only with ``empty_ok``.

    Raises:
        ValueError: naming ``name``, for: not 4-D, not 3 channels, an empty image (H or W
            zero) or batch, an integer / bool dtype (divide uint8 images by 255), NaN / inf,
            values outside ``[0, 1]``.
    """
    try:
        arr = np.asarray(images)
    except Exception as err:  # noqa: BLE001 - report any conversion failure uniformly
        raise ValueError("%s must be a float array [B, H, W, 3] in [0, 1], got %s (%s)"
                         % (name, type(images).__name__, err)) from None
    if arr.ndim != 4:
        raise ValueError("%s must have shape [B, H, W, 3] (rank 4: a 4-D batch of RGB images; "
                         "add a batch axis with %s[None] for one image), got shape %s"
                         % (name, name, arr.shape))
    if arr.shape[-1] != 3:
        raise ValueError("%s must have 3 channels (a 4-D array [B, H, W, 3], RGB, channels "
                         "last), got shape %s" % (name, arr.shape))
    if arr.shape[0] == 0 and not empty_ok:
        raise ValueError("%s is empty (B = 0); pass at least one image" % name)
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError("%s must have H, W >= 1, got shape %s" % (name, arr.shape))
    if not np.issubdtype(arr.dtype, np.floating):
        hint = (" (divide uint8 images by 255)" if np.issubdtype(arr.dtype, np.integer)
                else "")
        raise ValueError("%s must be float pixels in [0, 1], got dtype %s%s"
                         % (name, arr.dtype, hint))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size == 0:
        return arr
    finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
    if not finite.all():
        raise ValueError("%s[%d] contains NaN or infinite values (%d image(s) in all)"
                         % (name, int(np.argmin(finite)), int((~finite).sum())))
    low, high = float(arr.min()), float(arr.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        flat = arr.reshape(len(arr), -1)
        bad = int(np.argmax((flat.min(axis=1) < 0) | (flat.max(axis=1) > 1)))
        raise ValueError("%s must be finite pixels in [0, 1], got range [%g, %g] (first: "
                         "%s[%d]); divide uint8 images by 255" % (name, low, high, name, bad))
    if low < 0.0 or high > 1.0:
        arr = np.clip(arr, 0.0, 1.0)
    return arr
