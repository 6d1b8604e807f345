"""``none``: the protected classifier M alone (the "None" column of Table IV)."""
from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

from defense.base import Defense, ImageSet, Outcome, model_predictions


class NoDefense(Defense):
    """M's own predictions; its gray-box attack is a white-box attack on M."""
    name = "none"
    PARAM = None

    def __init__(self, value=None):
        self._m = None

    def fit(self, ctx) -> None:
        self._m = ctx.models["m"]

    def observe(self, images: ImageSet) -> Dict[str, List]:
        pred = images.preds.get("m")
        if pred is None:
            pred = model_predictions(self._m, images.x)
        return {"pred": np.asarray(pred, np.int64).tolist()}

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        return Outcome(pred=np.asarray(observation["pred"], np.int64))
