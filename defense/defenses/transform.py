"""Input-transform defenses (seed 004, SPEC §7): a transform applied before the unchanged M.

``pca`` (dataset-level PCA fit on M's training images, 99% of the variance by default),
``downsample`` (50% of the side and back by default; ``downsample:0.75``), ``jpeg`` (quality
75) and ``bitdepth`` (feature squeezing to 4 bits).  The transforms themselves, with their
BPDA backward passes, are in :mod:`defense.transforms`; this file only puts one in front of M.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from defense.base import Defense, ImageSet, Outcome, model_predictions
from defense.threats import Threat
from defense.transforms import get_transform


def _number(value: Optional[str], name: str, param: str, cast=float):
    if value is None:
        return None
    try:
        return cast(value)
    except ValueError:
        raise ValueError("defense %s:%s: %s must be a %s" % (
            name, value, param, "whole number" if cast is int else "number")) from None


class TransformDefense(Defense):
    """M applied to ``transform(x)``; subclasses name the transform and its main parameter."""
    TRANSFORM: str = "?"
    PARAM: Optional[str] = None
    CAST = float

    def __init__(self, value: Optional[str] = None):
        kwargs: Dict[str, Any] = {}
        if self.PARAM is not None and value is not None:
            kwargs[self.PARAM] = _number(value, self.TRANSFORM, self.PARAM, self.CAST)
        self.value = value
        self.transform = get_transform(self.TRANSFORM, **kwargs)   # validates the parameter
        self._m = None
        self._seed = 0

    def fit(self, ctx) -> None:
        self._m = ctx.models["m"]
        self._seed = ctx.seed
        if not getattr(self.transform, "fitted", True):
            self.transform.fit(ctx.images("train").x)

    def params(self) -> Dict:
        return dict(self.transform.params())

    def restore(self, params: Mapping, classes, seed: int = 0) -> "TransformDefense":
        """The recorded transform (e.g. the amplitude the noise grid chose) and the run's seed
        (:meth:`Defense.restore`); a PCA comes back unfitted (its components are not
        recorded), so :meth:`transformed` refuses it."""
        super().restore(params, classes, seed)
        init = self.transform.init_params()
        self.transform = get_transform(self.TRANSFORM, **{k: params.get(k, v)
                                                          for k, v in init.items()})
        self._seed = int(seed)
        return self

    def transformed(self, images: ImageSet) -> np.ndarray:
        """The images after the transform (randomised transforms are seeded by the run's seed
        and the image set, so a set always gets the same draw)."""
        return self.transform(images.x, seed=(self._seed * 1000003 + images.seed) % (2 ** 31))

    def estimate_gradient(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """BPDA backward pass (ART's preprocessor contract): ``dLoss/dx`` [N, H, W, 3] from
        ``grad`` = dLoss/d(transform(x)); exact for the linear transforms, straight-through
        (identity) for the others (see :mod:`defense.transforms`)."""
        return self.transform.estimate_gradient(x, grad)

    threats = (Threat.GRAY_BOX, Threat.ADAPTIVE)
    ROUTES = ("bpda", "eot")

    def adaptive_routes(self, goal):
        """One route: BPDA through the transform, with EOT over its randomness when it has
        some."""
        return ("eot",) if self.transform.randomized else ("bpda",)

    def attacker_fingerprint(self):
        """For a random transform, how its EOT attacker seeds the draws: per image, by its
        iterate (records of earlier seedings are recomputed rather than reused)."""
        return ({"eot_draws": "seeded per image by its iterate"} if self.transform.randomized
                else {})

    def attack_target(self, threat, goal, options):
        """BPDA through the transform (EOT over its randomness for a random transform),
        judged by the real transform and M."""
        from defense.adaptive import TransformTarget
        if threat != Threat.ADAPTIVE:
            return None
        return TransformTarget(self._m, self.transform, self.wrong_answers,
                               samples=options.eot_samples, seed=self._seed)

    def observe(self, images: ImageSet) -> Dict[str, List]:
        return {"pred": model_predictions(self._m, self.transformed(images)).tolist()}

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        return Outcome(pred=np.asarray(observation["pred"], np.int64))


class PcaDefense(TransformDefense):
    name = TRANSFORM = "pca"
    PARAM = "variance"


class DownsampleDefense(TransformDefense):
    name = TRANSFORM = "downsample"
    PARAM = "scale"


class JpegDefense(TransformDefense):
    name = TRANSFORM = "jpeg"
    PARAM = "quality"
    CAST = int


class BitDepthDefense(TransformDefense):
    name = TRANSFORM = "bitdepth"
    PARAM = "bits"
    CAST = int
