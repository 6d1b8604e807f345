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

The step of the L2 PGD attack is not given by the paper; ``2.5 * eps / steps`` is the rule of
Madry et al. (a total path of 2.5 eps, enough to reach the boundary from any start).  The L-inf
default step 2/255 is capped at ``eps`` so that small budgets (e.g. eps = 1 in the
adversarial-training line search) stay valid.  The original UnMask code divided eps by 255 but
passed the step un-scaled to all four attacks (``eps_iter = 2.0`` in [0, 1] units, far larger
than the ball, so every step jumped to the ball's boundary and MIA ignored the paper's
alpha = eps/T) -- a bug that is *not* reproduced here.  Every default is overridable.
"""
import dataclasses
import math

from attacks import _utils
from attacks.bim import bim
from attacks.cw import cw_l2
from attacks.fgsm import fgsm
from attacks.mim import mim
from attacks.pgd import pgd


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """What the registry knows about one attack.

    Attributes:
        name: registry name, e.g. ``'pgd_linf'``.
        fn: batch function ``fn(model_fn, x, y, *, eps, step_size, steps, norm, seed, **extra)``
            working in ``[0, 1]`` units.
        norm: ``'linf'`` or ``'l2'``.
        description: one line for listings.
        default_eps: default budget on the 0-255 scale (None: no ball, only for ``cw_l2``).
        default_steps: default number of iterations.
        step_rule: ``(eps, steps) -> default step`` on the 0-255 scale, or None when the attack
            takes no ``step_size``.
        fixed_steps: True when ``steps`` cannot be changed (FGSM).
        extra_defaults: further keyword parameters and their defaults.
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

    @property
    def has_ball(self):
        """True when the attack guarantees ``||x_adv - x|| <= eps`` for its default config."""
        return self.default_eps is not None


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully resolved attack configuration (hashable; budgets on the 0-255 scale).

    ``eps`` is None only for an uncapped ``cw_l2``; ``step_size`` is None for attacks without
    a step parameter.  ``params`` holds the extra keyword parameters as sorted ``(key, value)``
    pairs.
    """

    name: str
    norm: str
    eps: object
    steps: int
    step_size: object
    params: tuple = ()

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


ATTACKS = {
    spec.name: spec for spec in (
        AttackSpec("pgd_linf", pgd, _utils.LINF, "PGD, L-inf ball, random start (Madry et al.)",
                   8.0, 20, _linf_pgd_step, extra_defaults={"rand_init": True}),
        AttackSpec("pgd_l2", pgd, _utils.L2, "PGD, L2 ball, random start (Madry et al.)",
                   300.0, 20, _l2_pgd_step, extra_defaults={"rand_init": True}),
        AttackSpec("mia_linf", mim, _utils.LINF, "MI-FGSM momentum attack, L-inf (Dong et al.)",
                   8.0, 20, _mim_step, extra_defaults={"decay": 1.0}),
        AttackSpec("mia_l2", mim, _utils.L2, "MI-FGSM momentum attack, L2 (Dong et al.)",
                   300.0, 20, _mim_step, extra_defaults={"decay": 1.0}),
        AttackSpec("fgsm", fgsm, _utils.LINF, "Fast gradient sign method, one L-inf step",
                   8.0, 1, None, fixed_steps=True),
        AttackSpec("bim", bim, _utils.LINF, "Basic iterative method, L-inf, start at x",
                   8.0, 20, _bim_step),
        AttackSpec("cw_l2", cw_l2, _utils.L2, "Carlini-Wagner L2 (no eps-ball unless eps given)",
                   None, 100, None,
                   extra_defaults={"binary_search_steps": 5, "initial_const": 0.1,
                                   "learning_rate": 0.01, "confidence": 0.0}),
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
                             % (step_size, spec.name, sorted(spec.extra_defaults) or "none"))
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


def _resolve_extra(spec, extra):
    unknown = sorted(set(extra) - set(spec.extra_defaults))
    if unknown:
        raise ValueError("unknown parameter(s) %s for attack %r; valid extra parameters: %s"
                         % (unknown, spec.name, sorted(spec.extra_defaults) or "none"))
    params = dict(spec.extra_defaults)
    params.update(extra)
    return tuple(sorted(params.items()))


def resolve_config(name, eps=None, *, steps=None, step_size=None, **extra):
    """Validate user parameters and fill in defaults; returns an :class:`AttackConfig`.

    Args:
        name: registry name (see :func:`list_attacks`).
        eps: budget on the 0-255 scale (None: the attack's default; for ``cw_l2`` None means
            uncapped).
        steps: iterations (None: default).
        step_size: step on the 0-255 scale (None: the default rule of the attack).
        **extra: attack-specific parameters (e.g. ``rand_init``, ``decay``, ``learning_rate``).

    Raises:
        ValueError: naming the offending argument and the valid values.
    """
    spec = get_attack(name)
    eps = _resolve_eps(spec, eps)
    steps = _resolve_steps(spec, steps)
    step_size = _resolve_step_size(spec, eps, steps, step_size)
    return AttackConfig(spec.name, spec.norm, eps, steps, step_size, _resolve_extra(spec, extra))
