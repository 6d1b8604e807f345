"""UnMask's robust feature extractor K: images -> set of detected part names.

``PartExtractor`` wraps an inference ``MaskRCNN`` that is built and loaded once, in its own
graph and session, and answers batches of RGB images in [0, 1] of any size (resized as
matterport does).  Only the detection branch is run (the mask head is pruned away), because
UnMask uses the *set* of detected parts, not their masks.
"""
from __future__ import annotations

import collections
import hashlib
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
    """Validate a batch of RGB images in [0, 1]; returns float arrays ``[H, W, 3]``."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] in (1, 3, 4) and images.shape[0] > 4:
            raise ValueError("images must be a batch [B, H, W, 3]; got one image of shape %s "
                             "(wrap it in a list)" % (images.shape,))
        if images.ndim != 4:
            raise ValueError("images must have shape [B, H, W, 3], got %s" % (images.shape,))
        images = list(images)
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
            original with ``DETECTION_MIN_CONFIDENCE = 0``).
        class_names: names by class id (index 0 = background).
    """

    kind = "k"

    def __init__(self, model: MaskRCNN, class_names: Sequence[str] = None,
                 threshold: float = 0.0, cache_size: int = 4096):
        if model.mode != "inference":
            raise ValueError("PartExtractor needs a MaskRCNN in inference mode")
        self.model = model
        self.config = model.config
        self.class_names = list(class_names) if class_names is not None else parts_class_names()
        if len(self.class_names) != self.config.NUM_CLASSES:
            raise ValueError("class_names has %d names but the config has NUM_CLASSES=%d"
                             % (len(self.class_names), self.config.NUM_CLASSES))
        self.threshold = float(threshold)
        self.checkpoint = None  # path of the loaded weights (set by from_checkpoint)
        self._cache = collections.OrderedDict()
        self._cache_size = int(cache_size)

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
        from mrcnn_config import SyntheticPartsConfig
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
        t = self.threshold if threshold is None else threshold
        return [frozenset(self.class_names[c] for c, s in zip(d["class_ids"], d["scores"])
                          if s >= t and c > 0) for d in detections]

    def extract(self, images, keys: Optional[Sequence[Hashable]] = None) -> List[frozenset]:
        """Detected part names of each image.

        Args:
            images: ``[B, H, W, 3]`` array or list of ``[H, W, 3]`` arrays, RGB in [0, 1].
            keys: optional hashable id per image.  Results are cached by (key, pixels): the
                same key with other pixels (an attacked copy of an image) is detected anew.
        Returns:
            One ``frozenset`` of part names per image (empty list for an empty batch).
        """
        images = _as_image_list(images)
        if keys is not None and len(keys) != len(images):
            raise ValueError("keys has %d entries for %d images" % (len(keys), len(images)))
        pixels = [np.clip(np.round(im * 255.0), 0, 255).astype(np.uint8) for im in images]
        ids = ([None] * len(images) if keys is None else
               [(k, hashlib.sha1(p.tobytes()).hexdigest(), p.shape) for k, p in zip(keys, pixels)])
        out: List[Optional[frozenset]] = [self._cache.get(i) if i else None for i in ids]
        todo = [i for i, parts in enumerate(out) if parts is None]
        if todo:
            found = self.part_sets(self.detect([pixels[i] for i in todo]))
            for i, parts in zip(todo, found):
                out[i] = parts
                if ids[i] is not None:
                    self._remember(ids[i], parts)
        return out

    def _remember(self, key, parts) -> None:
        self._cache[key] = parts
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    __call__ = extract

    def close(self) -> None:
        """Release K's session."""
        self.model.close()


def _inference_config(base, batch_size: int):
    """Copy of ``base`` with ``IMAGES_PER_GPU=batch_size`` and no score threshold."""
    if int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1, got %r" % (batch_size,))
    attrs = {"IMAGES_PER_GPU": int(batch_size), "GPU_COUNT": 1, "DETECTION_MIN_CONFIDENCE": 0}
    return type(type(base).__name__, (type(base),), attrs)()


def _unmold_boxes(det: np.ndarray, original_shape, image_shape, window) -> dict:
    """Detections ``[D, 6]`` of one image -> dict of pixel rois, class_ids, scores."""
    keep = det[:, 4] > 0
    det = det[keep]
    win = utils.norm_boxes(np.array(window), image_shape[:2])
    shift = np.array([win[0], win[1], win[0], win[1]])
    scale = np.array([win[2] - win[0], win[3] - win[1], win[2] - win[0], win[3] - win[1]])
    rois = utils.denorm_boxes((det[:, :4] - shift) / scale, original_shape[:2])
    return {"rois": rois, "class_ids": det[:, 4].astype(np.int32),
            "scores": det[:, 5].astype(np.float32)}
