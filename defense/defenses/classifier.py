"""A defense that is one classifier's own answer (``none``: M; ``at``: the AT model).

The gray-box attacker already sees all of it, so its gray-box attack is white-box.  Its
defense-aware attack is the same white-box attack run by the adaptive engine, with the run's
steps, restart rounds, target classes and 8-bit iterates: the defenses it is compared with on
the same images then face one attack strength (a 200-step engine run on UnMask against the
100-step gray-box AutoAttack on the AT model would not be a fair pair; SPEC §11, §13).
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np

import tfcompat
from attacks.target import CompiledModelTarget
from defense.base import Defense, ImageSet, Outcome, model_predictions
from defense.routes import WHITE_BOX
from defense.threats import Threat

tf, keras = tfcompat.import_tf()


class WhiteBoxTarget(CompiledModelTarget):
    """The classifier seen whole, its forward and backward pass compiled once per loss
    (:class:`~attacks.target.CompiledModelTarget`: the adaptive engine calls it eagerly, one
    batch of jobs at a time), its one route named as the defense names it."""
    routes = (WHITE_BOX,)


class ClassifierDefense(Defense):
    """The answer of ``self._model`` (set by the subclass's ``fit``), keyed ``attacked_model()``
    in an image set's cached predictions."""

    #: Images per forward pass when the image set carries no predictions of the model.
    PREDICT_BATCH = 32
    threats = (Threat.GRAY_BOX, Threat.ADAPTIVE)
    ROUTES = WhiteBoxTarget.routes
    _model = None

    def attacker_fingerprint(self) -> Dict:
        """The white-box step is compiled (records of the eager step are made again)."""
        return {"white_box_step": "tf.function"}

    def attack_target(self, threat, goal, options):
        """The classifier itself (one forward and one backward pass per evaluation; the goal
        reached when its answer is not the label): the same event for both goals."""
        if threat != Threat.ADAPTIVE:
            return None
        return WhiteBoxTarget(self._model)

    def observe(self, images: ImageSet) -> Dict[str, List]:
        pred = images.preds.get(self.attacked_model())
        if pred is None:
            pred = model_predictions(self._model, images.x, batch_size=self.PREDICT_BATCH)
        return {"pred": np.asarray(pred, np.int64).tolist()}

    def decide(self, observation: Mapping[str, List]) -> Outcome:
        return Outcome(pred=np.asarray(observation["pred"], np.int64))
