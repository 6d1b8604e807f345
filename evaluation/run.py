"""One run of the defense comparison, for one (class set, architecture) -- the paper's Table
IV, Fig. 4, Fig. 5 and the comparison of every defense on the same images and attacks.

Steps (each resumable): load the class set's images; train or load M (and the AT model when
``at`` is among the defenses); fit every defense (UnMask: extractor and threshold on validation
images; PCA on training images; noise: its amplitude on validation images); run each attack
vector once per attacked model on the test images; ask every defense about the benign and the
attacked images; write ``results/<code>/<arch>/`` (:mod:`evaluation.report.writer`).

Threat models: gray-box (the paper's: an attack sees the classifier -- M, or the AT model for
AT -- never the defense around it) and the defense-aware ones (adaptive, transfer), run by the
adaptive engine; every result row names its threat model.

Caches in ``<out>/vectors/``: the attack records (:mod:`evaluation.store.attack_store`,
:mod:`evaluation.store.adaptive_store`) and the defenses' observations
(:mod:`evaluation.store.observations`), each with the fingerprint of what it depends on
(:mod:`evaluation.store.records`).  Adding a defense to a finished run computes only its
observations; no attack runs again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import tfcompat
from data.classset import load_split
from defense.adversarial_training import at_checkpoint_dir, train_adversarial
from defense.defenses import build_defense
from defense.extractors import OracleExtractor
from defense.base import GRAY_BOX
from defense.threats import DEFENSE_AWARE, Goal, Threat
from evaluation.comparison import Comparison
from evaluation.config import EvalConfig, record
from evaluation.model_k import find_robust_k, robust_extractor
from evaluation.report import trajectory_table, writer
from evaluation.report.answer import answer_text
from evaluation.results import comparisons, defense_results, defense_runs, table_iv_fields
from evaluation.schema import make_metrics
from evaluation.store import adaptive_plan
from evaluation.store.records import short_digest
from evaluation.units import Unit, forget_unit
from models.classifier import build_classifier, load_classifier_file
from models.distribute import is_chief, make_strategy
from models.progress import Eta
from models.train_classifier import accuracy, train_classifier
from mrcnn_config import get_config

tf, keras = tfcompat.import_tf()


def load_data(cfg: EvalConfig, log: Callable) -> Dict:
    """uint8 arrays and labels of the three splits (test limited to ``n_test``, balanced)."""
    splits = {s: load_split(cfg.data_dir, cfg.class_set, s) for s in ("train", "val", "test")}
    splits["test"] = splits["test"].subset(cfg.n_test, seed=cfg.seed)
    data = {"splits": splits}
    for name, split in splits.items():
        data["x_" + name] = split.arrays(cfg.input_size)
        data["y_" + name] = split.labels
    log("%s (%s): %d train, %d val, %d test images at %dx%d"
        % (cfg.class_set.paper_name, cfg.class_set.code_name, len(splits["train"]),
           len(splits["val"]), len(splits["test"]), cfg.input_size, cfg.input_size))
    return data


class WorkerDone(Exception):
    """Raised on a non-chief worker of a multi-worker run once training is done."""


def get_models(cfg: EvalConfig, data: Dict, log: Callable):
    """M (trained or loaded) and the AT model (or None)."""
    n = len(cfg.class_set.classes)
    strategy = make_strategy(cfg.distribute)
    if cfg.m_model is not None:
        m = _own_classifier(cfg, cfg.m_model, "model M", data, log)
    else:
        with (strategy.scope() if strategy is not None else contextlib.nullcontext()):
            m = build_classifier(cfg.arch, n, cfg.input_size, weights=cfg.weights,
                                 seed=cfg.seed)
        log("model M: %s -> %s%s" % (cfg.arch, cfg.m_dir, "" if strategy is None else
                                     " (%s, %d replicas)" % (cfg.distribute,
                                                             strategy.num_replicas_in_sync)))
        train_classifier(m, data["x_train"], data["y_train"], data["x_val"], data["y_val"],
                         cfg.m_dir, cfg.train, log=log, progress=cfg.progress,
                         strategy=strategy)
    at = None
    if cfg.at_model is not None:
        at = _own_classifier(cfg, cfg.at_model, "the AT model", data, log)
    elif cfg.adv_train:
        at = train_adversarial(cfg.arch, n, cfg.input_size, data,
                               at_checkpoint_dir(cfg.m_dir, cfg.at_eps), cfg.train,
                               eps=cfg.at_eps, log=log, progress=cfg.progress,
                               strategy=strategy)
    if strategy is not None:
        # the evaluation runs in this process alone (under multi-worker the other workers stop
        # below): plain copies, whose predictions wait on no other replica or worker.
        # Reading the mirrored weights is a collective, so every worker makes its copies.
        m = m if cfg.m_model is not None else _single_device_copy(cfg, m, n)
        at = at if at is None or cfg.at_model is not None else _single_device_copy(cfg, at, n)
    if not is_chief(strategy):
        raise WorkerDone("this worker's share of the training is done; the chief (worker 0) "
                         "evaluates and writes the results")
    return m, at


def _own_classifier(cfg: EvalConfig, path: str, role: str, data: Dict, log: Callable):
    """Your classifier file (--m-model, --at-model) as M or the AT model, checked
    (:func:`load_classifier_file`); its validation accuracy is logged, so a model of another
    class order shows at once."""
    m = load_classifier_file(path, len(cfg.class_set.classes), cfg.input_size)
    val = accuracy(m, data["x_val"], data["y_val"])
    log("%s: your classifier %s (sha1 %s), validation accuracy %.3f%s"
        % (role, path, short_digest(path), val,
           "" if val > 1.5 / len(cfg.class_set.classes) else
           " -- near chance: are its outputs in the class set's order (%s)?"
           % ", ".join(cfg.class_set.classes)))
    return m


def _single_device_copy(cfg: EvalConfig, model, n: int):
    """``model`` (trained under a tf.distribute strategy) rebuilt outside it with the same
    weights."""
    copy = build_classifier(cfg.arch, n, cfg.input_size, weights=None, seed=cfg.seed)
    copy.set_weights(model.get_weights())
    return copy


def make_extractors(cfg: EvalConfig, data: Dict, log: Callable):
    """(kind, extractor for validation images, extractor for test images)."""
    kind = cfg.extractor or _auto_extractor(cfg, log)
    if kind == "oracle":
        ex = {}
        for split in ("val", "test"):
            path = data["splits"][split].parts_file
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    "the oracle extractor needs the ground-truth parts file %s (the synthetic "
                    "data set writes it; real data has none): use --extractor k" % path)
            ex[split] = OracleExtractor.from_coco(path)
        log("extractor: ORACLE (ground-truth parts; the ceiling of a perfect K)")
        return kind, ex["val"], ex["test"]
    from models.mrcnn import PartExtractor  # imported only when K is used

    k = PartExtractor.from_checkpoint(cfg.k_weights, get_config(cfg.k_config),
                                      model_dir=cfg.k_log_dir)
    log("extractor: K (Mask R-CNN parts model %s)" % getattr(k, "checkpoint", cfg.k_weights))
    return kind, k, k


def _auto_extractor(cfg: EvalConfig, log: Callable) -> str:
    try:
        from models.mrcnn import find_k_checkpoint
        found = find_k_checkpoint(cfg.k_log_dir, config=get_config(cfg.k_config))
    except FileNotFoundError:
        found = None
    if found:
        return "k"
    log("no trained K found (train it with `python main.py --model K`): using the ORACLE "
        "extractor (ground-truth parts), the ceiling of UnMask with a perfect K")
    return "oracle"


def open_comparison(cfg: EvalConfig, log: Callable[[str], None] = print,
               labels: Optional[Sequence[str]] = None):
    """Data, models (trained or loaded), the :class:`Comparison` and the fitted defenses of a run
    (``labels``: the defenses to fit, default ``cfg.defenses``).

    Returns:
        ``(comparison, ctx, defenses, extractor_kind)``; ``extractor_kind["kind"]`` names the
        part extractor once an UnMask defense made it.
    """
    tf.random.set_seed(cfg.seed)
    defenses = [build_defense(label) for label in (cfg.defenses if labels is None
                                                   else labels)]
    if any(getattr(d, "k", None) == "robust" for d in defenses):
        # there, and of the robust kind (the surrogate too): before any work
        for path in filter(None, (cfg.k_robust, cfg.k_transfer_robust)):
            find_robust_k(path, cfg.k_robust_log_dir, cfg.k_config)
    data = load_data(cfg, log)
    m, at = get_models(cfg, data, log)
    models = {"m": m}
    if at is not None:
        models["at"] = at
    comparison = Comparison(cfg, data, models, log)
    extractor_kind = {}

    def extractors(k: str = "standard"):
        """Made once, shared by every UnMask variant of the run; ``k="robust"``: the robust
        K of ``unmask:k=robust`` (its own digest, so its observations are its own)."""
        if k == "robust":
            if "robust" not in extractor_kind:
                robust = robust_extractor(cfg.k_robust, cfg.k_robust_log_dir, cfg.k_config,
                                          log)
                extractor_kind["robust"] = ("k", robust, robust, short_digest(robust.checkpoint))
            return extractor_kind["robust"]
        if k != "standard":
            raise ValueError("FitContext.extractors: k must be 'standard' or 'robust', got %r"
                             % (k,))
        if "made" not in extractor_kind:
            kind, ex_val, ex_test = make_extractors(cfg, data, log)
            if kind == "k":
                k_ckpt = getattr(ex_test, "checkpoint", None)
                digest = short_digest(k_ckpt) if k_ckpt else None
            else:   # the oracle's answers are its parts files: a re-annotation recomputes
                digest = "+".join(short_digest(data["splits"][s].parts_file)
                                  for s in ("val", "test"))
            extractor_kind.update(kind=kind, made=(kind, ex_val, ex_test, digest))
        return extractor_kind["made"]

    ctx = comparison.fit_context(extractors)
    for d in defenses:
        d.fit(ctx)
        log("defense %s: %s" % (d.label, _short_params(d.params())))
    return comparison, ctx, defenses, extractor_kind


def run_defense(cfg: EvalConfig, label: str, log: Callable[[str], None] = print) -> List[str]:
    """One defense of a run on its own (a grid work unit): fit it, attack it (its adaptive
    attacks) and record its observations of the benign and attacked test images in the
    run's caches, which :func:`run_evaluation` then reuses.  Returns those files (written
    now or reused), sorted."""
    comparison, _, defenses, _ = open_comparison(cfg, log, [label])
    defense_results(comparison, defenses[0], list(cfg.vectors))
    return sorted(comparison.touched)


def run_adaptive_unit(cfg: EvalConfig, label: str, vector, threat: str, goal: str, batch: int,
                      log: Callable[[str], None] = print) -> str:
    """One image batch of one defense-aware attack (an adaptive work unit, e.g. on a Ray
    worker): fit the defense (its validation observations are the run's cached ones), attack
    the batch (resuming from its saved progress) and save it where the run's evaluation then
    reads it.  Returns the batch's file."""
    comparison, _, defenses, _ = open_comparison(cfg, log, [label])
    name, eps = vector
    store = comparison.adaptive_records
    threat, goal = Threat.parse(threat), Goal(goal)
    store.adaptive_batch(defenses[0], name, eps, threat, goal, int(batch))
    return store.batch_path(defenses[0], name, eps, threat, goal, int(batch))


def adaptive_units(comparison: Comparison, defenses, vectors,
                   log: Callable[[str], None] = print) -> List[Unit]:
    """The work units of a run's defense-aware attacks not yet recorded whole: one per image
    batch of each (defense, threat, goal, vector), the classes taking turns
    (:meth:`~evaluation.store.adaptive_store.AdaptiveStore.batch_order`).  A unit recorded
    done whose batch was made under another fingerprint (a changed recipe or code version)
    loses that record, so the workers make the batch again rather than this process at
    assembly."""
    cfg, store = comparison.cfg, comparison.adaptive_records
    units, stale = [], 0
    for d in defenses:
        for threat, goal, name, eps in defense_runs(comparison, d, vectors):
            if threat == GRAY_BOX:
                continue
            fp = store.record_fingerprint(d, name, eps, threat, goal)
            if store.has_record(d, name, eps, threat, goal, fp=fp):
                continue
            for i in store.batch_order():
                unit = Unit("adaptive", cfg.arch, cfg.class_set.code_name, (name, float(eps)),
                            defense=d.label, threat=str(threat), goal=str(goal), batch=i)
                if (os.path.isfile(store.batch_path(d, name, eps, threat, goal, i))
                        and not store.batch_current(d, name, eps, threat, goal, i, fp=fp)):
                    stale += forget_unit(cfg, unit)
                units.append(unit)
    if stale:
        log("adaptive attacks: %d unit(s) recorded done hold batches made under another "
            "fingerprint (configuration, batch size or code version): they run again" % stale)
    return units


def write_adaptive_plan(comparison: Comparison, defenses, vectors, executor=None) -> None:
    """``adaptive_plan.json`` in the run's folder, before any adaptive attack runs: what
    ``main.py --status RUN_DIR`` reads (:mod:`evaluation.store.adaptive_plan`)."""
    rows = [(d, threat, goal, name, eps) for d in defenses
            for threat, goal, name, eps in defense_runs(comparison, d, vectors)
            if threat != GRAY_BOX]
    adaptive_plan.write_plan(comparison.cfg.out_dir, comparison.adaptive_records, rows,
                             getattr(executor, "workers", 1))


def run_evaluation(cfg: EvalConfig, log: Callable[[str], None] = print,
                   executor=None) -> Dict:
    """Run the whole comparison; returns the metrics (also written to ``cfg.out_dir``).
    ``executor`` (e.g. :class:`evaluation.executors.RayExecutor`) runs the defense-aware
    attacks' image batches as work units first; the evaluation then reads their records."""
    start = time.time()
    comparison, ctx, defenses, extractor_kind = open_comparison(cfg, log)
    models = comparison.models
    vectors = list(cfg.vectors)
    eta = Eta(len(vectors) * len(models))
    for name, eps in vectors:                 # every defense's gray-box attacks, once
        for model in sorted(models):
            comparison.attacked(model, name, eps, "test")
            timing = eta.step()
            if cfg.progress:
                log("attacks: %d of %d done (%s)" % (eta.done, eta.total, timing))
    write_adaptive_plan(comparison, defenses, vectors, executor)
    if executor is not None:
        units = adaptive_units(comparison, defenses, vectors, log)
        if units:
            log("adaptive attacks: %d image batches as work units" % len(units))
            executor.map(cfg, units, log,
                         note=lambda: adaptive_plan.worst_case_note(cfg.out_dir))
    results = {d.label: defense_results(comparison, d, vectors) for d in defenses}
    paired = comparisons(results, vectors)
    benign, entries = table_iv_fields(comparison, results, vectors)
    um = results.get("unmask", {}).get("block", {}).get("params", {})
    kind = extractor_kind.get("kind") or ("k" if "robust" in extractor_kind else None)
    metrics = make_metrics(
        cfg.class_set.code_name, cfg.m_name, kind, um.get("threshold"),
        um.get("mode", cfg.mode), cfg.seed, benign, entries,
        defenses={label: r["block"] for label, r in results.items()},
        attack_info=comparison.attacks.info or None, detection_set=cfg.detection_set,
        adaptive_settings=_adaptive_settings(cfg), comparisons=paired)
    curves: Dict[str, List] = {}
    for r in results.values():
        for vector, curve in r["curves"].items():
            curves.setdefault(vector, []).append(curve)
    paths = writer.write_run_reports(cfg.out_dir, metrics, roc_curves=curves)
    paths["config"] = writer.write_config(cfg.out_dir, run_record(cfg, extractor_kind))
    if cfg.trajectory_table:
        table = trajectory_table.seed_table(ctx, comparison.images("test"), log)
        paths.update(writer.write_trajectory_table(cfg.out_dir, table))
        log(trajectory_table.table_markdown(table))
    for path in writer.remove_stale_reports(cfg.out_dir, paths.values()):
        log("removed %s: an earlier run's report that this run does not write" % path)
    paths["page"] = writer.write_run_page(cfg, log)     # last: it reads what the run wrote
    log("wrote %d files in %s (%.0f s; every table in summary.txt and bench.md)"
        % (len(paths), cfg.out_dir, time.time() - start))
    log(answer_text(metrics, page=paths["page"]))       # the run's last lines: the answer
    return metrics


def run_record(cfg: EvalConfig, extractor_kind: Dict) -> Dict:
    """``config.json`` of a finished run: its configuration with the extractor it chose and
    the K checkpoint it loaded (:func:`evaluation.config.record`), and the digests of every
    checkpoint it used."""
    k_ckpt = None
    if "robust" in extractor_kind:          # the robust K it loaded, not "last"
        cfg = dataclasses.replace(cfg, k_robust=extractor_kind["robust"][2].checkpoint)
    if "made" in extractor_kind:
        kind, _, ex_test, _ = extractor_kind["made"]
        k_ckpt = getattr(ex_test, "checkpoint", None) if kind == "k" else None
        cfg = dataclasses.replace(cfg, extractor=kind, **({"k_weights": k_ckpt}
                                                          if k_ckpt else {}))
    return record("evaluate", cfg, checkpoints={
        "m": cfg.m_checkpoint,
        "at": cfg.at_checkpoint if cfg.adv_train else None,
        "k": k_ckpt, "k_transfer": cfg.k_transfer,
        "k_robust": (extractor_kind["robust"][2].checkpoint if "robust" in extractor_kind
                     else None), "k_transfer_robust": cfg.k_transfer_robust})


def _adaptive_settings(cfg: EvalConfig) -> Optional[Dict]:
    """How the defense-aware attacks of a run were made (None when none was asked for)."""
    if not any(t in cfg.threats for t in DEFENSE_AWARE):
        return None
    return dict(dataclasses.asdict(cfg.engine_settings()),
                **dataclasses.asdict(cfg.adaptive_options()), batch=cfg.adaptive_batch,
                goals=None if cfg.adaptive_goals is None else list(cfg.adaptive_goals))


def _short_params(params: Dict) -> str:
    return ", ".join("%s=%s" % (k, v) for k, v in params.items() if k != "grid") or "-"

