"""The parsers of option values that are lists or budgets given as text (``--attacks``,
``--threat``, ``--adaptive-routes``, ``--adaptive-goals``, ``--k-epochs``,
``--k-attack-eps``): text in, checked values out, ValueError naming the option."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from evaluation.options.base import _goal_names, _option, _route_names, _threat_names


def parse_stage_epochs(epochs) -> tuple:
    """K's epochs per stage ``(heads, 4+, all, all_low_lr)`` from a tuple or "1,1,10,3"."""
    if isinstance(epochs, str):
        try:
            epochs = [int(v) for v in epochs.split(",") if v.strip()]
        except ValueError:
            raise ValueError("--k-epochs must be comma-separated integers such as 1,1,10,3 "
                             "(heads, 4+, all, all at lr/10), got %r" % epochs) from None
    epochs = tuple(int(v) for v in epochs)
    if not 1 <= len(epochs) <= 4 or any(v < 0 for v in epochs):
        raise ValueError("--k-epochs takes 1-4 non-negative counts (heads, 4+, all, all at "
                         "lr/10), got %r" % (epochs,))
    return epochs + (0,) * (4 - len(epochs))


def parse_attack_eps(text, flag: str = "--k-attack-eps") -> Tuple[float, ...]:
    """``"4,8"`` -> ``(4.0, 8.0)``; ``"none"`` (or empty) -> ``()``.  ValueError naming
    ``flag`` for a budget that is not a number in (0, 255] or one given twice."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return ()
    values = []
    for item in str(text).split(","):
        try:
            eps = float(item)
        except ValueError:
            raise ValueError("%s: %r is not a number; give budgets on the 0-255 scale like "
                             "4,8, or none" % (flag, item.strip())) from None
        if not (math.isfinite(eps) and 1 <= eps <= 255) or eps in values:
            raise ValueError("%s: each budget must be a number in [1, 255] (the attacked "
                             "images are 8-bit) given once, got %r" % (flag, text))
        values.append(eps)
    return tuple(values)


def _parse_names(text: Optional[str], flag: str, kind: str, known) -> Optional[Tuple[str, ...]]:
    """A comma list of ``kind`` names (case-insensitive, each once) for ``flag``; None for
    None; ValueError naming the option and the ``known`` names."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError("%s %r: %s; the %ss are %s"
                         % (flag, text, "unknown %s %s" % (kind, ", ".join(unknown)) if unknown
                            else "give at least one %s" % kind, kind, ", ".join(known)))
    return names


def parse_routes(text: Optional[str]) -> Optional[Tuple[str, ...]]:
    """``--adaptive-routes`` text -> route names (None: every route)."""
    return _parse_names(text, "--adaptive-routes", "route", _route_names())


def parse_threats(text: str) -> List:
    """--threat's comma list -> the :class:`~defense.threats.Threat` list (each once)."""
    from defense.threats import Threat

    threats = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            threat = Threat.parse(item)
        except ValueError as e:
            raise ValueError("--threat: %s" % e) from None
        if threat not in threats:
            threats.append(threat)
    if not threats:
        raise ValueError("--threat: give one or several of %s" % ", ".join(_threat_names()))
    return threats


def parse_vectors(text: str):
    """'paper' or 'name:eps,...' -> [(registry name, eps on the 0-255 scale)].

    Names are checked against the attack registry and stored in its spelling (``pgd-linf`` ->
    ``pgd_linf``); a name without ``:eps`` takes the attack's default budget.  Every vector of
    an evaluation needs a budget > 0 (reports are keyed by it), and each may appear once.
    """
    from attacks import PAPER_ATTACK_VECTORS, resolve_config

    if text.strip().lower() == "paper":
        return list(PAPER_ATTACK_VECTORS)
    vectors = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if item.lower() == "paper":
            for vector in PAPER_ATTACK_VECTORS:
                if vector in vectors:
                    raise ValueError("--attacks: %s eps=%g is given twice" % vector)
                vectors.append(vector)
            continue
        name, sep, eps_text = item.partition(":")
        try:
            eps = float(eps_text) if sep else None
        except ValueError:
            raise ValueError("--attacks: eps of %r must be a number" % item) from None
        with _option("--attacks", item):
            config = resolve_config(name, eps)
        if config.eps is None or not config.eps > 0:
            raise ValueError("--attacks: %r needs an eps > 0 on the 0-255 scale for the "
                             "evaluation, e.g. %s:300" % (item, config.name))
        if (config.name, config.eps) in vectors:
            raise ValueError("--attacks: %s eps=%g is given twice" % (config.name, config.eps))
        for other_name, other_eps in vectors:
            if other_name == config.name and "%g" % other_eps == "%g" % config.eps:
                raise ValueError("--attacks: %s eps=%r and eps=%r differ only past the "
                                 "reports' precision (both read eps=%g); give budgets that "
                                 "differ visibly" % (config.name, other_eps, config.eps,
                                                     config.eps))
        vectors.append((config.name, config.eps))
    if not vectors:
        raise ValueError("--attacks: give 'paper' or name:eps pairs")
    return vectors


def check_l2_budgets(vectors, input_size: int) -> None:
    """An L2 budget larger than the distance between an all-black and an all-white image of
    M's size means nothing."""
    from attacks import resolve_config

    limit = 255.0 * (3.0 * input_size * input_size) ** 0.5
    for name, eps in vectors:
        if resolve_config(name, eps).norm == "l2" and eps > limit:
            raise ValueError("--attacks: %s eps=%g exceeds the largest L2 distance between "
                             "two %dx%d images (%.0f on the 0-255 scale); give eps on that "
                             "scale, e.g. %s:300" % (name, eps, input_size, input_size, limit,
                                                     name))


def parse_goals(text: Optional[str], flag: str = "--adaptive-goals") -> Optional[Tuple[str, ...]]:
    """``--adaptive-goals`` text (or another option's, ``flag``) -> goal names (None: every
    goal)."""
    return _parse_names(text, flag, "goal", _goal_names())
