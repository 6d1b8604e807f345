"""Registry of the attacks: names, norms, default parameters, and config resolution/validation.

Budgets (``eps``, ``step_size``) are quoted on the 0-255 pixel scale, for L2 as well (see
:mod:`attacks._utils`).  Default parameters follow the UnMask paper (SPEC section 3):

- ``pgd_linf``: L-inf, eps 8, 20 steps, step ``min(2, eps)``, random start (as the original
  code; the paper's equation 1 starts at x: pass ``rand_init=False``).
- ``pgd_l2``: L2, eps 300, 20 steps, step ``2.5 * eps / steps`` (Madry et al.), random start.
- ``mia_linf``: L-inf, eps 8, 20 steps, step ``eps / steps`` (paper: alpha = eps/T), decay 1.
- ``mia_l2``: L2, eps 300, 20 steps, step ``eps / steps``, decay 1.
- ``fgsm``: L-inf, eps 8, one step of length eps (steps / step_size not overridable).
- ``bim``: L-inf, eps 8, 20 steps, step ``min(1, eps)`` (Kurakin et al.: 1/255), starts at x.
- ``cw_l2``: L2, no ball by default (``eps=None``; an eps caps the result), 100 Adam steps per
  round, ``learning_rate`` 0.01, 5 binary-search rounds, ``initial_const`` 0.1,
  ``confidence`` 0; no step_size.

The seed-004 attacks (SPEC section 7):

- ``ga``: targeted "gradient ascent", L-inf, eps 3, at most 100 steps, step ``eps / 20`` (the
  seed states none; see :mod:`attacks.ga`), a random target ``!= y`` per image (stateless RNG
  from the batch seed ``(seed, batch_index)``, :func:`attacks.ga.ga_targets`), per-image early
  stop at ``stop_prob`` 0.99 = p(target).
- ``uap``: universal adversarial perturbation, L-inf, ``xi = eps`` 10; ``uap_l2``: the same in
  L2, eps 850 (the paper's 2000 at 224 px rescaled to 96 px; see :mod:`attacks.uap`).  Both
  are *universal* (``AttackSpec.universal``): one ``v`` is fitted first
  (``CompiledAttack.fit`` / ``set_perturbation``) and applied as ``clip(x + v)``; parameters
  ``max_passes`` 10, ``fooling_target`` 0.8 (1 - delta), ``overshoot`` 0.02,
  ``deepfool_steps`` 10, ``max_fit_images`` 256, ``fit_batch_size`` 32; ``steps`` is fixed
  at 1 (v is added once) and there is no step_size.

Added for the training set of a trajectory detector:

- ``bim_l2``: BIM in L2 (L2-normalised gradient steps, projection onto the L2 ball, starts at
  x), eps 300, 20 steps, step ``2.5 * eps / steps`` (the rule of ``pgd_l2``; the L-inf
  ``bim``'s default, 1/255 x 20 steps at eps 8, is the same 2.5 eps path).
- targeted variants: ``pgd_linf``, ``pgd_l2``, ``mia_linf``, ``mia_l2``, ``bim``, ``bim_l2``
  and ``cw_l2`` take ``targeted`` (bool, default False; ``AttackSpec.targeting ==
  'optional'``).  With ``targeted=True`` each image gets a random target class ``!= its
  label``, drawn exactly as ``ga``'s (:func:`attacks.ga_targets`, stateless, from the batch
  seed ``(seed, batch_index)``), and the attack *minimises* the target's loss (cross-entropy,
  cleverhans' ``targeted=True``; for ``cw_l2`` the targeted CW hinge).  Budgets and steps are
  those of the untargeted attack.  The runner reports the targets (``AttackResult.targets``)
  and counts ``pred_adv == target`` as success.  ``targeted`` enters ``AttackConfig.params``
  only when True, so every untargeted config (and its ``as_dict()``, used in fingerprints) is
  the same as before the option existed.  ``fgsm``, ``uap`` and ``uap_l2`` have no targeted
  variant (``targeted=True`` is an error, ``targeted=False`` a no-op); ``ga`` is always
  targeted and rejects the parameter.

The step of the L2 PGD attack is not given by the paper; ``2.5 * eps / steps`` is the rule of
Madry et al. (a total path of 2.5 eps, enough to reach the boundary from any start).  The L-inf
default step 2/255 is capped at ``eps`` so that small budgets (e.g. eps = 1 in the
adversarial-training line search) stay valid.  The original UnMask code divided eps by 255 but
passed the step un-scaled to all four attacks (``eps_iter = 2.0`` in [0, 1] units, far larger
than the ball, so every step jumped to the ball's boundary and MIA ignored the paper's
alpha = eps/T) -- a bug that is *not* reproduced here.  Every default is overridable.
"""
import dataclasses
import functools
import math

import numpy as np

from attacks import _utils
from attacks.apgd import apgd, apgd_targets
from attacks.bim import bim
from attacks.cw import cw_l2
from attacks.fgsm import fgsm
from attacks.ga import ga
from attacks.mim import mim
from attacks.pgd import pgd
from attacks.uap import check_params as _check_uap_params
from attacks.uap import fit_uap
from attacks.universal import apply_universal


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """What the registry knows about one attack.

    Attributes:
        name: registry name, e.g. ``'pgd_linf'``.
        fn: batch function ``fn(target, x, y, *, eps, step_size, steps, norm, seed, **extra)``
            working in ``[0, 1]`` units, ``target`` an :class:`~attacks.target.AttackTarget`
            (or a model); the per-image attacks also take ``targets`` (int ``[B]`` classes to
            step toward) and ``start`` (the first iterate).  A universal attack's ``fn`` also takes
            ``perturbation`` (float32 ``[H, W, 3]``, the fitted ``v``) and applies it.
        norm: ``'linf'`` or ``'l2'``.
        description: one line for listings.
        default_eps: default budget on the 0-255 scale (None: no ball, only for ``cw_l2``).
        default_steps: default number of iterations.
        step_rule: ``(eps, steps) -> default step`` on the 0-255 scale, or None when the attack
            takes no ``step_size``.
        fixed_steps: True when ``steps`` cannot be changed (FGSM; the universal attacks).
        extra_defaults: further keyword parameters and their defaults.
        check_params: None or ``(params: dict) -> None`` raising ValueError for invalid values
            of the extra parameters (called by :func:`resolve_config`).
        universal: True for an image-agnostic attack: ``fit_fn`` fits one perturbation on a
            set of images, then ``fn`` applies it to every image.
        fit_fn: for a universal attack, ``fit_fn(model_fn, images, *, eps, norm, seed,
            progress, **extra) -> (v, fooling_rate, passes, n_images, pass_rates)`` (``[0, 1]``
            units; ``pass_rates``: the fooling rate after each pass).
        targeting: ``'none'`` (untargeted only), ``'optional'`` (``fn`` takes ``targeted``:
            the user parameter ``targeted=True`` asks for random targets) or ``'always'``
            (``ga``: always towards random targets, no ``targeted`` parameter).
        version: bumped when the attack's algorithm changes for the same configuration, so
            results saved with the old code are recomputed (callers put it in their
            fingerprints).
        stages: None, or for a *composite* attack (AutoAttack) ``(config, num_classes) ->
            [AttackConfig, ...]``: the attacks run one after the other, each on the images no
            earlier one fooled, the first success kept per image (``fn`` is then None).
    """

    name: str
    fn: object
    norm: str
    description: str
    default_eps: object
    default_steps: int
    step_rule: object = None
    fixed_steps: bool = False
    extra_defaults: dict = dataclasses.field(default_factory=dict)
    check_params: object = None
    universal: bool = False
    fit_fn: object = None
    targeting: str = "none"
    version: int = 1
    stages: object = None

    @property
    def parameter_names(self):
        """The valid extra keyword parameters (``extra_defaults`` plus ``targeted`` when the
        attack has a targeted variant), sorted."""
        names = set(self.extra_defaults)
        if self.targeting == "optional":
            names.add("targeted")
        return sorted(names)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully resolved attack configuration (hashable; budgets on the 0-255 scale).

    ``eps`` is None only for an uncapped ``cw_l2``; ``step_size`` is None for attacks without
    a step parameter.  ``params`` holds the extra keyword parameters as sorted ``(key, value)``
    pairs; ``('targeted', True)`` is among them only for a targeted run (an untargeted config
    has no ``targeted`` entry, see :attr:`targeted`).
    """

    name: str
    norm: str
    eps: object
    steps: int
    step_size: object
    params: tuple = ()

    @property
    def targeted(self):
        """True when the attack goes towards random targets: ``targeted=True`` was asked, or
        the attack is always targeted (``ga``)."""
        return (dict(self.params).get("targeted", False)
                or get_attack(self.name).targeting == "always")

    def as_dict(self):
        """Plain-dict view (for logging / JSON)."""
        out = dataclasses.asdict(self)
        out["params"] = dict(self.params)
        return out


def _linf_pgd_step(eps, steps):
    return min(2.0, eps)


def _l2_pgd_step(eps, steps):
    return 2.5 * eps / steps


def _mim_step(eps, steps):
    return eps / steps


def _bim_step(eps, steps):
    return min(1.0, eps)


def _ga_step(eps, steps):
    return eps / 20.0


def _check_ga_params(params):
    stop = params["stop_prob"]
    if isinstance(stop, bool) or not isinstance(stop, (int, float)) or not 0.0 < stop <= 1.0:
        raise ValueError("stop_prob=%r for attack 'ga': expected a probability in (0, 1] (the "
                         "seed's 0.99)" % (stop,))


def _check_int(params, name, low):
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError("%s=%r: expected an integer >= %d" % (name, value, low))


def _check_apgd_params(params):
    _check_int(params, "restarts", 1)
    for name, low in (("n_targets", 1), ("first_target", 0)):
        if name in params:
            _check_int(params, name, low)


def _autoattack_stages(config, num_classes):
    """AutoAttack's "standard" version without FAB-T and Square: APGD-CE, then APGD-T toward
    each of the min(n_targets, C - 1) classes with the highest clean logits."""
    params = dict(config.params)
    suffix = "" if config.norm == _utils.LINF else "_l2"
    common = dict(steps=config.steps, restarts=params["restarts"],
                  rand_init=params["rand_init"])
    stages = [resolve_config("apgd_ce" + suffix, config.eps, **common)]
    for k in range(min(params["n_targets"], num_classes - 1)):
        stages.append(resolve_config("apgd_t" + suffix, config.eps, first_target=k,
                                     n_targets=1, **common))
    return stages


#: What AutoAttack's "standard" version runs that this one does not (said in every report).
AUTOATTACK_NOT_RUN = ("fab_t", "square")

_APGD_DEFAULTS = {"restarts": 1, "rand_init": True}
#: Version of the APGD attacks (and AutoAttack); 2: the momentum term is x_k - x_{k-1} (version
#: 1 lost it: it was always zero except right after a restart from the best point).
_APGD_VERSION = 2
_APGD_T_DEFAULTS = {"restarts": 1, "rand_init": True, "n_targets": 9, "first_target": 0}

_UAP_DEFAULTS = {"max_passes": 10, "fooling_target": 0.8, "overshoot": 0.02,
                 "deepfool_steps": 10, "max_fit_images": 256, "fit_batch_size": 32}


ATTACKS = {
    spec.name: spec for spec in (
        AttackSpec("pgd_linf", pgd, _utils.LINF, "PGD, L-inf ball, random start (Madry et al.)",
                   8.0, 20, _linf_pgd_step, extra_defaults={"rand_init": True},
                   targeting="optional"),
        AttackSpec("pgd_l2", pgd, _utils.L2, "PGD, L2 ball, random start (Madry et al.)",
                   300.0, 20, _l2_pgd_step, extra_defaults={"rand_init": True},
                   targeting="optional"),
        AttackSpec("mia_linf", mim, _utils.LINF, "MI-FGSM momentum attack, L-inf (Dong et al.)",
                   8.0, 20, _mim_step, extra_defaults={"decay": 1.0}, targeting="optional"),
        AttackSpec("mia_l2", mim, _utils.L2, "MI-FGSM momentum attack, L2 (Dong et al.)",
                   300.0, 20, _mim_step, extra_defaults={"decay": 1.0}, targeting="optional"),
        AttackSpec("fgsm", fgsm, _utils.LINF, "Fast gradient sign method, one L-inf step",
                   8.0, 1, None, fixed_steps=True),
        AttackSpec("bim", bim, _utils.LINF, "Basic iterative method, L-inf, start at x",
                   8.0, 20, _bim_step, targeting="optional"),
        AttackSpec("bim_l2", bim, _utils.L2, "Basic iterative method, L2, start at x",
                   300.0, 20, _l2_pgd_step, targeting="optional"),
        AttackSpec("cw_l2", cw_l2, _utils.L2, "Carlini-Wagner L2 (no eps-ball unless eps given)",
                   None, 100, None,
                   extra_defaults={"binary_search_steps": 5, "initial_const": 0.1,
                                   "learning_rate": 0.01, "confidence": 0.0},
                   targeting="optional"),
        AttackSpec("ga", ga, _utils.LINF, "Targeted gradient ascent to a random class, "
                   "early stop at p(target) >= stop_prob (seed 004)", 3.0, 100, _ga_step,
                   extra_defaults={"stop_prob": 0.99}, check_params=_check_ga_params,
                   targeting="always"),
        AttackSpec("uap", apply_universal, _utils.LINF, "Universal adversarial perturbation, "
                   "L-inf (Moosavi-Dezfooli et al. 2017); fit first", 10.0, 1, None,
                   fixed_steps=True, extra_defaults=dict(_UAP_DEFAULTS),
                   check_params=_check_uap_params, universal=True, fit_fn=fit_uap,
                   version=2),
        AttackSpec("uap_l2", apply_universal, _utils.L2, "Universal adversarial perturbation, "
                   "L2 (Moosavi-Dezfooli et al. 2017); fit first", 850.0, 1, None,
                   fixed_steps=True, extra_defaults=dict(_UAP_DEFAULTS),
                   check_params=_check_uap_params, universal=True, fit_fn=fit_uap,
                   version=2),   # 2: the fitted v, never the zero start, when no pass improves
    ) + tuple(
        AttackSpec("apgd_%s%s" % (loss, suffix), functools.partial(apgd, loss=loss), norm,
                   "Auto-PGD, %s loss, %s (Croce & Hein 2020)" % (label, norm_label), eps,
                   100, None, extra_defaults=dict(_APGD_DEFAULTS),
                   check_params=_check_apgd_params, version=_APGD_VERSION)
        for suffix, norm, norm_label, eps in (("", _utils.LINF, "L-inf", 8.0),
                                              ("_l2", _utils.L2, "L2", 300.0))
        for loss, label in (("ce", "cross-entropy"), ("dlr", "DLR"))
    ) + tuple(
        AttackSpec("apgd_t%s" % suffix, apgd_targets, norm,
                   "Auto-PGD-T: targeted DLR toward the n_targets best other classes, %s"
                   % norm_label, eps, 100, None, extra_defaults=dict(_APGD_T_DEFAULTS),
                   check_params=_check_apgd_params, version=_APGD_VERSION)
        for suffix, norm, norm_label, eps in (("", _utils.LINF, "L-inf", 8.0),
                                              ("_l2", _utils.L2, "L2", 300.0))
    ) + tuple(
        AttackSpec("autoattack%s" % suffix, None, norm,
                   "AutoAttack (standard, %s): APGD-CE then APGD-T over min(9, C - 1) "
                   "targets, each on the images still robust (FAB-T and Square not run)"
                   % norm_label, eps, 100, None,
                   extra_defaults={"restarts": 1, "rand_init": True, "n_targets": 9},
                   check_params=_check_apgd_params, stages=_autoattack_stages,
                   version=_APGD_VERSION)
        for suffix, norm, norm_label, eps in (("", _utils.LINF, "L-inf", 8.0),
                                              ("_l2", _utils.L2, "L2", 300.0))
    )
}

#: The paper's 8 attack vectors (Table IV order): (registry name, eps on the 0-255 scale).
PAPER_ATTACK_VECTORS = [
    ("pgd_linf", 8.0), ("pgd_linf", 16.0), ("pgd_l2", 300.0), ("pgd_l2", 600.0),
    ("mia_linf", 8.0), ("mia_linf", 16.0), ("mia_l2", 300.0), ("mia_l2", 600.0),
]


def list_attacks():
    """Registry names, in registration order."""
    return list(ATTACKS)


def get_attack(name):
    """The :class:`AttackSpec` of ``name`` (case-insensitive, ``-`` accepted for ``_``).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in ATTACKS:
        raise ValueError("unknown attack name %r; valid names: %s"
                         % (name, ", ".join(list_attacks())))
    return ATTACKS[key]


def _check_number(value, arg, name):
    """Reject non-numbers, NaN and infinities for argument ``arg`` of attack ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("%s=%r for attack %r: expected a finite number" % (arg, value, name))
    return float(value)


def _resolve_eps(spec, eps):
    if eps is None:
        return spec.default_eps
    eps = _check_number(eps, "eps", spec.name)
    if eps < 0:
        raise ValueError("eps=%r for attack %r: eps must be >= 0 (0-255 pixel scale, e.g. 8 "
                         "for 8/255)" % (eps, spec.name))
    if spec.norm == "linf" and eps > 255:
        raise ValueError("eps=%r for attack %r: an L-inf budget beyond 255 (the whole pixel "
                         "range) means nothing; give eps on the 0-255 scale, e.g. 8"
                         % (eps, spec.name))
    return eps


def _resolve_steps(spec, steps):
    if steps is None:
        return spec.default_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError("steps=%r for attack %r: expected an integer >= 1" % (steps, spec.name))
    if spec.fixed_steps and steps != spec.default_steps:
        raise ValueError("steps=%r for attack %r: this attack always takes %d step(s)"
                         % (steps, spec.name, spec.default_steps))
    return steps


def _resolve_step_size(spec, eps, steps, step_size):
    if spec.step_rule is None:
        if step_size is not None:
            raise ValueError("step_size=%r for attack %r: this attack takes no step_size "
                             "(valid extra parameters: %s)"
                             % (step_size, spec.name, spec.parameter_names or "none"))
        return None
    if step_size is None:
        return spec.step_rule(eps, steps)
    step_size = _check_number(step_size, "step_size", spec.name)
    if step_size <= 0:
        raise ValueError("step_size=%r for attack %r: must be > 0" % (step_size, spec.name))
    if eps > 0 and step_size > eps:
        raise ValueError("step_size=%r for attack %r exceeds eps=%r: an iterative attack's "
                         "step must be <= eps (both on the 0-255 scale)"
                         % (step_size, spec.name, eps))
    return step_size


def _resolve_targeted(spec, extra):
    """Pop and validate ``targeted`` from ``extra``; returns True or False."""
    if "targeted" not in extra:
        return False
    targeted = extra.pop("targeted")
    if not isinstance(targeted, (bool, np.bool_)):
        raise ValueError("targeted=%r for attack %r: expected True or False"
                         % (targeted, spec.name))
    targeted = bool(targeted)
    if spec.targeting == "none" and not targeted:
        return False                # an untargeted-only attack: targeted=False is a no-op
    if spec.targeting != "optional":
        optional = [name for name in ATTACKS if ATTACKS[name].targeting == "optional"]
        why = ("it always attacks random targets (no targeted parameter)"
               if spec.targeting == "always" else "it has no targeted variant")
        raise ValueError("targeted=%r for attack %r: %s (targeted variants: %s)"
                         % (targeted, spec.name, why, ", ".join(optional)))
    return targeted


def _resolve_extra(spec, extra):
    extra = dict(extra)
    unknown = sorted(set(extra) - set(spec.parameter_names) - {"targeted"})
    if unknown:
        raise ValueError("unknown parameter(s) %s for attack %r; valid extra parameters: %s"
                         % (unknown, spec.name, spec.parameter_names or "none"))
    targeted = _resolve_targeted(spec, extra)
    params = dict(spec.extra_defaults)
    params.update(extra)
    if spec.check_params is not None:
        spec.check_params(params)
    if targeted:          # only then: an untargeted config is the same as before the option
        params["targeted"] = True
    return tuple(sorted(params.items()))


def resolve_config(name, eps=None, *, steps=None, step_size=None, **extra):
    """Validate user parameters and fill in defaults; returns an :class:`AttackConfig`.

    Args:
        name: registry name (see :func:`list_attacks`).
        eps: budget on the 0-255 scale (None: the attack's default; for ``cw_l2`` None means
            uncapped).
        steps: iterations (None: default).
        step_size: step on the 0-255 scale (None: the default rule of the attack).
        **extra: attack-specific parameters (e.g. ``rand_init``, ``decay``, ``learning_rate``,
            ``stop_prob``, ``max_passes``, ``targeted``).  ``targeted`` (bool, default False;
            True only for the attacks whose ``targeting`` is ``'optional'``; rejected by
            ``ga``) is stored in ``params`` only when True.

    Raises:
        ValueError: naming the offending argument and the valid values.
    """
    spec = get_attack(name)
    eps = _resolve_eps(spec, eps)
    steps = _resolve_steps(spec, steps)
    step_size = _resolve_step_size(spec, eps, steps, step_size)
    return AttackConfig(spec.name, spec.norm, eps, steps, step_size, _resolve_extra(spec, extra))
