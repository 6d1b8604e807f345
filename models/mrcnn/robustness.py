"""K under attack: mask mAP and part-set F1 of K on test images attacked by PGD on K's own
training losses (SPEC section 12; the robust-K evaluation of ``main.py --model K``).

For each budget ``eps`` (0-255 scale) the test images are attacked once, by
:class:`models.mrcnn.adversarial.KAdversary` with ``steps`` PGD steps (default 10: more than
the 3 a robust K is trained against, so the evaluation does not grade the training attack
on its own homework) on a training-mode copy of K loaded with the same weights.  That copy
is built with ``TRAIN_BN = False``: batch normalisation uses its moving statistics, as K does
when it detects, so each image is attacked as the deployed K sees it and not through the
statistics of the batch it happens to share.

The attack works on K's molded input (resized, padded).  Its perturbation is mapped back to
the original image: cropped to the image's window, resized to the original shape when K
resized it (linear interpolation -- a convex combination, so it stays in the eps-ball),
added to the original uint8 image and rounded to 8 bits inside the ball and ``[0, 255]``.
The attacked images then go through the unchanged detection and COCO evaluation
(:func:`models.mrcnn.evaluate.evaluate_dataset`), so clean and attacked numbers are the same
measurement.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from models.mrcnn import data_gen
from models.mrcnn.adversarial import KAdversarialSettings, KAdversary

#: PGD steps of the evaluation attack on K (the issue's robust mAP).
DEFAULT_ATTACK_STEPS = 10
#: The budgets of the evaluation (0-255 scale: 4/255 and 8/255).
DEFAULT_ATTACK_EPS = (4.0, 8.0)


class AttackedDataset:
    """A parts data set whose images are replaced by attacked ones (everything else -- masks,
    class ids, image info -- is the wrapped data set's).

    Args:
        dataset: matterport-style data set (``load_image``, ``load_mask``, ...).
        images: image id -> uint8 ``[H, W, 3]`` attacked image of the same shape.
    """

    def __init__(self, dataset, images: Dict[int, np.ndarray]):
        self._dataset = dataset
        self._images = dict(images)

    def load_image(self, image_id):
        if image_id not in self._images:
            raise KeyError("image %r was not attacked (AttackedDataset holds %d images)"
                           % (image_id, len(self._images)))
        return self._images[image_id]

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def unmold_perturbation(original: np.ndarray, clean_molded: np.ndarray,
                        adv_molded: np.ndarray, meta: np.ndarray, eps: float) -> np.ndarray:
    """The attacked version of ``original`` (uint8 ``[H, W, 3]``) from K's molded clean and
    attacked inputs (``[S, S, 3]``, same scale) and the image's meta (window at 7:11).

    Returns uint8 ``[H, W, 3]`` with ``|out - original| <= eps`` and values in ``[0, 255]``.
    """
    y1, x1, y2, x2 = (int(v) for v in np.asarray(meta)[7:11])
    delta = (np.asarray(adv_molded, np.float64) - np.asarray(clean_molded, np.float64))
    delta = delta[y1:y2, x1:x2]
    if delta.shape[:2] != original.shape[:2]:
        from skimage.transform import resize
        delta = resize(delta, original.shape[:2] + (delta.shape[2],), order=1,
                       mode="edge", anti_aliasing=False, preserve_range=True)
    base = np.asarray(original, np.float64)
    out = np.round(base + delta)
    bound = np.floor(float(eps))
    out = np.clip(out, np.maximum(base - bound, 0), np.minimum(base + bound, 255))
    return out.astype(np.uint8)


def attack_images(train_model, dataset, image_ids: Sequence[int], eps: float,
                  steps: int = DEFAULT_ATTACK_STEPS, seed: int = 0) -> Dict[int, np.ndarray]:
    """Image id -> uint8 attacked image: PGD (``steps`` steps, L-inf ``eps`` on the 0-255
    scale, step ``2.5 eps / steps``, random start) on the training losses of ``train_model``
    (a training-mode ``MaskRCNN``) with each image's own ground truth.

    Batches are ``BATCH_SIZE`` images (the last one padded by repeating its last image, whose
    copy is not kept); batch ``i`` draws its ROI targets and random start from
    ``[seed, i]``, so a call is reproduced by the same arguments on a fresh model.
    """
    cfg = train_model.config
    adversary = KAdversary(train_model, KAdversarialSettings(eps=float(eps), steps=int(steps),
                                                             mix=1.0))
    ids = list(image_ids)
    bs = int(cfg.BATCH_SIZE)
    out = {}
    for i, start in enumerate(range(0, len(ids), bs)):
        chunk = ids[start:start + bs]
        padded = chunk + [chunk[-1]] * (bs - len(chunk))
        rng = np.random.default_rng([int(seed), i])
        batch = data_gen.build_batch(dataset, cfg, padded, rng)
        adv = adversary.perturb(batch, seed=[int(seed), i, 1])
        for row, image_id in enumerate(chunk):
            out[image_id] = unmold_perturbation(
                dataset.load_image(image_id), batch["input_image"][row],
                adv["input_image"][row], batch["input_image_meta"][row], eps)
    return out


def evaluate_under_attack(infer_model, train_model, dataset, image_ids: Sequence[int],
                          eps_list: Sequence[float] = DEFAULT_ATTACK_EPS,
                          steps: int = DEFAULT_ATTACK_STEPS, seed: int = 0,
                          class_names=None) -> Dict[str, Dict]:
    """``{"<eps>": metrics}``: :func:`evaluate_dataset` of ``infer_model`` on the images
    attacked through ``train_model`` (same weights) at each budget, plus the attack's
    settings and the largest perturbation measured (``max_linf``, 0-255 scale)."""
    from models.mrcnn.evaluate import evaluate_dataset
    results = {}
    for eps in eps_list:
        attacked = attack_images(train_model, dataset, image_ids, eps, steps, seed)
        linf = max(float(np.abs(attacked[i].astype(np.int16)
                                - dataset.load_image(i).astype(np.int16)).max())
                   for i in image_ids)
        if linf > eps:
            raise RuntimeError("the attacked images leave the eps=%g ball (max |delta| %g): "
                               "refusing the robust mAP" % (eps, linf))
        metrics = evaluate_dataset(infer_model, AttackedDataset(dataset, attacked),
                                   image_ids=list(image_ids), class_names=class_names)
        metrics["attack"] = {"name": "pgd_linf on K's training losses", "eps": float(eps),
                             "steps": int(steps), "step_size": 2.5 * float(eps) / int(steps),
                             "random_start": True, "seed": int(seed), "max_linf": linf}
        results["%g" % eps] = metrics
    return results
