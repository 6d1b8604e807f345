"""``at``: adversarial training (Madry et al.; the paper's AT baseline).

The AT model replaces M, so the paper's gray-box attacker -- who sees the classifier -- attacks
the AT model itself: its numbers are white-box on its own model (stated in every report); its
defense-aware attack is the same white-box attack run by the adaptive engine
(:mod:`defense.defenses.classifier`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict

from defense.defenses.classifier import ClassifierDefense


class AdversarialTraining(ClassifierDefense):
    name = "at"
    PARAM = None
    PREDICT_BATCH = 128

    def __init__(self, value=None):
        self._model = None
        self._params: Dict = {}

    def attacked_model(self) -> str:
        return "at"

    def fit(self, ctx) -> None:
        if "at" not in ctx.models:
            raise ValueError("defense 'at' needs the adversarially trained model; the "
                             "evaluation trains it when 'at' is among --defenses")
        self._model = ctx.models["at"]
        self._params = ({k: v for k, v in dataclasses.asdict(ctx.at).items() if v is not None}
                        if ctx.at is not None else {})

    def params(self) -> Dict:
        return dict(self._params, attack_seen="white-box on the AT model itself")

    def fingerprint(self) -> Dict:
        return dict(super().fingerprint(), model=self._params.get("checkpoint_digest"))
