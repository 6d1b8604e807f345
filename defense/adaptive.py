"""Defense-aware ("adaptive") attack targets of the bench (SPEC §8, §11).

The paper evaluates UnMask gray-box only: the attacker never sees the defense.  A defense is
only as good as its result against an attacker who knows it (Carlini & Wagner 2017, Athalye
et al. 2018, Tramer et al. 2020), so each defense that hides something from the gray-box
attacker gives an :class:`~attacks.target.AttackTarget` on which every attack of the registry
runs through :class:`attacks.engine.AdaptiveEngine` (restarts, several target classes, 8-bit
iterates, the best iterate by the real decision, convergence traces):

* input transforms (:class:`TransformTarget`): **BPDA** -- M applied to the transform, whose
  backward pass is its own linear form (PCA, down-sampling) or the identity (JPEG, bit depth);
  a random transform (the noise defense) gets **EOT**: the loss and its gradient averaged over
  :data:`EOT_SAMPLES` fresh draws per step;
* the trajectory detector (:class:`TrajectoryTarget`): M's loss and the detector's
  "looks natural" term ``-softplus(D(x))`` through the taps, the trajectory embedding and the
  LSTM;
* UnMask (:class:`UnMaskTarget`): M and K along every route of its decision rule
  (:mod:`defense.routes`: follow-m, two-phase, k-only, joint) toward target classes (their
  parts forged in K's ROI logits, the others erased); K's gradient and part sets come from its
  own graph and session (:class:`~models.mrcnn.attack_interface.PartScorer`), one session run
  for a batch whatever its rows' routes.

A detector target has two terms, M's (the attack's loss) and the detector's, combined by one
of :data:`GRADIENT_MODES` (each term's gradient scaled to unit L2 norm per image):

* ``two-phase`` -- M's term until M says what the attacker wants (``y'``, or not ``y``), then
  the detector's (Tramer et al. 2020's mask);
* ``joint`` -- both at once, M's only until M says it (the seed-003 attack's sum);
* ``orthogonal`` -- Bryniarski et al. 2022: each phase's gradient projected orthogonally to the
  other term's, so a step for one term does not undo the other to first order.

Every target's ``success`` is the real pipeline's verdict for the attack's goal
(:class:`~defense.threats.Goal`), computed by the defense (``judge``) from the same forward
passes that give the gradient.  ``none`` and ``at`` have no adaptive target: their gray-box
attack already sees everything there is.
"""
from __future__ import annotations

import collections
import zlib
from typing import Callable

import numpy as np

import tfcompat
from attacks.target import AttackTarget, Evaluation, rank_by_score
from defense.routes import K_GRADIENT_EVERY_STEP, M_FORWARD_ONLY, UNMASK_ROUTES

tf, keras = tfcompat.import_tf()

#: Draws averaged per step by EOT (the issue asks for >= 20).
EOT_SAMPLES = 20
#: How a detector target combines its two gradients (see the module docstring).
GRADIENT_MODES = ("two-phase", "joint", "orthogonal")
#: Default gradient mode per detector target: UnMask two-phase (SPEC §11), the trajectory
#: detector its seed's own joint sum.
DEFAULT_GRADIENT = {"unmask": "two-phase", "trajectory": "joint"}


def check_gradient_mode(mode: str) -> str:
    if mode not in GRADIENT_MODES:
        raise ValueError("gradient mode %r: use one of %s" % (mode, ", ".join(GRADIENT_MODES)))
    return mode


def unit(g):
    """Each image's gradient ``[B, H, W, 3]`` scaled to unit L2 norm (zero stays zero)."""
    n = tf.sqrt(tf.reduce_sum(tf.square(g), axis=[1, 2, 3], keepdims=True))
    return g / tf.maximum(n, 1e-12)


def _orthogonal(a, b):
    """``a`` minus its projection on ``b`` (per image; both unit or zero)."""
    dot = tf.reduce_sum(a * b, axis=[1, 2, 3], keepdims=True)
    return a - dot * b


def combine(m_grad, d_grad, m_done, mode: str):
    """The step direction of a detector target from the gradient raising M's loss
    (``m_grad``), the one raising the detector term (``d_grad``) and ``m_done`` (bool
    ``[B]``: M already says what the attacker wants); see the module docstring."""
    um, ud = unit(m_grad), unit(d_grad)
    done = tf.reshape(tf.cast(m_done, um.dtype), [-1, 1, 1, 1])
    if mode == "joint":
        return um * (1.0 - done) + ud
    if mode == "two-phase":
        return um * (1.0 - done) + ud * done
    return _orthogonal(um, ud) * (1.0 - done) + _orthogonal(ud, um) * done


def _m_wants(logits, y, t):
    """bool ``[B]``: M says ``t`` (targeted) or not ``y`` (untargeted)."""
    pred = tf.argmax(logits, axis=1)
    if t is None:
        return tf.not_equal(pred, tf.cast(y, tf.int64))
    return tf.equal(pred, tf.cast(t, tf.int64))


def _numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def iterate_seed(seed: int, images: np.ndarray) -> int:
    """The seed of one EOT evaluation's draws, from the attack's ``seed`` and the iterate.

    Seeding by the iterate (not by a call counter) makes the draws a function of where the
    attack stands: a resumed attack meets exactly the draws of the uninterrupted one.  The
    price: two evaluations at the very same iterate (an attack stalled at the ball's edge)
    meet the same draws rather than fresh ones -- the step then repeats exactly, as a
    deterministic target's would.

    Args:
        seed: the target's base seed.
        images: the iterate, ``[B, H, W, 3]`` (its float32 bytes are hashed).
    Returns:
        an int in ``[0, 2**31)``.
    """
    digest = zlib.crc32(np.ascontiguousarray(images, np.float32).tobytes())
    return (int(seed) * 1000003 + digest) % (2 ** 31)


class TransformTarget(AttackTarget):
    """M behind an input transform, attacked through BPDA (EOT for a random transform).

    Args:
        model: M (float32 ``[B, H, W, 3]`` in [0, 1] -> logits).
        transform: a :class:`~defense.transforms.Preprocessor` (its ``bpda`` gives the
            forward value and the BPDA backward pass).
        judge: ``(x [B, H, W, 3] numpy, y [B]) -> bool [B]``: the defense's real answer is
            wrong and not a rejection (a random transform's verdict is instead the answer of
            M's probabilities averaged over the evaluation's EOT draws: one draw's answer
            says little about the next).
        samples: EOT draws per step (random transforms only).
        seed: base of the EOT draws.  Each image's draws are seeded by
            :func:`iterate_seed` of ``seed`` and that image's iterate, so a run is
            reproducible, a resumed attack meets the same draws as the uninterrupted one, and
            an image's draws do not depend on the images evaluated beside it.
    """
    traceable = False

    def __init__(self, model, transform, judge: Callable, samples: int = EOT_SAMPLES,
                 seed: int = 0):
        if samples < 1:
            raise ValueError("EOT needs at least one sample, got %r" % (samples,))
        self.model, self.transform, self.judge = model, transform, judge
        self.samples = int(samples) if transform.randomized else 1
        self.seed = int(seed)
        self.routes = ("eot",) if transform.randomized else ("bpda",)

    def _seen(self, x, samples=None):
        """What M sees of ``x`` (inside the caller's tape): each image's ``samples`` EOT draws
        (default: the target's), image i's at rows ``i*s .. i*s+s-1``, each image's seeded by
        its own iterate; or the transform of the batch."""
        if not self.transform.randomized:
            return self.transform.bpda(x, seed=0)
        images, s = _numpy(x), self.samples if samples is None else samples
        return tf.concat([self.transform.bpda(tf.repeat(x[i:i + 1], s, axis=0),
                                              seed=iterate_seed(self.seed, images[i]))
                          for i in range(images.shape[0])], axis=0)

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        s = self.samples
        x = tf.convert_to_tensor(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits_all = self.model(self._seen(x), training=False)
            rep = (lambda v: None if v is None else tf.repeat(v, s, axis=0)) if s > 1 else (
                lambda v: v)
            loss_all = loss_fn(logits_all, rep(y), rep(t))
            loss = tf.reduce_mean(tf.reshape(loss_all, [-1, s]), axis=1)
        grad = tape.gradient(loss, x)
        logits = tf.reduce_mean(tf.reshape(logits_all, [-1, s, tf.shape(logits_all)[1]]),
                                axis=1)
        if self.transform.randomized:
            # one draw's answer says little about the next: the verdict is the answer of M's
            # probabilities averaged over this evaluation's draws (no extra pass)
            probs = tf.reduce_mean(tf.reshape(tf.nn.softmax(logits_all),
                                              [-1, s, tf.shape(logits_all)[1]]), axis=1)
            success = tf.not_equal(tf.argmax(probs, axis=1), tf.cast(y, tf.int64))
        else:
            success = tf.constant(np.asarray(self.judge(_numpy(x), _numpy(y)), bool))
        return Evaluation(loss, grad, logits, success)

    def ranked_targets(self, x, y):
        """Classes by M's logits on one draw of each image (seeded by the image: the same
        targets whatever images are ranked beside it)."""
        x = tf.convert_to_tensor(x, tf.float32)
        return rank_by_score(self.model(self._seen(x, samples=1), training=False), y)

    def num_classes(self, x):
        return tf.shape(self.model(x[:1], training=False))[1]


class TrajectoryTarget(AttackTarget):
    """The seed-003 detector: M's loss and ``-w softplus(D(x))`` (the BCE of the detector's
    logit toward "natural", to lower) through the taps, the embedding and the LSTM.  One
    route: fool M and stay below the threshold (a flag is a rejection).

    Args:
        taps_with_logits: model ``x -> [taps..., logits]`` (:func:`models.taps.tap_model`).
        embed: ``taps -> trajectory tensor [B, L, K]``.
        detector: ``trajectory -> logit [B, 1]``.
        threshold: the detector's operating threshold on its probability.
        mode: one of :data:`GRADIENT_MODES`.
        weight: ``w`` of the detector term in the loss value.
    """
    traceable = True
    routes = ("evade",)

    def __init__(self, taps_with_logits, embed, detector, threshold: float,
                 mode: str = "joint", weight: float = 1.0):
        self.taps, self.embed, self.detector = taps_with_logits, embed, detector
        self.threshold = float(threshold)
        self.mode = check_gradient_mode(mode)
        self.weight = float(weight)
        self._steps = {}

    def _step(self, loss_fn, targeted: bool):
        key = (loss_fn, targeted)
        if key not in self._steps:
            def step(x, y, t):
                with tf.GradientTape(persistent=True) as tape:
                    tape.watch(x)
                    outs = self.taps(x, training=False)
                    logits = outs[-1]
                    d = tf.reshape(self.detector(self.embed(outs[:-1]), training=False), [-1])
                    m_loss = loss_fn(logits, y, t if targeted else None)
                    hide = -tf.nn.softplus(d)
                m_grad, d_grad = tape.gradient(m_loss, x), tape.gradient(hide, x)
                del tape
                wants = _m_wants(logits, y, t if targeted else None)
                grad = combine(m_grad, d_grad, wants, self.mode)
                flagged = tf.sigmoid(d) >= self.threshold
                fooled = tf.not_equal(tf.argmax(logits, axis=1), tf.cast(y, tf.int64))
                success = tf.logical_and(fooled, tf.logical_not(flagged))
                return m_loss + self.weight * hide, grad, logits, success
            self._steps[key] = tf.function(step, reduce_retracing=True)
        return self._steps[key]

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(y, tf.int64)
        t_in = tf.cast(t, tf.int64) if t is not None else tf.zeros_like(y)
        return Evaluation(*self._step(loss_fn, t is not None)(x, y, t_in))

    def ranked_targets(self, x, y):
        return rank_by_score(self.taps(x, training=False)[-1], y)

    def num_classes(self, x):
        return tf.shape(self.taps(x[:1], training=False)[-1])[1]


class UnMaskTarget(AttackTarget):
    """UnMask's M and K attacked along the routes of its decision rule (SPEC §8, §13).

    The loss value is ``L_M - L_K`` (``-L_K`` on the ``k-only`` route): ``L_M`` the attack's
    loss of M (toward ``y'``, or untargeted on ``follow-m``) and ``L_K`` the part-set hinge of
    :meth:`PartScorer.hinge_value_and_grad` (``lam_present`` ×
    Σ_{p ∈ V[k]} relu(κ − smax_r m_{r,p}) + ``lam_absent`` ×
    Σ_{p ∉ V[k]} Σ_r relu(m_{r,p} + κ), to lower: the parts of K's target class ``k`` appear in
    K's ROI logits, every other part disappears), with ``k = y'`` -- or M's current answer on
    ``follow-m``.  The direction combines the two gradients by the route
    (:mod:`defense.routes`, :func:`combine`).  One evaluation of a batch -- whatever its rows' routes, losses and
    targets -- costs one forward and backward pass of M per loss and a session run of K (two:
    one with its backward pass for the rows whose route uses K's gradient at this step, one
    forward only for the others), which also gives K's part sets: ``judge(pred [B], parts, y [B]) -> bool [B]`` turns them
    and M's answer into the verdict of the attack's goal (the defense's Algorithm 1, at its
    threshold).

    Args:
        model: M.
        scorer: a :class:`~models.mrcnn.attack_interface.PartScorer` of K (the real K, or a
            surrogate for the transfer threat, whose part sets then also make the verdict:
            the attacker cannot query the real K).
        class_parts_list: ``V``, the expected part set of each class in M's output order.
        judge: see above.
        mode: how the ``two-phase`` route combines its gradients (one of
            :data:`GRADIENT_MODES`: ``two-phase``, or ``orthogonal``; ``joint`` makes it the
            ``joint`` route).
        routes: the routes attacked, in order (default: ``two-phase`` alone).
        kappa, lam_present, lam_absent, tau: the part hinge's settings.
    """
    traceable = False
    requires_targets = True

    def __init__(self, model, scorer, class_parts_list, judge: Callable,
                 mode: str = "two-phase", kappa: float = 1.0, lam_present: float = 1.0,
                 lam_absent: float = 1.0, tau: float = 0.5, routes=("two-phase",)):
        self.model, self.scorer, self.judge = model, scorer, judge
        self.mode = check_gradient_mode(mode)
        unknown = [r for r in routes if r not in UNMASK_ROUTES]
        if unknown or not routes:
            raise ValueError("UnMask routes %s: give some of %s" % (list(routes),
                                                                     ", ".join(UNMASK_ROUTES)))
        self.routes = tuple(routes)
        self.class_parts = [frozenset(v) for v in class_parts_list]
        index = {p: i for i, p in enumerate(scorer.part_names)}
        self.masks = np.zeros((len(self.class_parts), scorer.num_parts), np.float32)
        for c, parts in enumerate(self.class_parts):
            for p in parts:
                if p not in index:
                    raise ValueError("part %r of class %d is not one of K's classes" % (p, c))
                self.masks[c, index[p]] = 1.0
        self.hinge = dict(kappa=kappa, lam_present=lam_present, lam_absent=lam_absent, tau=tau)
        self._steps = collections.OrderedDict()
        self._forward = None

    def route_needs_targets(self, route: str) -> bool:
        return route != "follow-m"

    def _m_step(self, loss_fn, targeted: bool = True):
        """M's loss, its gradient and logits for ``loss_fn``, compiled once per loss (the
        last few kept: an attack that makes a loss per call, as CW's per-image constants do,
        does not grow the cache without bound)."""
        key = (loss_fn, targeted)
        if key in self._steps:
            self._steps.move_to_end(key)
        else:
            while len(self._steps) >= 8:
                self._steps.popitem(last=False)
            def step(x, y, t):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    logits = self.model(x, training=False)
                    loss = loss_fn(logits, y, t if targeted else None)
                return loss, tape.gradient(loss, x), logits
            self._steps[key] = tf.function(step, reduce_retracing=True)
        return self._steps[key]

    def _m_logits(self):
        """M's logits alone (a forward pass, compiled once): for the rows whose route never
        uses M's loss or gradient (``k-only``), whose M answer still makes the verdict.  The
        logits equal those of the pass with the gradient up to float rounding (~1e-6 here:
        the two graphs fuse differently), as they do across batch sizes."""
        if self._forward is None:
            self._forward = tf.function(lambda x: self.model(x, training=False),
                                        reduce_retracing=True)
        return self._forward

    def _m_terms(self, x, y, t, loss_fns, need_grad=None):
        """M's loss ``[B]``, its gradient and logits, one pass per (loss, targeted) group of
        rows (``t[i] < 0``: untargeted); the rows where ``need_grad`` (bool ``[B]``, default
        all) is False get M's forward pass only (their loss and gradient are zero)."""
        n = len(x)
        need = np.ones(n, bool) if need_grad is None else np.asarray(need_grad, bool)
        loss, grad = np.zeros(n, np.float32), np.zeros_like(x)
        logits = None
        groups = {}
        for i, (fn, ti) in enumerate(zip(loss_fns, t)):
            key = (fn, bool(ti >= 0)) if need[i] else None
            groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            rows = np.asarray(rows)
            if key is None:
                lg = _numpy(self._m_logits()(tf.constant(x[rows])))
            else:
                fn, targeted = key
                tt = t[rows] if targeted else np.zeros(len(rows), np.int64)
                l, g, lg = self._m_step(fn, targeted)(
                    tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(tt))
                lg = _numpy(lg)
                loss[rows], grad[rows] = _numpy(l), _numpy(g)
            if logits is None:
                logits = np.zeros((n, lg.shape[1]), np.float32)
            logits[rows] = lg
        return loss, grad, logits

    def _k_terms(self, images, k_target, pred, y, need_grad):
        """K's hinge ``[B]`` toward the parts of ``k_target``, its gradient (where
        ``need_grad``; zero elsewhere, with no backward pass), and the goal's verdict on M's
        answer ``pred`` and K's part sets."""
        present = self.masks[k_target]
        k_loss, k_grad, parts = self.scorer.hinge_value_and_grad(
            images, present, 1.0 - present, return_parts=True, need_grad=need_grad,
            **self.hinge)
        return k_loss, k_grad, np.asarray(self.judge(pred, parts, y), bool)

    def evaluate_jobs(self, x, y, t, loss_fns, routes) -> Evaluation:
        x = np.asarray(x, np.float32)
        y, t = np.asarray(y, np.int64), np.asarray(t, np.int64)
        routes = np.asarray(routes)
        if np.any((t < 0) & (routes != "follow-m")):
            raise ValueError("UnMask's routes other than follow-m need a target class y' per "
                             "image (the class whose parts K is made to see); the engine "
                             "gives them")
        # a route that never uses M's loss or gradient: M runs forward for its answer
        m_loss, m_grad, logits = self._m_terms(x, y, t, loss_fns,
                                               ~np.isin(routes, M_FORWARD_ONLY))
        pred = np.argmax(logits, axis=1)
        runner_up = np.asarray(rank_by_score(logits, y))[:, 0]
        k_target = np.where(routes == "follow-m", np.where(pred != y, pred, runner_up), t)
        wants = np.where(t >= 0, pred == t, pred != y)
        # the two-phase rule uses K's gradient only once M says y': before, K runs forward
        k_grad_used = np.isin(routes, K_GRADIENT_EVERY_STEP) | (
            (routes == "two-phase") & ((self.mode != "two-phase") | wants))
        k_loss, k_grad, success = self._k_terms(x, k_target, pred, y, k_grad_used)
        grad = _route_directions(tf.constant(m_grad), -tf.constant(k_grad, tf.float32),
                                 wants, routes, self.mode)
        loss = np.where(routes == "k-only", 0.0, m_loss) - k_loss
        return Evaluation(loss.astype(np.float32), _numpy(grad), logits, success)

    def evaluate_route(self, x, y, t, loss_fn, route: str) -> Evaluation:
        if route not in self.routes:
            raise ValueError("route %r is not one of this target's routes %s"
                             % (route, self.routes))
        n = int(tf.shape(x)[0])
        if t is None and route != "follow-m":
            raise ValueError("UnMask's adaptive target needs a target class y' per image (the "
                             "class whose parts K is made to see); the engine gives them")
        tt = np.full(n, -1, np.int64) if t is None else _numpy(t).astype(np.int64)
        out = self.evaluate_jobs(_numpy(x), _numpy(y), tt, [loss_fn] * n, [route] * n)
        return Evaluation(*(tf.constant(v) for v in out))

    def evaluate(self, x, y, t, loss_fn) -> Evaluation:
        """The first route's evaluation (:meth:`evaluate_route`)."""
        return self.evaluate_route(x, y, t, loss_fn, self.routes[0])

    def ranked_targets(self, x, y):
        """Classes other than ``y`` by the Jaccard overlap of their expected parts with K's
        part set of ``x`` (highest first; ties: class-set order)."""
        found = self.scorer.detected_parts(_numpy(x))
        overlap = np.zeros((len(found), len(self.class_parts)), np.float32)
        for i, parts in enumerate(found):
            for c, expected in enumerate(self.class_parts):
                union = len(parts | expected)
                overlap[i, c] = len(parts & expected) / union if union else 0.0
        return rank_by_score(overlap, y)

    def num_classes(self, x):
        return len(self.class_parts)


def _route_directions(m_grad, d_grad, m_done, routes, mode: str):
    """Per row, the step direction of its route (:mod:`defense.routes`) from M's gradient and
    the detector term's, ``m_done`` bool ``[B]``: M already says what the attacker wants."""
    routes = np.asarray(routes)
    out = tf.zeros_like(m_grad)
    rules = {"follow-m": lambda: combine(m_grad, d_grad, m_done, "joint"),
             "two-phase": lambda: combine(m_grad, d_grad, m_done, mode),
             "joint": lambda: combine(m_grad, d_grad, m_done, "joint"),
             "k-only": lambda: unit(d_grad)}
    for route, rule in rules.items():
        rows = routes == route
        if rows.any():
            out = tf.where(tf.reshape(tf.constant(rows), [-1, 1, 1, 1]), rule(), out)
    return out


class RandomizedUnMaskTarget(UnMaskTarget):
    """UnMask whose K sees a random resize-and-pad of the image (``unmask:input=random``),
    attacked with **EOT**: every evaluation draws ``samples`` fresh transforms per image,
    runs K once on all ``B x samples`` transformed images, maps each draw's part-loss
    gradient back through that draw's exact adjoint (the 8-bit steps inside K's molding stay
    straight-through, BPDA, as in :class:`UnMaskTarget`) and averages loss and gradient over
    the draws.  The verdict is the judge's on a majority of the draws: one draw's part set
    says little about the next, and the final evaluation is the real pipeline's own draw.

    Args:
        transform: the :class:`~defense.transforms.ResizePadTransform` in front of K.
        samples: EOT draws per evaluation (>= 1; the bench uses >= 20).
        seed: base of the draws.  Each image's draws are seeded from ``seed`` and a digest of
            that image's iterate (8-bit, so exactly reproducible): fresh draws at every step,
            the same draws for the same iterate whatever is evaluated beside it -- so an
            attack resumed after its saved state gets the draws of the uninterrupted run,
            which a call counter would not.
        Other arguments: as :class:`UnMaskTarget`.
    """

    def __init__(self, model, scorer, class_parts_list, judge: Callable, transform,
                 samples: int = EOT_SAMPLES, seed: int = 0, **kwargs):
        super().__init__(model, scorer, class_parts_list, judge, **kwargs)
        if int(samples) < 1:
            raise ValueError("RandomizedUnMaskTarget: samples (EOT draws per step) must be "
                             ">= 1, got %r" % (samples,))
        self.transform, self.samples = transform, int(samples)
        self.seed = int(seed)

    def _k_terms(self, images, k_target, pred, y, need_grad):
        s, b = self.samples, images.shape[0]
        seeds = [iterate_seed(self.seed, images[i]) for i in range(b)]
        draws = [np.repeat(images[i:i + 1], s, axis=0) for i in range(b)]
        seen = np.concatenate([self.transform(d, seed=sd) for d, sd in zip(draws, seeds)])
        present = np.repeat(self.masks[k_target], s, axis=0)
        k_loss, k_grad, parts = self.scorer.hinge_value_and_grad(
            seen, present, 1.0 - present, return_parts=True,
            need_grad=np.repeat(np.asarray(need_grad, bool), s), **self.hinge)
        k_grad = np.asarray(k_grad, np.float32)
        k_grad = np.concatenate([self.transform.estimate_gradient(
            draws[i], k_grad[i * s:(i + 1) * s], seed=seeds[i]) for i in range(b)])
        k_loss = np.asarray(k_loss, np.float32).reshape(b, s).mean(axis=1)
        k_grad = k_grad.reshape((b, s) + images.shape[1:]).mean(axis=1)
        votes = np.asarray(self.judge(np.repeat(pred, s), parts, np.repeat(y, s)),
                           bool).reshape(b, s)
        return k_loss, k_grad, votes.mean(axis=1) >= 0.5

    def ranked_targets(self, x, y):
        """:meth:`UnMaskTarget.ranked_targets` on one draw of each image, seeded by the image
        (the same targets whatever images are ranked beside it)."""
        images = _numpy(x)
        seen = np.concatenate([self.transform(images[i:i + 1], seed=iterate_seed(self.seed,
                                                                                   images[i]))
                               for i in range(images.shape[0])])
        return super().ranked_targets(seen, y)
