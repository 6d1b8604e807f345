"""``--model M``: :class:`MOptions` -- M, the attacks, the defenses and the evaluation; its
:meth:`~MOptions.resolve` checks them all and gives the keyword arguments of the run's
:class:`~evaluation.config.EvalConfig`."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Dict, Optional

from data.knowledge import get_class_set
from defense.adversarial_training import AT_EPS
from evaluation.options.base import (_at_budget, _at_least, _check_field, _defense_names,
                                     _goal_names, _in_unit_interval, _option, _route_names,
                                     _threat_names, option)
from evaluation.options.data import DataOptions
from evaluation.options.values import (check_l2_budgets, parse_goals, parse_routes,
                                       parse_threats, parse_vectors)
from models import DEFAULT_ARCH
from models.train_classifier import TrainConfig

if TYPE_CHECKING:
    from evaluation.options.k import KOptions

#: Largest --input-size: 1024 px images of the paper's ~10,000 training images would already
#: take 30 GB as uint8 arrays.
MAX_INPUT_SIZE = 1024
#: M's training recipe (the original code's): the defaults of --epochs, --batch-size, --lr.
RECIPE = TrainConfig()


@dataclasses.dataclass
class MOptions:
    """model M and the evaluation (--model M)"""
    arch: str = option(DEFAULT_ARCH, "architecture of M: resnet50, densenet121 (the paper's), "
                                     "vgg16, mobilenetv2, mobilenetv2_050 (fast on a CPU; "
                                     "synthetic default)")
    m_model: Optional[str] = option(
        None, "your own trained classifier in M's place, not trained by the run: a tf-keras "
              "model saved whole in one file (model.save('m.h5')) mapping float [B, S, S, 3] "
              "pixels in [0, 1] (S = --input-size) to logits over the class set's classes in "
              "their order; results go to RESULTS_DIR/CLASSSET/own-NAME-SHA1. --arch and the "
              "training options then shape only the AT baseline (--adv-train, m=at)")
    input_size: int = option(96, "M's input size in pixels (images are resized and "
                                 "center-cropped)", type=int)
    weights: str = option("none", "initial weights. --model M: none (random init) or imagenet "
                                  "(downloads; needs network access). --model K: none, last "
                                  "(resume the newest checkpoint), coco or imagenet (local "
                                  "files), or a PATH")
    epochs: int = option(RECIPE.epochs, "training epochs of M (and AT); 30 as the original recipe",
                         type=int)
    lr: float = option(RECIPE.learning_rate, "SGD learning rate of M", type=float)
    batch_size: int = option(RECIPE.batch_size, "training batch size of M", type=int)
    adv_train: bool = option(False, "also train and evaluate the adversarial-training baseline "
                                    "(AT); with --model K: train a robust K (adversarial "
                                    "training on K's own losses, --k-adv-*)")
    at_model: Optional[str] = option(
        None, "your own adversarially trained classifier as the AT baseline (the at row, "
              "unmask:m=at), not trained by the run: a file as --m-model's; implies "
              "--adv-train")
    at_eps: float = option(AT_EPS, "AT's PGD-Linf eps on the 0-255 scale (7 steps, step 2)",
                           type=float, check=_at_budget)
    at_line_search: bool = option(False, "train AT for eps in {1,2,4,6,8,16}, print validation "
                                         "accuracies under the attack vectors and the best eps, "
                                         "then stop")
    extractor: Optional[str] = option(
        None, "part extractor: k (trained Mask R-CNN) or oracle (ground-truth parts, the "
              "ceiling of a perfect K); default: k if trained, else oracle", type=str.lower,
        choices=("k", "oracle"))
    threshold: Optional[float] = option(
        None, "detection threshold t in [0, 1] (flag if 1 - Jaccard >= t); default: chosen on "
              "validation images for --target-fpr", type=float, check=_in_unit_interval)
    target_fpr: float = option(0.1, "false-positive rate on benign validation images that "
                                    "picks t", type=float)
    mode: str = option("flagged", "rectify only flagged images (paper) or re-classify all "
                                  "(original code)", choices=("flagged", "all"))
    attacks: str = option("paper", "attack vectors: 'paper' (the 8 of Table IV), or a comma list "
                                   "of name:eps or 'paper', e.g. pgd_linf:8,fgsm:8 or "
                                   "paper,uap:10,ga:3 (eps on the 0-255 scale; uap is a "
                                   "universal perturbation fitted on the training images, ga a "
                                   "targeted gradient ascent)")
    defenses: Optional[str] = option(
        None, lambda: "comma list of defenses to evaluate side by side on the same images and "
                      "attacks: " + ", ".join(_defense_names()) + "; name:value sets a "
                      "defense's main parameter (downsample:0.75, noise:10, jpeg:50, "
                      "bitdepth:3, pca:0.95). Default: none,unmask (plus at with --adv-train)")
    threat: str = option(
        "gray-box", lambda: "threat models to evaluate, comma list of %s: gray-box (the "
                            "paper's: the attacks see M only), adaptive (defense-aware attacks "
                            "run by the adaptive engine: BPDA/EOT through transforms, the "
                            "detector through its LSTM, M and K together for UnMask; every "
                            "target class, restarts, both goals) and transfer (UnMask's "
                            "adaptive attack through a surrogate K, --k-transfer)"
                            % ", ".join(_threat_names()))
    k_transfer: Optional[str] = option(
        None, "surrogate K checkpoint (.h5) for --threat transfer: the adaptive attack on "
              "UnMask through a K trained with another seed, judged on the real K")
    k_transfer_robust: Optional[str] = option(
        None, "robust surrogate K checkpoint (.h5) for --threat transfer on unmask:k=robust: a "
              "robust K trained with another seed (`python main.py --model K --adv-train "
              "--k-seed 1 --k-log-dir logs/model_k_robust_seed1`); without it the robust "
              "variants have no transfer attack")
    k_robust: Optional[str] = option(
        None, "robust K checkpoint (.h5) of the unmask:k=robust variants (default: the newest "
              "under logs/model_k_robust, trained by `python main.py --model K --adv-train`)")
    adaptive_steps: int = option(100, "iterations of each run of a defense-aware attack (SPEC: "
                                      ">= 100; the convergence trace reports 10, 20, 50, 100, "
                                      "200)", type=int, check=_at_least(1, integer=True))
    adaptive_restarts: int = option(2, "restart rounds of each defense-aware attack (later "
                                       "rounds start at a random point of the ball)", type=int,
                                    check=_at_least(1, integer=True))
    adaptive_targets: Optional[int] = option(
        None, "target classes tried per image where the attack needs them (UnMask: the classes "
              "whose parts K is made to see, by part overlap; APGD-T); default: all C - 1",
        type=int, check=_at_least(1, integer=True))
    adaptive_batch: int = option(100, "images per saved batch of a defense-aware attack (a work "
                                      "unit with --workers; an interrupted attack resumes inside "
                                      "the batch it was in)",
                                 type=int, check=_at_least(1, integer=True))
    adaptive_slots: int = option(32, "images evaluated together by a defense-aware attack (one "
                                     "pass of M and one session run of K per step for all of "
                                     "them; a freed slot takes the next image, so the batch "
                                     "stays full); does not change the numbers", type=int,
                                 check=_at_least(1, integer=True))
    adaptive_routes: Optional[str] = option(
        None, lambda: "narrow a defense's adaptive attack to some of its routes (the ways its "
                      "final answer reaches the attacker's goal; default: every route), comma "
                      "list of %s; a row computed without all of its defense's routes is "
                      "marked as an upper bound" % ", ".join(_route_names()))
    adaptive_goals: Optional[str] = option(
        None, lambda: "narrow a rectifying UnMask's defense-aware attacks to some of its goals, "
                      "comma list of %s (wrong: a wrong final answer; undetected: M fooled, "
                      "not flagged); default: every goal. A worst case without one of them is "
                      "an upper bound" % ", ".join(_goal_names()), type=str)
    adaptive_gradient: Optional[str] = option(
        None, "how a detector's adaptive attack combines M's and the detector's gradients: "
              "two-phase (M's until M says the target, then the detector's; UnMask's default), "
              "joint (both; the trajectory detector's default, its seed's) or orthogonal "
              "(Bryniarski et al. 2022)", type=str.lower,
        choices=("two-phase", "joint", "orthogonal"))
    detection_set: str = option(
        "original", "images of a detection evaluation (Table III, ROC/AUC, TPR/FPR): original = "
                    "every test image M misclassifies after the attack and its benign version "
                    "(the UnMask code); strict = also M right before it", type=str.lower,
        choices=("original", "strict"))
    trajectory_table: bool = option(
        False, "also fit the trajectory detector's four configurations (centroid / medoid x L2 "
               "/ cosine) and write the seed-003 table of AUCs per attack family on the test "
               "images (trajectory_table.md)")
    n_test: Optional[int] = option(None, "evaluate on at most this many test images "
                                         "(class-balanced)", type=int, check=_at_least(1))
    results_dir: str = option("results", "where reports are written")
    checkpoint_dir: str = option("checkpoints", "where M's and AT's checkpoints are written")
    no_progress: bool = option(False, "hide progress bars")
    distribute: str = option(
        "none", "tf.distribute strategy of M's and AT's training (and, with mirrored, the "
                "trajectory detector's): mirrored = the local GPUs (or logical CPUs); "
                "multi-worker = the hosts of the TF_CONFIG environment variable, the same "
                "command on each (worker 0 evaluates); K is not distributed (one process per "
                "GPU)", choices=("none", "mirrored", "multi-worker"))

    def own_model_flags(self) -> list:
        """The options of the model files you gave (``--m-model``, ``--at-model``)."""
        return [flag for flag, value in (("--m-model", self.m_model),
                                         ("--at-model", self.at_model)) if value is not None]

    def resolve(self, data: DataOptions, k: "KOptions") -> Dict[str, Any]:
        """Every value checked (ValueError naming the option) and converted: the keyword
        arguments of the run's :class:`~evaluation.config.EvalConfig`
        (:meth:`~evaluation.config.EvalConfig.from_options`)."""
        from defense.thresholds import check_target_fpr
        from models.classifier import get_architecture

        weights = None if self.weights.lower() == "none" else self.weights.lower()
        if weights not in (None, "imagenet"):
            raise ValueError("--weights for --model M must be none or imagenet, got %r"
                             % self.weights)
        for name in ("threshold", "n_test"):
            _check_field(self, name)
        with _option("--target-fpr", self.target_fpr):
            check_target_fpr(self.target_fpr)  # even with --threshold: a wrong value is a mistake
        with _option("--arch", self.arch):
            arch = get_architecture(self.arch)
        if not arch.min_size <= self.input_size <= MAX_INPUT_SIZE:
            raise ValueError("--input-size must be in [%d, %d] for --arch %s (the paper uses "
                             "150, the synthetic default 96), got %d"
                             % (arch.min_size, MAX_INPUT_SIZE, arch.name, self.input_size))
        _check_field(self, "at_eps")
        own = self.own_model_flags()
        if own and self.at_line_search:
            raise ValueError("--at-line-search trains AT models of --arch, which %s does not "
                             "change: drop %s" % (own[0], own[0]))
        train = TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                            learning_rate=self.lr, seed=data.seed)
        train.validate()
        threats = parse_threats(self.threat)
        if "transfer" in threats:
            if not self.k_transfer:
                raise ValueError("--threat transfer needs --k-transfer PATH: a K checkpoint "
                                 "trained with another seed on the same data (`python main.py "
                                 "--model K --k-seed 1 --k-log-dir logs/model_k_seed1`; "
                                 "--seed would also change the synthetic data set)")
            if not os.path.isfile(self.k_transfer):
                raise ValueError("--k-transfer %s: no such checkpoint file" % self.k_transfer)
        if self.k_transfer_robust and not os.path.isfile(self.k_transfer_robust):
            raise ValueError("--k-transfer-robust %s: no such checkpoint file"
                             % self.k_transfer_robust)
        if self.k_robust and not os.path.isfile(self.k_robust):
            raise ValueError("--k-robust %s: no such checkpoint file (train a robust K with "
                             "`python main.py --model K --adv-train`)" % self.k_robust)
        for name in ("adaptive_steps", "adaptive_restarts", "adaptive_targets",
                     "adaptive_batch", "adaptive_slots"):
            _check_field(self, name)
        routes = parse_routes(self.adaptive_routes)
        goals = parse_goals(self.adaptive_goals)
        if self.distribute == "multi-worker":
            from models.distribute import check_tf_config
            check_tf_config(os.environ.get("TF_CONFIG"))
        vectors = parse_vectors(self.attacks)
        check_l2_budgets(vectors, self.input_size)
        defenses = None
        if self.defenses is not None:
            from defense.defenses import parse_defenses
            with _option("--defenses", self.defenses):
                defenses = parse_defenses(self.defenses)
            if self.adv_train and "at" not in defenses:
                defenses.append("at")       # --adv-train: the AT row, whatever else holds it
        return dict(
            class_set=get_class_set(data.classset), data_dir=data.data_dir,
            arch=arch.name, m_model=self.m_model, input_size=self.input_size, weights=weights,
            train=train, adv_train=self.adv_train or self.at_model is not None,
            at_model=self.at_model, at_eps=self.at_eps,
            extractor=self.extractor, threshold=self.threshold, target_fpr=self.target_fpr,
            mode=self.mode, vectors=vectors, defenses=defenses,
            trajectory_table=self.trajectory_table, detection_set=self.detection_set,
            threats=tuple(threats), adaptive_steps=self.adaptive_steps,
            adaptive_restarts=self.adaptive_restarts, adaptive_targets=self.adaptive_targets,
            adaptive_gradient=self.adaptive_gradient, adaptive_batch=self.adaptive_batch,
            adaptive_slots=self.adaptive_slots, adaptive_routes=routes,
            adaptive_goals=goals,
            k_transfer=self.k_transfer, n_test=self.n_test, seed=data.seed,
            k_robust=self.k_robust or "last", k_transfer_robust=self.k_transfer_robust,
            results_dir=self.results_dir, checkpoint_dir=self.checkpoint_dir,
            k_log_dir=k.k_log_dir, k_config=k.k_config, progress=not self.no_progress,
            distribute=self.distribute)
