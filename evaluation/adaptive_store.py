"""The adaptive attack store: the test images attacked through a defense by the adaptive
engine (:mod:`attacks.engine`; the defense-aware threat models), cached per defense, threat,
vector and goal in ``<out>/vectors/<threat>/<defense>/test-<attack>_<eps>.<goal>.npz`` --
and, while an attack runs, per image batch (``….batch-0000.npz``) and inside the batch being
attacked (``….batch-0000.progress.npz``, rewritten after each engine run but the last: a goal
run of the full recipe took 4-32 min in the bench here, one engine run a few), so an
interrupted run resumes where it stopped with the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks import resolve_config
from attacks.engine import AdaptiveEngine, BatchProgress, EngineResult, convergence
from defense.base import ADAPTIVE, TRANSFER, Defense, ImageSet, model_predictions
from defense.threats import Goal, Threat
from evaluation.records import (ADAPTIVE_VERSION, canonical, eps_tag, read_npz, safe_name,
                                short_digest, vector_fingerprint, write_npz)
from models.progress import Eta


class AdaptiveStore:
    """Adaptive attack records of one run (in memory and on disk).

    Args:
        cfg: the run's :class:`~evaluation.config.EvalConfig`.
        m: M (its predictions on the attacked images are recorded).
        fp: the run's fingerprint (:func:`evaluation.records.fingerprint`).
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
        path = os.path.join(self.folder, str(threat), safe_name(defense.label),
                            "test-%s_%s.%s.npz" % (name, eps_tag(eps), goal))
        self.touched.add(path)
        rec = read_npz(path, fp, self.log, {"x_adv": 4, "pred_adv": 1, "success": 1,
                                            "first_step": 2}, len(benign))
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
        return self._sets[key]

    def _adaptive_fp(self, defense: Defense, name: str, eps: float, threat: Threat,
                     goal: Goal) -> Dict:
        cfg = self.cfg
        attacker = defense.attacker_fingerprint()
        return dict(vector_fingerprint(cfg, dict(self.fp, model="m", split="test"), name, eps),
                    **({"attacker": attacker} if attacker else {}),
                    adaptive_version=ADAPTIVE_VERSION, defense=defense.fingerprint(),
                    decision=defense.params(), threat=str(threat), goal=str(goal),
                    engine=dataclasses.asdict(cfg.engine_settings()),
                    adaptive_batch=cfg.adaptive_batch,
                    options=dataclasses.asdict(cfg.adaptive_options()),
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
        target = defense.attack_target(threat, goal, cfg.adaptive_options())
        engine = AdaptiveEngine(resolve_config(name, eps), target, cfg.engine_settings(),
                                seed=cfg.seed)
        batches = -(-len(benign) // cfg.adaptive_batch)
        done = self._adaptive_batches(path, fp, batches)
        sizes = {i: min(cfg.adaptive_batch, len(benign) - i * cfg.adaptive_batch)
                 for i in range(batches) if i not in done}
        progress = self._batch_progress(path, fp, sizes)
        eta = Eta(batches, done=len(done))

        def save_progress(i, state: BatchProgress):
            write_npz(_progress_path(path, i), dict(
                _progress_arrays(state), fingerprint=canonical(_progress_fp(fp, i))))

        def save(i, part: EngineResult):
            write_npz(_batch_path(path, i), dict(_engine_arrays(part), fingerprint=canonical(
                dict(fp, batch=i))))
            if os.path.isfile(_progress_path(path, i)):
                os.remove(_progress_path(path, i))
            timing = eta.step()
            if cfg.progress:
                self.log("%s %s on %s, eps=%g [%s]: batch %d of %d, goal reached on %d of %d "
                         "(%s)" % (threat, name, defense.label, eps, goal, i + 1, batches,
                                   int(part.success.sum()), len(part.success), timing))

        res = engine.run(benign.x, benign.labels, batch_size=cfg.adaptive_batch, done=done,
                         on_batch=save, progress=progress, on_progress=save_progress)
        settings = cfg.engine_settings()
        conv = convergence(res.first_step, settings.steps)
        # wall time: this process's, or the engine's summed over every resumed part if more
        cost = {"evaluations_per_image": float(np.mean(res.evaluations)),
                "seconds": round(max(time.time() - start, res.seconds), 1),
                "runs": _run_summary(res.runs)}
        rec = dict(_engine_arrays(res), pred_adv=model_predictions(self.m, res.x_adv),
                   fingerprint=canonical(fp), seconds=cost["seconds"],
                   convergence=json.dumps(conv), cost=json.dumps(cost))
        write_npz(path, rec)
        for i in range(batches):
            for part in (_batch_path(path, i), _progress_path(path, i)):
                if os.path.isfile(part):
                    os.remove(part)
        self.log("%s %s on %s, eps=%g [%s]: goal reached on %.3f of the images, %s (%.0f s, "
                 "%.0f evaluations per image)" % (
                     threat, name, defense.label, eps, goal, float(np.mean(res.success)),
                     "converged" if conv["converged"] else "NOT CONVERGED: " + conv["why"],
                     cost["seconds"], cost["evaluations_per_image"]))
        return rec

    def _adaptive_batches(self, path: str, fp: Dict, batches: int) -> Dict[int, EngineResult]:
        """The image batches of an interrupted adaptive run already saved (same fingerprint)."""
        done = {}
        for i in range(batches):
            rec = read_npz(_batch_path(path, i), dict(fp, batch=i), self.log,
                           {"x_adv": 4, "success": 1, "first_step": 2})
            if rec is not None:
                done[i] = EngineResult(x_adv=rec["x_adv"], success=rec["success"],
                                       first_step=rec["first_step"],
                                       evaluations=rec["evaluations"],
                                       runs=json.loads(str(rec["runs"])),
                                       seconds=float(rec["seconds"]))
        if done:
            self.log("%s: resuming after %d of %d batches" % (path, len(done), batches))
        return done

    def _batch_progress(self, path: str, fp: Dict, sizes: Mapping[int, int]
                        ) -> Dict[int, BatchProgress]:
        """The state of batches interrupted between two engine runs (same fingerprint), for
        batch index -> its number of images; a damaged state is named and not used."""
        out = {}
        for i, n in sizes.items():
            rec = read_npz(_progress_path(path, i), _progress_fp(fp, i), self.log,
                           {"best": 4, "best_loss": 1, "active": 1, "evaluations": 1,
                            "first_step": 2, "runs_done": 0, "runs": 0, "seconds": 0}, n)
            if rec is None:
                continue
            try:
                out[i] = BatchProgress(
                    runs_done=int(rec["runs_done"]), best=rec["best"],
                    best_loss=rec["best_loss"], active=rec["active"],
                    evaluations=rec["evaluations"], first_step=rec["first_step"],
                    runs=json.loads(str(rec["runs"])), seconds=float(rec["seconds"]))
            except (ValueError, TypeError) as e:
                self.log("saved progress %s is damaged (%s): the batch is attacked from the "
                         "start" % (_progress_path(path, i), e))
                continue
            self.log("%s: resuming batch %d after %d engine runs"
                     % (path, i, out[i].runs_done))
        return out


def _progress_path(path: str, batch: int) -> str:
    """File of the state of the image batch being attacked, after its last finished run."""
    return path[:-len(".npz")] + ".batch-%04d.progress.npz" % batch


def _progress_fp(fp: Dict, batch: int) -> Dict:
    return dict(fp, batch=batch, progress="after a finished engine run")


def _progress_arrays(state: BatchProgress) -> Dict:
    return {"runs_done": state.runs_done, "best": state.best, "best_loss": state.best_loss,
            "active": state.active, "evaluations": state.evaluations,
            "first_step": state.first_step, "runs": json.dumps(state.runs),
            "seconds": state.seconds}


def _batch_path(path: str, batch: int) -> str:
    """File of one image batch of an adaptive record while it is being computed."""
    return path[:-len(".npz")] + ".batch-%04d.npz" % batch


def _engine_arrays(res: EngineResult) -> Dict:
    return {"x_adv": res.x_adv, "success": res.success, "first_step": res.first_step,
            "evaluations": res.evaluations, "runs": json.dumps(res.runs),
            "seconds": round(res.seconds, 1)}


def _run_summary(runs: Sequence[Mapping]) -> List[Dict]:
    """What the engine ran, summed over batches: per (restart, stage attack, target rank) the
    images attacked and those reaching the goal."""
    out: Dict[Tuple, Dict] = {}
    for r in runs:
        key = (r["restart"], r["stage"], r["attack"], r["target_rank"])
        row = out.setdefault(key, {"restart": r["restart"], "stage": r["stage"],
                                   "attack": r["attack"], "target_rank": r["target_rank"],
                                   "images": 0, "reached": 0})
        row["images"] += r["images"]
        row["reached"] += r["reached"]
    return [out[k] for k in sorted(out, key=lambda k: (k[0], k[1], -1 if k[3] is None
                                                       else k[3]))]
