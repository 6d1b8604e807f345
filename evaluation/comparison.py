"""The defense comparison of one run -- what the reports call "the bench": every defense
asked about the same images and the same attacked images.

:class:`Comparison` holds the run's benign image sets (with M's and AT's predictions, computed
once) and puts together its three stores -- the gray-box attack records
(:class:`~evaluation.store.attack_store.AttackStore`), the adaptive attack records
(:class:`~evaluation.store.adaptive_store.AdaptiveStore`) and the defenses' observations
(:class:`~evaluation.store.observations.ObservationCache`) -- and the
:class:`~defense.base.FitContext` the defenses are fitted with.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Tuple

import numpy as np

from data.fileio import write_problem
from defense.base import ADAPTIVE, ATModel, Defense, FitContext, ImageSet, model_predictions
from defense.threats import Goal, Threat
from evaluation.store.adaptive_store import AdaptiveStore
from evaluation.store.attack_store import AttackStore
from evaluation.store.observations import ObservationCache
from evaluation.store.records import array_digest, fingerprint, short_digest
from models.distribute import make_strategy
from mrcnn_config import get_config


class Comparison:
    """Image sets, attack records and defense observations of one run, computed once and
    cached (in memory and on disk under ``<out>/vectors/``)."""

    def __init__(self, cfg, data: Dict, models: Dict, log: Callable):
        self.cfg = cfg
        self.data = data
        self.models = models
        self.log = log
        self.fp = fingerprint(cfg, data)
        self.digests = {"m": self.fp["m"]}
        if "at" in models:
            self.digests["at"] = short_digest(cfg.at_checkpoint)
        self.vectors_dir = os.path.join(cfg.out_dir, "vectors")
        self._sets: Dict[Tuple, ImageSet] = {}
        self.attacks = AttackStore(cfg, models, self.fp, self.digests, self.images,
                                   self.vectors_dir, log)
        self.adaptive_records = AdaptiveStore(cfg, models["m"], self.fp, self.images,
                                              self.vectors_dir, log)
        self.observations = ObservationCache(self.vectors_dir, log,
                                             classes=len(cfg.class_set.classes))

    def images(self, split: str) -> ImageSet:
        """Benign images of ``split``; M's (and AT's) predictions are computed once."""
        key = ("benign", split)
        if key not in self._sets:
            x = self.data["x_" + split].astype(np.float32) / 255.0
            preds = {}
            if split != "train":
                preds = {m: self.predict(m, x) for m in self.models}
            if split == "test":
                fp = dict(self.fp, images="benign", split=split)
            else:   # what the training / validation images are, whatever the test subset
                fp = {k: v for k, v in self.fp.items() if not k.startswith("test_")}
                fp.update(images="benign", split=split, contents=array_digest(
                    self.data["x_" + split], self.data["y_" + split]))
            self._sets[key] = ImageSet(
                name="benign-" + split, split=split, x=x,
                keys=list(self.data["splits"][split].keys), labels=self.data["y_" + split],
                preds=preds, fingerprint=fp)
        return self._sets[key]

    def predict(self, model: str, x) -> np.ndarray:
        """Model ``model``'s arg-max predictions on images ``x`` (M in batches of 32, the
        others of 128: the batching every recorded prediction of a run used)."""
        return model_predictions(self.models[model], x, 32 if model == "m" else 128)

    def attacked(self, model: str, name: str, eps: float, split: str = "test") -> ImageSet:
        """``split``'s images attacked (gray-box) on ``model`` (:class:`AttackStore`)."""
        return self.attacks.attacked(model, name, eps, split)

    def adaptive(self, defense: Defense, name: str, eps: float, threat: Threat = ADAPTIVE,
                 goal: Goal = Goal.WRONG) -> ImageSet:
        """The test images attacked through ``defense`` (:class:`AdaptiveStore`)."""
        return self.adaptive_records.adaptive(defense, name, eps, threat, goal)

    def observe(self, defense: Defense, images: ImageSet):
        """``defense.observe(images)``, cached (:class:`ObservationCache`)."""
        return self.observations.observe(defense, images)

    @property
    def touched(self) -> set:
        """The observation and adaptive-attack files this comparison wrote or reused (a
        defense work unit's outputs; the gray-box attack records are the attack units')."""
        return self.adaptive_records.touched | self.observations.touched

    def fit_context(self, make_extractors_fn: Callable) -> FitContext:
        cfg = self.cfg
        return FitContext(
            models=self.models, class_set=cfg.class_set, seed=cfg.seed,
            target_fpr=cfg.target_fpr, threshold=cfg.threshold, log=self.log,
            images=self.images, attacked=self.attacked, observe=self.observe,
            mode=cfg.mode, extractors=make_extractors_fn, arch=cfg.arch, m_dir=cfg.m_dir,
            m_digest=self.fp["m"], trajectory_cache=trajectory_cache(cfg),
            at=(ATModel(eps=None if cfg.at_model else cfg.at_eps,
                        checkpoint_digest=self.digests.get("at"))
                if "at" in self.models else None),
            transfer_k=self._transfer_k if cfg.k_transfer else None,
            transfer_k_robust=self._transfer_k_robust if cfg.k_transfer_robust else None,
            # the trajectory detector trains under --distribute mirrored; with multi-worker
            # only the chief is still here, so it trains on one device
            strategy=(make_strategy(cfg.distribute) if cfg.distribute == "mirrored"
                      else None))

    def _transfer_k_robust(self):
        """The robust surrogate K of the transfer threat on ``unmask:k=robust``."""
        from evaluation.model_k import robust_extractor
        return robust_extractor(self.cfg.k_transfer_robust, self.cfg.k_robust_log_dir,
                                self.cfg.k_config, self.log)

    def _transfer_k(self):
        """The surrogate K of the transfer threat (built when first needed)."""
        from models.mrcnn import PartExtractor
        return PartExtractor.from_checkpoint(self.cfg.k_transfer, get_config(self.cfg.k_config),
                                             model_dir=self.cfg.k_log_dir)


def trajectory_cache(cfg) -> Tuple[str, ...]:
    """Folders of the trajectory detector's cache, the one it writes first: beside M's
    checkpoint, or -- when the checkpoint folder cannot be written (trained models on a
    read-only share) -- in the run's results, still reading what is cached beside M."""
    beside_m = cfg.m_dir.rstrip(os.sep) + "_trajectory"
    if write_problem(beside_m, "--checkpoint-dir") is None:
        return (beside_m,)
    return (os.path.join(cfg.out_dir, "vectors", "trajectory"), beside_m)
