"""The adaptive attack engine: any registry attack, run on any attack target, the way an
evaluation the field accepts runs it (SPEC §8, §11).

:func:`attacks.run_attack` runs an attack once on a classifier and keeps its last iterate (the
gray-box records).  :class:`AdaptiveEngine` runs the *same* attack functions on an
:class:`~attacks.target.AttackTarget` -- a defense's adaptive target, or a classifier -- with:

* **8-bit iterates**: the target is evaluated at the iterate quantised toward the clean image
  on the 1/255 grid (:func:`quantize`; never outside the ball or ``[0, 1]``), the gradient
  taken there is used for the float iterate (quantisation is the identity on the backward
  pass), and the image kept is the quantised one: every verdict is the real pipeline's on an
  image that can be saved as 8 bits;
* **the best iterate by the real decision**: per image, the first iterate at which the
  target's ``success`` (the goal: e.g. UnMask's final answer wrong and not rejected, or M
  fooled and not flagged) holds; such an image is attacked no further (its rows are left out
  of every later evaluation, so it costs nothing more -- except for a loss that holds one value
  per row, marked ``loss_fn.per_image``, e.g. CW's constants); an image never reaching the
  goal keeps the highest-loss iterate seen;
* **several target classes**: a target with ``requires_targets`` (UnMask: the class whose
  parts are forged) or a stage ranked by targets (APGD-T) is run toward each of the first
  ``max_targets`` classes of ``target.ranked_targets`` on the images still not at the goal;
* **restarts**: ``restarts`` rounds over every stage and target; round 0 starts where the
  attack starts (e.g. PGD's random point, BIM's ``x``), later rounds at a new uniform random
  point of the ball;
* **composite attacks** (AutoAttack): their stages one after the other, each on the images
  still not at the goal;
* **convergence evidence**: per image and restart the first step at which the goal was
  reached, from which :func:`convergence` gives the success rate after 10, 20, 50, 100 (200)
  steps and after each restart, and flags a number that the last doubling of steps or the last
  restart still changed by more than one point.

Per step the cost is one evaluation of the target on the images still attacked (for UnMask:
one forward and backward pass of M and one session run of K); each run adds one evaluation of
its returned image.  Every run is seeded from ``(seed, batch, restart, stage, target rank)``,
so a batch interrupted between two runs resumes from its :class:`BatchProgress` (the per-image
state after the runs done) to exactly the numbers of an uninterrupted one.
"""
import tfcompat  # noqa: F401

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from attacks import _utils
from attacks.losses import cross_entropy
from attacks.registry import AttackConfig, get_attack
from attacks.target import AttackTarget, Evaluation

#: Steps at which the convergence trace reports the success rate (those <= the run's steps,
#: and the run's steps itself).
REPORT_STEPS = (10, 20, 50, 100, 200)
#: A number that the last doubling of steps or the last restart moved by more than this
#: (a fraction: one point) is flagged "not converged".
CONVERGENCE_TOLERANCE = 0.01


def quantize(x_adv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """8-bit image nearest to ``x_adv`` on the segment toward ``x``: ``x + trunc(255 (x_adv -
    x)) / 255``.  With ``x`` on the 1/255 grid the result is on it too, no farther from ``x``
    than ``x_adv`` in every pixel (so inside any L-inf or L2 ball ``x_adv`` was in) and in
    ``[0, 1]`` when ``x_adv`` is."""
    delta = np.trunc(np.round((x_adv - x) * 255.0, 4)) / 255.0
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """How an adaptive attack is run (see the module docstring).

    Attributes:
        steps: iterations of each run (each stage of a composite attack); SPEC §11 asks >= 100.
        restarts: rounds over every stage and target class (>= 1; SPEC §11 asks several).
        max_targets: target classes tried per image where targets are needed (None: all
            C - 1).
        quantize: evaluate 8-bit iterates (False only for targets that are not images of the
            1/255 grid, e.g. toys in tests).
        report_steps: the steps of the convergence trace.
    """
    steps: int = 100
    restarts: int = 2
    max_targets: Optional[int] = None
    quantize: bool = True
    report_steps: Sequence[int] = REPORT_STEPS

    def __post_init__(self):
        for name, low in (("steps", 1), ("restarts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError("%s must be an integer >= %d, got %r" % (name, low, value))
        if self.max_targets is not None and (isinstance(self.max_targets, bool) or not
                                             isinstance(self.max_targets, int)
                                             or self.max_targets < 1):
            raise ValueError("max_targets must be None or an integer >= 1, got %r"
                             % (self.max_targets,))


@dataclasses.dataclass
class EngineResult:
    """Outcome of an adaptive attack on N images.

    Attributes:
        x_adv: float32 ``[N, H, W, 3]``: per image the first iterate reaching the goal, else
            the highest-loss iterate seen (8-bit when ``quantize``).
        success: bool ``[N]``, the goal reached (by the target's real decision).
        first_step: int64 ``[N, restarts]``: the step (evaluations into its run; 0 = the start
            point) at which the goal was first reached in each restart round, -1 where it was
            not (or the image was no longer attacked).
        evaluations: int64 ``[N]``: target evaluations spent on each image.
        runs: list of what ran (stage attack, restart, target rank, images attacked, images
            reaching the goal), in order.
        seconds: wall time.
    """
    x_adv: np.ndarray
    success: np.ndarray
    first_step: np.ndarray
    evaluations: np.ndarray
    runs: List[Dict]
    seconds: float = 0.0


@dataclasses.dataclass
class BatchProgress:
    """One batch part-way through its plan (restart rounds x stages x target ranks, in order):
    what the engine knows after the first ``runs_done`` runs.  Every run is seeded by its
    indices, so these arrays are all a resumed batch needs to continue exactly as the
    uninterrupted one would have.

    Attributes:
        runs_done: runs of the plan finished.
        best: float32 ``[B, H, W, 3]``, the image kept per image so far.
        best_loss: float ``[B]``, the loss of ``best`` (``-inf``: none seen yet).
        active: bool ``[B]``, images not yet at the goal.
        evaluations: int64 ``[B]``, target evaluations spent so far.
        first_step: int64 ``[B, restarts]``, as in :class:`EngineResult` so far.
        runs: what ran so far (as in :class:`EngineResult`).
        seconds: wall time spent so far.
    """
    runs_done: int
    best: np.ndarray
    best_loss: np.ndarray
    active: np.ndarray
    evaluations: np.ndarray
    first_step: np.ndarray
    runs: List[Dict]
    seconds: float = 0.0

    def __post_init__(self):
        if len(self.runs) != self.runs_done:
            raise ValueError("a batch state with %d runs listed for %d done"
                             % (len(self.runs), self.runs_done))


class _Tracker(AttackTarget):
    """Wraps the real target during one batch: quantises iterates, leaves out the images
    already at the goal, and keeps per image the first successful / highest-loss iterate."""

    traceable = False

    def __init__(self, inner: AttackTarget, x0: np.ndarray, quantise: bool):
        self.inner = inner
        self.x0 = x0
        self.quantise = quantise
        n = len(x0)
        self.active = np.ones(n, bool)
        self.best = x0.copy()
        self.best_loss = np.full(n, -np.inf)
        self.evaluations = np.zeros(n, np.int64)
        self.rows = np.arange(n)
        self.calls, self.steps = 0, 0
        self.hits = np.full(n, -1, np.int64)       # step of the first success in this run
        self.num_classes_ = None

    def begin(self, rows: np.ndarray, steps: int) -> None:
        """A new run on ``rows`` of ``steps`` steps (a success found by the evaluation of the
        returned image, after the last step, counts at step ``steps``)."""
        self.rows, self.calls, self.steps = rows, 0, steps
        self.hits = np.full(len(self.x0), -1, np.int64)

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        rows = self.rows
        x = np.asarray(x, np.float32)
        if self.quantise:
            x = quantize(x, self.x0[rows])
        live = self.active[rows]
        if getattr(loss_fn, "per_image", False):
            live = np.ones(len(rows), bool)   # the loss holds one value per row: keep them all
        n, grad = len(rows), np.zeros_like(x)
        loss, success = np.zeros(n, np.float32), np.ones(n, bool)
        logits = None
        if live.any():
            sub_t = None if t is None else tf.boolean_mask(t, live)
            out = self.inner.evaluate(tf.constant(x[live]), tf.boolean_mask(y, live), sub_t,
                                      loss_fn)
            logits_live = np.asarray(out.logits)
            self.num_classes_ = logits_live.shape[1]
            logits = np.zeros((n, self.num_classes_), np.float32)
            logits[live] = logits_live
            loss[live], grad[live] = np.asarray(out.loss), np.asarray(out.grad)
            success[live] = np.asarray(out.success)
            self._record(rows[live], x[live], loss[live], success[live])
        if logits is None:
            logits = np.zeros((n, self.num_classes_ or 1), np.float32)
        self.calls += 1
        return Evaluation(tf.constant(loss), tf.constant(grad), tf.constant(logits),
                          tf.constant(success))

    def _record(self, rows, x, loss, success) -> None:
        active = self.active[rows]
        success = success & active
        self.evaluations[rows[active]] += 1
        higher = (loss > self.best_loss[rows]) & active & ~success
        self.best[rows[higher]], self.best_loss[rows[higher]] = x[higher], loss[higher]
        won = rows[success]
        self.best[won] = x[success]
        self.hits[won] = min(self.calls, self.steps)
        self.active[won] = False

    def num_classes(self, x):
        return self.inner.num_classes(x)


def _run_seed(seed: int, *parts: int) -> tf.Tensor:
    """A stateless seed ``[2]`` for one run, from the engine's seed and the run's indices."""
    state = np.random.SeedSequence([int(seed)] + [int(p) for p in parts]).generate_state(2)
    return tf.constant(state.astype(np.int64), tf.int64)


class AdaptiveEngine:
    """One attack configuration on one target, run as the module docstring says.

    Args:
        config: the resolved attack (:func:`attacks.resolve_config`); its ``steps`` are
            replaced by ``settings.steps`` (and its step size, where it is the attack's
            default rule, by the rule's step for those steps).
        target: an :class:`~attacks.target.AttackTarget` (e.g. a defense's adaptive target).
        settings: :class:`EngineSettings`.
        seed: non-negative int.

    Raises:
        ValueError: a universal attack (one perturbation for every image: nothing to adapt
            per image; the reason goes in the report) or an attack that is always targeted at
            random classes (``ga``).
    """

    def __init__(self, config: AttackConfig, target: AttackTarget, settings: EngineSettings,
                 seed: int = 0):
        spec = get_attack(config.name)
        if spec.universal:
            raise ValueError("%s is a universal perturbation: one image-agnostic v fitted on "
                             "M, not an attack an adaptive attacker runs per image through "
                             "the defense" % config.name)
        if spec.targeting == "always":
            raise ValueError("%s attacks random target classes by design; the adaptive "
                             "engine chooses its targets itself (run a per-image attack such "
                             "as pgd_linf or apgd_t)" % config.name)
        self.config = config
        self.target = target
        self.settings = settings
        self.seed = int(seed)
        self.spec = spec

    # ---------------------------------------------------------------- plan
    def stages(self, num_classes: int) -> List[AttackConfig]:
        """The attack configurations run one after the other (one for a plain attack)."""
        from attacks.registry import resolve_config
        cfg = self.config
        params = dict(cfg.params)
        params.pop("targeted", None)
        if self.spec.stages is not None:
            steps = self.settings.steps
            outer = resolve_config(cfg.name, cfg.eps, steps=steps, **params)
            return list(self.spec.stages(outer, num_classes))
        steps = None if self.spec.fixed_steps else self.settings.steps
        rule = self.spec.step_rule
        custom = (cfg.step_size is not None and rule is not None
                  and cfg.step_size != rule(cfg.eps, cfg.steps))
        # the attack's default step follows the engine's steps; a step size given is kept
        return [resolve_config(cfg.name, cfg.eps, steps=steps,
                               step_size=cfg.step_size if custom else None, **params)]

    def _ranks(self, stage: AttackConfig, available: int) -> List[Optional[int]]:
        """Target ranks a stage runs toward (``[None]``: untargeted, once)."""
        params = dict(stage.params)
        limit = available if self.settings.max_targets is None else min(
            available, self.settings.max_targets)
        if "first_target" in params:                      # APGD-T: its own ranks
            first = params["first_target"]
            return list(range(first, min(first + params["n_targets"], limit)))
        if self.target.requires_targets:
            return list(range(limit))
        return [None]

    # ---------------------------------------------------------------- run
    def plan(self, num_classes: int) -> List[tuple]:
        """The runs of one batch, in order: ``(restart, stage index, stage config, target rank
        or None)`` (a run finds no image left once every image is at the goal)."""
        stages = self.stages(num_classes)
        return [(r, s, stage, k) for r in range(self.settings.restarts)
                for s, stage in enumerate(stages)
                for k in self._ranks(stage, num_classes - 1)]

    def run_batch(self, x: np.ndarray, y: np.ndarray, batch_index: int,
                  progress: Optional[BatchProgress] = None,
                  on_progress: Optional[Callable[[BatchProgress], None]] = None
                  ) -> EngineResult:
        """Attack one batch (float32 ``[B, H, W, 3]`` on the 1/255 grid, labels ``[B]``).

        ``progress``: the batch's state after some of its runs (a resumed batch; it continues
        with the next run); ``on_progress(state)`` is called after each run but the plan's
        last (e.g. to save it; the last one's state is the result).
        """
        start = time.perf_counter()
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        tracker = _Tracker(self.target, x, self.settings.quantize)
        y_tf = tf.constant(y)
        ranked = np.asarray(self.target.ranked_targets(tf.constant(x), y_tf))
        plan = self.plan(ranked.shape[1] + 1)
        first = np.full((len(x), self.settings.restarts), -1, np.int64)
        runs, spent, done = [], 0.0, 0
        if progress is not None:
            _check_progress(progress, x, first.shape, len(plan))
            tracker.best, tracker.best_loss = progress.best.copy(), progress.best_loss.copy()
            tracker.active = progress.active.copy()
            tracker.evaluations = progress.evaluations.copy()
            first, runs = progress.first_step.copy(), list(progress.runs)
            spent, done = float(progress.seconds), int(progress.runs_done)
        eps = _utils.to_unit_scale(self.config.eps)
        for j in range(done, len(plan)):
            r, s, stage, k = plan[j]
            rows = np.flatnonzero(tracker.active)
            if rows.size == 0:
                break
            seed = _run_seed(self.seed, batch_index, r, s, 0 if k is None else k + 1)
            tracker.begin(rows, stage.steps)
            self._run_stage(stage, tracker, x[rows], y[rows],
                            None if k is None else ranked[rows, k], seed, r > 0, eps)
            hit = rows[tracker.hits[rows] >= 0]
            first[hit, r] = np.where(first[hit, r] >= 0,
                                     np.minimum(first[hit, r], tracker.hits[hit]),
                                     tracker.hits[hit])
            runs.append({"attack": stage.name, "restart": r, "stage": s, "target_rank": k,
                         "images": int(rows.size), "reached": int(hit.size)})
            if on_progress is not None and j + 1 < len(plan):
                on_progress(BatchProgress(
                    runs_done=j + 1, best=tracker.best.copy(),
                    best_loss=tracker.best_loss.copy(), active=tracker.active.copy(),
                    evaluations=tracker.evaluations.copy(), first_step=first.copy(),
                    runs=list(runs), seconds=spent + time.perf_counter() - start))
        return EngineResult(x_adv=tracker.best, success=~tracker.active, first_step=first,
                            evaluations=tracker.evaluations, runs=runs,
                            seconds=spent + time.perf_counter() - start)

    def _run_stage(self, stage: AttackConfig, tracker: _Tracker, x: np.ndarray, y: np.ndarray,
                   targets: Optional[np.ndarray], seed: tf.Tensor, restart: bool,
                   eps: float) -> None:
        """One run of one stage on the rows ``tracker`` attacks; the attack's returned image
        is evaluated too (its verdict counts at the run's last step)."""
        spec = get_attack(stage.name)
        params = dict(stage.params)
        params.pop("targeted", None)
        for key in ("first_target", "n_targets"):
            params.pop(key, None)
        x_tf = tf.constant(x)
        start = None
        if restart:
            start = _utils.random_start(x_tf, stage.norm, eps, seed + tf.constant([0, 1],
                                                                              tf.int64))
        t = None if targets is None else tf.constant(targets, tf.int64)
        out = spec.fn(tracker, x_tf, tf.constant(y), eps=eps,
                      step_size=_utils.to_unit_scale(stage.step_size), steps=stage.steps,
                      norm=stage.norm, seed=seed, targets=t, start=start, **params)
        tracker.evaluate(out, tf.constant(y), t, cross_entropy)     # the verdict only

    def run(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 50,
            done: Optional[Dict[int, EngineResult]] = None,
            on_batch: Optional[Callable[[int, EngineResult], None]] = None,
            progress: Optional[Dict[int, BatchProgress]] = None,
            on_progress: Optional[Callable[[int, BatchProgress], None]] = None
            ) -> EngineResult:
        """Attack ``x`` in batches (batch ``i`` seeded by ``i``).  A resumed run gives the
        same numbers as an uninterrupted one: ``done`` holds batches already attacked,
        ``progress`` batches interrupted between two runs (:class:`BatchProgress`);
        ``on_batch(i, result)`` is called after each new batch and ``on_progress(i, state)``
        after each run inside one but its last (e.g. to save them)."""
        parts = []
        for i, begin in enumerate(range(0, len(x), batch_size)):
            if done is not None and i in done:
                part = done[i]
            else:
                part = self.run_batch(
                    x[begin:begin + batch_size], y[begin:begin + batch_size], i,
                    progress=None if progress is None else progress.get(i),
                    on_progress=(None if on_progress is None else
                                 lambda state, i=i: on_progress(i, state)))
                if on_batch is not None:
                    on_batch(i, part)
            parts.append(part)
        return merge(parts)


def _check_progress(progress: BatchProgress, x: np.ndarray, first_shape: tuple,
                    plan_runs: int) -> None:
    """Refuse a state whose shapes or run count do not fit this batch and plan rather than
    continue from it (a state's own run list is checked when it is made).  (Shapes cannot tell another batch of the same size or another seed or
    attack with a plan as long: the caller keys saved states by the run's fingerprint.)"""
    n = len(x)
    problems = []
    if progress.best.shape != x.shape:
        problems.append("images %s, batch %s" % (progress.best.shape, x.shape))
    for name in ("best_loss", "active", "evaluations"):
        if getattr(progress, name).shape != (n,):
            problems.append("%s %s, expected (%d,)" % (name, getattr(progress, name).shape, n))
    if progress.first_step.shape != tuple(first_shape):
        problems.append("first_step %s, expected %s" % (progress.first_step.shape,
                                                        tuple(first_shape)))
    if not 0 < progress.runs_done < plan_runs:
        problems.append("runs_done %d of a %d-run plan" % (progress.runs_done, plan_runs))
    if problems:
        raise ValueError("the saved progress does not belong to this batch and plan (%s); "
                         "delete it to attack the batch from the start" % "; ".join(problems))


def merge(parts: Sequence[EngineResult]) -> EngineResult:
    """The batches of one run, concatenated in order."""
    return EngineResult(
        x_adv=np.concatenate([p.x_adv for p in parts]).astype(np.float32),
        success=np.concatenate([p.success for p in parts]),
        first_step=np.concatenate([p.first_step for p in parts]),
        evaluations=np.concatenate([p.evaluations for p in parts]),
        runs=[dict(r, batch=i) for i, p in enumerate(parts) for r in p.runs],
        seconds=float(sum(p.seconds for p in parts)))


def convergence(first_step: np.ndarray, steps: int,
                report_steps: Sequence[int] = REPORT_STEPS,
                tolerance: float = CONVERGENCE_TOLERANCE) -> Dict:
    """The success rate along the attack and whether it had settled.

    Args:
        first_step: int ``[N, R]`` from :class:`EngineResult` (-1: not reached in that
            restart round).
        steps: the steps of each run.
        report_steps: steps to report (those < ``steps``, and ``steps``).
        tolerance: a change larger than this (a fraction) is "not converged".

    Returns:
        ``{"steps": {s: rate}, "restarts": [rate after round 1, ...], "converged": bool,
        "why": text}``; a rate of 1 (every image at the goal) is converged whatever the path.
        ``rate(s)``: images whose goal some round reached within ``s`` steps of its run.
        Images are not attacked further once at the goal, so a truncated run's rate is a
        lower bound: the flag errs toward "not converged".
    """
    reached = first_step >= 0
    by_step = {}
    for s in sorted({s for s in report_steps if s < steps} | {steps}):
        by_step[int(s)] = float(np.mean(np.any(reached & (first_step <= s), axis=1)))
    by_restart = [float(np.mean(np.any(reached[:, :r + 1], axis=1)))
                  for r in range(first_step.shape[1])]
    reasons = []
    if by_step[steps] >= 1.0:
        return {"steps": by_step, "restarts": by_restart, "converged": True,
                "why": "every image reached the goal: no more steps or restarts can change it"}
    half = steps // 2
    if half >= 1:
        at_half = float(np.mean(np.any(reached & (first_step <= half), axis=1)))
        if by_step[steps] - at_half > tolerance:
            reasons.append("doubling the steps from %d to %d still changed it by %.1f points"
                           % (half, steps, 100 * (by_step[steps] - at_half)))
    if len(by_restart) > 1 and by_restart[-1] - by_restart[-2] > tolerance:
        reasons.append("the last restart still changed it by %.1f points"
                       % (100 * (by_restart[-1] - by_restart[-2])))
    return {"steps": by_step, "restarts": by_restart, "converged": not reasons,
            "why": "; ".join(reasons) or "the last doubling of steps and the last restart "
                                           "each changed it by at most %.0f point"
                                           % (100 * tolerance)}
