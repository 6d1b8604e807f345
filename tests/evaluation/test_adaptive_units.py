"""A run's defense-aware attacks as work units (one per image batch of each defense, threat,
goal and vector): two Ray workers give the in-process numbers byte for byte, and a worker
killed in the middle of a unit, after its unit saved progress, is retried to the same numbers
(that a batch resumes from its saved progress to the uninterrupted numbers is tested in
process, tests/evaluation/test_adaptive_comparison.py)."""
import dataclasses
import os
import threading
import time

import pytest

from data.knowledge import get_class_set
from defense.threats import Goal, Threat
from evaluation import executors
from evaluation import run as ev
from evaluation.config import EvalConfig
from models.train_classifier import TrainConfig

pytestmark = pytest.mark.slow

TINY_DATA = dict(seed=7, per_class=(10, 4, 4))


def _config(data_dir, root, **kw):
    base = dict(class_set=get_class_set("CS3a"), data_dir=data_dir, input_size=32,
                train=TrainConfig(epochs=2, batch_size=16, learning_rate=0.01),
                vectors=(("pgd_linf", 8),), n_test=9, attack_batch=4, adaptive_batch=4,
                adaptive_slots=3, adaptive_save_seconds=0.0,
                results_dir=str(root / "results"), checkpoint_dir=str(root / "ckpt"),
                progress=False, extractor="oracle", defenses=("none", "pca", "bitdepth:3"),
                threats=("gray-box", "adaptive"), adaptive_steps=30, adaptive_restarts=2)
    base.update(kw)
    return EvalConfig(**base)


def _without_time(metrics):
    """metrics.json without wall times and package versions."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in ("seconds", "versions")}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return strip(metrics)


def _kill_a_worker_with_saved_progress(root, stop, killed):
    """SIGKILL a Ray worker running a unit once one of the units has saved progress."""
    import signal
    import subprocess

    while not stop.is_set():
        saved = [f for _, _, fs in os.walk(root) for f in fs if f.endswith(".progress.npz")]
        out = subprocess.run(["pgrep", "-f", "ray::_ray_unit"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if saved and pids:
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            except ProcessLookupError:
                continue
            return
        time.sleep(0.05)


def test_two_ray_workers_give_the_in_process_numbers_even_when_one_is_killed(tiny_data,
                                                                               tmp_path):
    pytest.importorskip("ray")
    here = _config(tiny_data, tmp_path / "here")
    whole = ev.run_evaluation(here, log=lambda s: None)
    # the same run with its trained models, its adaptive attacks on two Ray workers
    there = dataclasses.replace(here, results_dir=str(tmp_path / "there" / "results"))
    units = []
    executor = executors.RayExecutor(workers=2)
    real_map = executor.map

    def watched(base, todo, log, **kw):
        units.extend(todo)
        return real_map(base, todo, log, **kw)

    executor.map = watched
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_with_saved_progress,
                              args=(there.results_dir, stop, killed), daemon=True)
    killer.start()
    try:
        ray_metrics = ev.run_evaluation(there, log=lambda s: None, executor=executor)
    finally:
        stop.set()
        executor.shutdown()
    # pca, bitdepth and M alone (its white-box attack by the engine): 1 goal each; 9 images
    # in batches of 4: 3 units per record
    assert sorted(u.defense for u in units) == ["bitdepth:3"] * 3 + ["none"] * 3 + ["pca"] * 3
    assert {u.batch for u in units} == {0, 1, 2}
    assert killed, "no worker was killed: the test did not test the retry"
    assert _without_time(ray_metrics) == _without_time(whole)
    for name in ("pca", "bitdepth-3"):
        a = os.path.join(here.out_dir, "vectors", "adaptive", name,
                         "test-pgd_linf_8.wrong.npz")
        b = os.path.join(there.out_dir, "vectors", "adaptive", name,
                         "test-pgd_linf_8.wrong.npz")
        import numpy as np
        with np.load(a) as fa, np.load(b) as fb:
            for key in ("x_adv", "success", "first_step", "route_evaluations", "won",
                        "pred_adv"):
                np.testing.assert_array_equal(fa[key], fb[key], err_msg="%s %s" % (name, key))
    # a rerun finds every adaptive record whole: no unit to run
    assert ev.adaptive_units(*_opened(there)) == []


def _opened(cfg):
    comparison, _, defenses, _ = ev.open_comparison(cfg, lambda s: None)
    return comparison, defenses, list(cfg.vectors)


def test_a_unit_recorded_done_whose_batch_another_code_version_made_runs_again(tiny_data,
                                                                               tmp_path,
                                                                               monkeypatch):
    """A recipe or code change alters an adaptive record's fingerprint while the units'
    records still say done: adaptive_units drops the records of exactly those units (so the
    workers make their batches again, not the driver one by one at assembly) and names how
    many; a second look finds nothing to drop.  In process: no Ray here."""
    from evaluation.grid import InProcess, unit_done

    cfg = _config(tiny_data, tmp_path, defenses=("none", "pca"))
    comparison, _, defenses, _ = ev.open_comparison(cfg, lambda s: None)
    vectors = list(cfg.vectors)
    units = ev.adaptive_units(comparison, defenses, vectors, log=lambda s: None)
    assert len(units) == 6
    order = comparison.adaptive_records.batch_order()
    assert [u.batch for u in units if u.defense == "pca"] == order and sorted(order) == [0, 1, 2]
    InProcess().map(cfg, units, lambda s: None)
    assert all(unit_done(cfg, u) for u in units)
    logs = []
    assert ev.adaptive_units(comparison, defenses, vectors, logs.append) == units
    assert not logs and all(unit_done(cfg, u) for u in units), "nothing stale: nothing dropped"
    # the next code version attacks pca otherwise: its records' fingerprint changes
    pca = next(d for d in defenses if d.label == "pca")
    monkeypatch.setattr(type(pca), "attacker_fingerprint",
                        lambda self: {"recipe": "of the next version"})
    assert ev.adaptive_units(comparison, defenses, vectors, logs.append) == units
    assert logs == ["adaptive attacks: 3 unit(s) recorded done hold batches made under another "
                    "fingerprint (configuration, batch size or code version): they run again"]
    assert [unit_done(cfg, u) for u in units] == [u.defense == "none" for u in units]
    InProcess().map(cfg, units, lambda s: None)       # pca's batches made again
    store = comparison.adaptive_records
    assert all(store.batch_current(pca, "pgd_linf", 8.0, Threat.ADAPTIVE, Goal.WRONG, b)
               for b in range(3))
    logs.clear()
    ev.adaptive_units(comparison, defenses, vectors, logs.append)
    assert not logs and all(unit_done(cfg, u) for u in units)
    # the record is put together from the workers' batches: none is attacked again
    store.log = logs.append
    store.adaptive(pca, "pgd_linf", 8.0, Threat.ADAPTIVE, Goal.WRONG)
    assert sum("reused from" in m for m in logs) == 3, logs
    assert not any(": batch %d of 3, goal reached" % b in m for m in logs for b in (1, 2, 3))
