"""The paper's grid as work units: planning, resumability, and the same merged numbers from
one process and from a Ray cluster of two workers (a tiny configuration)."""
import dataclasses
import json
import os

import numpy as np
import pytest

from data.knowledge import get_class_set
from evaluation import executors, grid
from evaluation.store import attack_store, records
from evaluation import run as ev
from evaluation.comparison import Comparison
from evaluation.config import EvalConfig
from models.train_classifier import TrainConfig

ARCHS = ["mobilenetv2_050", "vgg16"]
SETS = ["cs3-1", "cs3-2"]


def _base(data_dir, root, **kw):
    base = dict(class_set=get_class_set("CS3a"), data_dir=data_dir, input_size=32,
                train=TrainConfig(epochs=1, batch_size=16, learning_rate=0.01),
                vectors=(("fgsm", 8),), n_test=6, attack_batch=2,
                results_dir=str(root / "results"), checkpoint_dir=str(root / "ckpt"),
                progress=False, extractor="oracle", defenses=("unmask",))
    base.update(kw)
    return EvalConfig(**base)


def test_plan_has_four_stages_of_sorted_units():
    base = EvalConfig(class_set=get_class_set("CS5b"), vectors=(("pgd_linf", 8),
                                                                   ("fgsm", 8)))
    train, attack, defense, evaluate = grid.plan(base, ["resnet50", "mobilenetv2_050"],
                                                 ["cs5-2", "cs3-1"])
    assert [u.name for u in train] == ["train-cs3-1-mobilenetv2_050",
                                       "train-cs5-2-mobilenetv2_050",
                                       "train-cs3-1-resnet50", "train-cs5-2-resnet50"]
    assert len(attack) == 8 and attack[0].name == "attack-cs3-1-mobilenetv2_050-pgd_linf_8"
    assert [u.name for u in defense[:2]] == ["defense-cs3-1-mobilenetv2_050-none",
                                             "defense-cs3-1-mobilenetv2_050-unmask"]
    assert [u.kind for u in evaluate] == ["evaluate"] * 4
    assert len({u.name for s in (train, attack, defense, evaluate) for u in s}) == 24


def test_shards_split_the_per_image_vectors_at_batch_boundaries():
    base = EvalConfig(class_set=get_class_set("CS5b"), shards=3,
                         vectors=(("pgd_linf", 8), ("uap", 10)))
    attack = grid.plan(base, ["mobilenetv2_050"], ["cs5-2"])[1]
    assert [u.name for u in attack] == [
        "attack-cs5-2-mobilenetv2_050-pgd_linf_8-shard%dof3" % i for i in (1, 2, 3)] + [
        "attack-cs5-2-mobilenetv2_050-uap_10"]          # a universal attack stays whole
    # shards cover the batches once, in order, cut at batch boundaries
    for n, batch, shards in [(300, 50, 3), (301, 50, 4), (7, 2, 2), (3, 4, 3), (0, 5, 2)]:
        bounds = [records.shard_bounds(n, batch, i, shards) for i in range(shards)]
        assert bounds[0][1] == 0 and bounds[-1][2] == n
        assert all(prev[2] == nxt[1] for prev, nxt in zip(bounds, bounds[1:]))  # contiguous
        for first, begin, end in bounds:
            assert begin == min(first * batch, n) and end >= begin      # at batch boundaries
    with pytest.raises(ValueError, match="shard 3 is not one of 0..2"):
        records.shard_bounds(10, 2, 3, 3)
    with pytest.raises(ValueError, match="shards must be an integer >= 1"):
        dataclasses.replace(base, shards=0)
    # another number of shards is not another configuration: the merged records are equal
    unit = grid.Unit("evaluate", "mobilenetv2_050", "cs5-2")
    assert grid.config_fingerprint(base, unit) == grid.config_fingerprint(
        dataclasses.replace(base, shards=1), unit)
    # --adaptive-goals narrows what an evaluation unit computes: another configuration; left
    # at "every goal", the fingerprint is the one computed before the setting existed
    narrowed = dataclasses.replace(base, threats=("gray-box", "adaptive"),
                                   adaptive_goals=("wrong",))
    assert grid.config_fingerprint(narrowed, unit) != grid.config_fingerprint(
        dataclasses.replace(narrowed, adaptive_goals=None), unit)



def test_a_default_configuration_keeps_the_fingerprint_its_units_were_recorded_with():
    """A setting added later, left at its default, must not make every recorded unit stale:
    this digest was computed by the code before --adaptive-goals existed (commit dedbfdd).
    A deliberate change of what a unit computes changes it; say so in the commit."""
    base = EvalConfig(class_set=get_class_set("CS5b"), vectors=(("pgd_linf", 8),))
    unit = grid.Unit("evaluate", "mobilenetv2_050", "cs5-2")
    assert grid.config_fingerprint(base, unit) == (
        "a5121010a15840daf42a606d04a98591033bd22a1e358b560500f0cfe97770e9")


def _grid_json(base):
    with open(os.path.join(base.results_dir, "grid", "grid.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def single(tiny_data, tmp_path_factory):
    """The grid run in this process: (its base config, grid.json's content)."""
    base = _base(tiny_data, tmp_path_factory.mktemp("single"))
    return base, grid.run_grid(base, ARCHS, SETS, log=lambda s: None)


@pytest.mark.slow
def test_grid_in_process_writes_one_report_and_resumes_unit_by_unit(single):
    base, merged = single
    assert merged["pairs"] == [[a, c] for a in sorted(ARCHS) for c in sorted(SETS)]
    assert merged == _grid_json(base)
    out = os.path.join(base.results_dir, "grid")
    for name in ("grid.json", "table_iv.md", "bench.csv", "bench.md", "fig4.png", "fig4.pdf"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    table = open(os.path.join(out, "table_iv.md")).read()
    from evaluation.report.tables import arch_label
    for arch in ARCHS:
        assert arch_label(arch) in table
    assert [(m["arch"], m["class_set"]) for m in merged["metrics"]] == [
        tuple(p) for p in merged["pairs"]]
    n_pairs, n_vectors = len(ARCHS) * len(SETS), len(base.vectors)
    n_defenses = len(base.defenses)
    assert len(os.listdir(os.path.join(out, "units"))) == n_pairs * (2 + n_vectors
                                                                     + n_defenses)

    # units killed before they finished (no record, no output) run again, alone, and the
    # merged numbers come out the same
    gone = [grid.Unit("attack", ARCHS[-1], SETS[-1], tuple(base.vectors[-1])),
            grid.Unit("evaluate", ARCHS[-1], SETS[-1])]
    for unit in gone:
        with open(grid.unit_record_path(base, unit)) as f:
            for path in json.load(f)["outputs"]:
                os.remove(path)
        os.remove(grid.unit_record_path(base, unit))
    ran = []
    for stage in grid.plan(base, ARCHS, SETS):
        for unit in stage:
            if not grid.unit_done(base, unit):
                ran.append(unit.name)
            grid.run_unit(base, unit, lambda s: None)
    assert ran == [u.name for u in gone]
    assert all(grid.unit_done(base, u) for u in gone)
    assert grid.merge(base, [(a, c) for a in ARCHS for c in SETS], log=lambda s: None) == merged

    # replaced images (here: one image's modification time) make every unit of the grid stale
    # until they are run again
    image = next(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(
        base.data_dir, SETS[0])) for f in sorted(fs))
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    try:
        stale = [u for stage in grid.plan(base, ARCHS, SETS) for u in stage
                 if not grid.unit_done(base, u)]
        assert {u.class_set for u in stale} == {SETS[0]}
        assert len(stale) == len(ARCHS) * (2 + n_vectors + n_defenses)
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert all(grid.unit_done(base, u) for stage in grid.plan(base, ARCHS, SETS) for u in stage)

    # another setting (here the epochs, which name no folder) makes every unit stale
    other = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=2))
    assert not any(grid.unit_done(other, u) for stage in grid.plan(other, ARCHS, SETS)
                   for u in stage)


def _kill_one_busy_worker(stop, killed):
    """SIGKILL the first Ray worker seen running a unit (its process title is
    ``ray::_ray_unit``), once."""
    import signal
    import subprocess
    import time

    while not stop.is_set():
        out = subprocess.run(["pgrep", "-f", "ray::_ray_unit"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            time.sleep(1.0)                     # let it get into the unit's work
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            except ProcessLookupError:
                continue
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_image_shards_merge_into_the_unsharded_attack_record(single, tmp_path, monkeypatch):
    """Two shards of one vector (3 attack batches: 1 + 2), attacked apart and merged by image
    id, give the unsharded run's record bit for bit."""
    base, _ = single
    pair = grid.pair_config(base, ARCHS[0], SETS[0])
    cfg = dataclasses.replace(pair, results_dir=str(tmp_path / "results"), shards=2)
    data = ev.load_data(cfg, lambda s: None)
    m, _ = ev.get_models(cfg, data, lambda s: None)       # the single run's trained M
    bench = Comparison(cfg, data, {"m": m}, lambda s: None).attacks
    name, eps = base.vectors[0]
    for shard in (1, 0):                                     # any order
        bench.attack_shard("m", name, eps, shard, 2)
    merged = bench.attacked("m", name, eps)
    whole = np.load(Comparison(pair, data, {"m": m}, lambda s: None).attacks.record_path(
        "m", name, eps))
    mine = np.load(bench.record_path("m", name, eps))
    for key in ("x_adv", "pred_adv", "pred_clean", "fingerprint"):
        np.testing.assert_array_equal(mine[key], whole[key], err_msg=key)
    np.testing.assert_array_equal(merged.x, whole["x_adv"])
    # with the whole record there, a (new) shard is cut from it instead of attacked again
    first = bench.shard_path("m", name, eps, 0, 2)
    with np.load(first) as f:
        before = {k: f[k] for k in ("x_adv", "pred_adv", "keys")}
    os.remove(first)
    calls = []
    real = attack_store.compile_attack
    monkeypatch.setattr(attack_store, "compile_attack",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    bench.attack_shard("m", name, eps, 0, 2)
    assert calls == []
    with np.load(first) as f:
        for key, value in before.items():
            np.testing.assert_array_equal(f[key], value, err_msg=key)
    # a shard holding an image twice is refused, not merged
    with np.load(bench.shard_path("m", name, eps, 0, 2)) as f:
        rec = {k: f[k] for k in f.files}
    rec["keys"] = np.array([str(bench.images("test").keys[-1])] * len(rec["keys"]))
    records.write_npz(bench.shard_path("m", name, eps, 0, 2), rec)
    os.remove(bench.record_path("m", name, eps))
    fresh = Comparison(cfg, data, {"m": m}, lambda s: None).attacks
    with pytest.raises(ValueError, match="exactly once"):
        fresh.attacked("m", name, eps)


@pytest.mark.slow
def test_two_ray_workers_give_the_in_process_numbers_even_when_one_is_killed(
        single, tiny_data, tmp_path):
    """``--workers 2`` on the same grid, its attack vectors in two image shards: the merged
    numbers are the unsharded in-process ones, and a worker killed with SIGKILL in the middle
    of a unit loses nothing (Ray retries the unit, which writes its files anew)."""
    import threading

    pytest.importorskip("ray")
    base, merged = single
    sharded = _base(tiny_data, tmp_path / "ray", shards=2)
    executor = executors.RayExecutor(workers=2)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_busy_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        grid.run_grid(sharded, ARCHS, SETS, executor, log=lambda s: None)
    finally:
        stop.set()
        executor.shutdown()
    assert killed, "no worker was killed: the test did not test the retry"
    assert _grid_json(sharded) == merged
    units = os.listdir(os.path.join(sharded.results_dir, "grid", "units"))
    assert sum("-shard" in u for u in units) == 2 * len(ARCHS) * len(SETS)
