"""The adaptive attack engine: any registry attack, run on any attack target, the way an
evaluation the field accepts runs it (SPEC §8, §11, §13).

:func:`attacks.run_attack` runs an attack once on a classifier and keeps its last iterate (the
gray-box records).  :class:`AdaptiveEngine` runs the *same* attack functions on an
:class:`~attacks.target.AttackTarget` -- a defense's adaptive target, or a classifier -- with:

* **routes** (SPEC §13): a target names the ways its defense's final answer can reach the
  attacker's goal (``target.routes``, e.g. UnMask's two-phase, K-only, joint and follow-M
  attacks); each image goes through them in order, as AutoAttack runs its attacks: a later
  route only on the images no earlier one won, per image the first success;
* **8-bit iterates**: the target is evaluated at the iterate quantised toward the clean image
  on the 1/255 grid (:func:`quantize`; never outside the ball or ``[0, 1]``), the gradient
  taken there is used for the float iterate (quantisation is the identity on the backward
  pass), and the image kept is the quantised one: every verdict is the real pipeline's on an
  image that can be saved as 8 bits;
* **the best iterate by the real decision**: per image, the first iterate at which the
  target's ``success`` (the goal: e.g. UnMask's final answer wrong and not rejected, or M
  fooled and not flagged) holds; the image is attacked no further; an image never reaching
  the goal keeps the highest-loss iterate seen;
* **several target classes**: a route that needs one (UnMask's part terms forge the parts of
  a class) or a stage ranked by targets (APGD-T) is run toward each of the first
  ``max_targets`` classes of ``target.ranked_targets``;
* **restarts**: ``restarts`` rounds over every stage and target; round 0 starts where the
  attack starts (e.g. PGD's random point, BIM's ``x``), later rounds at a new uniform random
  point of the ball;
* **composite attacks** (AutoAttack): their stages one after the other;
* **convergence evidence**: per image and restart the first step at which the goal was
  reached, from which :func:`convergence` gives the success rate after 10, 20, 50, 100 (200)
  steps and after each restart, and flags a number that the last doubling of steps or the last
  restart still changed by more than one point.

**Full batches.**  An image's plan (route x restart x stage x target rank) is a list of
entries; each (image, entry) *job* is a pure function of the image, its id and the entry --
its seed is ``(seed, image id, route, restart, stage, target rank)`` and its random start its
own -- so the result of a run does not depend on which images are attacked together.  The
jobs run on :class:`~attacks.scheduler.SlotScheduler`: ``slots`` at once, each a one-image
attack, their target evaluations made as one batched call per round (for UnMask: one pass of
M and one session run of K over every job's image); a slot freed by an image that reached the
goal or finished an entry takes the next job, so the batch stays full until the queue runs
dry.  Per step the cost is one evaluation of the target per attacked image; each run adds one
evaluation of its returned image.  An interrupted run resumes from its
:class:`EngineProgress` (per image, the entries consumed) to exactly the numbers of an
uninterrupted one.
"""
import tfcompat  # noqa: F401

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from attacks import _utils
from attacks.losses import cross_entropy
from attacks.registry import AttackConfig, get_attack
from attacks.scheduler import STOP, SlotScheduler, Stop
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


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """One run an image goes through: a route of the defense's decision rule, a restart
    round, a stage of the attack (AutoAttack has several) and a target rank (None:
    untargeted)."""
    route: str
    restart: int
    stage: int
    config: AttackConfig
    rank: Optional[int]

    def describe(self) -> Dict:
        return {"route": self.route, "attack": self.config.name, "restart": self.restart,
                "stage": self.stage, "target_rank": self.rank}


@dataclasses.dataclass
class EngineResult:
    """Outcome of an adaptive attack on N images.

    Attributes:
        x_adv: float32 ``[N, H, W, 3]``: per image the first iterate reaching the goal (at
            its winning plan entry), else the highest-loss iterate seen (8-bit when
            ``quantize``).
        success: bool ``[N]``, the goal reached (by the target's real decision).
        first_step: int64 ``[N, restarts]``: the step (evaluations into its run; 0 = the start
            point) at which the goal was first reached in each restart round, -1 where it was
            not (or the image was no longer attacked).
        route_evaluations: int64 ``[N, len(routes)]``: target evaluations spent on each
            image along each route (:attr:`evaluations`: their sum).
        won: int64 ``[N]``: the plan entry at which the image reached the goal (-1: none).
        routes: the target's routes, in the order they ran.
        runs: what ran, per plan entry in order (route, stage attack, restart, target rank,
            images attacked, images reaching the goal); entries no image ran are left out.
        seconds: wall time.
    """
    x_adv: np.ndarray
    success: np.ndarray
    first_step: np.ndarray
    route_evaluations: np.ndarray
    won: np.ndarray
    routes: Tuple[str, ...]
    runs: List[Dict]
    seconds: float = 0.0

    @property
    def evaluations(self) -> np.ndarray:
        """int64 ``[N]``: target evaluations spent on each image."""
        return self.route_evaluations.sum(axis=1)

    def route_wins(self) -> Dict[str, int]:
        """Per route, the images whose goal it reached (the first route to reach it)."""
        won = {r: 0 for r in self.routes}
        for run in self.runs:
            won[run["route"]] += run["reached"]
        return won


@dataclasses.dataclass
class EngineProgress:
    """Images part-way through their plans: per image, the results of the entries consumed
    so far, in plan order.  Each entry of an image is a pure function of the image and the
    entry (its seed is its own), so these arrays are all a resumed run needs to continue
    exactly as the uninterrupted one would have.

    Attributes:
        done: int64 ``[N]``: plan entries consumed per image (the image's next entry).
        won: int64 ``[N]``: the entry at which the image reached the goal, -1 while it did
            not (then it continues at ``done``; an image with ``done`` = the plan's length or
            ``won >= 0`` is finished).
        best: float32 ``[N, H, W, 3]``, the image kept per image so far.
        best_loss: float ``[N]``, the loss of ``best`` (``-inf``: none seen yet).
        route_evaluations: int64 ``[N, routes]``, target evaluations spent so far per route.
        first_step: int64 ``[N, restarts]``, as in :class:`EngineResult` so far.
        seconds: wall time spent so far.
        plan_length: the entries of every image's plan (set on the states handed to
            ``on_progress``, for a run's status: it does not enter a resumed run).
    """
    done: np.ndarray
    won: np.ndarray
    best: np.ndarray
    best_loss: np.ndarray
    route_evaluations: np.ndarray
    first_step: np.ndarray
    seconds: float = 0.0
    plan_length: Optional[int] = None

    @classmethod
    def start(cls, x: np.ndarray, restarts: int, routes: int) -> "EngineProgress":
        n = len(x)
        return cls(done=np.zeros(n, np.int64), won=np.full(n, -1, np.int64), best=x.copy(),
                   best_loss=np.full(n, -np.inf),
                   route_evaluations=np.zeros((n, routes), np.int64),
                   first_step=np.full((n, restarts), -1, np.int64))

    def copy(self) -> "EngineProgress":
        return EngineProgress(**{f.name: (np.copy(getattr(self, f.name))
                                          if isinstance(getattr(self, f.name), np.ndarray)
                                          else getattr(self, f.name))
                                 for f in dataclasses.fields(self)})

    def check(self, x: np.ndarray, restarts: int, routes: int, plan_length: int) -> None:
        """Refuse a state that does not fit these images and this plan (ValueError saying
        what differs and to delete it).  Shapes cannot tell other images of the same number or
        another attack with a plan as long: the caller keys saved states by the run's
        fingerprint."""
        n, problems = len(x), []
        if np.shape(self.best) != x.shape:
            problems.append("images %s, batch %s" % (np.shape(self.best), x.shape))
        for name in ("done", "won", "best_loss"):
            if np.shape(getattr(self, name)) != (n,):
                problems.append("%s %s, expected (%d,)" % (name, np.shape(getattr(self, name)),
                                                           n))
        for name, shape in (("first_step", (n, restarts)), ("route_evaluations", (n, routes))):
            if np.shape(getattr(self, name)) != shape:
                problems.append("%s %s, expected %s" % (name, np.shape(getattr(self, name)),
                                                        shape))
        if not problems:
            if np.any(self.done < 0) or np.any(self.done > plan_length):
                problems.append("entries done outside 0..%d" % plan_length)
            if np.any((self.won >= 0) & (self.won != self.done - 1)) or np.any(
                    self.won < -1):
                problems.append("a won entry that is not the image's last one done")
        if problems:
            raise ValueError("the saved progress does not belong to these images and this plan "
                             "(%s); delete it to attack them from the start"
                             % "; ".join(problems))

    def finished(self, plan_length: int) -> np.ndarray:
        """bool ``[N]``: images with nothing left to run."""
        return (self.won >= 0) | (self.done >= plan_length)


class _JobTarget(AttackTarget):
    """The target one job's attack sees: its image's requests go to the scheduler, which
    evaluates the round's jobs together; the iterate is quantised, and the job is ended when
    its image reaches the goal."""

    traceable = False

    def __init__(self, ctx, inner: AttackTarget, route: str):
        self.ctx, self.inner, self.route = ctx, inner, route
        self.requires_targets = inner.route_needs_targets(route)

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        loss, grad, logits, success = self.ctx.ask((np.asarray(x, np.float32), t, loss_fn))
        return Evaluation(tf.constant(loss), tf.constant(grad), tf.constant(logits),
                          tf.constant(success))

    def num_classes(self, x):
        return self.inner.num_classes(x)

    def ranked_targets(self, x, y):
        raise RuntimeError("the engine gives each job its target class")


class _JobState:
    """What one job has seen (filled by the scheduling thread as its requests are answered)."""

    def __init__(self, x0: np.ndarray, steps: int):
        self.x0, self.steps = x0, steps
        self.calls = self.evaluations = 0
        self.hit = -1
        self.best = x0
        self.best_loss = -np.inf


def _run_seed(seed: int, *parts: int) -> tf.Tensor:
    """A stateless seed ``[2]`` for one run, from the engine's seed and the run's indices."""
    state = np.random.SeedSequence([int(seed)] + [int(p) for p in parts]).generate_state(2)
    return tf.constant(state.astype(np.int64), tf.int64)


#: Images evaluated together by default (K runs in static chunks of 8 here: a multiple of 8).
DEFAULT_SLOTS = 32


class AdaptiveEngine:
    """One attack configuration on one target, run as the module docstring says.

    Args:
        config: the resolved attack (:func:`attacks.resolve_config`); its ``steps`` are
            replaced by ``settings.steps`` (and its step size, where it is the attack's
            default rule, by the rule's step for those steps).
        target: an :class:`~attacks.target.AttackTarget` (e.g. a defense's adaptive target);
            its ``routes`` are run in order (:meth:`AttackTarget.route_needs_targets`).
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

    def _ranks(self, stage: AttackConfig, route: str, available: int) -> List[Optional[int]]:
        """Target ranks a stage runs toward on ``route`` (``[None]``: untargeted, once)."""
        params = dict(stage.params)
        limit = available if self.settings.max_targets is None else min(
            available, self.settings.max_targets)
        if "first_target" in params:                      # APGD-T: its own ranks
            first = params["first_target"]
            return list(range(first, min(first + params["n_targets"], limit)))
        if self.target.route_needs_targets(route):
            return list(range(limit))
        return [None]

    def plan(self, num_classes: int) -> List[PlanEntry]:
        """The runs every image goes through, in order (routes, then restart rounds, stages
        and target ranks), until one reaches its goal."""
        stages = self.stages(num_classes)
        return [PlanEntry(route, r, s, stage, k) for route in self.target.routes
                for r in range(self.settings.restarts)
                for s, stage in enumerate(stages)
                for k in self._ranks(stage, route, num_classes - 1)]

    # ---------------------------------------------------------------- run
    def run(self, x: np.ndarray, y: np.ndarray, *, ids: Optional[Sequence[int]] = None,
            slots: int = DEFAULT_SLOTS, progress: Optional[EngineProgress] = None,
            on_progress: Optional[Callable[[EngineProgress], None]] = None,
            progress_every: float = 60.0, speculate: bool = True) -> EngineResult:
        """Attack images ``x`` (float32 ``[N, H, W, 3]`` on the 1/255 grid), labels ``y``.

        Args:
            ids: per image the index that seeds its runs (default ``0..N-1``): the same image
                with the same id gets the same runs in whatever set it is attacked.
            slots: images evaluated together (does not change the result).
            progress: the state of a run interrupted part-way (:class:`EngineProgress`); it
                continues from there.
            on_progress: called with the state at most every ``progress_every`` seconds
                (e.g. to save it), and not after the last image.
            speculate: let idle slots run later plan entries ahead (does not change the
                result).
        """
        start = time.perf_counter()
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        ids = np.arange(len(x)) if ids is None else np.asarray(ids, np.int64)
        if ids.shape != (len(x),):
            raise ValueError("ids must hold one index per image (%d), got shape %s"
                             % (len(x), ids.shape))
        if not len(x):
            raise ValueError("the adaptive engine needs at least one image")
        ranked = np.asarray(self.target.ranked_targets(tf.constant(x), tf.constant(y)))
        plan = self.plan(ranked.shape[1] + 1)
        routes = tuple(self.target.routes)
        state = (EngineProgress.start(x, self.settings.restarts, len(routes))
                 if progress is None else progress.copy())
        if progress is not None:
            state.check(x, self.settings.restarts, len(routes), len(plan))
        spent = float(state.seconds)
        eps = _utils.to_unit_scale(self.config.eps)
        last_save = [time.perf_counter()]

        def resolve(i, e, job: _JobState) -> bool:
            return _consume(state, plan, routes, i, e, job)

        def saved():
            if on_progress is None or time.perf_counter() - last_save[0] < progress_every:
                return
            last_save[0] = time.perf_counter()
            on_progress(dataclasses.replace(state.copy(), plan_length=len(plan),
                                            seconds=spent + time.perf_counter() - start))

        jobs = _Jobs(self, x, y, ids, ranked, plan, eps)
        scheduler = SlotScheduler(len(x), len(plan), slots, jobs.run, jobs.evaluate, resolve,
                                  start=state.done, resolved=state.finished(len(plan)),
                                  speculate=speculate, on_round=saved)
        scheduler.run()
        return EngineResult(x_adv=state.best, success=state.won >= 0,
                            first_step=state.first_step,
                            route_evaluations=state.route_evaluations, won=state.won,
                            routes=routes, runs=_runs(plan, state),
                            seconds=spent + time.perf_counter() - start)


def _consume(state: EngineProgress, plan: Sequence[PlanEntry], routes: Sequence[str], i: int,
             e: int, job: "_JobState") -> bool:
    """Add entry ``e``'s job to image ``i``'s state (entries come in plan order); True when
    the image reached the goal there."""
    state.route_evaluations[i, routes.index(plan[e].route)] += job.evaluations
    state.done[i] = e + 1
    if job.hit >= 0:
        r = plan[e].restart
        state.first_step[i, r] = (job.hit if state.first_step[i, r] < 0
                                  else min(state.first_step[i, r], job.hit))
        state.best[i], state.won[i] = job.best, e
        return True
    if job.best_loss > state.best_loss[i]:
        state.best[i], state.best_loss[i] = job.best, job.best_loss
    return False


def _runs(plan: Sequence[PlanEntry], state: EngineProgress) -> List[Dict]:
    """Per plan entry, the images that ran it and those reaching the goal there (entries no
    image ran are left out)."""
    out = []
    for e, entry in enumerate(plan):
        attacked = int(np.sum(state.done > e))
        if attacked:
            out.append(dict(entry.describe(), images=attacked,
                            reached=int(np.sum(state.won == e))))
    return out


class _Jobs:
    """The jobs of one engine run: what a job's thread runs and how a round is evaluated."""

    def __init__(self, engine: AdaptiveEngine, x, y, ids, ranked, plan, eps):
        self.engine, self.x, self.y, self.ids = engine, x, y, ids
        self.ranked, self.plan, self.eps = ranked, plan, eps
        self.quantise = engine.settings.quantize

    def run(self, ctx, i: int, e: int) -> _JobState:
        """Job thread: the attack of plan entry ``e`` on image ``i`` (one-image batch)."""
        entry = self.plan[e]
        stage = entry.config
        spec = get_attack(stage.name)
        job = _JobState(self.x[i], stage.steps)
        ctx.job.state = job
        target = _JobTarget(ctx, self.engine.target, entry.route)
        params = {k: v for k, v in dict(stage.params).items()
                  if k not in ("targeted", "first_target", "n_targets")}
        route_index = self.engine.target.routes.index(entry.route)
        seed = _run_seed(self.engine.seed, int(self.ids[i]), route_index, entry.restart,
                         entry.stage, 0 if entry.rank is None else entry.rank + 1)
        x_tf = tf.constant(self.x[i:i + 1])
        y_tf = tf.constant(self.y[i:i + 1])
        begin = None
        if entry.restart > 0:
            begin = _utils.random_start(x_tf, stage.norm, self.eps,
                                        seed + tf.constant([0, 1], tf.int64))
        t = None if entry.rank is None else tf.constant(self.ranked[i:i + 1, entry.rank],
                                                        tf.int64)
        try:
            out = spec.fn(target, x_tf, y_tf, eps=self.eps,
                          step_size=_utils.to_unit_scale(stage.step_size), steps=stage.steps,
                          norm=stage.norm, seed=seed, targets=t, start=begin, **params)
            target.evaluate(out, y_tf, t, cross_entropy)   # the verdict of the returned image
        except Stop:            # the goal was reached (or the job is no longer wanted)
            pass
        return job

    def evaluate(self, jobs) -> List:
        """One round: every job's request evaluated in one call of the target; each job's
        state takes its answer (a job whose image reached the goal is ended)."""
        xs, ts, losses, routes, rows = [], [], [], [], []
        for job in jobs:
            z, t, loss_fn = job.request
            st = job.state
            if self.quantise:
                z = quantize(z, st.x0[None])
            xs.append(z)
            ts.append(-1 if t is None else int(np.asarray(t).reshape(-1)[0]))
            losses.append(loss_fn)
            routes.append(self.plan[job.entry].route)
            rows.append(job.image)
        x = np.concatenate(xs)
        out = self.engine.target.evaluate_jobs(x, self.y[rows], np.asarray(ts, np.int64),
                                               losses, routes)
        loss, grad = np.asarray(out.loss, np.float32), np.asarray(out.grad, np.float32)
        logits, success = np.asarray(out.logits, np.float32), np.asarray(out.success, bool)
        replies = []
        for j, job in enumerate(jobs):
            st = job.state
            st.evaluations += 1
            if success[j]:
                st.best, st.hit = x[j], min(st.calls, st.steps)
                replies.append(STOP)
                continue
            if loss[j] > st.best_loss:
                st.best, st.best_loss = x[j], float(loss[j])
            st.calls += 1
            replies.append((loss[j:j + 1], grad[j:j + 1], logits[j:j + 1], success[j:j + 1]))
        return replies


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
