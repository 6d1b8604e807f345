"""The attacker's losses on a classifier's logits: per image, higher = better for the attacker.

Every loss is ``loss_fn(logits [B, C], y [B], t) -> [B]`` with ``y`` the true labels and ``t``
either None (untargeted: move away from ``y``) or int ``[B]`` target classes (targeted: move
toward ``t``).  Whether a loss is targeted is decided when it is traced (``t is None`` is a
Python test), so an untargeted loss builds no targeted ops and the reverse.

* :func:`cross_entropy` -- untargeted ``CE(y)``; targeted ``-CE(t)`` (cleverhans' convention,
  so PGD, BIM and MI-FGSM step exactly as cleverhans 4.0.0's ``fast_gradient_method``).
* :func:`dlr` -- the Difference of Logits Ratio of Croce & Hein (ICML 2020), scale-invariant:
  untargeted ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``; targeted (APGD-T)
  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``, with ``z_pi1 >= z_pi2 >= ...`` the
  sorted logits.  Needs >= 3 classes (with 3, the targeted form uses ``z_pi3`` for
  ``z_pi4``).
* :func:`margin` -- the CW margin: untargeted ``max_{i != y} z_i - z_y``; targeted
  ``z_t - max_{i != t} z_i`` (> 0 exactly when the attacker's goal is met).
"""
import tfcompat  # noqa: F401

import tensorflow as tf

#: Denominator floor of the DLR losses (AutoAttack's).
DLR_EPS = 1e-12


def _label_logit(logits, labels):
    return tf.gather(logits, tf.cast(labels, tf.int32), axis=1, batch_dims=1)


def _best_other(logits, labels):
    """``max_{i != labels} z_i`` per image."""
    is_label = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[1], on_value=True,
                          off_value=False)
    return tf.reduce_max(tf.where(is_label, tf.fill(tf.shape(logits), -1e9), logits), axis=1)


def cross_entropy(logits, y, t=None):
    """``CE(y)`` untargeted, ``-CE(t)`` targeted (``[B]``)."""
    labels = y if t is None else t
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64),
                                                        logits=logits)
    return ce if t is None else -ce


def dlr(logits, y, t=None):
    """Difference of Logits Ratio (see the module docstring), ``[B]``."""
    classes = logits.shape[-1]
    if classes is not None and classes < 3:
        raise ValueError("the DLR loss needs at least 3 classes, the model has %d; use the "
                         "cross-entropy ('ce')" % classes)
    top = tf.math.top_k(logits, k=3 if t is None or classes == 3 else 4).values
    z_y = _label_logit(logits, y)
    if t is None:
        return -(z_y - _best_other(logits, y)) / (top[:, 0] - top[:, 2] + DLR_EPS)
    z_t = _label_logit(logits, t)
    fourth = top[:, 2] if classes == 3 else top[:, 3]     # 3 classes: pi_3 stands for pi_4
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + fourth) + DLR_EPS)


def margin(logits, y, t=None):
    """CW margin, ``[B]``: > 0 iff M's answer is not ``y`` (untargeted) / is ``t`` (targeted)."""
    if t is None:
        return _best_other(logits, y) - _label_logit(logits, y)
    return _label_logit(logits, t) - _best_other(logits, t)


#: Losses by name (the attacks' ``loss`` parameter).
LOSSES = {"ce": cross_entropy, "dlr": dlr, "margin": margin}


def get_loss(name):
    """The loss function of ``name`` (``'ce'``, ``'dlr'`` or ``'margin'``)."""
    if name not in LOSSES:
        raise ValueError("unknown loss %r; valid: %s" % (name, ", ".join(LOSSES)))
    return LOSSES[name]
