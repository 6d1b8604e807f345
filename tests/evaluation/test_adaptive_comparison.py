"""The bench's defense-aware rows end to end: the adaptive engine on the transforms and on
UnMask with a real K (random weights, the real graph and session), both goals, convergence
evidence in metrics.json and the figure, and an interrupted adaptive attack resumed to the
same numbers."""
import json
import os

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from attacks import engine as engine_module  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402
from evaluation import run as ev  # noqa: E402
from evaluation.config import EvalConfig  # noqa: E402
from evaluation.schema import validate_metrics  # noqa: E402
from evaluation.store import adaptive_plan  # noqa: E402
from models.train_classifier import TrainConfig  # noqa: E402

pytestmark = pytest.mark.slow


TINY_DATA = dict(seed=5, per_class=(10, 4, 4))


@pytest.fixture(scope="module")
def setup(tiny_data, random_k, tmp_path_factory):
    return tiny_data, random_k, tmp_path_factory.mktemp("adaptive")


def _config(setup, out, **kw):
    data, k, root = setup
    base = dict(class_set=get_class_set("CS3a"), data_dir=data, input_size=32,
                train=TrainConfig(epochs=2, batch_size=16, learning_rate=0.01),
                vectors=(("pgd_linf", 16), ("ga", 3)), n_test=9, attack_batch=4,
                adaptive_batch=4,
                results_dir=str(out / "results"), checkpoint_dir=str(root / "ckpt"),
                progress=False, extractor="k", k_weights=k, k_log_dir=str(root / "klogs"),
                defenses=("none", "bitdepth:3", "unmask", "unmask:reject", "unmask:confident"),
                threats=("gray-box", "adaptive"), adaptive_steps=4, adaptive_restarts=2,
                target_fpr=0.3)
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def whole(setup, tmp_path_factory):
    """(config, metrics) of one uninterrupted run."""
    cfg = _config(setup, tmp_path_factory.mktemp("whole"))
    return cfg, ev.run_evaluation(cfg, log=lambda s: None)


def _rows(metrics, label):
    return {(r["attack"], r["threat_model"], r["goal"]): r
            for r in metrics["defenses"][label]["attacks"]}


def test_adaptive_rows_goals_and_convergence(whole):
    cfg, metrics = whole
    validate_metrics(metrics)
    assert metrics["adaptive_settings"]["steps"] == 4
    assert metrics["adaptive_settings"]["restarts"] == 2
    # rectifying UnMask: one run per goal; the rejecting detector and the transform: one
    um = _rows(metrics, "unmask")
    assert set(um) == {("pgd_linf", "gray-box", None), ("ga", "gray-box", None),
                       ("pgd_linf", "adaptive", "wrong"),
                       ("pgd_linf", "adaptive", "undetected")}
    assert set(_rows(metrics, "unmask:reject")) == {
        ("pgd_linf", "gray-box", None), ("ga", "gray-box", None),
        ("pgd_linf", "adaptive", "wrong")}
    assert ("pgd_linf", "adaptive", "wrong") in _rows(metrics, "bitdepth:3")
    # ga has no per-image adaptive form: refused with the reason, never replaced
    notes = metrics["defenses"]["unmask"]["adaptive"]
    assert "ga_3" in notes["skipped"] and "random target" in notes["skipped"]["ga_3"]
    # M alone: its white-box attack run by the engine too, so every row of the run faces the
    # same attack strength (steps, restarts, 8-bit iterates)
    none = _rows(metrics, "none")
    assert set(none) == {("pgd_linf", "gray-box", None), ("ga", "gray-box", None),
                         ("pgd_linf", "adaptive", "wrong")}
    assert none[("pgd_linf", "adaptive", "wrong")]["routes"]["ran"] == ["white-box"]
    for label in ("none", "unmask", "unmask:reject", "unmask:confident", "bitdepth:3"):
        for (attack, threat, goal), r in _rows(metrics, label).items():
            if threat == "gray-box":
                assert "convergence" not in r
                continue
            conv = r["convergence"]
            assert set(conv["steps"]) == {"4"} and len(conv["restarts"]) == 2
            assert conv["restarts"] == sorted(conv["restarts"])
            assert isinstance(conv["converged"], bool) and conv["why"]
            assert r["agreement"] >= 0.98, "the attack's verdicts are the real pipeline's"
            assert r["cost"]["evaluations_per_image"] > 0
    # every route of each decision rule ran (SPEC §13): a rectifying UnMask's wrong answer
    # also by K alone; the undetected goal and a rejecting UnMask without that route
    every = ["follow-m", "two-phase", "k-only", "joint"]
    assert um[("pgd_linf", "adaptive", "wrong")]["routes"]["ran"] == every
    without = [r for r in every if r != "k-only"]
    assert um[("pgd_linf", "adaptive", "undetected")]["routes"]["ran"] == without
    rej = _rows(metrics, "unmask:reject")[("pgd_linf", "adaptive", "wrong")]["routes"]
    assert rej["ran"] == without and rej["complete"]
    assert _rows(metrics, "bitdepth:3")[("pgd_linf", "adaptive", "wrong")]["routes"]["ran"] == [
        "bpda"]
    for r in um.values():
        if "routes" in r:      # the images each route won: the attacker's own verdicts
            assert r["routes"]["complete"] and set(r["routes"]["won"]) == set(
                r["routes"]["ran"])
            assert sum(r["routes"]["won"].values()) == sum(
                s["reached"] for s in r["cost"]["runs"])
        for k in ("acc", "defended", "evasion"):
            lo, hi = r["intervals"][k]
            assert lo <= r[k] <= hi
    # the detector's rates at fixed benign FPRs, for the gray-box and the adaptive images
    for r in _rows(metrics, "unmask").values():
        if r["n_successful"]:
            assert r["tpr_at_5fpr"] <= r["tpr_at_10fpr"] <= 1.0
    # the two goals keep different iterates: "wrong" counts wrong final answers, the
    # "undetected" run is the evasion number
    wrong, hidden = um[("pgd_linf", "adaptive", "wrong")], um[("pgd_linf", "adaptive",
                                                                 "undetected")]
    assert 1.0 - wrong["defended"] >= 0 and hidden["evasion"] >= 0
    out = cfg.out_dir
    assert os.path.getsize(os.path.join(out, "convergence.png")) > 0
    bench = open(os.path.join(out, "bench.md")).read()
    assert "[adaptive, wrong]" in bench and "[adaptive, undetected]" in bench
    csv = open(os.path.join(out, "bench.csv")).read().splitlines()[0].split(",")
    assert {"goal", "tpr_at_5fpr", "tpr_at_10fpr", "converged"} <= set(csv)
    worst = metrics["defenses"]["unmask"]["worst_case"]
    assert worst["attacks"] == 4 and worst["defended"] <= min(
        r["defended"] for r in um.values()) + 1e-12


def test_confident_unmask_keeps_every_route_and_loses_only_unvouched_rectifications(whole):
    """``unmask:confident`` flags as ``unmask`` does (same threshold) and is attacked along
    every route of a rectifying UnMask; on clean images each answer it gets right ``unmask``
    gets right too, and what it loses it rejects."""
    cfg, metrics = whole
    plain, conf = metrics["defenses"]["unmask"], metrics["defenses"]["unmask:confident"]
    assert conf["params"]["threshold"] == plain["params"]["threshold"]
    rows = _rows(metrics, "unmask:confident")
    assert rows[("pgd_linf", "adaptive", "wrong")]["routes"]["ran"] == [
        "follow-m", "two-phase", "k-only", "joint"]
    assert rows[("pgd_linf", "adaptive", "undetected")]["routes"]["ran"] == [
        "follow-m", "two-phase", "joint"]
    b_plain, b_conf = plain["benign"], conf["benign"]
    assert b_conf["acc"] <= b_plain["acc"] + 1e-12
    assert b_conf["acc"] + b_conf["rejected"] >= b_plain["acc"] - 1e-12


def test_a_row_attacked_along_some_of_its_routes_is_marked(setup, tmp_path):
    """--adaptive-routes narrows the attack for a study; the row says which routes ran and
    that some did not, and the bench marks its number as an upper bound."""
    cfg = _config(setup, tmp_path / "narrow", defenses=("unmask",), vectors=(("pgd_linf", 16),),
                  adaptive_routes=("two-phase",))
    metrics = ev.run_evaluation(cfg, log=lambda s: None)
    rows = _rows(metrics, "unmask")
    wrong = rows[("pgd_linf", "adaptive", "wrong")]["routes"]
    assert wrong["ran"] == ["two-phase"] and not wrong["complete"]
    assert wrong["all"] == ["follow-m", "two-phase", "k-only", "joint"]
    bench = open(os.path.join(cfg.out_dir, "bench.md")).read()
    assert "(routes missing)" in bench
    csv = open(os.path.join(cfg.out_dir, "bench.csv")).read()
    assert "routes_complete" in csv.splitlines()[0]


def test_a_run_narrowed_to_the_wrong_goal_gives_the_whole_runs_wrong_rows(setup, whole,
                                                                          tmp_path):
    """--adaptive-goals wrong: UnMask's undetected-goal attack is not run, the defense's note
    and the answer's "not tried" say so, and the wrong-goal row is the whole run's (same
    images, same seeds: the goals are separate runs)."""
    from evaluation.report.answer import not_tried
    _, full = whole
    cfg = _config(setup, tmp_path / "goals", defenses=("unmask",),
                  vectors=(("pgd_linf", 16),), adaptive_goals=("wrong",))
    metrics = ev.run_evaluation(cfg, log=lambda s: None)
    validate_metrics(metrics)
    rows = _rows(metrics, "unmask")
    assert ("pgd_linf", "adaptive", "undetected") not in rows
    assert ("pgd_linf", "adaptive", "undetected") in _rows(full, "unmask")
    mine, theirs = rows[("pgd_linf", "adaptive", "wrong")], _rows(full, "unmask")[
        ("pgd_linf", "adaptive", "wrong")]
    for key in ("acc", "defended", "evasion"):
        assert mine.get(key) == theirs.get(key), key
    assert metrics["adaptive_settings"]["goals"] == ["wrong"]
    assert full["adaptive_settings"]["goals"] is None
    note = metrics["defenses"]["unmask"]["adaptive"]["goals"]
    assert "undetected" in note and "--adaptive-goals wrong" in note
    assert any(s.startswith("unmask: goal undetected not attacked") for s in not_tried(metrics))
    assert "goals" not in full["defenses"]["unmask"].get("adaptive", {})


def test_an_interrupted_adaptive_attack_resumes_to_the_same_numbers(setup, whole, tmp_path,
                                                                     monkeypatch):
    """Interrupted inside an image batch, after a few saved states: the finished batch and
    the batch's last saved state are on disk, and the resumed run continues from both to the
    uninterrupted run's numbers."""
    cfg = _config(setup, tmp_path / "cut")
    real = engine_module.AdaptiveEngine.run
    calls = {"n": 0}

    def flaky(self, x, y, **kw):
        calls["n"] += 1
        if calls["n"] != 5:                # the second batch of the second adaptive record
            return real(self, x, y, **kw)
        saves = []

        def save_then_stop(state):
            kw["on_progress"](state)
            saves.append(state)
            if len(saves) == 3:
                raise KeyboardInterrupt    # after the batch's third saved state

        return real(self, x, y, **dict(kw, on_progress=save_then_stop, progress_every=0.0))

    monkeypatch.setattr(engine_module.AdaptiveEngine, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        ev.run_evaluation(cfg, log=lambda s: None)
    saved = [f for d, _, fs in os.walk(cfg.out_dir) for f in fs if ".batch-" in f]
    assert any(f.endswith(".batch-0000.npz") for f in saved), saved
    assert any(f.endswith(".batch-0001.progress.npz") for f in saved), saved
    # --status reads the stopped run: one record part-way, with its plan's length saved
    _, states = adaptive_plan.run_status(cfg.out_dir)
    cut = [s for s in states if s.partway]
    assert len(cut) == 1 and cut[0].finished == 1, states
    assert cut[0].runs_left and cut[0].seconds_left > 0
    assert cut[0].images_done < cut[0].images
    state = next(os.path.join(d, f) for d, _, fs in os.walk(cfg.out_dir) for f in fs
                 if f.endswith(".batch-0001.progress.npz"))
    with np.load(state) as z:
        assert int(z["plan_length"]) > int(np.max(z["done"])) >= 0
    started = []

    def watched(self, x, y, **kw):
        progress = kw.get("progress")
        started.append(None if progress is None else int(progress.done.sum()))
        return real(self, x, y, **kw)

    monkeypatch.setattr(engine_module.AdaptiveEngine, "run", watched)
    logs = []
    resumed = ev.run_evaluation(cfg, log=logs.append)
    assert any("batch 1 of" in m and "reused" in m for m in logs), logs
    assert any("resuming batch 1 with" in m for m in logs)
    assert started[0] and started[0] > 0, "the interrupted batch continued from its state"
    assert not any(started[1:]), "every other batch started from the start"

    def strip(rows):          # everything but the wall time
        return [dict(r, cost={k: v for k, v in r["cost"].items() if k != "seconds"})
                if "cost" in r else r for r in rows]

    for label in whole[1]["defenses"]:
        a, b = whole[1]["defenses"][label], resumed["defenses"][label]
        assert strip(a["attacks"]) == strip(b["attacks"]), label
    left = [f for d, _, fs in os.walk(cfg.out_dir) for f in fs if ".batch-" in f]
    assert not left, "batch and progress files are removed once the record is whole"
    _, states = adaptive_plan.run_status(cfg.out_dir)
    assert states and all(s.images_done == s.images and s.seconds_left == 0 for s in states)
    assert {s.defense for s in states} == {
        label for label, block in whole[1]["defenses"].items()
        if any(r["threat_model"] != "gray-box" for r in block["attacks"])}


def test_hardened_unmask_holding_the_at_model_is_attacked_and_judged_on_it(setup, tmp_path):
    """unmask:k=robust:m=at in a run: its gray-box attacker attacks the AT model, its adaptive
    attack goes through the AT model and the robust K, and its rows judge "M fooled" by the
    AT model's answers (the adaptive record carries M's: they are computed for it); the AT
    row of --adv-train stays beside it, and the plain UnMask's rows are those of a run
    without the variant."""
    data, k, root = setup
    cfg = _config(setup, tmp_path, defenses=("none", "at", "unmask", "unmask:k=robust:m=at"),
                  vectors=(("pgd_linf", 16),), adv_train=True, k_robust=k, at_eps=8)
    metrics = ev.run_evaluation(cfg, log=lambda s: None)
    validate_metrics(metrics)
    block = metrics["defenses"]["unmask:k=robust:m=at"]
    assert block["attacked_model"] == "at"
    assert block["params"]["k"] == "robust" and block["params"]["m"] == "at"
    assert "at" in metrics["defenses"]
    rows = _rows(metrics, "unmask:k=robust:m=at")
    assert set(rows) == {("pgd_linf", "gray-box", None), ("pgd_linf", "adaptive", "wrong"),
                         ("pgd_linf", "adaptive", "undetected")}
    for (_, threat, goal), r in rows.items():
        if threat == "adaptive":
            assert r["agreement"] >= 0.98, (goal, r["agreement"])
    # the gray-box row of the variant is judged on the AT model's attacked images: the same
    # images as the AT row's
    at_row = _rows(metrics, "at")[("pgd_linf", "gray-box", None)]
    assert rows[("pgd_linf", "gray-box", None)]["n_attacked"] == at_row["n_attacked"]
    with open(os.path.join(cfg.out_dir, "config.json")) as f:
        recorded = json.load(f)
    assert recorded["checkpoints"]["k_robust"]["path"].endswith(os.path.basename(k))
