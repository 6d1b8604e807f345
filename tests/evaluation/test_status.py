"""``main.py --status RUN_DIR``: where a run's adaptive attacks stand, read from the plan the run
wrote and the batch files the store saves, with an upper bound on what is left (hand-made
files, so every count is known)."""
import json
import os
import types

import numpy as np
import pytest

from attacks.engine import EngineProgress, EngineResult
from evaluation.store import adaptive_plan
from evaluation.store.adaptive_store import _engine_arrays, _progress_arrays
from evaluation.store.layout import batch_files, batch_fingerprint, canonical
from evaluation.store.records import write_npz

RECORD = os.path.join("vectors", "adaptive", "unmask", "test-pgd_linf_8.wrong.npz")
FP = {"attack": "pgd_linf", "eps": 8.0, "defense": {"defense": "unmask"}, "steps": 19}
PLAN_LENGTH = 3       # plan entries of every image


class _Store:
    """The few things :func:`adaptive_plan.write_plan` asks of the run's store."""

    def __init__(self, root, images=10, batch=4, fp=FP):
        self.root, self.n, self.fp = root, images, fp
        self.cfg = types.SimpleNamespace(adaptive_batch=batch)

    def record_path(self, defense, name, eps, threat, goal):
        return os.path.join(self.root, RECORD)

    def batches(self):
        return -(-self.n // self.cfg.adaptive_batch)

    def images(self, split):
        return np.zeros(self.n)

    def record_fingerprint(self, defense, name, eps, threat, goal):
        return self.fp


def _plan(root, **kw):
    store = _Store(str(root), **kw)
    defense = types.SimpleNamespace(label="unmask")
    return adaptive_plan.write_plan(str(root), store, [(defense, "adaptive", "wrong",
                                                        "pgd_linf", 8)], workers=2)


def _finished(root, batch, won, evals, seconds, runs=PLAN_LENGTH, fp=FP, size=4):
    """A finished batch file as the store writes it."""
    won = np.asarray(won)
    res = EngineResult(x_adv=np.zeros((len(won), 2, 2, 3), np.float32), success=won >= 0,
                       first_step=np.full((len(won), 1), -1), won=won,
                       route_evaluations=np.asarray(evals).reshape(-1, 1),
                       routes=("follow-m",), seconds=seconds,
                       runs=[{"route": "follow-m", "entry": e} for e in range(runs)])
    write_npz(batch_files(os.path.join(root, RECORD), batch)[0], dict(
        _engine_arrays(res), fingerprint=batch_fingerprint(fp, batch, size)))


def _partway(root, batch, done, won, evals, seconds, plan_length=PLAN_LENGTH, size=4):
    """A batch's saved state as the store writes it (the engine hands it the plan length;
    None: a state of before)."""
    n = len(done)
    state = EngineProgress(done=np.asarray(done), won=np.asarray(won),
                           best=np.zeros((n, 2, 2, 3), np.float32), best_loss=np.zeros(n),
                           route_evaluations=np.asarray(evals).reshape(-1, 1),
                           first_step=np.full((n, 1), -1), seconds=seconds,
                           plan_length=plan_length)
    write_npz(batch_files(os.path.join(root, RECORD), batch)[1], dict(
        _progress_arrays(state), fingerprint=batch_fingerprint(FP, batch, size, True)))


def test_a_running_record_counts_batches_images_and_bounds_what_is_left(tmp_path):
    _plan(tmp_path)
    # batch 0 finished: two images held (every entry run, 20 evaluations each), two won
    _finished(tmp_path, 0, won=[-1, 2, -1, 0], evals=[60, 45, 60, 4], seconds=10000.0)
    # batch 1 part-way: image 1 won at entry 2, the others 1, 0 and 2 entries in
    _partway(tmp_path, 1, done=[1, 3, 0, 2], won=[-1, 2, -1, -1], evals=[20, 50, 0, 40],
             seconds=5500.0)
    # batch 2 (2 images) not started
    plan, (st,) = adaptive_plan.run_status(str(tmp_path))
    assert plan["workers"] == 2
    assert (st.batches, st.finished, st.partway, st.stale) == (3, 1, 1, 0)
    assert (st.images, st.images_done, st.reached) == (10, 5, 3)
    assert st.evaluations == 60 + 45 + 60 + 4 + 20 + 50 + 0 + 40
    assert st.seconds == pytest.approx(15500.0)
    assert st.run_cost == 20                    # the most one entry of a held image cost
    # entries left: batch 1 (3-1) + (3-0) + (3-2) = 6, batch 2: 2 images x 3 = 6
    assert (st.runs_left, st.unit_runs_left) == (12, 6)
    rate = st.evaluations / 15500.0                 # 279 evaluations in 15,500 s
    assert st.seconds_left == pytest.approx(12 * 20 / rate)
    assert st.unit_seconds_left == pytest.approx(6 * 20 / rate)
    text = adaptive_plan.status_text(str(tmp_path))
    assert "1 / 1 / 3" in text and "5 / 10" in text
    # the largest batch left on one worker, the rest shared over the 2 workers
    wall = (12 * 20 - 6 * 20) / rate / 2 + 6 * 20 / rate
    assert "%.1f worker h left, %.1f h of wall time on 2 workers" % (
        12 * 20 / rate / 3600, wall / 3600) in text
    assert "%.1f h" % (wall / 3600) != "%.1f h" % (12 * 20 / rate / 2 / 3600)
    # the driver's one-line note of the same
    note = adaptive_plan.worst_case_note(str(tmp_path))
    assert note == text.splitlines()[-1]
    assert adaptive_plan.worst_case_note(str(tmp_path / "no run")) is None


def test_the_plan_length_of_a_finished_batch_comes_from_an_image_that_held(tmp_path):
    """No saved state yet: a finished batch whose image held lists every entry it ran."""
    _plan(tmp_path, images=8)
    _finished(tmp_path, 0, won=[-1, 0, 0, 1], evals=[50, 5, 5, 9], seconds=2.0, runs=5)
    st = adaptive_plan.run_status(str(tmp_path))[1][0]
    assert (st.runs_left, st.run_cost) == (4 * 5, 10)
    # a batch where every image won early says nothing of the plan's length: no bound
    other = tmp_path / "other"
    _plan(other, images=8)
    _finished(str(other), 0, won=[0, 0, 0, 1], evals=[5, 5, 5, 9], seconds=2.0, runs=2)
    st = adaptive_plan.run_status(str(other))[1][0]
    assert st.runs_left is None and st.seconds_left is None
    assert "1 record(s) have nothing measured" in adaptive_plan.status_text(str(other))


def test_a_file_of_another_configuration_or_damaged_is_counted_stale_not_done(tmp_path):
    _plan(tmp_path, images=8)
    _finished(tmp_path, 0, won=[-1, -1, 0, 0], evals=[9] * 4, seconds=1.0,
              fp=dict(FP, steps=50))
    with open(batch_files(os.path.join(tmp_path, RECORD), 1)[1], "wb") as f:
        f.write(b"PK\x03\x04 cut short")              # a damaged saved state
    st = adaptive_plan.run_status(str(tmp_path))[1][0]
    assert (st.finished, st.partway, st.stale, st.images_done, st.evaluations) == (
        0, 0, 2, 0, 0)
    text = adaptive_plan.status_text(str(tmp_path))
    assert "2 batch file(s) belong to another configuration or are damaged" in text
    assert "1 record(s) have nothing measured" in text


def test_a_state_saved_before_plans_had_a_length_is_counted_without_a_projection(tmp_path):
    """A saved state of an earlier version (no plan length): counts, but no projection;
    the run saves the length with its next state."""
    _plan(tmp_path, images=4)
    _partway(tmp_path, 0, done=[1, 2, 0, 2], won=[-1, 1, -1, -1], evals=[20, 30, 0, 40],
             seconds=60.0, plan_length=None)
    st = adaptive_plan.run_status(str(tmp_path))[1][0]
    assert (st.partway, st.reached, st.images_done, st.evaluations) == (1, 1, 1, 90)
    assert st.runs_left is None and st.seconds_left is None


def test_several_records_sum_and_one_not_started_is_named(tmp_path):
    store = _Store(str(tmp_path), images=4)
    second = os.path.join("vectors", "adaptive", "unmask", "test-pgd_linf_8.undetected.npz")
    paths = {"wrong": RECORD, "undetected": second}
    store.record_path = lambda d, n, e, t, goal: os.path.join(str(tmp_path), paths[goal])
    store.record_fingerprint = lambda d, n, e, t, goal: dict(FP, goal=goal)
    defense = types.SimpleNamespace(label="unmask")
    adaptive_plan.write_plan(str(tmp_path), store, [
        (defense, "adaptive", g, "pgd_linf", 8) for g in ("wrong", "undetected")], workers=1)
    _finished(tmp_path, 0, won=[-1, -1, 0, 1], evals=[3000, 3000, 10, 1200], seconds=3600.0,
              fp=dict(FP, goal="wrong"))
    wrong, undetected = adaptive_plan.run_status(str(tmp_path))[1]
    assert (wrong.images_done, wrong.seconds_left) == (4, 0.0)
    assert undetected.seconds_left is None and undetected.images_done == 0
    text = adaptive_plan.status_text(str(tmp_path))
    assert "1 record(s) have nothing measured" in text
    assert "Every adaptive record is done." not in text


def test_a_whole_record_wins_over_batch_files_left_beside_it(tmp_path):
    _plan(tmp_path, images=4)
    won = np.array([-1, 1, 0, 0])
    write_npz(os.path.join(tmp_path, RECORD), dict(
        success=won >= 0, won=won, route_evaluations=np.array([[30], [12], [4], [4]]),
        seconds=7.0, fingerprint=canonical(FP)))
    _partway(tmp_path, 0, done=[1, 0, 0, 0], won=[-1, -1, -1, -1], evals=[10, 0, 0, 0],
             seconds=1.0)
    st = adaptive_plan.run_status(str(tmp_path))[1][0]
    assert (st.finished, st.partway, st.images_done, st.evaluations) == (1, 0, 4, 50)


def test_a_run_without_adaptive_records_removes_an_earlier_plan(tmp_path):
    _plan(tmp_path)
    assert (tmp_path / adaptive_plan.PLAN_FILE).is_file()
    assert adaptive_plan.write_plan(str(tmp_path), _Store(str(tmp_path)), [], 1) is None
    assert not (tmp_path / adaptive_plan.PLAN_FILE).exists()


def test_a_whole_record_is_done(tmp_path):
    _plan(tmp_path, images=3)
    won = np.array([-1, 1, 0])
    write_npz(os.path.join(tmp_path, RECORD), dict(
        success=won >= 0, won=won, route_evaluations=np.array([[30], [12], [4]]),
        seconds=7.0, fingerprint=canonical(FP)))
    st = adaptive_plan.run_status(str(tmp_path))[1][0]
    assert (st.finished, st.images_done, st.reached, st.evaluations) == (1, 3, 2, 46)
    assert st.seconds_left == 0.0
    assert "Every adaptive record is done." in adaptive_plan.status_text(str(tmp_path))


def test_the_plan_round_trips_the_fingerprint_its_batches_are_keyed_by(tmp_path):
    """The plan holds the record's fingerprint as JSON; read back, it keys the same batch
    files (floats, nested lists and tuples included)."""
    fp = dict(FP, eps=8 / 255, nested={"routes": ("follow-m", "k-only"), "x": [0.1, 1e-9]})
    _plan(tmp_path, images=4, fp=fp)
    with open(tmp_path / adaptive_plan.PLAN_FILE) as f:
        stored = json.load(f)["records"][0]["fingerprint"]
    assert json.loads(batch_fingerprint(stored, 0, 4)) == json.loads(
        batch_fingerprint(fp, 0, 4))


def test_status_refuses_a_folder_without_a_plan_and_a_bad_plan(tmp_path, capsys):
    import main

    assert main.main(["--status", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main.main(["--status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert adaptive_plan.PLAN_FILE in err and str(tmp_path) in err
    (tmp_path / adaptive_plan.PLAN_FILE).write_text("{not json")
    assert main.main(["--status", str(tmp_path)]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    (tmp_path / adaptive_plan.PLAN_FILE).write_text('{"version": 1, "records": [{}]}')
    assert main.main(["--status", str(tmp_path)]) == 2
    assert "not a plan of this version" in capsys.readouterr().err
    assert main.main(["--status", str(tmp_path), "--report", str(tmp_path)]) == 2
    assert "one command at a time" in capsys.readouterr().err


def test_status_prints_the_table(tmp_path, capsys):
    import main

    _plan(tmp_path)
    _partway(tmp_path, 1, done=[1, 3, 0, 2], won=[-1, 2, -1, -1], evals=[20, 50, 0, 40],
             seconds=5.5)
    assert main.main(["--status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "unmask" in out and "pgd_linf 8" in out and "0 / 1 / 3" in out
    assert "1 / 10" in out                          # the image that won
