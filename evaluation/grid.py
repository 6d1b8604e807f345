"""The paper's grid -- architectures x class sets (Table IV) -- as independent work units.

``run_grid(base, archs, class_sets, executor)`` evaluates every (architecture, class set)
pair with the settings of ``base`` (an :class:`~evaluation.config.EvalConfig`) and writes,
under ``<results_dir>/grid/``, one Table IV with a row per pair (``table_iv.md``), one bench
table across them (``bench.csv`` / ``bench.md``), one Fig. 4 across them (``fig4.png/.pdf``),
``grid.json`` (the per-pair ``metrics.json`` files, merged), ``config.json`` (the grid's
configuration: ``main.py --config`` reruns it) and ``report.html`` (all of it on one page,
linking each pair's own page).

Work units, in four stages (a stage starts when the one before is done):

1. ``train``: M (and AT) of one pair;
2. ``attack``: one attack vector on one pair's test images -- or, with ``shards > 1``, on one
   image shard of them (shards are cut at attack-batch boundaries and every batch keeps its
   seed, so the merged shards equal the unsharded record; universal attacks stay one unit);
3. ``defense``: one defense of one pair: its fit, its adaptive attacks and its observations
   of the benign and attacked images (the records the evaluation reuses);
4. ``evaluate``: the pair's defenses on those records, which writes its ``metrics.json``
   (merging the attack shards by image id first).

Each unit is a pure function of its configuration -- every seed is the run's ``--seed``, the
attack batches are seeded by their index -- and records its completion in
``grid/units/<unit>.json`` (written atomically, with the digests of the files it produced, of
the pair's whole configuration, of its image listing and of the trained models it used) only
after its outputs are written; a unit whose record is there, for the same configuration, data
and models and with its files unchanged, is skipped (another
``--epochs`` or attack list makes every unit of the grid stale; another number of shards only
adds the new shard units).  A unit killed halfway leaves no record and runs again; one that
ran twice (a retried worker) wrote the same contents twice.  The merge reads the per-pair
files sorted by (architecture, class set), so a grid run by any number of workers, in any
order, with any number of shards, gives the same ``grid.json`` as one run in-process.

The units of a stage run on an executor (:mod:`evaluation.executors`): in this process, or
on a Ray cluster.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Dict, List, Sequence, Tuple

from data.fileio import file_digest, read_cached_json, write_json_atomic
from evaluation import run as ev
from evaluation.comparison import Comparison
from evaluation.config import record
from evaluation.report import writer
from evaluation.schema import validate_metrics
from evaluation.units import Unit, pair_config, unit_record_path  # noqa: F401 (re-exported)

#: 4: ``none`` and ``at`` have adaptive rows (their white-box attack run by the engine): a
#: pair finished before is assembled again from its records.
UNIT_VERSION = 4


def plan(base, archs: Sequence[str], class_sets: Sequence[str]) -> List[List[Unit]]:
    """The units of the grid in their four stages (pairs sorted, vectors and defenses in
    ``base``'s order, ``base.shards`` shards per per-image attack vector)."""
    from attacks import get_attack

    pairs = [(a, c) for a in sorted(archs) for c in sorted(class_sets)]
    attacks = []
    for a, c in pairs:
        for v in base.vectors:
            if base.shards == 1 or get_attack(v[0]).universal:
                attacks.append(Unit("attack", a, c, tuple(v)))
            else:
                attacks += [Unit("attack", a, c, tuple(v), (i, base.shards))
                            for i in range(base.shards)]
    return [[Unit("train", a, c) for a, c in pairs], attacks,
            [Unit("defense", a, c, defense=d) for a, c in pairs for d in base.defenses],
            [Unit("evaluate", a, c) for a, c in pairs]]


def config_fingerprint(base, unit: Unit) -> str:
    """Digest of everything the unit's result depends on: the pair's whole configuration
    (all but the progress display) and the unit itself."""
    cfg = dataclasses.asdict(pair_config(base, unit.arch, unit.class_set))
    cfg.pop("progress", None)
    cfg.pop("shards", None)        # the shards' merged records are the unsharded ones
    # how, not what: the records of the other settings are the same
    for name in ("adaptive_slots", "adaptive_save_seconds", "adaptive_batch", "other_models"):
        cfg.pop(name, None)
    # an adaptive unit is one goal's batch whatever the others are; every goal (None): the
    # fingerprint of the records made before the setting existed
    if unit.kind == "adaptive" or cfg.get("adaptive_goals") is None:
        cfg.pop("adaptive_goals", None)
    for name in ("m_model", "at_model"):   # trained by the run: as before the options existed
        if cfg.get(name) is None:
            cfg.pop(name, None)
    text = json.dumps({"config": cfg, "unit": dataclasses.asdict(unit)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_stamp(cfg) -> str:
    """Digest of the listing (path, size, modification time) of the pair's class-set images:
    replaced or added images make every unit of the pair stale.  (The images themselves are
    digested where they are used -- M's training state, the attack records -- this is the
    cheap check the grid can make for every unit.)"""
    root = os.path.join(cfg.data_dir, cfg.class_set.code_name)
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            h.update(("%s %d %d\n" % (os.path.relpath(os.path.join(folder, name), root),
                                       st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def model_files(cfg) -> List[str]:
    """The pair's trained models: M's best weights (and AT's with adversarial training)."""
    files = [cfg.m_checkpoint]
    if cfg.adv_train:
        files.append(cfg.at_checkpoint)
    return files


def unit_inputs(base, unit: Unit) -> Dict[str, str]:
    """What a unit's result depends on beyond its configuration: the data listing and, for
    every unit after training, the digests of the trained models it used."""
    cfg = pair_config(base, unit.arch, unit.class_set)
    inputs = {"data": data_stamp(cfg)}
    if unit.kind != "train":
        for path in model_files(cfg):
            inputs[path] = file_digest(path) if os.path.isfile(path) else None
    return inputs


def unit_done(base, unit: Unit) -> bool:
    """True when the unit's record is there, made with this configuration from the same data
    and models, and its outputs still hold what the unit wrote."""
    rec = read_cached_json(unit_record_path(base, unit), log=lambda s: None)
    if not isinstance(rec, dict) or rec.get("version") != UNIT_VERSION:
        return False
    if rec.get("config") != config_fingerprint(base, unit):
        return False
    if rec.get("inputs") != unit_inputs(base, unit):
        return False
    outputs = rec.get("outputs")
    return (isinstance(outputs, dict) and bool(outputs)
            and all(os.path.isfile(path) and file_digest(path) == digest
                    for path, digest in outputs.items()))


def _unit_outputs(cfg, unit: Unit, log: Callable[[str], None]) -> List[str]:
    """Do ``unit``'s work; returns the files it produced."""
    if unit.kind == "evaluate":
        ev.run_evaluation(cfg, log)
        return [os.path.join(cfg.out_dir, "metrics.json")]
    if unit.kind == "defense":
        return ev.run_defense(cfg, unit.defense, log)
    if unit.kind == "adaptive":
        return [ev.run_adaptive_unit(cfg, unit.defense, unit.vector, unit.threat, unit.goal,
                                     unit.batch, log)]
    data = ev.load_data(cfg, log)
    m, at = ev.get_models(cfg, data, log)
    if unit.kind == "train":
        return model_files(cfg)
    if unit.kind != "attack":
        raise ValueError("unknown work unit kind %r" % unit.kind)
    models = {"m": m, **({"at": at} if at is not None else {})}
    store = Comparison(cfg, data, models, log).attacks
    name, eps = unit.vector
    if unit.shard is None:
        for model in sorted(models):
            store.attacked(model, name, eps, "test")
        return [store.record_path(model, name, eps, "test") for model in sorted(models)]
    return [store.attack_shard(model, name, eps, unit.shard[0], unit.shard[1], "test")
            for model in sorted(models)]


def run_unit(base, unit: Unit, log: Callable[[str], None] = print) -> str:
    """Run ``unit`` (skipped when its record shows it done); returns its record's path."""
    record = unit_record_path(base, unit)
    if unit_done(base, unit):
        return record
    outputs = _unit_outputs(pair_config(base, unit.arch, unit.class_set), unit, log)
    write_json_atomic(record, {"version": UNIT_VERSION, "unit": dataclasses.asdict(unit),
                               "config": config_fingerprint(base, unit),
                               "inputs": unit_inputs(base, unit),
                               "outputs": {path: file_digest(path)
                                           for path in sorted(set(outputs))}}, indent=1)
    return record


class InProcess:
    """Runs the units one after the other in this process (the default executor; a Ray
    cluster: :class:`evaluation.executors.RayExecutor`)."""
    workers = 1

    def map(self, base, units: Sequence[Unit], log: Callable[[str], None],
            note=None) -> List[str]:
        del note          # each unit logs its own progress here
        return [run_unit(base, u, log) for u in units]


def run_grid(base, archs: Sequence[str], class_sets: Sequence[str], executor=None,
             log: Callable[[str], None] = print) -> Dict:
    """Run (or resume) the grid and write its merged reports; returns ``grid.json``'s
    content."""
    executor = executor or InProcess()
    stages = plan(base, archs, class_sets)
    for stage in stages:
        executor.map(base, stage, log)
    merged = merge(base, [(u.arch, u.class_set) for u in stages[-1]], log)
    pairs = [pair_config(base, a, c) for a, c in merged["pairs"]]
    writer.write_config(os.path.join(base.results_dir, "grid"), record(
        "grid", base, archs=list(archs), class_sets=list(class_sets),
        checkpoints={"%s %s/%s" % (model, cfg.class_set.code_name, cfg.arch): path
                     for cfg in pairs for model, path in zip(("m", "at"), model_files(cfg))}))
    return merged


def merge(base, pairs: Sequence[Tuple[str, str]], log: Callable[[str], None] = print) -> Dict:
    """Read every pair's ``metrics.json`` (sorted by architecture, class set) and write the
    grid's ``grid.json``, Table IV, comparison table, Fig. 4 and page
    (:func:`evaluation.report.writer.write_grid_reports`); returns ``grid.json``'s content."""
    metrics = []
    for arch, cs in sorted(pairs):
        path = os.path.join(pair_config(base, arch, cs).out_dir, "metrics.json")
        with open(path, encoding="utf-8") as f:
            metrics.append(validate_metrics(json.load(f)))
    merged = {"pairs": [[a, c] for a, c in sorted(pairs)], "metrics": metrics}
    paths = writer.write_grid_reports(os.path.join(base.results_dir, "grid"), merged)
    log("grid: wrote %s" % ", ".join(sorted(paths.values())))
    return merged
