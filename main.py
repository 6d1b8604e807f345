#!/usr/bin/env python
"""UnMask on current TensorFlow: command-line entry point.

    python main.py                                  # the default job (synthetic CS5b evaluation)
    python main.py --prepare-data                   # generate the synthetic data set
    python main.py --describe-classsets             # Table II: classes, parts, overlap
    python main.py --model K                        # train (or evaluate) the part extractor K
    python main.py --model M --classset CS5b        # train M, attack it, evaluate UnMask
    python main.py --report results/cs5-2/mobilenetv2_050   # rebuild a finished run's page

``main()`` only parses and forwards: names are validated once here (class set, architecture,
attack names) and turned into objects before anything runs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import tfcompat  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from data.knowledge import class_set_names, describe_class_sets, get_class_set
from data.options import seed_argument
from data.synthetic import DEFAULT_DATA_DIR, DatasetExistsError, ensure_dataset, summary
from models import DEFAULT_ARCH

DEFAULT_CLASS_SET = "CS5b"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="UnMask: knowledge-based adversarial detection and defense (TF 2 port). "
                    "Without a command, runs the default job: `--model M --classset CS5b` on "
                    "the synthetic data set.")
    cmd = p.add_argument_group("commands (one at a time)")
    cmd.add_argument("--prepare-data", action="store_true",
                     help="generate the synthetic UnMask data set in --data-dir (reused if it "
                          "is already there) and print its summary")
    cmd.add_argument("--describe-classsets", action="store_true",
                     help="print the four class sets with their classes, distinct parts and "
                          "part overlap (paper Table II)")
    cmd.add_argument("--report", metavar="RUN_DIR",
                     help="rebuild report.html of a finished run from what it saved, "
                          "recomputing nothing: an evaluation's folder (results/<code>/<arch>), "
                          "the grid's (results/grid) or K's (--k-results-dir)")
    cmd.add_argument("--model", choices=("K", "M"), type=str.upper,
                     help="K: train/evaluate the Mask R-CNN part extractor; M: train/load the "
                          "classifier for --classset, attack it and evaluate UnMask")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="UnMask data folder (original layout: VOC2010/, cs3-1/, ...); the "
                        "synthetic data set is generated here when it is missing")
    g.add_argument("--seed", type=seed_argument("--seed"), default=0,
                   help="seed of the synthetic data set and of every random choice of a run")
    g.add_argument("--classset", default=DEFAULT_CLASS_SET,
                   help="class set for --model M: " + ", ".join(class_set_names())
                        + " (case-insensitive)")
    m = p.add_argument_group("model M and the evaluation (--model M)")
    m.add_argument("--arch", default=DEFAULT_ARCH,
                   help="architecture of M: resnet50, densenet121 (the paper's), vgg16, "
                        "mobilenetv2, mobilenetv2_050 (fast on a CPU; synthetic default)")
    m.add_argument("--input-size", type=int, default=96,
                   help="M's input size in pixels (images are resized and center-cropped)")
    m.add_argument("--weights", default="none",
                   help="initial weights. --model M: none (random init) or imagenet "
                        "(downloads; needs network access). --model K: none, last (resume "
                        "the newest checkpoint), coco or imagenet (local files), or a PATH")
    m.add_argument("--epochs", type=int, default=30,
                   help="training epochs of M (and AT); 30 as the original recipe")
    m.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of M")
    m.add_argument("--batch-size", type=int, default=32, help="training batch size of M")
    m.add_argument("--adv-train", action="store_true",
                   help="also train and evaluate the adversarial-training baseline (AT)")
    m.add_argument("--at-eps", type=float, default=4,
                   help="AT's PGD-Linf eps on the 0-255 scale (7 steps, step 2)")
    m.add_argument("--at-line-search", action="store_true",
                   help="train AT for eps in {1,2,4,6,8,16}, print validation accuracies "
                        "under the attack vectors and the best eps, then stop")
    m.add_argument("--extractor", choices=("k", "oracle"), type=str.lower,
                   help="part extractor: k (trained Mask R-CNN) or oracle (ground-truth "
                        "parts, the ceiling of a perfect K); default: k if trained, else oracle")
    m.add_argument("--threshold", type=float,
                   help="detection threshold t in [0, 1] (flag if 1 - Jaccard >= t); default: "
                        "chosen on validation images for --target-fpr")
    m.add_argument("--target-fpr", type=float, default=0.1,
                   help="false-positive rate on benign validation images that picks t")
    m.add_argument("--mode", choices=("flagged", "all"), default="flagged",
                   help="rectify only flagged images (paper) or re-classify all (original "
                        "code)")
    m.add_argument("--attacks", default="paper",
                   help="attack vectors: 'paper' (the 8 of Table IV), or a comma list of "
                        "name:eps or 'paper', e.g. pgd_linf:8,fgsm:8 or paper,uap:10,ga:3 (eps "
                        "on the 0-255 scale; uap is a universal perturbation fitted on the "
                        "training images, ga a targeted gradient ascent)")
    m.add_argument("--defenses",
                   help="comma list of defenses to evaluate side by side on the same images "
                        "and attacks: " + ", ".join(_defense_names()) + "; name:value sets a "
                        "defense's main parameter (downsample:0.75, noise:10, jpeg:50, "
                        "bitdepth:3, pca:0.95). Default: none,unmask (plus at with "
                        "--adv-train)")
    m.add_argument("--threat", default="gray-box",
                   help="threat models to evaluate, comma list of %s: gray-box (the paper's: "
                        "the attacks see M only), adaptive (defense-aware attacks run by the "
                        "adaptive engine: BPDA/EOT through transforms, the detector through "
                        "its LSTM, M and K together for UnMask; every target class, restarts, "
                        "both goals) and transfer (UnMask's adaptive attack through a "
                        "surrogate K, --k-transfer)" % ", ".join(_threat_names()))
    m.add_argument("--k-transfer",
                   help="surrogate K checkpoint (.h5) for --threat transfer: the adaptive "
                        "attack on UnMask through a K trained with another seed, judged on the "
                        "real K")
    m.add_argument("--adaptive-steps", type=int, default=100,
                   help="iterations of each run of a defense-aware attack (SPEC: >= 100; the "
                        "convergence trace reports 10, 20, 50, 100, 200)")
    m.add_argument("--adaptive-restarts", type=int, default=2,
                   help="restart rounds of each defense-aware attack (later rounds start at a "
                        "random point of the ball)")
    m.add_argument("--adaptive-targets", type=int, default=None,
                   help="target classes tried per image where the attack needs them (UnMask: "
                        "the classes whose parts K is made to see, by part overlap; APGD-T); "
                        "default: all C - 1")
    m.add_argument("--adaptive-batch", type=int, default=100,
                   help="images attacked together by a defense-aware attack (K's fixed cost "
                        "per session run is shared by more images; an interrupted attack "
                        "resumes at the last finished batch)")
    m.add_argument("--adaptive-gradient", default=None, type=str.lower,
                   choices=("two-phase", "joint", "orthogonal"),
                   help="how a detector's adaptive attack combines M's and the detector's "
                        "gradients: two-phase (M's until M says the target, then the "
                        "detector's; UnMask's default), joint (both; the trajectory "
                        "detector's default, its seed's) or orthogonal (Bryniarski et al. "
                        "2022)")
    m.add_argument("--detection-set", choices=("original", "strict"), default="original",
                   type=str.lower,
                   help="images of a detection evaluation (Table III, ROC/AUC, TPR/FPR): "
                        "original = every test image M misclassifies after the attack and its "
                        "benign version (the UnMask code); strict = also M right before it")
    m.add_argument("--trajectory-table", action="store_true",
                   help="also fit the trajectory detector's four configurations (centroid / "
                        "medoid x L2 / cosine) and write the seed-003 table of AUCs per attack "
                        "family on the test images (trajectory_table.md)")
    m.add_argument("--n-test", type=int,
                   help="evaluate on at most this many test images (class-balanced)")
    m.add_argument("--results-dir", default="results", help="where reports are written")
    m.add_argument("--checkpoint-dir", default="checkpoints",
                   help="where M's and AT's checkpoints are written")
    m.add_argument("--no-progress", action="store_true", help="hide progress bars")
    m.add_argument("--distribute", default="none", choices=["none", "mirrored", "multi-worker"],
                   help="tf.distribute strategy of M's and AT's training (and, with "
                        "mirrored, the trajectory detector's): mirrored = the local GPUs (or "
                        "logical CPUs); multi-worker = the hosts of the TF_CONFIG environment "
                        "variable, the same command on each (worker 0 evaluates); K is not "
                        "distributed (one process per GPU)")
    grid = p.add_argument_group("the paper's grid and running past one machine (--model M)")
    grid.add_argument("--grid", action="store_true",
                      help="evaluate every (architecture, class set) pair of --archs x "
                           "--classsets (resumable work units) and write one Table IV, bench "
                           "table and Fig. 4 across them in RESULTS_DIR/grid/")
    grid.add_argument("--archs", default=None,
                      help="comma list of architectures for --grid (default: --arch)")
    grid.add_argument("--classsets", default=None,
                      help="comma list of class sets for --grid, or 'all' (default: "
                           "--classset)")
    grid.add_argument("--workers", type=int, default=None,
                      help="run the grid's units on a local Ray cluster of N worker processes "
                           "(default: in this process)")
    grid.add_argument("--ray-address", default=None,
                      help="HOST:PORT of a running Ray cluster to run the grid's units on")
    grid.add_argument("--shards", type=int, default=None,
                      help="split every per-image attack vector of --grid into N image shards "
                           "(work units cut at attack-batch boundaries; the merged numbers "
                           "equal the unsharded run's) (default: 1)")
    from evaluation.model_k import add_arguments as add_k_arguments
    add_k_arguments(p)
    return p


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


def parse_grid(args):
    """(architectures, class set code names) of --grid, validated; ValueError otherwise."""
    from data.knowledge import CLASS_SETS
    from models.classifier import get_architecture

    if not args.grid:
        if (args.archs or args.classsets or args.workers is not None or args.ray_address
                or args.shards is not None):
            raise ValueError("--archs, --classsets, --workers, --ray-address and --shards go "
                             "with --grid")
        return None
    if args.model == "K":
        raise ValueError("--grid evaluates M's pairs; train K with `--model K` first")
    archs = []
    for name in filter(None, (a.strip() for a in (args.archs or args.arch).split(","))):
        try:
            spec = get_architecture(name)
        except ValueError as e:
            raise ValueError("--archs: %s" % e) from None
        if not spec.min_size <= args.input_size:
            raise ValueError("--archs: %s needs --input-size >= %d" % (spec.name,
                                                                      spec.min_size))
        if spec.name not in archs:
            archs.append(spec.name)
    text = args.classsets or args.classset.code_name
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
                         "--archs %r and --classsets %r" % (args.archs or args.arch, text))
    if args.distribute != "none":
        raise ValueError("--grid runs its units in separate processes (--workers); "
                         "--distribute applies to a single run, not to the grid")
    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be >= 1, got %d" % args.workers)
    if args.shards is not None and args.shards < 1:
        raise ValueError("--shards must be >= 1, got %d" % args.shards)
    if args.workers is not None and args.ray_address:
        raise ValueError("give --workers N (a local Ray cluster) or --ray-address (a running "
                         "one), not both")
    return archs, sets


def run_grid(cfg, archs, class_sets, args) -> int:
    from evaluation.executors import make_executor
    from evaluation.grid import run_grid as grid

    executor = make_executor(args.workers, args.ray_address)
    try:
        grid(cfg, archs, class_sets, executor)
    finally:
        if hasattr(executor, "shutdown"):
            executor.shutdown()
    return 0


def _threat_names():
    from defense.threats import NAMES  # light: no TensorFlow at import time
    return NAMES


def _defense_names():
    from defense.defenses import list_defenses  # light: no TensorFlow at import time
    return list_defenses()


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


#: Largest --input-size: 1024 px images of the paper's ~10,000 training images would already
#: take 30 GB as uint8 arrays.
MAX_INPUT_SIZE = 1024


def _check_l2_budgets(vectors, input_size: int) -> None:
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


def check_folders(args, eval_cfg=None, grid=None) -> bool:
    """Every folder the command will read or write, checked before any work (a clear error
    naming the option instead of a traceback after minutes of training).  A folder is probed
    for writing only where the command writes: trained models on a read-only share (M and AT
    in --checkpoint-dir, K in --k-log-dir) are evaluated from there, with every output in the
    results folders.  Returns whether ``--model M`` must train K first (no trained K and no
    --extractor)."""
    from data.fileio import check_folder

    _check_data_dir(args.data_dir)
    k_first = False
    if args.model == "M":
        check_folder(args.results_dir, "--results-dir")
        check_folder(args.checkpoint_dir, "--checkpoint-dir", write=False)
        check_folder(args.k_log_dir, "--k-log-dir", write=False)
        _check_checkpoint_dir(args, _checkpoint_writes(args, eval_cfg, grid))
        k_first = not args.at_line_search and _k_missing(args)
        if k_first:
            check_folder(args.k_log_dir, "--k-log-dir", why="no K is trained there for "
                         "--k-config %s, so the run trains one there first" % args.k_config)
            check_folder(args.k_results_dir, "--k-results-dir")
            if args.distribute == "multi-worker":
                raise ValueError("no trained K in --k-log-dir %s: train it first with "
                                 "`python main.py --model K` (on one host); --distribute "
                                 "multi-worker distributes M's training only" % args.k_log_dir)
    elif args.model == "K":
        from evaluation.model_k import log_dir_writes
        check_folder(args.k_log_dir, "--k-log-dir", write=False)
        why = log_dir_writes(args)
        if why is not None:
            check_folder(args.k_log_dir, "--k-log-dir", why="%s (evaluating a K trained "
                         "there only reads it, so a read-only --k-log-dir works for that)" % why)
        check_folder(args.k_results_dir, "--k-results-dir")
    return k_first


def _check_data_dir(data_dir: str) -> None:
    """--data-dir is read; a missing (or empty) one is generated first, in a temporary folder
    beside it that is renamed into place (with a lock file beside it too), so its parent
    folder is the one that must be writable."""
    from data.fileio import check_folder, write_problem

    check_folder(data_dir, "--data-dir", write=False)
    try:
        holds_data = os.path.isdir(data_dir) and bool(os.listdir(data_dir))
    except OSError as e:
        raise ValueError("--data-dir %s cannot be read (%s); pass a folder you can read"
                         % (data_dir, e.strerror or e)) from None
    if holds_data:
        return
    parent = os.path.dirname(os.path.abspath(data_dir))
    problem = write_problem(parent, "--data-dir")
    if problem is not None:
        raise ValueError("--data-dir %s cannot be generated: the data set is written beside "
                         "it and renamed into place, and %s cannot be written (%s); pass a "
                         "--data-dir in a folder you can write to, or one that holds the data "
                         "set" % (data_dir, parent, problem))


def _checkpoint_writes(args, eval_cfg, grid) -> list:
    """``(folder, why)`` for each model folder under --checkpoint-dir the run writes in
    (None for a folder holding M or AT trained for the run's settings: it is only read)."""
    from defense.adversarial_training import at_checkpoint_dir
    from evaluation.grid import pair_config
    from models.train_classifier import training_writes

    if args.at_line_search:
        return [(eval_cfg.m_dir, "--at-line-search trains AT for each eps beside M's folder "
                                 "and records the search there")]
    cfgs = [eval_cfg] if grid is None else [pair_config(eval_cfg, a, c)
                                            for a in grid[0] for c in grid[1]]
    out = []
    for cfg in cfgs:
        folders = [("M", cfg.m_dir)]
        if cfg.adv_train:
            folders.append(("AT", at_checkpoint_dir(cfg.m_dir, cfg.at_eps)))
        for model, folder in folders:
            why = training_writes(folder, cfg.train)
            if why is not None:
                out.append((folder, "%s would be trained in %s (%s)" % (model, folder, why)))
    return out


def _check_checkpoint_dir(args, writes) -> None:
    """--checkpoint-dir must be writable where ``writes`` says the run writes."""
    from data.fileio import write_problem

    for folder, why in writes:
        problem = write_problem(folder, "--checkpoint-dir")
        if problem is not None:
            raise ValueError(
                "--checkpoint-dir %s cannot be written (%s), and %s. Evaluating trained M and "
                "AT only reads them, so a read-only --checkpoint-dir works once they are "
                "trained in it; to train, pass a --checkpoint-dir you can write to (copy %s "
                "there to keep what it holds)" % (args.checkpoint_dir, problem, why,
                                                  args.checkpoint_dir))


def _eval_config(args):
    from evaluation.config import EvalConfig
    from defense.thresholds import check_target_fpr
    from models.classifier import get_architecture
    from models.train_classifier import TrainConfig

    weights = None if args.weights.lower() == "none" else args.weights.lower()
    if weights not in (None, "imagenet"):
        raise ValueError("--weights for --model M must be none or imagenet, got %r"
                         % args.weights)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValueError("--threshold must be in [0, 1], got %r" % args.threshold)
    if args.n_test is not None and args.n_test < 1:
        raise ValueError("--n-test must be >= 1, got %r" % args.n_test)
    with _option("--target-fpr", args.target_fpr):
        check_target_fpr(args.target_fpr)  # even with --threshold: a wrong value is a mistake
    with _option("--arch", args.arch):
        arch = get_architecture(args.arch)
    if not arch.min_size <= args.input_size <= MAX_INPUT_SIZE:
        raise ValueError("--input-size must be in [%d, %d] for --arch %s (the paper uses "
                         "150, the synthetic default 96), got %d"
                         % (arch.min_size, MAX_INPUT_SIZE, arch.name, args.input_size))
    if not 0 < args.at_eps <= 255:
        raise ValueError("--at-eps must be in (0, 255] (the 0-255 scale, e.g. 4), got %r"
                         % args.at_eps)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.lr, seed=args.seed)
    train.validate()
    from defense.threats import Threat
    threats = []
    for item in filter(None, (t.strip() for t in args.threat.split(","))):
        try:
            threat = Threat.parse(item)
        except ValueError as e:
            raise ValueError("--threat: %s" % e) from None
        if threat not in threats:
            threats.append(threat)
    if not threats:
        raise ValueError("--threat: give one or several of %s" % ", ".join(_threat_names()))
    if "transfer" in threats:
        if not args.k_transfer:
            raise ValueError("--threat transfer needs --k-transfer PATH: a K checkpoint trained "
                             "with another seed (`python main.py --model K --seed 1 "
                             "--k-log-dir logs/model_k_seed1`)")
        if not os.path.isfile(args.k_transfer):
            raise ValueError("--k-transfer %s: no such checkpoint file" % args.k_transfer)
    for flag, value, low in (("--adaptive-steps", args.adaptive_steps, 1),
                             ("--adaptive-restarts", args.adaptive_restarts, 1),
                             ("--adaptive-targets", args.adaptive_targets, 1),
                             ("--adaptive-batch", args.adaptive_batch, 1)):
        if value is not None and value < low:
            raise ValueError("%s must be an integer >= %d, got %d" % (flag, low, value))
    if args.distribute == "multi-worker":
        from models.distribute import check_tf_config
        check_tf_config(os.environ.get("TF_CONFIG"))
    vectors = parse_vectors(args.attacks)
    _check_l2_budgets(vectors, args.input_size)
    defenses = None
    if args.defenses is not None:
        from defense.defenses import parse_defenses
        with _option("--defenses", args.defenses):
            defenses = parse_defenses(args.defenses)
    return EvalConfig(
        class_set=args.classset, data_dir=args.data_dir,
        arch=arch.name, input_size=args.input_size, weights=weights,
        train=train, adv_train=args.adv_train, at_eps=args.at_eps, extractor=args.extractor,
        threshold=args.threshold, target_fpr=args.target_fpr, mode=args.mode,
        vectors=vectors, defenses=defenses,
        trajectory_table=args.trajectory_table, detection_set=args.detection_set,
        threats=tuple(threats), adaptive_steps=args.adaptive_steps,
        adaptive_restarts=args.adaptive_restarts, adaptive_targets=args.adaptive_targets,
        adaptive_gradient=args.adaptive_gradient, adaptive_batch=args.adaptive_batch,
        k_transfer=args.k_transfer,
        n_test=args.n_test,
        seed=args.seed,
        results_dir=args.results_dir, checkpoint_dir=args.checkpoint_dir,
        k_log_dir=args.k_log_dir, k_config=args.k_config, progress=not args.no_progress,
        distribute=args.distribute, shards=args.shards or 1)


def _k_missing(args) -> bool:
    """True when the extractor is left to the run (no --extractor) and no K is trained for
    --k-config in --k-log-dir."""
    if args.extractor is not None:
        return False
    from models.mrcnn import find_k_checkpoint
    from mrcnn_config import get_config
    try:
        find_k_checkpoint(args.k_log_dir, config=get_config(args.k_config))
    except FileNotFoundError:
        return True
    return False


def train_k_first(args, eval_cfg):
    """The default job evaluates the real system, K + M: without a trained K it trains one
    first, exactly as ``python main.py --model K`` would (from random weights, whatever M's
    --weights), and the evaluation then uses it.  The oracle (ground-truth parts) is only
    used when asked for (--extractor oracle), never in K's place."""
    import dataclasses
    from evaluation.model_k import run_model_k

    print("no trained K (--k-config %s) in %s: training it first, as `python main.py --model K` "
          "would (about 6 minutes on 2 CPU cores); UnMask is then evaluated with it. Pass "
          "--extractor oracle to evaluate with the ground-truth parts instead (the ceiling of "
          "a perfect K)" % (args.k_config, args.k_log_dir))
    run_model_k(args, weights="none")
    return dataclasses.replace(eval_cfg, extractor="k")


def run_model_m(cfg, line_search: bool = False) -> int:
    from evaluation.run import WorkerDone, run_evaluation

    if line_search:
        return _line_search(cfg)
    try:
        run_evaluation(cfg)
    except WorkerDone as done:          # a non-chief worker of --distribute multi-worker
        print(done)
    return 0


def _line_search(cfg) -> int:
    from defense.adversarial_training import line_search, line_search_path
    from evaluation.run import load_data

    data = load_data(cfg, print)
    out = line_search(cfg.arch, len(cfg.class_set.classes), cfg.input_size, data, cfg.m_dir,
                      cfg.train, cfg.vectors, progress=cfg.progress)
    print("best AT eps on validation: %g (recorded in %s); evaluate it with --adv-train "
          "--at-eps %g" % (out["best_eps"], line_search_path(cfg.m_dir), out["best_eps"]))
    return 0


def run_k(args) -> int:
    """``--model K``: train and/or evaluate K, then write its page beside its evaluation."""
    from evaluation.model_k import run_model_k

    code = run_model_k(args)
    from evaluation import k_page, writer
    if k_page.eval_file(args.k_results_dir, args.k_eval_split) is not None:
        writer.write_k_page(args.k_results_dir, args.k_eval_split)
    return code


def rebuild_report(path: str) -> int:
    """``--report RUN_DIR``: the page of a finished evaluation, grid or K evaluation, from its
    folder alone."""
    tfcompat.import_tf()
    from evaluation import k_page, writer

    writers = (("metrics.json", writer.write_page), ("grid.json", writer.write_grid_page))
    write = next((w for name, w in writers if os.path.isfile(os.path.join(path, name))), None)
    if write is None and os.path.isdir(path) and k_page.eval_file(path) is not None:
        write = writer.write_k_page
    try:
        if write is None:
            raise FileNotFoundError("%s is not the folder of a finished run: it holds no "
                                    "metrics.json (an evaluation), grid.json (a grid) or "
                                    "eval_<split>.json (K's evaluation)" % path)
        write(path)
    except (ValueError, FileNotFoundError) as e:
        print("error: --report: %s" % e, file=sys.stderr)
        return 2
    return 0


def _prepare(args) -> dict:
    return ensure_dataset(args.data_dir, seed=args.seed)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = [bool(args.prepare_data), bool(args.describe_classsets), args.model is not None,
                args.report is not None]
    if sum(commands) > 1:
        parser.error("give one command at a time: --prepare-data, --describe-classsets, "
                     "--report or --model")
    try:
        args.classset = get_class_set(args.classset)
    except ValueError as e:
        parser.error("--classset: %s" % e)
    if args.describe_classsets:
        print(describe_class_sets())
        return 0
    if args.report is not None:
        return rebuild_report(args.report)
    if not args.prepare_data and args.model is None:
        args.model = "M"  # the default job: evaluate UnMask on --classset (CS5b)
    try:
        if args.model:
            tfcompat.import_tf()  # quiet TensorFlow start-up before any package imports it
        # every name, number and folder is checked here, before any data is generated or read
        eval_cfg = _eval_config(args) if args.model == "M" else None
        grid = parse_grid(args)
        if args.model == "K":
            from evaluation.model_k import validate_options
            validate_options(vars(args))
        k_first = check_folders(args, eval_cfg, grid)
        manifest = _prepare(args)
        if args.prepare_data:
            print(summary(manifest))
            return 0
        if args.model == "K":
            return run_k(args)
        if k_first:
            eval_cfg = train_k_first(args, eval_cfg)
        if grid is not None:
            return run_grid(eval_cfg, grid[0], grid[1], args)
        return run_model_m(eval_cfg, args.at_line_search)
    except DatasetExistsError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
