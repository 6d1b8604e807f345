"""The defense registry of the bench (timm-style: tests sweep it whole).

One file per defense, one line per registry entry.  A defense is named on the command line as
``name`` or ``name:value``, where ``value`` sets its main parameter (``downsample:0.75``,
``noise:10``, ``jpeg:50``, ``bitdepth:3``, ``pca:0.95``, ``trajectory:centroid-l2``); see each
class's ``PARAM``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

from defense.base import Defense
from defense.threats import Threat
from defense.defenses.adversarial import AdversarialTraining
from defense.defenses.none import NoDefense
from defense.defenses.noise import NoiseDefense
from defense.defenses.transform import (BitDepthDefense, DownsampleDefense, JpegDefense,
                                        PcaDefense)
from defense.defenses.trajectory import TrajectoryDefense
from defense.defenses.unmask import UnMaskDefense

DEFENSES: Dict[str, Type[Defense]] = {
    "none": NoDefense,
    "at": AdversarialTraining,
    "unmask": UnMaskDefense,
    "pca": PcaDefense,
    "noise": NoiseDefense,
    "downsample": DownsampleDefense,
    "jpeg": JpegDefense,
    "bitdepth": BitDepthDefense,
    "trajectory": TrajectoryDefense,
}

#: What runs without ``--defenses``.
DEFAULT_DEFENSES = ("none", "unmask")


def list_defenses() -> List[str]:
    return list(DEFENSES)


def route_names() -> List[str]:
    """Every route an adaptive attack of a registry defense can take (SPEC §13), in
    registry order: the choices of ``--adaptive-routes``."""
    names = []
    for cls in DEFENSES.values():
        if Threat.ADAPTIVE in cls.threats:
            names += [r for r in cls.ROUTES if r not in names]
    return names


def parse_defense(spec: str) -> Tuple[str, Optional[str]]:
    """``"name"`` or ``"name:value"`` -> (registry name, value text or None); ValueError
    listing the registry for an unknown name."""
    name, sep, value = str(spec).strip().partition(":")
    key = name.strip().lower()
    if key not in DEFENSES:
        raise ValueError("unknown defense %r; valid names: %s" % (name, ", ".join(DEFENSES)))
    value = value.strip() if sep else None
    if sep and not value:
        raise ValueError("defense %r: give a value after ':' or none at all" % spec)
    if value is not None and DEFENSES[key].PARAM is None:
        raise ValueError("defense %r takes no parameter (got %r)" % (key, value))
    return key, value


def build_defense(spec: str) -> Defense:
    """A defense object from ``"name"`` or ``"name:value"`` (validated before any work)."""
    key, value = parse_defense(spec)
    try:
        defense = DEFENSES[key](value)
    except ValueError as e:
        if str(e).startswith("defense "):       # already names the defense and its value
            raise
        raise ValueError("defense %r: %s" % (spec, e)) from None
    text = defense.value_text(value)
    defense.label = key if text is None else "%s:%s" % (key, text)
    return defense


def parse_defenses(text: str) -> List[str]:
    """``--defenses`` text -> canonical labels (``name`` or ``name:value``), validated: unknown
    names list the registry, bad values name the defense, duplicates are refused."""
    labels = []
    for item in filter(None, (t.strip() for t in str(text).split(","))):
        label = build_defense(item).label
        if label in labels:
            raise ValueError("--defenses: %s is given twice" % label)
        labels.append(label)
    if not labels:
        raise ValueError("--defenses: give at least one of %s" % ", ".join(DEFENSES))
    return labels
