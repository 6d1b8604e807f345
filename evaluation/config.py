"""The configuration of a run: :class:`EvalConfig` -- one (class set, architecture) of the
defense comparison, with every setting it depends on (validated names come from the command
line, :mod:`main`)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Tuple

from attacks import PAPER_ATTACK_VECTORS
from attacks.engine import EngineSettings
from data.knowledge import ClassSet
from defense.adaptive import check_gradient_mode
from defense.adversarial_training import AT_EPS
from defense.base import GRAY_BOX, AdaptiveOptions
from defense.defenses import DEFAULT_DEFENSES
from defense.threats import Threat
from models import DEFAULT_ARCH
from models.train_classifier import TrainConfig


@dataclasses.dataclass
class EvalConfig:
    """Settings of one evaluation run (validated names come from ``main.py``)."""
    class_set: ClassSet
    data_dir: str = os.path.join("data", "unmask")
    arch: str = DEFAULT_ARCH
    input_size: int = 96
    weights: Optional[str] = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    adv_train: bool = False
    at_eps: float = AT_EPS
    extractor: Optional[str] = None      # "k", "oracle" or None (K if trained, else oracle)
    k_weights: str = "last"              # K checkpoint: "last" (newest in k_log_dir) or a path
    k_config: str = "synthetic"          # K's configuration (main.py --k-config)
    k_log_dir: str = os.path.join("logs", "model_k")
    threshold: Optional[float] = None    # None: chosen on validation for target_fpr
    target_fpr: float = 0.1
    mode: str = "flagged"
    vectors: Sequence[Tuple[str, float]] = tuple(PAPER_ATTACK_VECTORS)
    defenses: Optional[Sequence[str]] = None   # None: none, unmask (+ at with adv_train)
    trajectory_table: bool = False       # also the seed-003 table of the trajectory detector
    detection_set: str = "original"      # "original" (the UnMask code) or "strict" (M(x) = y too)
    threats: Sequence[str] = (GRAY_BOX,)  # add "adaptive" for defense-aware attacks
    # the defense-aware attacks (SPEC §11): steps of each run, restart rounds, target classes
    # tried where the attack needs them (None: all C - 1), how a detector's two gradients
    # combine (None: each defense's default) and EOT draws through a random transform
    adaptive_steps: int = 100
    adaptive_restarts: int = 2
    adaptive_targets: Optional[int] = None
    adaptive_gradient: Optional[str] = None
    eot_samples: int = 20
    adaptive_batch: int = 100            # images per adaptive batch (K's fixed cost per run
    #                                      is shared by more images; the unit of resuming)
    k_transfer: Optional[str] = None       # surrogate K checkpoint for threat "transfer"
    n_test: Optional[int] = None
    attack_batch: int = 50
    seed: int = 0
    results_dir: str = "results"
    checkpoint_dir: str = "checkpoints"
    progress: bool = True
    distribute: str = "none"             # M's, AT's and the trajectory detector's training:
    #                                      none, mirrored, multi-worker
    shards: int = 1                      # image shards per attack vector (grid work units);
    #                                      the merged records equal the unsharded ones

    def __post_init__(self):
        if self.defenses is None:
            self.defenses = tuple(DEFAULT_DEFENSES) + (("at",) if self.adv_train else ())
        self.defenses = tuple(self.defenses)
        if "at" in self.defenses:
            self.adv_train = True
        elif self.adv_train:
            self.defenses = self.defenses + ("at",)
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError("shards must be an integer >= 1, got %r" % (self.shards,))
        self.threats = tuple(Threat.parse(t) for t in self.threats)
        self.engine_settings()                   # validates the adaptive settings
        if self.adaptive_gradient is not None:
            check_gradient_mode(self.adaptive_gradient)

    def engine_settings(self) -> EngineSettings:
        """How the adaptive engine runs the defense-aware attacks."""
        return EngineSettings(steps=self.adaptive_steps, restarts=self.adaptive_restarts,
                              max_targets=self.adaptive_targets)

    def adaptive_options(self) -> AdaptiveOptions:
        return AdaptiveOptions(gradient=self.adaptive_gradient, eot_samples=self.eot_samples)

    @property
    def out_dir(self) -> str:
        return os.path.join(self.results_dir, self.class_set.code_name, self.arch)

    @property
    def m_dir(self) -> str:
        """M's folder: class set, architecture, input size and every training setting that
        differs from the original recipe (``TrainConfig.folder_suffix``), so M trained with
        another ``--lr`` or ``--seed`` never reuses (or overwrites) another setting's."""
        return os.path.join(self.checkpoint_dir, "model_m", self.class_set.code_name,
                            "%s_%d%s%s" % (self.arch, self.input_size,
                                           self.train.folder_suffix(),
                                           "_imagenet" if self.weights else ""))

