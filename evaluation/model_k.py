"""K end to end -- ``main.py --model K``: train the part extractor in stages, evaluate it on a
split (COCO mAP, written with :mod:`evaluation.report.writer`), visualize its detections.

``run_model_k(args)`` takes an argparse namespace (or keyword arguments) with the options
listed in :data:`CLI_DEFAULTS`; ``train_model_k`` and ``evaluate_model_k`` are the plain
functions behind it.  M's counterpart is :mod:`evaluation.run`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from typing import Dict, Optional, Sequence, Union

from data.coco_parts import load_parts_dataset
from data.fileio import exclusive, write_json_atomic
from evaluation.options import (KOptions, check_count, check_learning_rate, check_positive,
                                k_defaults, parse_attack_eps, parse_stage_epochs)
from models.progress import Eta
from mrcnn_config import Config, config_key, get_config

DEFAULT_LOG_DIR = k_defaults()["k_log_dir"]
DEFAULT_DATA_DIR = k_defaults()["data_dir"]
DEFAULT_RESULTS_DIR = k_defaults()["k_results_dir"]
# Epochs per stage: heads, 4+, all, all at learning rate / 10 (matterport's stage order).
# The synthetic K trains from random weights, so its heads-only and 4+ stages (meant to adapt
# new heads to a *pretrained* backbone first) only train a part of a random network: it trains
# all layers from its first epoch.  Measured on the synthetic test split (seed 0, 2-core CPU):
# (1, 1, 20, 6) mask mAP@.5 .755 in 7.8 min, (0, 0, 20, 6) .760 in 6.8 min, (0, 0, 18, 6) .757
# in 6.0 min, (1, 1, 14, 8) .709; the lr/10 epochs all count (.736 / .748 / .760 after 4 / 5 /
# 6 of them in the (0, 0, 20, 6) run).
DEFAULT_EPOCHS = {"synthetic": (0, 0, 18, 6), "parts": (20, 10, 10, 0), "tiny": (1, 1, 1, 0)}
COCO_WEIGHTS = "mask_rcnn_coco.h5"
IMAGENET_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

#: Every option of ``--model K`` with its default (:class:`evaluation.options.KOptions`, the
#: data folder, the seeds, the initial weights and the progress display).
CLI_DEFAULTS = k_defaults()


def _training_seed(opts) -> int:
    """K's training seed (initial weights, data order, augmentation, ROI sampling):
    ``--k-seed`` when given, else ``--seed`` (which also names the synthetic data set)."""
    return int(opts["seed"] if opts.get("k_seed") is None else opts["k_seed"])


# ----------------------------------------------------------------------------- validation
# Every number is checked where it enters (argparse for main.py, validate_options for
# run_model_k, the entry functions for direct calls) before any data set is generated or read.

def validate_options(opts: Dict) -> None:
    """Check the options of ``--model K`` before any data is read (raises ValueError naming
    the flag -- the ranges are :class:`~evaluation.options.KOptions`' --, FileNotFoundError
    for initial weights that are not there)."""
    KOptions(**{f.name: opts.get(f.name, f.default)
                for f in dataclasses.fields(KOptions)}).validate()
    _check_initial_weights(opts)


def _check_initial_weights(opts: Dict) -> None:
    """The checkpoint ``--weights`` names (or ``--k-eval-only`` evaluates) must be there:
    FileNotFoundError before K is built, not after."""
    choice = str(opts.get("weights") or "none").strip()
    log_dir = opts.get("k_log_dir", DEFAULT_LOG_DIR)
    if choice.lower() == "coco":
        _find_weights_file(COCO_WEIGHTS, log_dir)
    elif choice.lower() == "imagenet":
        _find_weights_file(IMAGENET_WEIGHTS, log_dir)
    elif choice.lower() == "last" or choice.lower() == "none" and opts.get("k_eval_only"):
        from models.mrcnn.model import find_last_checkpoint
        cfg = _k_config(opts)
        find_last_checkpoint(log_dir, cfg.NAME, cfg)    # FileNotFoundError: how to train one
    elif choice.lower() != "none" and not os.path.isfile(choice):
        raise FileNotFoundError("--weights %s: no such file; give none, last, coco, imagenet "
                                "or the path of a K checkpoint (.h5)" % choice)


def log_dir_writes(args=None, **kwargs) -> Optional[str]:
    """Why ``run_model_k`` would write in ``--k-log-dir`` (K's training), or None when it
    only evaluates the K trained there (a read-only folder then works)."""
    opts = _options(args)
    opts.update({k: v for k, v in kwargs.items() if v is not None})
    weights = str(opts["weights"]).strip().lower()
    if opts["k_eval_only"] or _already_trained(opts, _k_config(opts)):
        return None
    if opts["k_retrain"]:
        return "--k-retrain trains K again there"
    if weights == "last":
        return "--weights last resumes K's training there"
    if weights != "none":
        return "--weights %s starts K's training there" % opts["weights"]
    return "no K is trained there for --k-config %s yet, so it is trained there" % (
        opts["k_config"])


def resolve_config(config: Union[str, Config, None], **overrides) -> Config:
    """A ``Config`` from a name ("synthetic", "parts", "tiny") or an instance."""
    if config is None:
        config = "synthetic"
    if isinstance(config, Config):
        return config.replace(**overrides) if overrides else config
    return get_config(config, **overrides)


def _config_key(config: Config) -> str:
    """--k-config name of ``config`` ("parts" for an unrelated Config sub-class)."""
    return config_key(config) or "parts"


def parse_epochs(epochs, config: Config) -> tuple:
    """Per-stage epochs ``(heads, 4+, all, all_low_lr)`` from a tuple or "1,1,10,3" (None:
    the configuration's, :data:`DEFAULT_EPOCHS`)."""
    if epochs is None:
        return DEFAULT_EPOCHS[_config_key(config)]
    return parse_stage_epochs(epochs)


def check_class_count(cfg, dataset, data_dir: str) -> None:
    """Refuse a K configuration whose class count is not the data's (background + the
    annotation file's categories) before any model is built."""
    n = int(getattr(dataset, "num_classes", cfg.NUM_CLASSES))
    if n != int(cfg.NUM_CLASSES):
        raise ValueError("the K configuration %s has NUM_CLASSES=%d, but the part annotations "
                         "in %s have %d classes (background + %d categories): choose the "
                         "--k-config made for this data (synthetic or parts), or fix the "
                         "annotations' category list" % (type(cfg).__name__, cfg.NUM_CLASSES,
                                                         data_dir, n, n - 1))


def _find_weights_file(name: str, log_dir: str) -> str:
    for folder in (log_dir, os.path.dirname(os.path.abspath(log_dir)), "."):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError("%s not found in %s or the working directory; this project never "
                            "downloads weights: place the file there or pass --weights PATH"
                            % (name, log_dir))


def load_initial_weights(model, weights: str, log_dir: str) -> str:
    """Apply ``--weights`` (last|coco|imagenet|PATH|none) to a model; returns what was loaded.

    ``coco`` excludes the class-specific heads (as the original K did); a missing file raises
    FileNotFoundError naming it (``last``: with the command that creates a checkpoint).
    """
    from models.mrcnn.model import HEAD_LAYERS
    choice = (weights or "none").strip()
    if choice.lower() == "none":
        return "none"
    if choice.lower() == "last":
        path = model.find_last()
        model.load_weights(path, by_name=True)
    elif choice.lower() == "coco":
        path = _find_weights_file(COCO_WEIGHTS, log_dir)
        model.load_weights(path, by_name=True, exclude=HEAD_LAYERS)
    elif choice.lower() == "imagenet":
        path = _find_weights_file(IMAGENET_WEIGHTS, log_dir)
        model.load_weights(path, by_name=True)
    else:
        if not os.path.isfile(choice):
            raise FileNotFoundError("--weights %s: file not found (use last|coco|imagenet|none "
                                    "or a path to a .h5 file)" % choice)
        path = choice
        model.load_weights(path, by_name=True)
    return path


def adversarial_settings(opts) -> Optional["KAdversarialSettings"]:  # noqa: F821
    """The robust-K attack of K's options (``adv_train`` with ``k_adv_eps``, ``k_adv_steps``,
    ``k_adv_mix``), or None for a standard K."""
    if not opts.get("adv_train"):
        return None
    from models.mrcnn.adversarial import KAdversarialSettings
    return KAdversarialSettings(eps=float(opts["k_adv_eps"]), steps=int(opts["k_adv_steps"]),
                                mix=float(opts["k_adv_mix"]))


def _k_config(opts) -> Config:
    """The K configuration of K's options: ``--k-config``, robust with ``--adv-train``."""
    return robust_config(resolve_config(opts.get("k_config")), adversarial_settings(opts))


def robust_config(cfg: Config, adversarial) -> Config:
    """``cfg`` for a robust K trained with ``adversarial`` (``ADV_TRAIN`` set, ``NAME`` +
    ``_robust``); ``cfg`` itself for a standard K (``adversarial`` None)."""
    if adversarial is None:
        return cfg
    name = cfg.NAME if getattr(cfg, "ADV_TRAIN", None) else "%s_robust" % cfg.NAME
    return cfg.replace(ADV_TRAIN=adversarial.to_dict(), NAME=name)


def find_robust_k(path: str, log_dir: str, k_config: str) -> str:
    """A robust K's checkpoint: ``path`` (a file, refused when its run records a standard K)
    or, for ``"last"``, the newest robust K of ``k_config`` under ``log_dir``.

    Raises:
        FileNotFoundError: no robust K there (with the command that trains one).
        ValueError: ``path`` is a standard K.
    """
    from models.mrcnn.adversarial import KAdversarialSettings
    from models.mrcnn.model import resolve_checkpoint
    wanted = robust_config(resolve_config(k_config), KAdversarialSettings())
    try:
        return resolve_checkpoint(path, log_dir, wanted.NAME, wanted)
    except FileNotFoundError:
        if path != "last":
            raise
        raise FileNotFoundError("unmask:k=robust needs a robust K: none under %s (train it "
                                "with `python main.py --model K --adv-train`, or pass "
                                "--k-robust PATH)" % log_dir) from None


def robust_extractor(path: str, log_dir: str, k_config: str, log=print):
    """The robust K of :func:`find_robust_k` as a part extractor, built with the attack it
    was trained against (its run's recorded ``ADV_TRAIN``)."""
    from data.fileio import read_json
    from models.mrcnn import PartExtractor
    from models.mrcnn.adversarial import KAdversarialSettings
    from models.mrcnn.model import RUN_CONFIG_FILE
    path = find_robust_k(path, log_dir, k_config)
    recorded = os.path.join(os.path.dirname(os.path.abspath(path)), RUN_CONFIG_FILE)
    settings = (KAdversarialSettings.from_dict(read_json(recorded)["ADV_TRAIN"])
                if os.path.isfile(recorded) else KAdversarialSettings())
    k = PartExtractor.from_checkpoint(path, robust_config(resolve_config(k_config), settings),
                                      model_dir=log_dir)
    log("robust extractor: K adversarially trained (%s) %s"
        % (", ".join("%s=%s" % kv for kv in settings.to_dict().items()), path))
    return k


def train_model_k(data_dir: str = DEFAULT_DATA_DIR, config: Union[str, Config] = "synthetic",
                  weights: str = "none", epochs=None, log_dir: str = DEFAULT_LOG_DIR,
                  learning_rate: Optional[float] = None, steps_per_epoch: Optional[int] = None,
                  seed: int = 0, max_minutes: Optional[float] = None, progress: bool = True,
                  train_dataset=None, val_dataset=None, adversarial=None) -> Dict:
    """Train K in matterport's stages (heads -> 4+ -> all [-> all at lr/10]).

    With ``adversarial`` (a :class:`models.mrcnn.adversarial.KAdversarialSettings`) a robust
    K: every step's batch has a share of its images replaced by PGD examples of K's own
    training losses; the configuration records the attack (``ADV_TRAIN``) and is named
    ``<NAME>_robust``, so its checkpoints are ``mask_rcnn_<name>_robust_<epoch>.h5`` and no
    search for a standard K finds them (:func:`robust_config`).

    Epoch counts are per stage; the stages continue from a resumed checkpoint's epoch.
    Every stage uses the configuration's augmentation (:func:`data_gen.default_augmentation`:
    left-right flips with probability ``TRAIN_HFLIP_PROB``, 0.5 for "parts" as the original
    K, none for "synthetic"), drawn from the generator seeded by ``seed``.
    Checkpoints go to ``<log_dir>/<name><timestamp>/mask_rcnn_<name>_<epoch>.h5``.

    Returns:
        dict with ``checkpoint`` (last written), ``history`` (per epoch), ``log_dir``,
        ``seconds`` and ``weights`` (what initialised the model).
    Raises:
        ValueError: a learning rate that is not finite, <= 0 or > MAX_LEARNING_RATE, steps
        < 1 or a time limit <= 0 (named by their flag), before any data is read.
    """
    steps_per_epoch = check_count("--k-steps", steps_per_epoch, 1, "steps per epoch")
    max_minutes = check_positive("--k-max-minutes", max_minutes, what="training time limit")
    learning_rate = check_learning_rate(learning_rate)
    import tfcompat  # noqa: F401
    from models.mrcnn.data_gen import default_augmentation
    from models.mrcnn.model import MaskRCNN
    cfg = robust_config(resolve_config(config), adversarial)
    augmentation = default_augmentation(cfg)
    stages = parse_epochs(epochs, cfg)
    lr = learning_rate if learning_rate is not None else check_learning_rate(
        cfg.LEARNING_RATE, "%s.LEARNING_RATE" % type(cfg).__name__)
    train_ds = train_dataset or load_parts_dataset(data_dir, "train")
    val_ds = val_dataset if val_dataset is not None else _maybe_dataset(data_dir, "val")
    check_class_count(cfg, train_ds, data_dir)
    if val_ds is not None:      # the validation set read from data_dir must match too
        check_class_count(cfg, val_ds, data_dir)
    model = MaskRCNN("training", cfg, log_dir, seed=seed)
    start = time.time()
    history = []
    try:
        if adversarial is not None:
            from models.mrcnn.adversarial import KAdversary
            model.trainer.adversary = KAdversary(model, adversarial)
        loaded = load_initial_weights(model, weights, log_dir)
        plan = [("heads", stages[0], lr), ("4+", stages[1], lr), ("all", stages[2], lr),
                ("all", stages[3], lr / 10.0)]
        eta = Eta(sum(n for _, n, _ in plan), done=min(model.epoch, sum(stages)))

        def on_epoch(rec):
            if not progress:
                return
            print("K epoch %d/%d (%s): loss %.3f%s (%s)" % (
                rec["epoch"], eta.total, rec["layers"], rec["loss"],
                ", val loss %.3f" % rec["val_loss"] if "val_loss" in rec else "", eta.step()))
        target = 0
        for layers, n, stage_lr in plan:
            target += n
            if n == 0 or model.epoch >= target:
                continue
            budget = None
            if max_minutes is not None:
                budget = max_minutes * 60 - (time.time() - start)
                if budget <= 0:
                    break
            history += model.train(train_ds, val_ds, stage_lr, target, layers,
                                   augmentation=augmentation, seed=seed,
                                   progress=progress, max_seconds=budget,
                                   steps_per_epoch=steps_per_epoch, on_epoch=on_epoch,
                                   total_epochs=eta.total)
        result = {"checkpoint": history[-1]["checkpoint"] if history else None,
                  "history": history, "log_dir": model.log_dir, "weights": loaded,
                  "augmentation": repr(augmentation) if augmentation else "none",
                  "seconds": time.time() - start, "config": cfg.to_dict()}
        if history:
            write_json_atomic(os.path.join(model.log_dir, "train_summary.json"), result, indent=1)
        return result
    finally:
        model.close()


def _maybe_dataset(data_dir: str, split: str):
    try:
        return load_parts_dataset(data_dir, split)
    except FileNotFoundError:
        return None


def evaluate_model_k(data_dir: str = DEFAULT_DATA_DIR, config: Union[str, Config] = "synthetic",
                     checkpoint: str = "last", split: str = "test",
                     log_dir: str = DEFAULT_LOG_DIR, limit: Optional[int] = None,
                     visualize: bool = False, results_dir: str = DEFAULT_RESULTS_DIR,
                     batch_size: Optional[int] = None, dataset=None,
                     class_names: Optional[Sequence[str]] = None,
                     attack_eps: Sequence[float] = (), attack_steps: int = 10,
                     seed: int = 0) -> Dict:
    """COCO bbox/segm mAP@[.5:.95], mAP@.5, matterport mAP@.5, part-set F1 and images/s on a
    split; with ``attack_eps`` (0-255 scale, e.g. ``(4, 8)``) the same numbers again on the
    split's images attacked by PGD (``attack_steps`` steps, seeded by ``seed``) on K's own
    training losses, under ``metrics["under_attack"]["<eps>"]``
    (:mod:`models.mrcnn.robustness`).

    ``checkpoint="last"`` takes the newest checkpoint under ``log_dir`` trained with the same
    architecture as ``config`` (runs recorded with other weight shapes are skipped).

    Writes ``<results_dir>/eval_<split>.json`` and, with ``visualize``, PNGs of detected parts
    under ``<results_dir>/visualize_<split>/``.
    """
    limit = check_count("--k-eval-limit", limit, 1, "images to evaluate")
    batch_size = check_count("--k-batch", batch_size, 1, "inference batch size")
    import tfcompat  # noqa: F401
    from models.mrcnn.evaluate import evaluate_dataset
    from models.mrcnn.model import MaskRCNN, resolve_checkpoint
    base = resolve_config(config)
    cfg = resolve_config(base, DETECTION_MIN_CONFIDENCE=0,
                         IMAGES_PER_GPU=int(batch_size or base.IMAGES_PER_GPU), GPU_COUNT=1)
    ds = dataset if dataset is not None else load_parts_dataset(data_dir, split)
    if attack_eps:      # the attack's losses need the annotations in K's own classes
        check_class_count(cfg, ds, data_dir)
    names = class_names or getattr(ds, "class_names", None)
    path = resolve_checkpoint(checkpoint, log_dir, cfg.NAME, cfg)
    model = MaskRCNN("inference", cfg, log_dir)
    try:
        model.load_weights(path, by_name=True)
        vis_dir = os.path.join(results_dir, "visualize_%s" % split) if visualize else None
        metrics = evaluate_dataset(model, ds, limit=limit, visualize_dir=vis_dir,
                                   class_names=names)
        if attack_eps:
            metrics["under_attack"] = _under_attack(model, base, path, ds, limit, names,
                                                    attack_eps, attack_steps, seed, log_dir)
    finally:
        model.close()
    metrics.update({"checkpoint": path, "split": split, "batch_size": cfg.BATCH_SIZE,
                    "data_dir": data_dir, "k_config": _config_key(base),
                    # None: a standard K; else the attack a robust K was trained against
                    "adv_train": getattr(cfg, "ADV_TRAIN", None)})
    from evaluation.report.writer import write_k_eval
    write_k_eval(results_dir, split, metrics)
    return metrics


def _under_attack(model, base: Config, path: str, ds, limit, names, attack_eps, steps: int,
                  seed: int, log_dir: str) -> Dict:
    """:func:`models.mrcnn.robustness.evaluate_under_attack` of the inference ``model``
    through a training-mode copy of the same weights (batch norm on its moving statistics)."""
    from models.mrcnn.model import MaskRCNN
    from models.mrcnn.robustness import evaluate_under_attack
    steps = check_count("--k-attack-steps", steps, 1, "PGD steps")
    ids = list(ds.image_ids)[:int(limit)] if limit else list(ds.image_ids)
    train_cfg = resolve_config(base, TRAIN_BN=False, GPU_COUNT=1)
    out = {}
    for eps in attack_eps:
        # a fresh copy per budget: the training graph samples its ROIs with seeded random
        # ops, so each budget's numbers do not depend on which budgets ran before it
        attacker = MaskRCNN("training", train_cfg, log_dir, seed=seed)
        try:
            attacker.load_weights(path, by_name=True)
            out.update(evaluate_under_attack(model, attacker, ds, ids, (eps,), steps, seed,
                                             names))
        finally:
            attacker.close()
    return out


def format_metrics(m: Dict) -> str:
    """One-paragraph summary of :func:`evaluate_model_k` output."""
    return ("K on %s (%d images, %s): mask mAP@[.5:.95] %.3f, mask mAP@.5 %.3f | box "
            "mAP@[.5:.95] %.3f, box mAP@.5 %.3f | matterport mAP@.5 %.3f | %.1f images/s"
            % (m["split"], m["images"], os.path.basename(str(m["checkpoint"])),
               m["segm"]["mAP"], m["segm"]["mAP50"], m["bbox"]["mAP"], m["bbox"]["mAP50"],
               m["matterport_mAP50"], m["images_per_second"])
            + "".join(" | under PGD eps %s/255 on K's losses: mask mAP@.5 %.3f, part-set F1 %.3f"
                      % (eps, a["segm"]["mAP50"], a["part_sets"]["f1_micro"])
                      for eps, a in m.get("under_attack", {}).items()))


def _options(args) -> Dict:
    if args is None:
        args = {}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    opts = dict(CLI_DEFAULTS)
    opts.update({k: v for k, v in args.items() if k in CLI_DEFAULTS and v is not None})
    return opts


def _last_checkpoint(opts: Dict, cfg: Config) -> Optional[str]:
    from models.mrcnn.model import find_last_checkpoint
    try:
        return find_last_checkpoint(opts["k_log_dir"], cfg.NAME, cfg)
    except FileNotFoundError:
        return None


def _already_trained(opts: Dict, cfg: Config) -> bool:
    """A plain second ``--model K`` evaluates: true when a checkpoint exists and neither
    --k-retrain, --k-eval-only nor explicit initial --weights asked for something else."""
    if opts["k_retrain"] or opts["k_eval_only"] or str(opts["weights"]).lower() != "none":
        return False
    return _last_checkpoint(opts, cfg) is not None


def _train_unless_trained(opts: Dict, cfg, adversarial) -> Dict:
    """K's training (``{"train": ...}``), or nothing when K is trained already (then
    ``opts["k_eval_only"]`` is set)."""
    if _already_trained(opts, cfg):
        print("K is already trained (%s): evaluating it. Pass --k-retrain to train again, or "
              "--weights last to resume training." % _last_checkpoint(opts, cfg))
        opts["k_eval_only"] = True
        return {}
    train = train_model_k(
        opts["data_dir"], cfg, opts["weights"], opts["k_epochs"], opts["k_log_dir"],
        opts["k_lr"], opts["k_steps"], _training_seed(opts), opts["k_max_minutes"],
        progress=not opts["no_progress"], adversarial=adversarial)
    print("K trained in %.1f min; last checkpoint %s" % (train["seconds"] / 60,
                                                         train["checkpoint"]))
    return {"train": train}


def run_model_k_report(args=None, **kwargs) -> Dict:
    """``main.py --model K``: (generate data if needed,) train, evaluate on the test split.

    Args:
        args: argparse namespace or dict with the keys of :data:`CLI_DEFAULTS`; kwargs
            override it.
    Returns:
        ``{"train": ..., "eval": ...}`` (``train`` absent with ``k_eval_only``).
    """
    opts = _options(args)
    opts.update({k: v for k, v in kwargs.items() if v is not None})
    validate_options(opts)  # before any data set is generated or any model built
    from data.synthetic import ensure_dataset
    ensure_dataset(opts["data_dir"], seed=int(opts["seed"]))
    adversarial = adversarial_settings(opts)
    cfg = _k_config(opts)
    out = {}
    if not opts["k_eval_only"]:
        # one writer per log folder: a second K trained there at the same time waits, then
        # finds the first one's K trained
        lock = (exclusive(opts["k_log_dir"].rstrip(os.sep) + ".lock",
                          "K's log folder %s" % opts["k_log_dir"])
                if log_dir_writes(opts) is not None else contextlib.nullcontext())
        with lock:
            out.update(_train_unless_trained(opts, cfg, adversarial))
    checkpoint = "last"
    if opts["k_eval_only"] and opts["weights"] not in ("none", "last", "coco", "imagenet"):
        checkpoint = opts["weights"]
    out["eval"] = evaluate_model_k(opts["data_dir"], cfg, checkpoint, opts["k_eval_split"],
                                   opts["k_log_dir"], opts["k_eval_limit"], opts["visualize"],
                                   opts["k_results_dir"], opts["k_batch"],
                                   attack_eps=parse_attack_eps(opts["k_attack_eps"]),
                                   attack_steps=opts["k_attack_steps"],
                                   seed=_training_seed(opts))
    print(format_metrics(out["eval"]))
    if "checkpoint" in out["eval"]:         # beside eval_<split>.json: what K ran with
        from evaluation.config import record
        from evaluation.report.writer import write_config
        write_config(opts["k_results_dir"], record("k", options=opts, defaults=sorted(
            k for k, v in opts.items() if CLI_DEFAULTS.get(k) == v),
            checkpoints={"k": out["eval"]["checkpoint"]}))
    return out


def run_model_k(args=None, **kwargs) -> int:
    """Process entry point for ``main.py --model K``; returns the exit code (0).

    See :func:`run_model_k_report` (which returns the metrics) for the options.
    """
    run_model_k_report(args, **kwargs)
    return 0
