"""Where a run's defense-aware attacks stand, from its folder alone (``python main.py --status
RUN_DIR``): an adaptive evaluation can run for many hours, on Ray workers or in this process,
and a user wants to know what is done and what is left without stopping it.

A run writes ``adaptive_plan.json`` into its folder before its adaptive attacks: per adaptive
record (defense, threat, goal, vector) its file, its image batches and its fingerprint.  (A
grid's pair writes it only in its evaluation stage, after the grid's defense units made its
adaptive records.)  The
status reads, per record, the whole record, or per batch its finished file or the state the
engine saves about every minute while it attacks the batch (:mod:`.adaptive_store`); a file
whose fingerprint is not the plan's (another configuration's) or that is damaged counts as
not started.

What is left is projected for the worst case, not guessed: every image still standing may
hold to the end of its plan, and an entry that does not reach its goal runs every step of its
attack, so the plan entries left, times the evaluations an entry that ran to its end has cost
so far, at the evaluations per worker second measured so far, give the worker time left if
every image holds (a projection: later routes may cost more per evaluation than the mean so
far).  The wall time adds the largest batch left to the rest shared over the workers (a batch
runs on one worker).  A record with nothing measured yet has no projection until its first
batch saves its state.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data.fileio import write_json_atomic
from evaluation.store.layout import batch_files, batch_fingerprint, canonical, read_matching

#: The plan's file in a run's folder.
PLAN_FILE = "adaptive_plan.json"
PLAN_VERSION = 1


def write_plan(out_dir: str, store, rows: Sequence[Tuple], workers: int) -> Optional[str]:
    """Write ``adaptive_plan.json`` into ``out_dir`` (atomically); returns its path.  With no
    rows, an earlier run's plan there is removed (None).

    Args:
        store: the run's :class:`~evaluation.store.adaptive_store.AdaptiveStore`.
        rows: ``(defense, threat, goal, attack name, eps)`` of every adaptive record the run
            makes (those already whole too).
        workers: the processes the records' batches run on (1: this process).
    """
    path = os.path.join(out_dir, PLAN_FILE)
    if not rows:
        if os.path.isfile(path):
            os.remove(path)
        return None
    records = []
    for defense, threat, goal, name, eps in rows:
        record = store.record_path(defense, name, eps, threat, goal)
        records.append({
            "defense": defense.label, "threat": str(threat), "goal": str(goal),
            "attack": name, "eps": float(eps), "record": os.path.relpath(record, out_dir),
            "batches": store.batches(), "batch_size": store.cfg.adaptive_batch,
            "images": len(store.images("test")),
            "fingerprint": store.record_fingerprint(defense, name, eps, threat, goal)})
    write_json_atomic(path, {
        "version": PLAN_VERSION, "workers": int(workers),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"), "records": records}, indent=1)
    return path


@dataclasses.dataclass
class RecordStatus:
    """One adaptive record's state.

    Attributes:
        finished, partway, stale: its image batches finished, being attacked (a saved state)
            and holding a file of another configuration (to be made again).
        images_done: images with nothing left to run; reached: images whose goal was
            reached so far.
        evaluations, seconds: target evaluations and worker seconds spent so far.
        runs_left: plan entries left on the images not finished (None: the plan's length is
            not known yet: no saved state says it and no finished batch holds an image that
            ran all of it).
        run_cost: the evaluations of a plan entry that ran to its end: per image that held
            so far, its evaluations over its entries done, the largest (None: no image has
            finished an entry without reaching the goal).
        unit_runs_left: the most plan entries left in one image batch (a work unit: it
            runs on one worker).
    """
    defense: str
    threat: str
    goal: str
    attack: str
    eps: float
    batches: int
    images: int
    finished: int = 0
    partway: int = 0
    stale: int = 0
    images_done: int = 0
    reached: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    runs_left: Optional[int] = 0
    run_cost: Optional[float] = None
    unit_runs_left: Optional[int] = 0

    @property
    def rate(self) -> Optional[float]:
        """Target evaluations per worker second so far."""
        return self.evaluations / self.seconds if self.seconds > 0 else None

    @property
    def seconds_left(self) -> Optional[float]:
        """Worker seconds left if every image still standing holds (None: nothing measured
        yet to project from)."""
        return self._worst(self.runs_left)

    @property
    def unit_seconds_left(self) -> Optional[float]:
        """The same for the image batch with the most left (a batch runs on one worker)."""
        return self._worst(self.unit_runs_left)

    def _worst(self, runs: Optional[int]) -> Optional[float]:
        if self.images_done == self.images:
            return 0.0
        if runs is None or self.run_cost is None or not self.rate:
            return None
        return runs * self.run_cost / self.rate


def read_plan(run_dir: str) -> Dict:
    """The plan a run wrote; ValueError naming the file and what to do when it is missing or
    not a plan."""
    path = os.path.join(run_dir, PLAN_FILE)
    if not os.path.isdir(run_dir):
        raise ValueError("%s is not a folder: give a run's folder, e.g. "
                         "results/cs5-2/mobilenetv2_050" % run_dir)
    if not os.path.isfile(path):
        raise ValueError("%s holds no %s: a run writes it when it starts its adaptive attacks "
                         "(a run without --threat adaptive or transfer has none; a run started "
                         "before this version writes it when it is started again)"
                         % (run_dir, PLAN_FILE))
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError("%s is not readable JSON (%s): start the run again to rewrite it"
                         % (path, e))
    keys = ("defense", "threat", "goal", "attack", "eps", "record", "batches", "batch_size",
            "images", "fingerprint")
    if (not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION
            or not isinstance(plan.get("records"), list)
            or not all(isinstance(r, dict) and all(k in r for k in keys)
                       for r in plan["records"])):
        raise ValueError("%s is not a plan of this version (%s): start the run again to "
                         "rewrite it" % (path, PLAN_VERSION))
    return plan


def _load(path: str, fingerprint: str) -> Optional[Dict]:
    """The arrays of an npz file whose fingerprint is ``fingerprint``, without its images;
    None when there is no such file, ``{}`` when it belongs to another configuration or is
    damaged (the run makes it again): :func:`~.layout.read_matching`."""
    return read_matching(path, fingerprint, skip=("best", "x_adv"))


def _batch_state(path: str, fp: Dict, b: int, size: int) -> Tuple[str, Optional[Dict]]:
    """``("finished" | "partway", arrays)`` of image batch ``b``, or ``("waiting", None)``
    -- ``("stale", None)`` when a file of another configuration is in its place."""
    done_file, state_file = batch_files(path, b)
    done = _load(done_file, batch_fingerprint(fp, b, size))
    if done:
        return "finished", done
    state = _load(state_file, batch_fingerprint(fp, b, size, progress=True))
    if state:
        return "partway", state
    return ("stale" if done == {} or state == {} else "waiting"), None


def record_status(run_dir: str, rec: Dict) -> RecordStatus:
    """The state of one planned record (an entry of the plan's ``records``)."""
    st = RecordStatus(rec["defense"], rec["threat"], rec["goal"], rec["attack"], rec["eps"],
                      int(rec["batches"]), int(rec["images"]))
    fp, size = rec["fingerprint"], int(rec["batch_size"])
    path = os.path.join(run_dir, rec["record"])
    whole = _load(path, canonical(fp))
    if whole:
        st.finished, st.images_done = st.batches, st.images
        st.reached = int(np.sum(whole["success"]))
        st.evaluations = int(np.sum(whole["route_evaluations"]))
        st.seconds = float(whole["seconds"])
        return st
    plan_length, per_run, unfinished = None, [], []
    for b in range(st.batches):
        n = min(size, st.images - b * size)
        kind, arrays = _batch_state(path, fp, b, size)
        if arrays is None:
            st.stale += kind == "stale"
            unfinished.append((np.zeros(n, np.int64), np.full(n, -1, np.int64)))
            continue
        won = np.asarray(arrays["won"])
        evals = np.asarray(arrays["route_evaluations"]).sum(axis=1)
        st.evaluations += int(evals.sum())
        st.seconds += float(arrays["seconds"])
        st.reached += int(np.sum(won >= 0))
        if kind == "finished":
            st.finished += 1
            st.images_done += n
            if np.any(won < 0):      # an image that held ran every entry: the runs list all
                plan_length = plan_length or len(json.loads(str(arrays["runs"])))
                per_run += [(e, None) for e in evals[won < 0]]
            continue
        st.partway += 1
        if "plan_length" in arrays:
            plan_length = int(arrays["plan_length"])
        entries = np.asarray(arrays["done"])
        per_run += [(e, int(d)) for e, d, w in zip(evals, entries, won) if w < 0 and d > 0]
        unfinished.append((entries, won))
    if plan_length is None:
        st.runs_left = None
        st.images_done += sum(int(np.sum(won >= 0)) for _, won in unfinished)
        return st
    costs = [e / (plan_length if d is None else d) for e, d in per_run]
    st.run_cost = max(costs) if costs else None
    st.runs_left, st.unit_runs_left = 0, 0
    for entries, won in unfinished:
        closed = (won >= 0) | (entries >= plan_length)
        st.images_done += int(np.sum(closed))
        left = int(np.sum(plan_length - entries[~closed]))
        st.runs_left += left
        st.unit_runs_left = max(st.unit_runs_left, left)
    return st


def run_status(run_dir: str) -> Tuple[Dict, List[RecordStatus]]:
    """The plan of the run in ``run_dir`` and the state of each of its records."""
    plan = read_plan(run_dir)
    return plan, [record_status(run_dir, rec) for rec in plan["records"]]


def _workers(plan: Dict) -> int:
    """The processes the plan's batches run on (at least one)."""
    return max(int(plan.get("workers", 1)), 1)


def _hours(seconds: Optional[float]) -> str:
    return "?" if seconds is None else "%.1f" % (seconds / 3600.0)


def status_text(run_dir: str) -> str:
    """``--status RUN_DIR``: a table of the records (pandas) and the worst case of what is
    left."""
    import pandas as pd

    plan, states = run_status(run_dir)
    table = pd.DataFrame([{
        "defense": s.defense, "threat": s.threat, "attack": "%s %g" % (s.attack, s.eps),
        "goal": s.goal,
        "batches done / part-way / all": "%d / %d / %d" % (s.finished, s.partway, s.batches),
        "images done": "%d / %d" % (s.images_done, s.images),
        "goal reached": s.reached,
        "worker h": _hours(s.seconds),
        "evaluations / worker s": "-" if s.rate is None else "%.1f" % s.rate,
        "worker h left if all hold": _hours(s.seconds_left)} for s in states])
    workers = _workers(plan)
    lines = ["Adaptive attacks of %s (planned %s, %d worker%s):"
             % (run_dir, plan.get("written", "?"), workers, "" if workers == 1 else "s"),
             table.to_string(index=False) if len(table) else "(no adaptive records)"]
    stale = sum(s.stale for s in states)
    if stale:
        lines.append("%d batch file(s) belong to another configuration or are damaged: they "
                     "are made again." % stale)
    return "\n".join(lines + worst_case_lines(states, workers))


def worst_case_lines(states: Sequence[RecordStatus], workers: int) -> List[str]:
    """What is left of the records ``states`` on ``workers``, if every image still standing
    holds (the last lines of the status)."""
    known = [s for s in states if s.seconds_left is not None]
    unknown = len(states) - len(known)
    left = sum(s.seconds_left for s in known)
    if not unknown and left == 0:
        return ["Every adaptive record is done."]
    lines = []
    if known and left > 0:
        # a batch runs on one worker: the last one starts once the rest is shared out
        unit = max(s.unit_seconds_left for s in known)
        lines.append(
            "If every image still standing holds to the end of its plan: %s worker h left, "
            "%s h of wall time on %d worker%s, at the rates measured so far%s."
            % (_hours(left), _hours((left - unit) / workers + unit), workers,
               "" if workers == 1 else "s",
               " -- for the records measured so far" if unknown else ""))
    if unknown:
        lines.append("%d record(s) have nothing measured to project from yet (not started, "
                     "or no image has run an entry to its end): their time comes on top."
                     % unknown)
    return lines


def worst_case_note(run_dir: str) -> Optional[str]:
    """:func:`worst_case_lines` of the run in ``run_dir`` on one line (None without a plan):
    the driver adds it to its log line of each adaptive unit that finishes."""
    try:
        plan, states = run_status(run_dir)
    except ValueError:
        return None
    return " ".join(worst_case_lines(states, _workers(plan)))
