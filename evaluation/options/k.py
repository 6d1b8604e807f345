"""``--model K``: :class:`KOptions` -- the part extractor's training and evaluation -- and
the folders of a robust K."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from data.options import seed_argument
from evaluation.options.base import (MAX_LEARNING_RATE, _check_field, _in_unit_interval,
                                     _k_count, check_learning_rate, check_positive, option)
from evaluation.options.values import parse_attack_eps, parse_stage_epochs

K_CONFIGS = ("synthetic", "parts", "tiny")
EVAL_SPLITS = ("train", "val", "test")


def _k_epochs(flag: str, value) -> None:
    if value is not None:
        parse_stage_epochs(value)


@dataclasses.dataclass
class KOptions:
    """model K (Mask R-CNN on parts)"""
    k_config: str = option("synthetic", "K configuration: synthetic (128-px CPU default), "
                                        "parts (original)", choices=K_CONFIGS)
    k_epochs: Optional[str] = option(None, "epochs per stage heads,4+,all[,all at lr/10], e.g. "
                                           "1,1,10,3", check=_k_epochs)
    k_steps: Optional[int] = option(None, "steps per epoch >= 1 (config default)", type=int,
                                    check=_k_count("steps per epoch"))
    k_lr: Optional[float] = option(None, "learning rate, finite, > 0 and <= %g (config default)"
                                   % MAX_LEARNING_RATE, type=float,
                                   check=lambda f, v: check_learning_rate(v, f))
    k_seed: Optional[int] = option(None, "training seed of K (weights, data order, "
                                         "augmentation) when it should differ from --seed, "
                                         "which also picks the synthetic data set: e.g. "
                                         "--k-seed 1 --k-log-dir logs/model_k_seed1 trains the "
                                         "surrogate K of --threat transfer on the same data",
                                   type=seed_argument("--k-seed"))
    k_max_minutes: Optional[float] = option(
        None, "stop training after this many minutes > 0 (a checkpoint is kept)", type=float,
        check=lambda f, v: check_positive(f, v, what="training time limit"))
    k_eval_only: bool = option(False, "skip training; evaluate --weights PATH or the last "
                                      "checkpoint")
    k_retrain: bool = option(False, "train K even when a trained K exists (by default a second "
                                    "`--model K` evaluates the existing K)")
    k_eval_split: str = option("test", "split to evaluate (default test)", choices=EVAL_SPLITS)
    k_eval_limit: Optional[int] = option(None, "evaluate the first N >= 1 images", type=int,
                                         check=_k_count("images to evaluate"))
    k_batch: Optional[int] = option(None, "inference batch size >= 1", type=int,
                                    check=_k_count("inference batch size"))
    visualize: bool = option(False, "write PNGs of detected parts")
    k_log_dir: str = option(os.path.join("logs", "model_k"),
                            "K checkpoints and TensorBoard logs (default logs/model_k; "
                            "logs/model_k_robust for --model K --adv-train)")
    k_results_dir: str = option(os.path.join("results", "model_k"),
                                "K evaluation JSON and PNGs (default results/model_k; "
                                "results/model_k_robust for --model K --adv-train)")
    k_attack_eps: str = option("4,8", "budgets (0-255 scale, comma-separated) of the PGD "
                                      "attack on K's own losses its evaluation reports robust "
                                      "mAP and part-set F1 under; none: clean only",
                               check=lambda f, v: parse_attack_eps(v, f))
    k_attack_steps: int = option(10, "PGD steps of that attack (>= 1)", type=int,
                                 check=_k_count("PGD steps"))
    k_adv_eps: float = option(8.0, "--model K --adv-train: PGD eps on K's losses, 0-255 scale "
                                   "(4 for the 4/255 variant)", type=float,
                              check=lambda f, v: check_positive(f, v, 255, "eps"))
    k_adv_steps: int = option(3, "--model K --adv-train: PGD steps per batch (>= 1)", type=int,
                              check=_k_count("PGD steps"))
    k_adv_mix: float = option(0.5, "--model K --adv-train: share of each batch replaced by "
                                   "its adversarial images, in [0, 1]", type=float,
                              check=_in_unit_interval)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(self, f.name)
        if self.k_eval_split not in EVAL_SPLITS:
            raise ValueError("--k-eval-split must be one of %s, got %r"
                             % (", ".join(EVAL_SPLITS), self.k_eval_split))


#: The folders of a robust K (``--model K --adv-train``) when no other is given.
ROBUST_K_DIRS = {"k_log_dir": os.path.join("logs", "model_k_robust"),
                 "k_results_dir": os.path.join("results", "model_k_robust")}
