"""The command line's options, one dataclass per command: every option's flag, default,
accepted range and help are its field's (:func:`option`), the parser is built from the fields
(:func:`build_parser`) and each dataclass validates its own values.

* :class:`Commands` -- which command runs (one at a time);
* :class:`DataOptions` -- the data every command reads;
* :class:`MOptions` -- ``--model M``: M, the attacks, the defenses, the evaluation (the run's
  :class:`~evaluation.config.EvalConfig` is built from them by
  :meth:`~evaluation.config.EvalConfig.from_options`);
* :class:`GridOptions` -- the paper's grid of (architecture, class set) pairs;
* :class:`KOptions` -- ``--model K``: the part extractor's training and evaluation.

:class:`Options` holds one of each; :func:`parse_args` turns a command line into it (with
``--config``: the configuration a finished run recorded, :mod:`evaluation.commands`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import numbers
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from data.knowledge import CLASS_SETS, class_set_names, get_class_set
from data.options import seed_argument
from data.synthetic import DEFAULT_DATA_DIR
from defense.adversarial_training import AT_EPS
from models import DEFAULT_ARCH
from models.train_classifier import TrainConfig

DEFAULT_CLASS_SET = "CS5b"
#: Largest --input-size: 1024 px images of the paper's ~10,000 training images would already
#: take 30 GB as uint8 arrays.
MAX_INPUT_SIZE = 1024
#: Sanity bound of K's learning rate (matterport trains at 0.001-0.02): a larger one can only
#: diverge, and a NaN/inf one trains a model full of NaN.
MAX_LEARNING_RATE = 10.0
#: M's training recipe (the original code's): the defaults of --epochs, --batch-size, --lr.
RECIPE = TrainConfig()
K_CONFIGS = ("synthetic", "parts", "tiny")
EVAL_SPLITS = ("train", "val", "test")


def option(default: Any = None, help: Any = "", *, type: Optional[Callable] = None,
           choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
           check: Optional[Callable[[str, Any], Any]] = None) -> Any:
    """A dataclass field that is a command-line option ``--<name-with-dashes>``.

    Args:
        default: its default (a bool option is a switch, off by default).
        help: its help text, or a callable returning it (for lists read from registries).
        type: argparse's conversion of the text (``int``, ``float``, ``str.lower``, ...).
        choices: the accepted values (argparse refuses others).
        check: ``check(flag, value)`` raising ValueError when the value is out of range;
            run on the parsed value (argparse names the flag) and by ``validate()``.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "type": type, "choices": choices, "metavar": metavar, "check": check})


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- ranges

def check_count(flag: str, value, minimum: int = 1, what: str = "") -> Optional[int]:
    """``value`` as an int >= ``minimum`` (None stays None: the default applies).

    Raises:
        ValueError: naming ``flag``; 0 is refused, never taken to mean "the default".
    """
    if value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise ValueError("%s must be an integer >= %d%s, got %r (leave it out for the default)"
                         % (flag, minimum, " (%s)" % what if what else "", value))
    return int(value)


def check_positive(flag: str, value, maximum: Optional[float] = None,
                   what: str = "") -> Optional[float]:
    """``value`` as a finite float > 0 (and <= ``maximum``); None stays None.

    Raises:
        ValueError: naming ``flag`` for NaN, infinity, 0, negative values or values above
        ``maximum``.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0 or (
            maximum is not None and number > maximum):
        bound = " and <= %g" % maximum if maximum is not None else ""
        raise ValueError("%s must be a finite number > 0%s%s, got %r"
                         % (flag, bound, " (%s)" % what if what else "", value))
    return number


def check_learning_rate(value, flag: str = "--k-lr") -> Optional[float]:
    """A finite learning rate in (0, MAX_LEARNING_RATE] (None: the config's)."""
    return check_positive(flag, value, MAX_LEARNING_RATE,
                          "learning rate; a NaN, infinite or huge one trains a model full of NaN")


def parse_stage_epochs(epochs) -> tuple:
    """K's epochs per stage ``(heads, 4+, all, all_low_lr)`` from a tuple or "1,1,10,3"."""
    if isinstance(epochs, str):
        try:
            epochs = [int(v) for v in epochs.split(",") if v.strip()]
        except ValueError:
            raise ValueError("--k-epochs must be comma-separated integers such as 1,1,10,3 "
                             "(heads, 4+, all, all at lr/10), got %r" % epochs) from None
    epochs = tuple(int(v) for v in epochs)
    if not 1 <= len(epochs) <= 4 or any(v < 0 for v in epochs):
        raise ValueError("--k-epochs takes 1-4 non-negative counts (heads, 4+, all, all at "
                         "lr/10), got %r" % (epochs,))
    return epochs + (0,) * (4 - len(epochs))


def _at_least(minimum: int, integer: bool = False):
    """``check`` of an integer option >= ``minimum`` (None: not given)."""
    def check(flag: str, value) -> None:
        if value is not None and value < minimum:
            raise ValueError("%s must be %s>= %d, got %r" % (flag, "an integer " if integer
                                                             else "", minimum, value))
    return check


def _k_count(what: str):
    return lambda flag, value: check_count(flag, value, 1, what)


def _k_epochs(flag: str, value) -> None:
    if value is not None:
        parse_stage_epochs(value)


def _in_unit_interval(flag: str, value) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError("%s must be in [0, 1], got %r" % (flag, value))


def _at_budget(flag: str, value) -> None:
    if not 0 < value <= 255:
        raise ValueError("%s must be in (0, 255] (the 0-255 scale, e.g. 4), got %r"
                         % (flag, value))


def _checked(convert: Callable, check: Callable, flag: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` then ``check`` (argparse's error names the flag)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%s: invalid number %r" % (flag, text)) from None
        try:
            check(flag, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value
    parse.__name__ = flag
    return parse


def _threat_names() -> Sequence[str]:
    from defense.threats import NAMES
    return NAMES


def _defense_names() -> List[str]:
    from defense.defenses import list_defenses
    return list_defenses()


# ----------------------------------------------------------------------------- commands

@dataclasses.dataclass
class Commands:
    """commands (one at a time)"""
    prepare_data: bool = option(False, "generate the synthetic UnMask data set in --data-dir "
                                       "(reused if it is already there) and print its summary")
    describe_classsets: bool = option(False, "print the four class sets with their classes, "
                                             "distinct parts and part overlap (paper Table II)")
    report: Optional[str] = option(
        None, "rebuild report.html of a finished run from what it saved, recomputing nothing: "
              "an evaluation's folder (results/<code>/<arch>), the grid's (results/grid) or "
              "K's (--k-results-dir)", metavar="RUN_DIR")
    model: Optional[str] = option(
        None, "K: train/evaluate the Mask R-CNN part extractor; M: train/load the classifier "
              "for --classset, attack it and evaluate UnMask", type=str.upper,
        choices=("K", "M"))
    config: Optional[str] = option(
        None, "rerun a finished run from the config.json it wrote beside its results (an "
              "evaluation, a grid or K); --data-dir, --results-dir, --checkpoint-dir, "
              "--k-log-dir, --k-results-dir, --no-progress, --workers and --ray-address may "
              "be given with it to run elsewhere", metavar="CONFIG_JSON")
    report_out: Optional[str] = option(
        None, "with --report: write the page to this file instead of RUN_DIR/report.html (a "
              "shared or read-only run folder)", metavar="FILE")
    allow_other_models: bool = option(
        False, "with --config: rerun even where a model the rerun loads is not the one the run "
               "recorded (its sha1 differs); the run's report and config.json say so")

    def validate(self) -> None:
        given = [self.prepare_data, self.describe_classsets, self.model is not None,
                 self.report is not None, self.config is not None]
        if sum(bool(g) for g in given) > 1:
            raise ValueError("give one command at a time: --prepare-data, "
                             "--describe-classsets, --report, --config or --model")
        if self.report_out is not None and self.report is None:
            raise ValueError("--report-out FILE goes with --report RUN_DIR (where to write "
                             "that run's page)")
        if self.allow_other_models and self.config is None:
            raise ValueError("--allow-other-models goes with --config (a rerun of a recorded "
                             "run)")


@dataclasses.dataclass
class DataOptions:
    """data"""
    data_dir: str = option(DEFAULT_DATA_DIR, "UnMask data folder (original layout: VOC2010/, "
                                             "cs3-1/, ...); the synthetic data set is generated "
                                             "here when it is missing")
    seed: int = option(0, "seed of the synthetic data set and of every random choice of a run",
                       type=seed_argument("--seed"))
    classset: str = option(DEFAULT_CLASS_SET, lambda: "class set for --model M: " + ", ".join(
        class_set_names()) + " (case-insensitive)")

    def validate(self) -> None:
        try:
            get_class_set(self.classset)
        except ValueError as e:
            raise ValueError("--classset: %s" % e) from None


@dataclasses.dataclass
class MOptions:
    """model M and the evaluation (--model M)"""
    arch: str = option(DEFAULT_ARCH, "architecture of M: resnet50, densenet121 (the paper's), "
                                     "vgg16, mobilenetv2, mobilenetv2_050 (fast on a CPU; "
                                     "synthetic default)")
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
        train = TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                            learning_rate=self.lr, seed=data.seed)
        train.validate()
        threats = parse_threats(self.threat)
        if "transfer" in threats:
            if not self.k_transfer:
                raise ValueError("--threat transfer needs --k-transfer PATH: a K checkpoint "
                                 "trained with another seed (`python main.py --model K --seed 1 "
                                 "--k-log-dir logs/model_k_seed1`)")
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
            arch=arch.name, input_size=self.input_size, weights=weights,
            train=train, adv_train=self.adv_train, at_eps=self.at_eps,
            extractor=self.extractor, threshold=self.threshold, target_fpr=self.target_fpr,
            mode=self.mode, vectors=vectors, defenses=defenses,
            trajectory_table=self.trajectory_table, detection_set=self.detection_set,
            threats=tuple(threats), adaptive_steps=self.adaptive_steps,
            adaptive_restarts=self.adaptive_restarts, adaptive_targets=self.adaptive_targets,
            adaptive_gradient=self.adaptive_gradient, adaptive_batch=self.adaptive_batch,
            adaptive_slots=self.adaptive_slots, adaptive_routes=routes,
            k_transfer=self.k_transfer, n_test=self.n_test, seed=data.seed,
            k_robust=self.k_robust or "last", k_transfer_robust=self.k_transfer_robust,
            results_dir=self.results_dir, checkpoint_dir=self.checkpoint_dir,
            k_log_dir=k.k_log_dir, k_config=k.k_config, progress=not self.no_progress,
            distribute=self.distribute)


@dataclasses.dataclass
class GridOptions:
    """the paper's grid and running past one machine (--model M)"""
    grid: bool = option(False, "evaluate every (architecture, class set) pair of --archs x "
                               "--classsets (resumable work units) and write one Table IV, "
                               "bench table and Fig. 4 across them in RESULTS_DIR/grid/")
    archs: Optional[str] = option(None, "comma list of architectures for --grid (default: "
                                        "--arch)")
    classsets: Optional[str] = option(None, "comma list of class sets for --grid, or 'all' "
                                            "(default: --classset)")
    workers: Optional[int] = option(None, "run the grid's units (or, without --grid, the "
                                          "run's defense-aware attacks, one unit per image "
                                          "batch) on a local Ray cluster of N worker "
                                          "processes (default: in this process)",
                                    type=int, check=_at_least(1))
    ray_address: Optional[str] = option(None, "HOST:PORT of a running Ray cluster to run the "
                                              "grid's units (or a run's defense-aware "
                                              "attacks) on")
    shards: Optional[int] = option(None, "split every per-image attack vector of --grid into N "
                                         "image shards (work units cut at attack-batch "
                                         "boundaries; the merged numbers equal the unsharded "
                                         "run's) (default: 1)", type=int, check=_at_least(1))

    def pairs(self, data: DataOptions, m: MOptions,
              model: Optional[str]) -> Optional[Tuple[List[str], List[str]]]:
        """(architectures, class set code names) of --grid, validated (None without
        --grid); ValueError otherwise."""
        from models.classifier import get_architecture

        _check_field(self, "workers")
        if self.workers is not None and self.ray_address:
            raise ValueError("give --workers N (a local Ray cluster) or --ray-address (a "
                             "running one), not both")
        if not self.grid:
            if self.archs or self.classsets or self.shards is not None:
                raise ValueError("--archs, --classsets and --shards go with --grid")
            if (self.workers is not None or self.ray_address) and model == "K":
                raise ValueError("--workers and --ray-address run M's grid or a run's "
                                 "defense-aware attacks; K trains in one process")
            return None
        if model == "K":
            raise ValueError("--grid evaluates M's pairs; train K with `--model K` first")
        archs = []
        for name in filter(None, (a.strip() for a in (self.archs or m.arch).split(","))):
            try:
                spec = get_architecture(name)
            except ValueError as e:
                raise ValueError("--archs: %s" % e) from None
            if not spec.min_size <= m.input_size:
                raise ValueError("--archs: %s needs --input-size >= %d" % (spec.name,
                                                                          spec.min_size))
            if spec.name not in archs:
                archs.append(spec.name)
        text = self.classsets or get_class_set(data.classset).code_name
        if text.strip().lower() == "all":
            sets = [cs.code_name for cs in CLASS_SETS]
        else:
            sets = []
            for name in filter(None, (c.strip() for c in text.split(","))):
                try:
                    code = get_class_set(name).code_name
                except ValueError as e:
                    raise ValueError("--classsets: %s" % e) from None
                if code not in sets:
                    sets.append(code)
        if not archs or not sets:
            raise ValueError("--grid needs at least one architecture and one class set, got "
                             "--archs %r and --classsets %r" % (self.archs or m.arch, text))
        if m.distribute != "none":
            raise ValueError("--grid runs its units in separate processes (--workers); "
                             "--distribute applies to a single run, not to the grid")
        _check_field(self, "shards")
        return archs, sets


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


#: The option groups in the order --help lists them.
GROUPS = (("commands", Commands), ("data", DataOptions), ("m", MOptions),
          ("grid", GridOptions), ("k", KOptions))


@dataclasses.dataclass
class Options:
    """A whole command line: which command, and every option of every command."""
    commands: Commands = dataclasses.field(default_factory=Commands)
    data: DataOptions = dataclasses.field(default_factory=DataOptions)
    m: MOptions = dataclasses.field(default_factory=MOptions)
    grid: GridOptions = dataclasses.field(default_factory=GridOptions)
    k: KOptions = dataclasses.field(default_factory=KOptions)
    #: the options given on the command line (the others took their defaults)
    given: Tuple[str, ...] = ()

    def flat(self) -> Dict[str, Any]:
        """Option name -> value, every option of every group."""
        return {f.name: getattr(getattr(self, g), f.name)
                for g, cls in GROUPS for f in dataclasses.fields(cls)}

    @classmethod
    def from_flat(cls, values: Dict[str, Any], given: Sequence[str] = ()) -> "Options":
        """The options whose values ``values`` gives (option name -> value; the others take
        their defaults); KeyError for a name that is no option."""
        names = {f.name: g for g, c in GROUPS for f in dataclasses.fields(c)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError("no such option: %s" % ", ".join(unknown))
        groups = {g: c(**{k: v for k, v in values.items() if names[k] == g})
                  for g, c in GROUPS}
        return cls(given=tuple(given), **groups)

    def k_options(self) -> Dict[str, Any]:
        """What K's runner takes (:func:`evaluation.model_k.run_model_k`): K's options with
        the data folder, the seeds, the initial weights and the progress display."""
        out = dict(dataclasses.asdict(self.k), data_dir=self.data.data_dir,
                   seed=self.data.seed, weights=self.m.weights,
                   no_progress=self.m.no_progress,
                   # --adv-train means a robust K only for --model K (for M: the AT model)
                   adv_train=bool(self.m.adv_train and self.commands.model == "K"))
        if out["adv_train"]:       # a robust K lives in its own folders unless told otherwise
            for name, robust in ROBUST_K_DIRS.items():
                if name not in self.given:
                    out[name] = robust
        return out


def _check_field(obj, name: str) -> None:
    """Run the range check of field ``name`` of an options dataclass on its value."""
    meta = next(f.metadata for f in dataclasses.fields(obj) if f.name == name)
    value = getattr(obj, name)
    if meta.get("check") is not None and value is not None:
        meta["check"](flag_of(name), value)


def parse_attack_eps(text, flag: str = "--k-attack-eps") -> Tuple[float, ...]:
    """``"4,8"`` -> ``(4.0, 8.0)``; ``"none"`` (or empty) -> ``()``.  ValueError naming
    ``flag`` for a budget that is not a number in (0, 255] or one given twice."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return ()
    values = []
    for item in str(text).split(","):
        try:
            eps = float(item)
        except ValueError:
            raise ValueError("%s: %r is not a number; give budgets on the 0-255 scale like "
                             "4,8, or none" % (flag, item.strip())) from None
        if not (math.isfinite(eps) and 1 <= eps <= 255) or eps in values:
            raise ValueError("%s: each budget must be a number in [1, 255] (the attacked "
                             "images are 8-bit) given once, got %r" % (flag, text))
        values.append(eps)
    return tuple(values)


#: The folders of a robust K (``--model K --adv-train``) when no other is given.
ROBUST_K_DIRS = {"k_log_dir": os.path.join("logs", "model_k_robust"),
                 "k_results_dir": os.path.join("results", "model_k_robust")}


def k_defaults() -> Dict[str, Any]:
    """The defaults of what K's runner takes (:meth:`Options.k_options`)."""
    return Options().k_options()


# ----------------------------------------------------------------------------- parsing

def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The command line's parser, from the fields of :data:`GROUPS` (``defaults=False``:
    every default suppressed, so the namespace holds only the options given)."""
    p = argparse.ArgumentParser(
        prog="main.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="UnMask: knowledge-based adversarial detection and defense (TF 2 port). "
                    "Without a command, runs the default job: `--model M --classset CS5b` on "
                    "the synthetic data set.")
    for _, cls in GROUPS:
        group = p.add_argument_group(cls.__doc__)
        for f in dataclasses.fields(cls):
            meta, flag = f.metadata, flag_of(f.name)
            help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
            kw: Dict[str, Any] = {"help": help_text}
            if not defaults:
                kw["default"] = argparse.SUPPRESS
            if f.type in ("bool", bool):
                group.add_argument(flag, action="store_true", **kw)
                continue
            if defaults:
                kw["default"] = f.default
            convert = meta["type"]
            if cls is KOptions and meta["check"] is not None:
                # K's numbers are refused by argparse itself, naming the flag
                convert = _checked(convert or str, meta["check"], flag)
            for key in ("choices", "metavar"):
                if meta[key] is not None:
                    kw[key] = meta[key]
            if convert is not None:
                kw["type"] = convert
            group.add_argument(flag, **kw)
    return p


#: Options that may be given with --config (where the rerun reads and writes).
CONFIG_OVERRIDES = ("data_dir", "results_dir", "checkpoint_dir", "k_log_dir", "k_results_dir",
                    "no_progress", "workers", "ray_address", "allow_other_models")


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """The :class:`Options` of a command line (SystemExit with argparse's message for a
    malformed one)."""
    values = vars(build_parser().parse_args(argv))
    given = tuple(sorted(vars(build_parser(defaults=False).parse_args(argv))))
    return Options.from_flat(values, given)


# ----------------------------------------------------------------------------- values

@contextlib.contextmanager
def _option(flag: str, value):
    """Errors of the library checks run for ``flag`` name the flag and its value (the
    library phrases them with its argument names; the command line's names are flags)."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        if text.startswith(flag):
            raise
        if str(value) in text:
            raise ValueError("%s: %s" % (flag, text)) from None
        raise ValueError("%s %s: %s" % (flag, value, text)) from None


def _route_names() -> List[str]:
    from defense.defenses import route_names
    return route_names()


def parse_routes(text: Optional[str]) -> Optional[Tuple[str, ...]]:
    """``--adaptive-routes`` text -> route names (None: every route); ValueError naming the
    option and the routes there are."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    known = _route_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError("--adaptive-routes %r: %s; the routes are %s"
                         % (text, "unknown route %s" % ", ".join(unknown) if unknown
                            else "give at least one route", ", ".join(known)))
    return names


def parse_threats(text: str) -> List:
    """--threat's comma list -> the :class:`~defense.threats.Threat` list (each once)."""
    from defense.threats import Threat

    threats = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            threat = Threat.parse(item)
        except ValueError as e:
            raise ValueError("--threat: %s" % e) from None
        if threat not in threats:
            threats.append(threat)
    if not threats:
        raise ValueError("--threat: give one or several of %s" % ", ".join(_threat_names()))
    return threats


def parse_vectors(text: str):
    """'paper' or 'name:eps,...' -> [(registry name, eps on the 0-255 scale)].

    Names are checked against the attack registry and stored in its spelling (``pgd-linf`` ->
    ``pgd_linf``); a name without ``:eps`` takes the attack's default budget.  Every vector of
    an evaluation needs a budget > 0 (reports are keyed by it), and each may appear once.
    """
    from attacks import PAPER_ATTACK_VECTORS, resolve_config

    if text.strip().lower() == "paper":
        return list(PAPER_ATTACK_VECTORS)
    vectors = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if item.lower() == "paper":
            for vector in PAPER_ATTACK_VECTORS:
                if vector in vectors:
                    raise ValueError("--attacks: %s eps=%g is given twice" % vector)
                vectors.append(vector)
            continue
        name, sep, eps_text = item.partition(":")
        try:
            eps = float(eps_text) if sep else None
        except ValueError:
            raise ValueError("--attacks: eps of %r must be a number" % item) from None
        with _option("--attacks", item):
            config = resolve_config(name, eps)
        if config.eps is None or not config.eps > 0:
            raise ValueError("--attacks: %r needs an eps > 0 on the 0-255 scale for the "
                             "evaluation, e.g. %s:300" % (item, config.name))
        if (config.name, config.eps) in vectors:
            raise ValueError("--attacks: %s eps=%g is given twice" % (config.name, config.eps))
        for other_name, other_eps in vectors:
            if other_name == config.name and "%g" % other_eps == "%g" % config.eps:
                raise ValueError("--attacks: %s eps=%r and eps=%r differ only past the "
                                 "reports' precision (both read eps=%g); give budgets that "
                                 "differ visibly" % (config.name, other_eps, config.eps,
                                                     config.eps))
        vectors.append((config.name, config.eps))
    if not vectors:
        raise ValueError("--attacks: give 'paper' or name:eps pairs")
    return vectors


def check_l2_budgets(vectors, input_size: int) -> None:
    """An L2 budget larger than the distance between an all-black and an all-white image of
    M's size means nothing."""
    from attacks import resolve_config

    limit = 255.0 * (3.0 * input_size * input_size) ** 0.5
    for name, eps in vectors:
        if resolve_config(name, eps).norm == "l2" and eps > limit:
            raise ValueError("--attacks: %s eps=%g exceeds the largest L2 distance between "
                             "two %dx%d images (%.0f on the 0-255 scale); give eps on that "
                             "scale, e.g. %s:300" % (name, eps, input_size, input_size, limit,
                                                     name))
