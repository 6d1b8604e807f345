"""Defense-aware ("adaptive") attack objectives of the bench (SPEC §8).

The paper evaluates UnMask gray-box only: the attacker never sees the defense.  A defense is
only as good as its result against an attacker who knows it (Carlini & Wagner 2017, Athalye
et al. 2018, Tramer et al. 2020), so each defense that hides something from the gray-box
attacker gives an objective for :func:`attacks.objective.pgd_objective`:

* input transforms: **BPDA** -- M applied to the transform, whose backward pass is its own
  linear form (PCA, down-sampling) or the identity (JPEG, bit depth); the random noise defense
  gets **EOT** instead: the loss is ``-log E_noise[p_y]`` over :data:`EOT_SAMPLES` fresh noise
  draws per step;
* the trajectory detector: ``min(CW margin of M, κ) - w · BCE(D(x'), natural)`` through the
  taps, the trajectory embedding and the LSTM (the seed's own white-box attack, SPEC §6);
* UnMask: M and K together (see :mod:`defense.defenses.unmask`).

``none`` and ``at`` have none: their gray-box attack already sees everything there is (AT's is
white-box on its own model).  Every objective is "higher = better for the attacker" and
returns numpy ``(loss [B], grad [B, H, W, 3])`` for images float [B, H, W, 3] in [0, 1].
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

import tfcompat

tf, keras = tfcompat.import_tf()

#: Noise draws averaged per step by the EOT objective (the issue asks for >= 20).
EOT_SAMPLES = 20
#: CW margin cap of the detector objectives: once M is fooled by this much, the rest of the
#: step goes to hiding from the detector.
KAPPA = 2.0
#: Weight of the detector term (the seed used 1000 with an L2 CW objective; with sign steps
#: only the direction matters, and w = 1 balances logits of a few units).
DETECTOR_WEIGHT = 1.0

ValueAndGrad = Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


def _value_and_grad(loss_fn) -> ValueAndGrad:
    """Wrap ``loss_fn(x_tf, y_tf) -> [B]`` as a numpy ``(x, y) -> (loss, grad)``."""
    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(x, y)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, x)

    def run(x, y):
        loss, grad = step(tf.convert_to_tensor(x, tf.float32),
                          tf.convert_to_tensor(y, tf.int64))
        return loss.numpy(), grad.numpy()
    return run


def _value_grad_pred(model, loss_of_logits):
    """Numpy ``(x, y) -> (loss [B], grad [B, H, W, C], argmax of M's logits [B])`` of
    ``loss_of_logits(model(x), y)``: the objective, its gradient and M's answer from one
    forward pass."""
    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            loss = loss_of_logits(logits, y)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, x), tf.argmax(logits, axis=1)

    def run(x, y):
        loss, grad, pred = step(tf.convert_to_tensor(x, tf.float32),
                                tf.convert_to_tensor(y, tf.int64))
        return loss.numpy(), grad.numpy(), pred.numpy()
    return run


def cross_entropy(logits, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def cw_margin(logits, y):
    """``max_{j != y} z_j - z_y`` per image (> 0 iff M is fooled)."""
    onehot = tf.one_hot(y, tf.shape(logits)[1], dtype=logits.dtype)
    other = tf.reduce_max(logits - 1e9 * onehot, axis=1)
    return other - tf.reduce_sum(logits * onehot, axis=1)


def bpda_objective(model, transform) -> ValueAndGrad:
    """Cross-entropy of M on ``transform(x)``, backward through the transform's BPDA pass."""
    return _value_and_grad(lambda x, y: cross_entropy(model(transform.bpda(x, seed=0),
                                                            training=False), y))


def eot_objective(model, transform, samples: int = EOT_SAMPLES) -> ValueAndGrad:
    """``-log`` of M's probability of the true class averaged over ``samples`` fresh draws of
    a random transform (Expectation over Transformation)."""
    if samples < 1:
        raise ValueError("EOT needs at least one sample, got %r" % (samples,))

    def loss(x, y):
        b = tf.shape(x)[0]
        reps = tf.repeat(x, samples, axis=0)                     # [B*S, H, W, 3]
        probs = tf.nn.softmax(model(transform.bpda(reps, seed=None), training=False))
        mean = tf.reduce_mean(tf.reshape(probs, [b, samples, -1]), axis=1)   # [B, C]
        p_true = tf.gather(mean, y, axis=1, batch_dims=1)
        return -tf.math.log(tf.maximum(p_true, 1e-12))
    return _value_and_grad(loss)


def detector_objective(taps_with_logits, trajectory_fn, detector) -> ValueAndGrad:
    """``min(CW margin, κ) - w · softplus(D(x))``: fool M, look natural to the detector
    (``softplus(d)`` is the BCE of logit ``d`` toward the label "natural")."""
    def loss(x, y):
        outs = taps_with_logits(x, training=False)
        taps, logits = outs[:-1], outs[-1]
        d = tf.reshape(detector(trajectory_fn(taps), training=False), [-1])
        return (tf.minimum(cw_margin(logits, y), KAPPA)
                - DETECTOR_WEIGHT * tf.nn.softplus(d))
    return _value_and_grad(loss)


def _unit(g: np.ndarray) -> np.ndarray:
    """Each image's gradient scaled to unit L2 norm (zero stays zero)."""
    n = np.sqrt(np.sum(g.reshape(len(g), -1).astype(np.float64) ** 2, axis=1))
    return (g / np.maximum(n, 1e-12)[:, None, None, None]).astype(np.float32)


class UnMaskObjective:
    """The joint attack on M and K toward a target class y' (SPEC §8).

    ``start(x0, y)`` picks, per image, y' = the class other than the true one whose expected
    parts best overlap K(x0) (ties: the first in class-set order).  Then each call returns

        L = min(z_{y'} - max_{j != y'} z_j, κ_M)
            - [λ⁺ Σ_{p ∈ V[y']} relu(κ - smax_r m_{r,p}) + λ⁻ Σ_{p ∉ V[y']} Σ_r relu(m_{r,p} + κ)]

    (higher = better for the attacker): M toward y' (a CW margin) while the parts of y' appear
    in K's ROI logits and every other part disappears.  Gradients come from two runtimes: M's
    eagerly, K's from its own graph and session (:class:`~models.mrcnn.attack_interface.
    PartScorer`, proposals held fixed within a step); each is scaled to unit norm and M's
    counts only until M says y' (Tramer et al.'s mask: M's term first).

    ``decision(preds [B], part_sets) -> final [B]`` (the defense's rule: Algorithm 1's
    rectified class, or -1 for a rejection) enables :meth:`evaluate`, which returns the
    objective, its gradient and the attacker's verdict (final answer wrong and not rejected)
    from one pass of M and one of K -- the part sets are read from the same session run as
    K's gradient (:meth:`PartScorer.hinge_value_and_grad` ``return_parts``).
    """

    def __init__(self, model, scorer, class_parts_list, kappa_m: float = KAPPA,
                 kappa: float = 1.0, lam_present: float = 1.0, lam_absent: float = 1.0,
                 tau: float = 0.5, decision=None):
        self.model = model
        self.scorer = scorer
        self.class_parts = [frozenset(v) for v in class_parts_list]
        index = {p: i for i, p in enumerate(scorer.part_names)}
        self.masks = np.zeros((len(self.class_parts), scorer.num_parts), np.float32)
        for c, parts in enumerate(self.class_parts):
            for p in parts:
                if p not in index:
                    raise ValueError("part %r of class %d is not one of K's classes" % (p, c))
                self.masks[c, index[p]] = 1.0
        self.kappa_m, self.kappa, self.tau = kappa_m, kappa, tau
        self.lam_present, self.lam_absent = lam_present, lam_absent
        self.targets = None
        self.decision = decision
        self._m_step = _value_grad_pred(
            model, lambda logits, t: tf.minimum(-cw_margin(logits, t), kappa_m))

    def start(self, x0: np.ndarray, y: np.ndarray) -> None:
        parts = self.scorer.detected_parts(x0)
        targets = []
        for found, label in zip(parts, np.asarray(y)):
            best, best_sim = -1, -1.0
            for c, expected in enumerate(self.class_parts):
                if c == int(label):
                    continue
                union = len(found | expected)
                sim = len(found & expected) / union if union else 0.0
                if sim > best_sim:
                    best, best_sim = c, sim
            targets.append(best)
        self.targets = np.asarray(targets, np.int64)

    def _joint(self, x: np.ndarray, with_parts: bool):
        if self.targets is None or len(self.targets) != len(x):
            raise ValueError("UnMaskObjective: call start(x0, y) on the batch first")
        t = self.targets
        m_loss, m_grad, pred = self._m_step(x, t)  # min(targeted margin, κ_M), maximised
        present = self.masks[t]
        k_out = self.scorer.hinge_value_and_grad(
            x, present, 1.0 - present, kappa=self.kappa, lam_present=self.lam_present,
            lam_absent=self.lam_absent, tau=self.tau, return_parts=with_parts)
        k_loss, k_grad = k_out[0], k_out[1]
        m_done = m_loss >= self.kappa_m - 1e-6     # M already says y' confidently
        grad = _unit(m_grad) * (~m_done)[:, None, None, None] - _unit(k_grad)
        return m_loss - k_loss, grad, pred, (k_out[2] if with_parts else None)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        loss, grad, _, _ = self._joint(x, False)
        return loss, grad

    def evaluate(self, x: np.ndarray, y: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(loss [B], grad [B, H, W, 3], verdict [B])`` at ``x``; the verdict is 1 where
        ``decision`` on M's answer and K's part sets (both of ``x``, from the passes that give
        the gradient) is wrong and not a rejection."""
        if self.decision is None:
            raise ValueError("UnMaskObjective.evaluate needs decision=(preds, part_sets) -> "
                             "final classes")
        loss, grad, pred, parts = self._joint(x, True)
        final = np.asarray(self.decision(pred.astype(np.int64), parts), np.int64)
        y = np.asarray(y, np.int64)
        return loss, grad, ((final != y) & (final != -1)).astype(np.float64)
