"""The commands of ``main.py``, run from their :class:`~evaluation.options.Options`:
:func:`run` checks every value and folder before any work (a clear error naming the option
instead of a traceback after minutes of training), generates the data set when it is missing,
and runs the command -- describe the class sets, rebuild a page, rerun a recorded
configuration, train and evaluate K, or run M's comparison (one pair, or the grid).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tfcompat
from data.knowledge import describe_class_sets
from data.synthetic import DatasetExistsError, ensure_dataset, summary
from evaluation import model_k
from evaluation.config import EvalConfig, from_dict, read_record
from evaluation.options import CONFIG_OVERRIDES, Options, flag_of, k_defaults


def run(options: Options) -> int:
    """Run the command of ``options``; returns the process's exit code (2: a refused value,
    folder or data set, named on stderr)."""
    c = options.commands
    try:
        c.validate()
        options.data.validate()
    except ValueError as e:
        return _refused(e)
    if c.describe_classsets:
        print(describe_class_sets())
        return 0
    if c.report is not None:
        return rebuild_report(c.report, c.report_out)
    if c.status is not None:
        return print_status(c.status)
    model = c.model or (None if c.prepare_data else "M")  # the default job: --model M
    try:
        if model or c.config:
            tfcompat.import_tf()  # quiet TensorFlow start-up before any package imports it
        if c.config is not None:
            return rerun(options)
        # every name, number and folder is checked here, before any data is generated or read
        eval_cfg = EvalConfig.from_options(options) if model == "M" else None
        grid = options.grid.pairs(options.data, options.m, model)
        k = options.k_options()
        if model == "K":
            options.refuse_m_options_for_k()
            model_k.validate_options(k)
        k_first = check_folders(options.data.data_dir, model, eval_cfg, grid, k,
                                options.m.at_line_search)
        manifest = ensure_dataset(options.data.data_dir, seed=options.data.seed)
        if c.prepare_data:
            print(summary(manifest))
            return 0
        if model == "K":
            return run_k(k)
        if k_first:
            eval_cfg = train_k_first(k, eval_cfg)
        if grid is not None:
            return run_grid(eval_cfg, grid[0], grid[1], options.grid.workers,
                            options.grid.ray_address)
        return run_model_m(eval_cfg, options.m.at_line_search, workers=options.grid.workers,
                           address=options.grid.ray_address)
    except (DatasetExistsError, ValueError, FileNotFoundError) as e:
        return _refused(e)


def _refused(e: Exception) -> int:
    print("error: %s" % e, file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- M

def run_model_m(cfg: EvalConfig, line_search: bool = False, workers: Optional[int] = None,
                address: Optional[str] = None) -> int:
    """``--model M``: one run of the comparison (or, with ``line_search``, AT's eps search);
    with ``workers`` or ``address`` its defense-aware attacks run as Ray work units."""
    from evaluation.executors import make_executor
    from evaluation.run import WorkerDone, run_evaluation

    if line_search:
        return _line_search(cfg)
    executor = make_executor(workers, address) if workers or address else None
    try:
        run_evaluation(cfg, executor=executor)
    except WorkerDone as done:          # a non-chief worker of --distribute multi-worker
        print(done)
    finally:
        if hasattr(executor, "shutdown"):
            executor.shutdown()
    return 0


def _line_search(cfg: EvalConfig) -> int:
    from defense.adversarial_training import line_search, line_search_path
    from evaluation.run import load_data

    data = load_data(cfg, print)
    out = line_search(cfg.arch, len(cfg.class_set.classes), cfg.input_size, data, cfg.m_dir,
                      cfg.train, cfg.vectors, progress=cfg.progress)
    print("best AT eps on validation: %g (recorded in %s); evaluate it with --adv-train "
          "--at-eps %g" % (out["best_eps"], line_search_path(cfg.m_dir), out["best_eps"]))
    return 0


def run_grid(cfg: EvalConfig, archs: Sequence[str], class_sets: Sequence[str],
             workers: Optional[int] = None, address: Optional[str] = None) -> int:
    """``--grid``: every (architecture, class set) pair, on this process or a Ray cluster."""
    from evaluation.executors import make_executor
    from evaluation.grid import run_grid as grid

    executor = make_executor(workers, address)
    try:
        grid(cfg, archs, class_sets, executor)
    finally:
        if hasattr(executor, "shutdown"):
            executor.shutdown()
    return 0


def k_missing(cfg: EvalConfig) -> bool:
    """True when the extractor is left to the run (no --extractor) and no K is trained for
    --k-config in --k-log-dir."""
    if cfg.extractor is not None:
        return False
    from models.mrcnn import find_k_checkpoint
    from mrcnn_config import get_config
    try:
        find_k_checkpoint(cfg.k_log_dir, config=get_config(cfg.k_config))
    except FileNotFoundError:
        return True
    return False


def train_k_first(k: Dict[str, Any], cfg: EvalConfig) -> EvalConfig:
    """The default job evaluates the real system, K + M: without a trained K it trains one
    first, exactly as ``python main.py --model K`` would (from random weights, whatever M's
    --weights), and the evaluation then uses it.  The oracle (ground-truth parts) is only
    used when asked for (--extractor oracle), never in K's place."""
    print("no trained K (--k-config %s) in %s: training it first, as `python main.py --model K` "
          "would (about 6 minutes on 2 CPU cores); UnMask is then evaluated with it. Pass "
          "--extractor oracle to evaluate with the ground-truth parts instead (the ceiling of "
          "a perfect K)" % (k["k_config"], k["k_log_dir"]))
    # K's evaluation under attack (its robust mAP) is `--model K`'s report, not this job's:
    # skipped here, it would add minutes to the default job for figures M's run never reads
    model_k.run_model_k(dict(k, k_attack_eps="none"), weights="none")
    return dataclasses.replace(cfg, extractor="k")


# ----------------------------------------------------------------------------- K

def run_k(k: Dict[str, Any]) -> int:
    """``--model K``: train and/or evaluate K, then write its page beside its evaluation."""
    code = model_k.run_model_k(k)
    from evaluation.report import k_page, writer
    if k_page.eval_file(k["k_results_dir"], k["k_eval_split"]) is not None:
        writer.write_k_page(k["k_results_dir"], k["k_eval_split"])
    return code


# ----------------------------------------------------------------------------- pages

def print_status(path: str) -> int:
    """``--status RUN_DIR``: where the adaptive attacks of a run (finished, running or
    stopped) stand, read from its folder (:mod:`evaluation.store.adaptive_plan`)."""
    from evaluation.store.adaptive_plan import status_text

    try:
        print(status_text(path))
    except ValueError as e:
        print("error: --status: %s" % e, file=sys.stderr)
        return 2
    return 0


def rebuild_report(path: str, out: Optional[str] = None) -> int:
    """``--report RUN_DIR [--report-out FILE]``: the page of a finished evaluation, grid or K
    evaluation, from its folder alone, written beside it or to ``out``.  The place it goes is
    probed before anything is read or written."""
    from data.fileio import check_folder, write_problem

    tfcompat.import_tf()
    from evaluation.report import k_page, writer

    writers = (("metrics.json", writer.write_page), ("grid.json", writer.write_grid_page))
    write = next((w for name, w in writers if os.path.isfile(os.path.join(path, name))), None)
    if write is None and os.path.isdir(path) and k_page.eval_file(path) is not None:
        write = writer.write_k_page
    try:
        if write is None:
            raise FileNotFoundError("%s is not the folder of a finished run: it holds no "
                                    "metrics.json (an evaluation), grid.json (a grid) or "
                                    "eval_<split>.json (K's evaluation)" % path)
        if out is None:
            problem = write_problem(path, "--report")
            if problem is not None:
                raise ValueError("%s cannot be written (%s): the page goes there as "
                                 "report.html; give --report-out FILE to write it elsewhere"
                                 % (path, problem))
        else:
            if os.path.isdir(out):
                raise ValueError("--report-out %s is a folder; give the page's file name, e.g. "
                                 "%s" % (out, os.path.join(out, "report.html")))
            check_folder(os.path.dirname(os.path.abspath(out)), "--report-out")
        write(path, out=out)
    except (ValueError, FileNotFoundError) as e:
        print("error: --report: %s" % e, file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- --config

def rerun(options: Options) -> int:
    """``--config CONFIG_JSON``: the command a finished run recorded, with the settings it
    ran with (its folders replaced by those given on the command line)."""
    path = options.commands.config
    extra = [n for n in options.given if n not in ("config",) + CONFIG_OVERRIDES]
    if extra:
        raise ValueError("--config reruns the settings recorded in %s; give only %s with it, "
                         "not %s" % (path, ", ".join(flag_of(n) for n in CONFIG_OVERRIDES),
                                     ", ".join(flag_of(n) for n in extra)))
    rec = read_record(path)
    flat = options.flat()
    given = {n: flat[n] for n in options.given if n in CONFIG_OVERRIDES}
    if rec["command"] == "k":
        unknown = sorted(set(rec["options"]) - set(k_defaults()))
        if unknown:
            raise ValueError("--config %s: unknown setting(s) %s" % (path, ", ".join(unknown)))
        k = dict(k_defaults(), **rec["options"])
        k.update({n: v for n, v in given.items() if n in k})
        try:
            model_k.validate_options(k)
        except (ValueError, TypeError) as e:
            raise ValueError("--config %s: %s" % (path, e)) from None
        check_folders(k["data_dir"], "K", k=k)
        ensure_dataset(k["data_dir"], seed=k["seed"])
        return run_k(k)
    try:
        cfg = from_dict(rec["config"])
    except ValueError as e:
        raise ValueError("--config %s: %s" % (path, e)) from None
    cfg = dataclasses.replace(cfg, **{n: v for n, v in given.items()
                                      if n in ("data_dir", "results_dir", "checkpoint_dir",
                                               "k_log_dir")})
    if "no_progress" in given:
        cfg = dataclasses.replace(cfg, progress=not given["no_progress"])
    grid = (rec["archs"], rec["class_sets"]) if rec["command"] == "grid" else None
    cfg = check_recorded_models(rec, cfg, path, bool(given.get("allow_other_models")), grid)
    k = dict(k_defaults(), k_log_dir=cfg.k_log_dir, k_config=cfg.k_config)
    if check_folders(cfg.data_dir, "M", cfg, grid, k):
        cfg = train_k_first(k, cfg)
    ensure_dataset(cfg.data_dir, seed=cfg.seed)
    if grid is not None:
        return run_grid(cfg, grid[0], grid[1], given.get("workers"), given.get("ray_address"))
    return run_model_m(cfg, workers=given.get("workers"), address=given.get("ray_address"))


def loaded_models(cfg: EvalConfig, grid: Optional[Tuple[List[str], List[str]]] = None
                  ) -> Dict[str, str]:
    """The checkpoint files a run of ``cfg`` (a grid of ``grid``'s pairs) loads, by the name
    its config.json records them under; a K given as "last" is searched for when the run
    starts and is not listed."""
    if grid is not None:
        from evaluation.grid import model_files, pair_config
        return {"%s %s/%s" % (model, code, arch): path
                for arch in grid[0] for code in grid[1]
                for model, path in zip(("m", "at"), model_files(pair_config(cfg, arch, code)))}
    out = {"m": cfg.m_checkpoint}
    if cfg.adv_train:
        out["at"] = cfg.at_checkpoint
    for name, path in (("k", cfg.k_weights), ("k_robust", cfg.k_robust),
                       ("k_transfer", cfg.k_transfer),
                       ("k_transfer_robust", cfg.k_transfer_robust)):
        if path and path != "last":
            out[name] = path
    return out


def check_recorded_models(rec: Dict[str, Any], cfg: EvalConfig, path: str,
                          allow: bool = False,
                          grid: Optional[Tuple[List[str], List[str]]] = None) -> EvalConfig:
    """A rerun loads the models its run recorded: compare the sha1 of every checkpoint it
    will load -- wherever it loads it from (another --checkpoint-dir too) -- with the
    recorded one.  A different model is refused (ValueError naming it, its file and both
    sha1s) unless ``allow``, when the differences are kept in the run's configuration
    (``other_models``: its config.json and its page say so).  A recorded model that is not
    there is trained (or searched for) anew, with a note."""
    from evaluation.config import checkpoint

    recorded = rec.get("checkpoints", {})
    differ = []
    for name, file in loaded_models(cfg, grid).items():
        was = recorded.get(name)
        if was is None:
            continue
        now = checkpoint(file)
        if now is None and name in cfg.own_models():
            raise ValueError("--config %s: the run's classifier %s (sha1 %s, --%s-model) is "
                             "not there: restore that file (the run's records are keyed to it)"
                             % (path, file, was["sha1"], name))
        if now is None:
            print("note: %s's recorded checkpoint (sha1 %s) is not at %s: the rerun makes it "
                  "anew" % (name, was["sha1"], file))
        elif now["sha1"] != was["sha1"]:
            differ.append("%s: %s has sha1 %s, the run recorded %s (%s)"
                          % (name, file, now["sha1"], was["sha1"], was.get("path")))
    if differ and not allow:
        raise ValueError("--config %s: the rerun would load other models than the run "
                         "recorded -- %s; point the folders at the recorded models, or pass "
                         "--allow-other-models to run with these (the report says so)"
                         % (path, "; ".join(differ)))
    for line in differ:
        print("note: --allow-other-models: %s" % line)
    return dataclasses.replace(cfg, other_models=tuple(differ)) if differ else cfg


# ----------------------------------------------------------------------------- folders

def check_folders(data_dir: str, model: Optional[str], cfg: Optional[EvalConfig] = None,
                  grid: Optional[Tuple[List[str], List[str]]] = None,
                  k: Optional[Dict[str, Any]] = None, line_search: bool = False) -> bool:
    """Every folder the command will read or write, checked before any work.  A folder is
    probed for writing only where the command writes: trained models on a read-only share (M
    and AT in --checkpoint-dir, K in --k-log-dir) are evaluated from there, with every output
    in the results folders.  Returns whether ``--model M`` must train K first (no trained K
    and no --extractor)."""
    from data.fileio import check_folder

    _check_data_dir(data_dir)
    k_first = False
    if model == "M":
        check_folder(cfg.results_dir, "--results-dir")
        check_folder(cfg.checkpoint_dir, "--checkpoint-dir", write=False)
        check_folder(cfg.k_log_dir, "--k-log-dir", write=False)
        _check_checkpoint_dir(cfg.checkpoint_dir, _checkpoint_writes(cfg, grid, line_search))
        from models.classifier import load_classifier_file
        for name, path in cfg.own_models().items():
            try:
                load_classifier_file(path, len(cfg.class_set.classes), cfg.input_size)
            except ValueError as e:
                raise ValueError("--%s-model %s" % (name, e)) from None
        k_first = not line_search and k_missing(cfg)
        if k_first:
            check_folder(cfg.k_log_dir, "--k-log-dir", why="no K is trained there for "
                         "--k-config %s, so the run trains one there first" % cfg.k_config)
            check_folder(k["k_results_dir"], "--k-results-dir")
            if cfg.distribute == "multi-worker":
                raise ValueError("no trained K in --k-log-dir %s: train it first with "
                                 "`python main.py --model K` (on one host); --distribute "
                                 "multi-worker distributes M's training only" % cfg.k_log_dir)
    elif model == "K":
        check_folder(k["k_log_dir"], "--k-log-dir", write=False)
        why = model_k.log_dir_writes(k)
        if why is not None:
            check_folder(k["k_log_dir"], "--k-log-dir", why="%s (evaluating a K trained "
                         "there only reads it, so a read-only --k-log-dir works for that)" % why)
        check_folder(k["k_results_dir"], "--k-results-dir")
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


def _checkpoint_writes(cfg: EvalConfig, grid, line_search: bool = False) -> list:
    """``(folder, why)`` for each model folder under --checkpoint-dir the run writes in
    (None for a folder holding M or AT trained for the run's settings: it is only read)."""
    from defense.adversarial_training import at_checkpoint_dir
    from evaluation.grid import pair_config
    from models.train_classifier import training_writes

    if line_search:
        return [(cfg.m_dir, "--at-line-search trains AT for each eps beside M's folder "
                            "and records the search there")]
    cfgs = [cfg] if grid is None else [pair_config(cfg, a, c) for a in grid[0] for c in grid[1]]
    out = []
    for one in cfgs:
        folders = [] if one.m_model is not None else [("M", one.m_dir)]
        if one.adv_train and one.at_model is None:
            folders.append(("AT", at_checkpoint_dir(one.m_dir, one.at_eps)))
        for model, folder in folders:
            why = training_writes(folder, one.train)
            if why is not None:
                out.append((folder, "%s would be trained in %s (%s)" % (model, folder, why)))
    return out


def _check_checkpoint_dir(checkpoint_dir: str, writes) -> None:
    """--checkpoint-dir must be writable where ``writes`` says the run writes."""
    from data.fileio import write_problem

    for folder, why in writes:
        problem = write_problem(folder, "--checkpoint-dir")
        if problem is not None:
            raise ValueError(
                "--checkpoint-dir %s cannot be written (%s), and %s. Evaluating trained M and "
                "AT only reads them, so a read-only --checkpoint-dir works once they are "
                "trained in it; to train, pass a --checkpoint-dir you can write to (copy %s "
                "there to keep what it holds)" % (checkpoint_dir, problem, why, checkpoint_dir))
