"""UnMask's robust feature extractor K: images -> set of detected part names.

``PartExtractor`` wraps an inference ``MaskRCNN`` that is built and loaded once, in its own
graph and session, and answers batches of RGB images in [0, 1] of any size (resized as
matterport does).  Only the detection branch is run (the mask head is pruned away), because
UnMask uses the *set* of detected parts, not their masks.
"""
from __future__ import annotations

import collections
import hashlib
import numbers
from typing import Hashable, Iterable, List, Optional, Sequence

import numpy as np

from models.mrcnn import data_gen, utils
from models.mrcnn.model import MaskRCNN, find_last_checkpoint, resolve_checkpoint

DEFAULT_MODEL_DIR = "logs/model_k"


def find_k_checkpoint(model_dir: str = DEFAULT_MODEL_DIR, name: str = "parts",
                      config=None) -> str:
    """Newest K checkpoint under ``model_dir``; with ``config``, only from runs trained with
    the same architecture (FileNotFoundError with the training command)."""
    return find_last_checkpoint(model_dir, name, config)


def parts_class_names() -> List[str]:
    """``["BG"] + PARTS``: matterport class id ``c + 1`` is COCO part category ``c``."""
    from data.knowledge import PARTS
    return ["BG"] + list(PARTS)


def _as_image_list(images) -> List[np.ndarray]:
    """Validate a batch of RGB images in [0, 1]; returns float arrays ``[H, W, 3]``.

    Raises:
        ValueError: naming ``images[i]`` for an image that is not finite RGB ``[H, W, 3]`` of
        real numbers in [0, 1] with at least 2x2 pixels (NaN, empty, complex ...), or
        ``images`` itself when it is not a batch.
    """
    images = data_gen.image_batch(images)
    out = []
    for i, image in enumerate(images):
        image = data_gen.check_rgb_image(image, i).astype(np.float32)
        if image.min() < -1e-3 or image.max() > 1 + 1e-3:
            raise ValueError("images[%d] must hold pixels in [0, 1] (got range %.3g..%.3g); "
                             "divide uint8 images by 255" % (i, image.min(), image.max()))
        out.append(image)
    return out


class PartExtractor:
    """Model K as UnMask's feature extractor.

    Attributes:
        kind: ``"k"`` (the trained Mask R-CNN; an oracle extractor would say otherwise).
        threshold: minimum detection score of a part (default 0: every detection, as the
            original with ``DETECTION_MIN_CONFIDENCE = 0``); a number in [0, 1].
        class_names: names by class id (index 0 = background).
    """

    kind = "k"

    def __init__(self, model: MaskRCNN, class_names: Sequence[str] = None,
                 threshold: float = 0.0, cache_size: int = 4096):
        if getattr(model, "mode", None) != "inference" or not hasattr(model, "config"):
            raise ValueError("PartExtractor needs a MaskRCNN built with mode='inference' (or "
                             "use PartExtractor.from_checkpoint), got %s"
                             % (type(model).__name__ if not hasattr(model, "mode")
                                else "one in mode %r" % (model.mode,)))
        self.model = model
        self.config = model.config
        self.class_names = list(class_names) if class_names is not None else parts_class_names()
        if len(self.class_names) != self.config.NUM_CLASSES:
            raise ValueError("class_names has %d names but the config has NUM_CLASSES=%d"
                             % (len(self.class_names), self.config.NUM_CLASSES))
        if int(getattr(self.config, "BATCH_SIZE", 0)) < 1:
            raise ValueError("PartExtractor: K's config has BATCH_SIZE=%r (IMAGES_PER_GPU x "
                             "GPU_COUNT); K detects in batches of BATCH_SIZE images, so build "
                             "it with IMAGES_PER_GPU >= 1"
                             % (getattr(self.config, "BATCH_SIZE", None),))
        self.threshold = _check_threshold(threshold)
        if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) \
                or cache_size < 0:
            raise ValueError("cache_size must be an integer >= 0 (0: no cache), got %r"
                             % (cache_size,))
        self.checkpoint = None  # path of the loaded weights (set by from_checkpoint)
        self._cache = collections.OrderedDict()
        self._cache_size = int(cache_size)
        self._closed = False

    @classmethod
    def from_checkpoint(cls, path: str = "last", config=None, model_dir: str = DEFAULT_MODEL_DIR,
                        threshold: float = 0.0, batch_size: int = 8,
                        class_names: Sequence[str] = None) -> "PartExtractor":
        """Build K for inference and load a checkpoint (``"last"``: the newest under
        ``model_dir`` trained with the same architecture as ``config``).

        Args:
            config: a ``Config`` (default: the synthetic parts config); its batch size is
                replaced by ``batch_size`` and its detection threshold by 0.
        Raises:
            FileNotFoundError: no checkpoint; the message gives the training command.
        """
        from mrcnn_config import Config, SyntheticPartsConfig, get_config
        if isinstance(config, str):
            config = get_config(config)
        if config is not None and not isinstance(config, Config):
            raise ValueError("config must be a mrcnn_config.Config or a configuration name "
                             "(synthetic, parts, tiny), got %s" % type(config).__name__)
        threshold = _check_threshold(threshold)
        base = config if config is not None else SyntheticPartsConfig()
        cfg = _inference_config(base, batch_size)
        path = resolve_checkpoint(path, model_dir, cfg.NAME, cfg)
        model = MaskRCNN("inference", cfg, model_dir)
        try:
            model.load_weights(path, by_name=True)
        except Exception:
            model.close()
            raise
        extractor = cls(model, class_names, threshold)
        extractor.checkpoint = path
        return extractor

    def detect(self, images: Sequence[np.ndarray]) -> List[dict]:
        """Detections of ``uint8``-range RGB images (any count): dicts of rois, class_ids and
        scores in original-image pixels (no masks)."""
        self._check_open()
        images = data_gen.image_batch(images)
        bs = self.config.BATCH_SIZE
        results = []
        for start in range(0, len(images), bs):
            chunk = list(images[start:start + bs])
            n = len(chunk)
            chunk += [chunk[-1]] * (bs - n)
            molded, metas, windows = data_gen.mold_inputs(chunk, self.config)
            det = self._run_boxes(molded, metas)
            for i in range(n):
                results.append(_unmold_boxes(det[i], chunk[i].shape, molded[i].shape,
                                             windows[i]))
        return results

    def _run_boxes(self, molded, metas) -> np.ndarray:
        model = self.model
        fn = model.get_callable("detect_boxes", model.keras_model.inputs,
                                [model.keras_model.outputs[0]])
        anchors = utils.get_anchors(self.config, molded.shape[1:])
        anchors = np.ascontiguousarray(np.broadcast_to(anchors, (molded.shape[0],)
                                                       + anchors.shape), np.float32)
        return fn(molded.astype(np.float32), metas.astype(np.float32), anchors)[0]

    def part_sets(self, detections: Iterable[dict], threshold: Optional[float] = None):
        """Sets of part names with score >= threshold, one per detection dict."""
        t = self.threshold if threshold is None else _check_threshold(threshold)
        return [frozenset(self.class_names[c] for c, s in zip(d["class_ids"], d["scores"])
                          if s >= t and c > 0) for d in detections]

    def extract(self, images, keys: Optional[Sequence[Hashable]] = None) -> List[frozenset]:
        """Detected part names of each image, computed as the original UnMask ``extract``:
        pixels truncated to ``uint8`` (:func:`to_uint8`), resized to K's square input
        (:meth:`resize`), detected, and the names of all detections with a non-zero-area box
        and score >= ``threshold`` collected.

        Args:
            images: ``[B, H, W, 3]`` array or list of ``[H, W, 3]`` arrays, RGB in [0, 1].
            keys: optional hashable id per image.  Results are cached by (key, pixels): the
                same key with other pixels (an attacked copy of an image) is detected anew.
        Returns:
            One ``frozenset`` of part names per image (empty list for an empty batch).
        Raises:
            RuntimeError: the extractor is closed; ValueError: naming ``images[i]`` or
            ``keys[i]`` that cannot be used.
        """
        self._check_open()
        images = _as_image_list(images)
        if isinstance(keys, (str, bytes)):
            raise ValueError("keys must be a sequence of one key per image, got the string %r"
                             % (keys,))
        if keys is not None and len(keys) != len(images):
            raise ValueError("keys has %d entries for %d images" % (len(keys), len(images)))
        for i, key in enumerate(keys if keys is not None else ()):
            try:
                hash(key)
            except TypeError:
                raise ValueError("keys[%d] must be hashable (a str, int or tuple), got %s"
                                 % (i, type(key).__name__)) from None
        pixels = [to_uint8(im) for im in images]
        ids = ([None] * len(images) if keys is None else
               [(k, hashlib.sha1(p.tobytes()).hexdigest(), p.shape) for k, p in zip(keys, pixels)])
        out: List[Optional[frozenset]] = [self._cache.get(i) if i else None for i in ids]
        todo = [i for i, parts in enumerate(out) if parts is None]
        if todo:
            found = self.part_sets(self.detect([self.resize(pixels[i]) for i in todo]))
            for i, parts in zip(todo, found):
                out[i] = parts
                if ids[i] is not None:
                    self._remember(ids[i], parts)
        return out

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """K's input square of one ``uint8`` image, as the original ``extract`` made it before
        calling ``detect``: matterport's ``resize_image`` with this configuration (bilinear,
        truncated to ``uint8``, zero padded).  ``detect`` then leaves it as it is, so the
        detection window is the whole square, padding included, as in the original."""
        c = self.config
        return utils.resize_image(pixels, min_dim=c.IMAGE_MIN_DIM, max_dim=c.IMAGE_MAX_DIM,
                                  min_scale=c.IMAGE_MIN_SCALE, mode=c.IMAGE_RESIZE_MODE)[0]

    def _remember(self, key, parts) -> None:
        self._cache[key] = parts
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    __call__ = extract

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or K's session was closed directly)."""
        session = getattr(self.model, "session", None)
        return self._closed or bool(getattr(session, "_closed", False))

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(
                "this PartExtractor is closed: close() released K's session%s. Get a new one "
                "with PartExtractor.from_checkpoint(...) (or PartExtractor(MaskRCNN(...)) for a "
                "model built in code) and close it only when done extracting"
                % (" (checkpoint %s)" % self.checkpoint if self.checkpoint else ""))

    def close(self) -> None:
        """Release K's session (idempotent); :meth:`extract` then raises RuntimeError."""
        self._closed = True
        self.model.close()

    def __enter__(self) -> "PartExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> ``uint8`` pixels by truncation, as the original fed K (torchvision's
    ``ToPILImage`` on a float tensor: ``x.mul(255).byte()``): ``int(x * 255)`` computed in
    float32, e.g. 0.999 -> 254 (not 255), 0.5 -> 127.  Values a little outside [0, 1] (the
    tolerance of :func:`_as_image_list`) are clipped to 0..255 first."""
    x = np.asarray(image, np.float32) * np.float32(255.0)
    return np.clip(x, 0, 255).astype(np.uint8)


def _check_threshold(threshold) -> float:
    """A detection-score threshold as a float in [0, 1] (NaN would silently find nothing)."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
        raise ValueError("threshold must be a detection score in [0, 1], got %r" % (threshold,))
    return value


def _inference_config(base, batch_size: int):
    """Copy of ``base`` with ``IMAGES_PER_GPU=batch_size`` and no score threshold."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError("batch_size must be an integer >= 1 (images per K batch), got %r"
                         % (batch_size,))
    return base.replace(IMAGES_PER_GPU=int(batch_size), GPU_COUNT=1,
                        DETECTION_MIN_CONFIDENCE=0)


def _unmold_boxes(det: np.ndarray, original_shape, image_shape, window) -> dict:
    """Detections ``[D, 6]`` of one image -> dict of pixel rois, class_ids, scores; as
    matterport's ``unmold_detections``, detections with a zero-area box are dropped."""
    rois, class_ids, scores, _rows = data_gen.unmold_boxes(det, original_shape, image_shape,
                                                           window)
    return {"rois": rois, "class_ids": class_ids, "scores": scores}
