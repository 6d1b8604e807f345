"""Adversarial examples for K's own training losses (SPEC section 12: hardening part
extraction), for adversarial training of a robust K.

The attack is PGD in the pixel space of K's input: the resized and padded image on the
0-255 scale that ``data_gen.build_batch`` molds (``input_image = pixels - MEAN_PIXEL``).  It
maximises the weighted sum of K's five training losses (RPN class and box, ROI class, box
and mask, ``LOSS_WEIGHTS``; no weight decay) with the ground truth unchanged, in K's own TF1
graph and session: one session run per step gives the loss and its gradient with respect to
``input_image``.

Constraints of every returned image (checked by the tests):

* ``|x_adv - x|_inf <= eps`` on the 0-255 scale (``eps = 8`` is 8/255 of the unit range);
* ``0 <= x_adv <= 255`` (pixels in ``[0, 1]`` once divided by 255);
* the padding outside the image's window (``input_image_meta``) is left as it was: it is
  not part of the image an attacker could change.

Steps: a uniform random start in the ball, then ``steps`` signed-gradient steps of
``step_size`` (default ``2.5 * eps / steps``, as Madry et al.'s and the project's PGD),
projected after each; the random start is drawn from ``seed``.  The losses themselves are
stochastic (K's training graph samples its ROIs with seeded random ops at every session run),
so a call's images are reproduced by a run repeated from the start, not by calling again.

Import direction: this module uses only the public members of a training-mode ``MaskRCNN``
(``config``, ``keras_model.inputs``, ``graph_scope()``, ``loss_tensors``, ``input_values()``,
``get_callable()``) and never imports :mod:`models.mrcnn.model`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

import tfcompat
from models.mrcnn.constants import LOSS_NAMES

tf, keras = tfcompat.import_tf()


@dataclass(frozen=True)
class KAdversarialSettings:
    """PGD on K's training losses.

    Attributes:
        eps: L-inf radius on the 0-255 pixel scale (> 0; 8 and 4 are the issue's budgets).
        steps: PGD steps (>= 1; 3 by default: adversarial training needs a cheap attack).
        step_size: per-step size on the 0-255 scale (None: ``2.5 * eps / steps``).
        mix: share of each training batch replaced by its adversarial images, in ``[0, 1]``
            (0.5: half of the batch; the count is rounded, at least one image when > 0).
    """
    eps: float = 8.0
    steps: int = 3
    step_size: Optional[float] = None
    mix: float = 0.5

    def __post_init__(self):
        if not (np.isfinite(self.eps) and 0 < self.eps <= 255):
            raise ValueError("--k-adv-eps must be in (0, 255] on the 0-255 pixel scale, got %r"
                             % (self.eps,))
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError("--k-adv-steps must be an integer >= 1, got %r" % (self.steps,))
        if self.step_size is not None and not (np.isfinite(self.step_size)
                                               and self.step_size > 0):
            raise ValueError("the K attack's step size must be a finite number > 0, got %r"
                             % (self.step_size,))
        if not (np.isfinite(self.mix) and 0 <= self.mix <= 1):
            raise ValueError("--k-adv-mix must be in [0, 1], got %r" % (self.mix,))

    @property
    def step(self) -> float:
        """The step size used (0-255 scale)."""
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> Dict[str, float]:
        """The settings as plain JSON values (the config field ``ADV_TRAIN`` holds them)."""
        return {"eps": float(self.eps), "steps": int(self.steps), "step_size": self.step,
                "mix": float(self.mix)}

    @classmethod
    def from_dict(cls, values) -> "KAdversarialSettings":
        return cls(eps=float(values["eps"]), steps=int(values["steps"]),
                   step_size=values.get("step_size"), mix=float(values.get("mix", 0.5)))


def _windows(meta: np.ndarray) -> np.ndarray:
    """``[B, 4]`` int windows ``(y1, x1, y2, x2)`` of a batch's image metas (the image's
    place inside the padded input)."""
    return np.asarray(meta)[:, 7:11].astype(np.int64)


def window_mask(meta: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``[B, H, W, 1]`` float32: 1 inside each image's window, 0 on the padding."""
    b, h, w = len(meta), int(shape[0]), int(shape[1])
    mask = np.zeros((b, h, w, 1), np.float32)
    for i, (y1, x1, y2, x2) in enumerate(_windows(meta)):
        mask[i, max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)] = 1.0
    return mask


class KAdversary:
    """PGD on the training losses of one training-mode ``MaskRCNN`` (module docstring).

    Args:
        model: a ``MaskRCNN`` built with ``mode="training"``.
        settings: the attack (:class:`KAdversarialSettings`).
    """

    def __init__(self, model, settings: KAdversarialSettings):
        if getattr(model, "mode", None) != "training":
            raise ValueError("KAdversary needs a MaskRCNN built with mode='training' (the "
                             "attack maximises its training losses)")
        self.model = model
        self.settings = settings
        cfg = model.config
        self._mean = np.asarray(cfg.MEAN_PIXEL, np.float32).reshape(1, 1, 1, 3)
        parts = model.loss_tensors
        inputs = model.keras_model.inputs
        self._image_index = [i.name.split(":")[0] for i in inputs].index("input_image")
        with model.graph_scope():
            total = tf.add_n([parts[n] * float(cfg.LOSS_WEIGHTS.get(n, 1.0))
                              for n in LOSS_NAMES])
            grad = tf.gradients(total, inputs[self._image_index])[0]
        if grad is None:
            raise ValueError("K's training losses do not depend on its input image")
        self._fn = model.get_callable(("k_adversary_loss_grad",), inputs, [total, grad])

    def loss_and_grad(self, batch: Dict[str, np.ndarray]) -> Tuple[float, np.ndarray]:
        """The weighted training loss of ``batch`` (a ``data_gen.build_batch`` dict) and its
        gradient with respect to ``input_image`` ``[B, H, W, 3]`` (molded scale)."""
        loss, grad = self._fn(*self.model.input_values(batch))
        return float(loss), np.asarray(grad, np.float32)

    def perturb(self, batch: Dict[str, np.ndarray], seed,
                rows: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """A copy of ``batch`` whose ``input_image`` is PGD's adversarial image; ``rows``
        (bool ``[B]``, default all) selects the images attacked, the others stay as they
        are.  The other entries (the ground truth) are the same arrays.

        The whole batch goes through K at each step (its graph is built for
        ``IMAGES_PER_GPU`` images): with batch norm frozen (``TRAIN_BN = False``) an image's
        losses depend on it alone, so the sign of its gradient is that of an attack on it
        alone.
        """
        s = self.settings
        molded = np.asarray(batch["input_image"], np.float32)
        pixels = molded + self._mean                                   # 0-255 scale
        free = window_mask(batch["input_image_meta"], molded.shape[1:3])
        if rows is not None:
            free = free * np.asarray(rows, np.float32).reshape(-1, 1, 1, 1)
        low, high = np.maximum(pixels - s.eps, 0.0), np.minimum(pixels + s.eps, 255.0)
        rng = np.random.default_rng(seed)
        x = pixels + rng.uniform(-s.eps, s.eps, pixels.shape).astype(np.float32) * free
        x = np.clip(x, low, high)
        out = dict(batch)
        for _ in range(int(s.steps)):
            out["input_image"] = (x - self._mean).astype(np.float32)
            _, grad = self.loss_and_grad(out)
            x = np.clip(x + np.float32(s.step) * np.sign(grad) * free, low, high)
        # padding and unselected rows exactly as they were (no round trip through pixels)
        out["input_image"] = np.where(free > 0, x - self._mean, molded).astype(np.float32)
        return out

    def mix(self, batch: Dict[str, np.ndarray], seed) -> Dict[str, np.ndarray]:
        """``batch`` with its first ``round(mix * B)`` images (at least one when ``mix > 0``)
        replaced by their adversarial versions (the batch's order is already random)."""
        b = len(batch["input_image"])
        k = 0 if self.settings.mix <= 0 else max(1, int(round(self.settings.mix * b)))
        if k == 0:
            return batch
        return self.perturb(batch, seed, rows=np.arange(b) < k)
