"""Routes: the ways a defense's final answer can reach an attacker's goal (SPEC §13).

An attack recipe copied from the literature attacks the defense its authors studied; the
attack that counts is derived from *this* defense's decision rule.  Each defense names its
routes (:meth:`defense.base.Defense.adaptive_routes`) and its adaptive target attacks each
(:mod:`defense.adaptive`); the engine runs them in order on the images no earlier route won
and keeps the per-image worst case (:mod:`attacks.engine`).

UnMask with response ``rectify`` (Algorithm 1, mode ``flagged``) answers M's class when K's
parts agree with it, else the class whose expected parts best match K's.  Its routes, cheapest
first:

* ``follow-m`` -- M attacked untargeted while K's target follows M's current answer (its best
  class other than ``y`` while M still says ``y``): one run per restart of an untargeted
  stage (an APGD-T stage still steps M toward its own ranked classes, with K following M);
* ``two-phase`` -- M toward ``y'`` until it says ``y'``, then K toward ``V[y']`` (Tramer et
  al. 2020's template; ``--adaptive-gradient orthogonal`` projects the two instead);
* ``k-only`` -- K alone toward the parts of another class ``z``, M untouched: M's right answer
  no longer matches K's parts, the image is flagged and rectified to ``z``.  A robust M does
  not stop it; it reaches only the *wrong* goal of a *rectifying* UnMask;
* ``joint`` -- M and K toward ``y'`` from the first step (M's term until M says ``y'``).

With response ``reject`` a flag is a rejection, so ``k-only`` cannot reach the wrong goal
(wrong = undetected); the undetected goal (M fooled, not flagged) never comes from it either.
With response ``confident`` a flagged image is rectified only to a class whose parts agree with
K's set (its distance below ``t``): ``k-only`` still reaches the wrong goal when it forges such
a set, so every route stays.
"""
from defense.threats import Goal

#: UnMask's routes, cheapest first (see the module docstring).
UNMASK_ROUTES = ("follow-m", "two-phase", "k-only", "joint")
#: The routes whose every step uses K's gradient (two-phase uses it only once M says y').
K_GRADIENT_EVERY_STEP = ("follow-m", "k-only", "joint")
#: The routes that never use M's loss or gradient (M's answer still makes the verdict).
M_FORWARD_ONLY = ("k-only",)
#: The one route of a defense that is a classifier's own answer (``none``, ``at``): its
#: white-box attack, run by the adaptive engine.
WHITE_BOX = "white-box"


def unmask_routes(goal: Goal, response: str) -> tuple:
    """The routes by which UnMask's final answer reaches ``goal`` under ``response``
    (``rectify``, ``reject`` or ``confident``): every route for a wrong rectified answer;
    without ``k-only`` where M must be fooled."""
    if goal == Goal.WRONG and response in ("rectify", "confident"):
        return UNMASK_ROUTES
    return tuple(r for r in UNMASK_ROUTES if r != "k-only")
