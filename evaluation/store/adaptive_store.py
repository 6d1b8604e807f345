"""The adaptive attack store: the test images attacked through a defense by the adaptive
engine (:mod:`attacks.engine`; the defense-aware threat models), cached per defense, threat,
vector and goal in ``<out>/vectors/<threat>/<defense>/test-<attack>_<eps>.<goal>.npz`` --
and, while an attack runs, per image batch (``….batch-0000.npz``, ``--adaptive-batch`` images:
the work unit of a Ray run and of resuming) and inside the batch being attacked
(``….batch-0000.progress.npz``, rewritten about every minute: per image, the plan entries
done), so an interrupted run resumes where it stopped with the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks import resolve_config
from attacks.engine import AdaptiveEngine, EngineProgress, EngineResult, convergence
from defense.base import ADAPTIVE, TRANSFER, Defense, ImageSet, model_predictions
from defense.threats import Goal, Threat
from evaluation.store.layout import batch_fp as _batch_fp
from evaluation.store.layout import batch_order
from evaluation.store.layout import batch_path as _batch_path
from evaluation.store.layout import progress_fp as _progress_fp
from evaluation.store.layout import progress_path as _progress_path
from evaluation.store.layout import same_fingerprint
from evaluation.store.records import (ADAPTIVE_VERSION, Field, canonical, check_record, eps_tag,
                                      read_npz, safe_name, short_digest, vector_fingerprint,
                                      write_npz)


#: The arrays of an engine result's record and what they must hold.
_ENGINE_ARRAYS = {"x_adv": Field(4, "images"), "success": Field(1, "bool"),
                  "first_step": Field(2, "step"), "route_evaluations": Field(2, "count"),
                  "won": Field(1, "step")}
#: The whole record adds M's answers on the attacked images.
_RECORD_ARRAYS = dict(_ENGINE_ARRAYS, pred_adv=Field(1, "classes"))
#: A batch's saved progress.
_PROGRESS_ARRAYS = {"best": Field(4, "images"), "best_loss": Field(1, "loss"),
                    "done": Field(1, "count"), "won": Field(1, "step"),
                    "route_evaluations": Field(2, "count"), "first_step": Field(2, "step"),
                    "seconds": Field(0, rows=False)}


def _engine_problem(rec: Mapping) -> Optional[str]:
    """What an engine record's arrays say against each other: an image reached the goal
    exactly when it has a winning plan entry."""
    if not np.array_equal(np.asarray(rec["success"]), np.asarray(rec["won"]) >= 0):
        return "'success' disagrees with the winning entries 'won'"
    return None


class AdaptiveStore:
    """Adaptive attack records of one run (in memory and on disk).

    Args:
        cfg: the run's :class:`~evaluation.config.EvalConfig`.
        m: M (its predictions on the attacked images are recorded).
        fp: the run's fingerprint (:func:`evaluation.store.records.fingerprint`).
        images: split -> the benign :class:`ImageSet` of that split.
        folder: the run's ``vectors/`` folder.
    """

    def __init__(self, cfg, m, fp: Dict, images: Callable[[str], ImageSet], folder: str,
                 log: Callable[[str], None]):
        self.cfg = cfg
        self.m = m
        self.fp = fp
        self.images = images
        self.folder = folder
        self.log = log
        #: (threat, goal, defense, attack, eps) -> convergence, cost and per-image success of
        #: an adaptive record (the attacker's own verdicts)
        self.info: Dict[Tuple, Dict] = {}
        #: the adaptive-attack files written or reused
        self.touched: set = set()
        self._sets: Dict[Tuple, ImageSet] = {}

    def adaptive(self, defense: Defense, name: str, eps: float, threat: Threat = ADAPTIVE,
                 goal: Goal = Goal.WRONG) -> ImageSet:
        """The test images attacked by ``defense``'s adaptive target (``threat`` transfer:
        through its surrogate) for ``goal``, with vector (``name``, ``eps``)'s attack run by
        the adaptive engine."""
        key = (threat, goal, defense.label, name, float(eps))
        if key in self._sets:
            return self._sets[key]
        benign = self.images("test")
        fp = self._adaptive_fp(defense, name, eps, threat, goal)
        path = self.record_path(defense, name, eps, threat, goal)
        self.touched.add(path)
        rec = self._read(path, fp, _RECORD_ARRAYS, len(benign))
        if rec is None:
            rec = self._run_adaptive(defense, name, eps, threat, goal, benign, fp, path)
        else:
            self.log("%s %s on %s, eps=%g [%s]: reusing %s" % (threat, name, defense.label, eps,
                                                               goal, path))
        self._sets[key] = ImageSet(
            name="%s-%s/test-%s_%s.%s" % (threat, defense.label, name, eps_tag(eps), goal),
            split="test", x=rec["x_adv"], keys=benign.keys, labels=benign.labels,
            preds={"m": rec["pred_adv"]}, fingerprint=fp)
        self.info[key] = {k: json.loads(str(rec[k])) for k in ("convergence", "cost")}
        self.info[key]["success"] = rec["success"]
        self.info[key]["routes"] = json.loads(str(rec["routes"]))
        return self._sets[key]

    def record_fingerprint(self, defense: Defense, name: str, eps: float, threat: Threat,
                           goal: Goal) -> Dict:
        """What the record of (``defense``, ``threat``, ``goal``, vector) depends on; each of
        its batch files holds it with the batch and the batch size (:func:`batch_fingerprint`)."""
        return self._adaptive_fp(defense, name, eps, threat, goal)

    def _adaptive_fp(self, defense: Defense, name: str, eps: float, threat: Threat,
                     goal: Goal) -> Dict:
        cfg = self.cfg
        attacker = defense.attacker_fingerprint()
        return dict(vector_fingerprint(cfg, dict(self.fp, model="m", split="test"), name, eps),
                    **({"attacker": attacker} if attacker else {}),
                    adaptive_version=ADAPTIVE_VERSION, defense=defense.fingerprint(),
                    decision=defense.params(), threat=str(threat), goal=str(goal),
                    routes=list(defense.chosen_routes(goal, cfg.adaptive_options())),
                    engine=dataclasses.asdict(cfg.engine_settings()),
                    options={k: v for k, v in dataclasses.asdict(
                        cfg.adaptive_options()).items() if k != "routes"},
                    surrogate=(short_digest(self._surrogate(defense)) if threat == TRANSFER
                               else None))

    def _surrogate(self, defense: Defense) -> Optional[str]:
        """The surrogate K checkpoint of ``defense``'s transfer attack
        (:meth:`~defense.base.Defense.transfer_surrogate` says which)."""
        return {"standard": self.cfg.k_transfer,
                "robust": self.cfg.k_transfer_robust}.get(defense.transfer_surrogate())

    def _run_adaptive(self, defense, name, eps, threat, goal, benign, fp, path) -> Dict:
        cfg = self.cfg
        start = time.time()
        parts = {i: self.adaptive_batch(defense, name, eps, threat, goal, i, fp=fp)
                 for i in self.batch_order()}
        res = merge([parts[i] for i in range(self.batches())])
        check_record(_engine_arrays(res), _ENGINE_ARRAYS, len(benign),
                     "the merged adaptive record %s" % path, image_shape=benign.x.shape[1:])
        settings = cfg.engine_settings()
        conv = convergence(res.first_step, settings.steps)
        # wall time: this process's, or the engine's summed over every resumed part if more
        cost = {"evaluations_per_image": float(np.mean(res.evaluations)),
                "seconds": round(max(time.time() - start, res.seconds), 1),
                "runs": _run_summary(res.runs), "routes": route_summary(res)}
        rec = dict(_engine_arrays(res), pred_adv=model_predictions(self.m, res.x_adv),
                   fingerprint=canonical(fp), seconds=cost["seconds"],
                   convergence=json.dumps(conv), cost=json.dumps(cost))
        write_npz(path, rec)
        for i in range(self.batches()):
            for part in (_batch_path(path, i), _progress_path(path, i)):
                if os.path.isfile(part):
                    os.remove(part)
        self.log("%s %s on %s, eps=%g [%s]: goal reached on %.3f of the images, %s (%.0f s, "
                 "%.0f evaluations per image; won per route: %s)" % (
                     threat, name, defense.label, eps, goal, float(np.mean(res.success)),
                     "converged" if conv["converged"] else "NOT CONVERGED: " + conv["why"],
                     cost["seconds"], cost["evaluations_per_image"],
                     ", ".join("%s %d" % (r, v["won"]) for r, v in cost["routes"].items())))
        return rec

    def has_record(self, defense: Defense, name: str, eps: float, threat: Threat,
                   goal: Goal, fp: Optional[Dict] = None) -> bool:
        """The whole adaptive record is saved (same fingerprint, undamaged); ``fp`` as in
        :meth:`batch_current`."""
        path = self.record_path(defense, name, eps, threat, goal)
        return self._read(path, fp or self._adaptive_fp(defense, name, eps, threat, goal),
                          _RECORD_ARRAYS, len(self.images("test"))) is not None

    def _read(self, path: str, fp: Dict, expect: Dict, n: int,
              extra=_engine_problem) -> Optional[Dict]:
        """A saved record (:func:`~evaluation.store.records.read_npz`) checked for this run's class
        count and image shape, and its arrays against each other (``extra``); a damaged one is
        named and left for recomputing."""
        rec = read_npz(path, fp, self.log, expect, n, classes=len(self.cfg.class_set.classes),
                       image_shape=self.images("test").x.shape[1:])
        problem = None if rec is None or extra is None else extra(rec)
        if problem:
            self.log("saved record %s is damaged (%s): recomputed" % (path, problem))
            return None
        return rec

    def batch_path(self, defense: Defense, name: str, eps: float, threat: Threat, goal: Goal,
                   batch: int) -> str:
        """File of image batch ``batch`` of an adaptive record while it is computed."""
        return _batch_path(self.record_path(defense, name, eps, threat, goal), batch)

    def batches(self) -> int:
        """Image batches of an adaptive record (``--adaptive-batch`` images each)."""
        return -(-len(self.images("test")) // self.cfg.adaptive_batch)

    def batch_current(self, defense: Defense, name: str, eps: float, threat: Threat,
                      goal: Goal, batch: int, fp: Optional[Dict] = None) -> bool:
        """Image batch ``batch`` of the record is saved under the record's current
        fingerprint (not another configuration's, batch size's or code version's).  Only the
        fingerprint is read: the content is checked where the batch is read.  ``fp``: the
        record's fingerprint when the caller has it (:meth:`record_fingerprint` digests a
        transfer attack's surrogate K)."""
        fp = fp or self._adaptive_fp(defense, name, eps, threat, goal)
        return same_fingerprint(
            _batch_path(self.record_path(defense, name, eps, threat, goal), batch),
            canonical(_batch_fp(fp, batch, self.cfg.adaptive_batch)))

    def batch_order(self) -> List[int]:
        """Every image batch, in the order they are attacked (the classes taking turns:
        :func:`~evaluation.store.layout.batch_order`)."""
        return batch_order(self.images("test").labels, self.cfg.adaptive_batch)

    def record_path(self, defense: Defense, name: str, eps: float, threat: Threat,
                    goal: Goal) -> str:
        return os.path.join(self.folder, str(threat), safe_name(defense.label),
                            "test-%s_%s.%s.npz" % (name, eps_tag(eps), goal))

    def adaptive_batch(self, defense: Defense, name: str, eps: float, threat: Threat,
                       goal: Goal, batch: int, fp: Optional[Dict] = None) -> EngineResult:
        """Image batch ``batch`` of an adaptive record: read when saved, else attacked (from
        its saved progress when an earlier run was interrupted inside it) and saved -- a
        work unit of its own (:mod:`evaluation.grid`'s adaptive units)."""
        cfg, benign = self.cfg, self.images("test")
        fp = fp or self._adaptive_fp(defense, name, eps, threat, goal)
        path = self.record_path(defense, name, eps, threat, goal)
        begin = batch * cfg.adaptive_batch
        end = min(begin + cfg.adaptive_batch, len(benign))
        if not 0 <= begin < len(benign):
            raise ValueError("adaptive batch %d: the run has %d batches" % (batch,
                                                                           self.batches()))
        rec = self._read(_batch_path(path, batch), _batch_fp(fp, batch, cfg.adaptive_batch),
                         _ENGINE_ARRAYS, end - begin)
        if rec is not None:
            self.log("%s %s on %s, eps=%g [%s]: batch %d of %d reused from %s" % (
                threat, name, defense.label, eps, goal, batch + 1, self.batches(),
                _batch_path(path, batch)))
            return _engine_result(rec)
        label = "%s %s on %s, eps=%g [%s]" % (threat, name, defense.label, eps, goal)
        target = defense.attack_target(threat, goal, cfg.adaptive_options())
        engine = AdaptiveEngine(resolve_config(name, eps), target, cfg.engine_settings(),
                                seed=cfg.seed)
        progress = self._batch_progress(path, _batch_fp(fp, batch, cfg.adaptive_batch), batch,
                                        end - begin, benign.x.shape[1:])

        def save_progress(state: EngineProgress):
            write_npz(_progress_path(path, batch), dict(
                _progress_arrays(state), fingerprint=canonical(
                    _progress_fp(_batch_fp(fp, batch, cfg.adaptive_batch)))))
            if cfg.progress:
                self.log("%s: batch %d, goal reached on %d of %d images so far (state saved)"
                         % (label, batch + 1, int(np.sum(state.won >= 0)), end - begin))

        part = engine.run(benign.x[begin:end], benign.labels[begin:end],
                          ids=np.arange(begin, end), slots=cfg.adaptive_slots,
                          progress=progress, on_progress=save_progress,
                          progress_every=cfg.adaptive_save_seconds)
        write_npz(_batch_path(path, batch), dict(_engine_arrays(part), fingerprint=canonical(
            _batch_fp(fp, batch, cfg.adaptive_batch))))
        if os.path.isfile(_progress_path(path, batch)):
            os.remove(_progress_path(path, batch))
        self.log("%s: batch %d of %d, goal reached on %d of %d (%.0f s)"
                 % (label, batch + 1, self.batches(), int(part.success.sum()),
                    len(part.success), part.seconds))
        return part

    def _batch_progress(self, path: str, batch_fp: Dict, batch: int, n: int,
                        image_shape: Optional[tuple] = None) -> Optional[EngineProgress]:
        """The saved state of a batch interrupted part-way (same batch fingerprint,
        :func:`_batch_fp`); a damaged one is named and not used."""
        rec = read_npz(_progress_path(path, batch), _progress_fp(batch_fp), self.log,
                       _PROGRESS_ARRAYS, n, image_shape=image_shape)
        if rec is None:
            return None
        state = EngineProgress(done=rec["done"], won=rec["won"], best=rec["best"],
                               best_loss=rec["best_loss"],
                               route_evaluations=rec["route_evaluations"],
                               first_step=rec["first_step"], seconds=float(rec["seconds"]))
        self.log("%s: resuming batch %d with %d plan entries of its %d images done"
                 % (path, batch, int(state.done.sum()), n))
        return state


def _progress_arrays(state: EngineProgress) -> Dict:
    arrays = {"done": state.done, "won": state.won, "best": state.best,
              "best_loss": state.best_loss, "route_evaluations": state.route_evaluations,
              "first_step": state.first_step, "seconds": state.seconds}
    if state.plan_length is not None:      # for the run's status (not read back on resuming)
        arrays["plan_length"] = np.int64(state.plan_length)
    return arrays


def _engine_arrays(res: EngineResult) -> Dict:
    return {"x_adv": res.x_adv, "success": res.success, "first_step": res.first_step,
            "route_evaluations": res.route_evaluations, "won": res.won,
            "routes": json.dumps(list(res.routes)), "runs": json.dumps(res.runs),
            "seconds": round(res.seconds, 1)}


def _engine_result(rec: Mapping) -> EngineResult:
    return EngineResult(x_adv=rec["x_adv"], success=rec["success"],
                        first_step=rec["first_step"],
                        route_evaluations=rec["route_evaluations"], won=rec["won"],
                        routes=tuple(json.loads(str(rec["routes"]))),
                        runs=json.loads(str(rec["runs"])), seconds=float(rec["seconds"]))


def merge(parts: Sequence[EngineResult]) -> EngineResult:
    """The image batches of one goal run, concatenated in the order given (image order:
    what ran is summed per plan entry, in the order entries first appear there)."""
    routes = parts[0].routes
    if any(p.routes != routes for p in parts):
        raise ValueError("the batches of one adaptive record ran different routes: %s"
                         % sorted({p.routes for p in parts}))
    won = [p.won for p in parts]
    return EngineResult(
        x_adv=np.concatenate([p.x_adv for p in parts]).astype(np.float32),
        success=np.concatenate([p.success for p in parts]),
        first_step=np.concatenate([p.first_step for p in parts]),
        route_evaluations=np.concatenate([p.route_evaluations for p in parts]),
        won=np.concatenate(won), routes=routes,
        runs=_run_summary([r for p in parts for r in p.runs]),
        seconds=float(sum(p.seconds for p in parts)))


def route_summary(res: EngineResult) -> Dict[str, Dict]:
    """Per route, in the order they ran: the images it attacked, those whose goal it reached
    first, and its target evaluations per image (over every image)."""
    won = res.route_wins()
    attacked = {r: 0 for r in res.routes}
    for run in res.runs:
        if run["restart"] == 0 and run["stage"] == 0 and run["target_rank"] in (None, 0):
            attacked[run["route"]] += run["images"]
    return {r: {"images": attacked[r], "won": won[r],
                "evaluations_per_image": float(np.mean(res.route_evaluations[:, k]))}
            for k, r in enumerate(res.routes)}


def _run_summary(runs: Sequence[Mapping]) -> List[Dict]:
    """What the engine ran, summed over batches: per plan entry (route, restart, stage attack,
    target rank), in the order they first ran, the images attacked and those reaching the
    goal."""
    out: Dict[Tuple, Dict] = {}
    for r in runs:
        key = (r.get("route", "default"), r["restart"], r["stage"], r["attack"],
               r["target_rank"])
        row = out.setdefault(key, {"route": key[0], "restart": r["restart"],
                                   "stage": r["stage"], "attack": r["attack"],
                                   "target_rank": r["target_rank"], "images": 0, "reached": 0})
        row["images"] += r["images"]
        row["reached"] += r["reached"]
    return list(out.values())
