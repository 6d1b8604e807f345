"""``none``: the protected classifier M alone (the "None" column of Table IV)."""
from __future__ import annotations

from defense.defenses.classifier import ClassifierDefense


class NoDefense(ClassifierDefense):
    """M's own predictions; its gray-box attack is a white-box attack on M."""
    name = "none"
    PARAM = None

    def __init__(self, value=None):
        self._model = None

    def fit(self, ctx) -> None:
        self._model = ctx.models["m"]
