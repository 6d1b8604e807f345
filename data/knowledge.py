"""The UnMask knowledge base: part categories, class -> parts map and class sets.

The 44 part categories keep the original COCO category order (ids 0..43), so a part id read
from a real ``VOC2010/{split}.json`` means the same part here.  The class -> parts map is the
paper's Table I restricted to the 16 PASCAL-Part classes the original code used, and
``class_set_summary`` reproduces Table II (distinct parts and overlap per class set).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Iterable, Mapping, Tuple

#: The 44 part categories, index == COCO category id in the original data set.
PARTS: Tuple[str, ...] = (
    "plant", "torso", "licenseplate", "cap", "eyebrow", "tail", "ear", "horn", "mouth",
    "frontside", "mirror", "wheel", "vehicle_left", "nose", "screen", "arm", "neck", "muzzle",
    "coach_left", "coach_back", "head", "headlight", "stern", "pot", "window", "coach_right",
    "coach_front", "beak", "leg", "engine", "saddle", "hand", "vehicle_back", "paw", "hoof",
    "vehicle_top", "vehicle_right", "eye", "wing", "hair", "door", "body", "coach_top", "foot",
)
PART_IDS: Dict[str, int] = {name: i for i, name in enumerate(PARTS)}

_VEHICLE = ("vehicle_left", "mirror", "door", "headlight", "wheel", "frontside", "vehicle_back",
            "licenseplate", "vehicle_top", "window", "vehicle_right")
_QUADRUPED = ("ear", "eye", "torso", "head", "neck", "tail", "muzzle", "leg")

#: Expected parts of each PASCAL-Part class (the class-feature matrix V of the paper).
CLASS_PARTS: Dict[str, FrozenSet[str]] = {
    "aeroplane": frozenset(("stern", "body", "engine", "wheel", "tail", "wing")),
    "bicycle": frozenset(("wheel", "saddle")),
    "bird": frozenset(("eye", "beak", "foot", "torso", "head", "neck", "tail", "wing", "leg")),
    "bottle": frozenset(("body", "cap")),
    "bus": frozenset(_VEHICLE),
    "car": frozenset(_VEHICLE),
    "cat": frozenset(("paw", "nose", "ear", "eye", "torso", "head", "neck", "tail", "leg")),
    "cow": frozenset(_QUADRUPED + ("horn",)),
    "dog": frozenset(_QUADRUPED + ("paw", "nose")),
    "horse": frozenset(_QUADRUPED + ("hoof",)),
    "motorbike": frozenset(("wheel", "saddle", "headlight")),
    "person": frozenset(("ear", "nose", "eye", "foot", "torso", "arm", "mouth", "head", "neck",
                         "hair", "hand", "leg", "eyebrow")),
    "pottedplant": frozenset(("plant", "pot")),
    "sheep": frozenset(_QUADRUPED + ("horn",)),
    "train": frozenset(("coach_front", "coach_right", "coach_left", "headlight", "coach_top",
                        "head", "coach_back")),
    "tvmonitor": frozenset(("screen",)),
}
CLASSES: Tuple[str, ...] = tuple(sorted(CLASS_PARTS))


@dataclasses.dataclass(frozen=True)
class ClassSet:
    """A named class set: ``code_name`` as in the original code (``cs5-2``), ``paper_name`` as in
    the paper (``CS5b``) and its classes in the order M's labels use."""
    code_name: str
    paper_name: str
    classes: Tuple[str, ...]

    def label_of(self, class_name: str) -> int:
        """Index of ``class_name`` in this set; ValueError naming the valid classes otherwise."""
        try:
            return self.classes.index(class_name)
        except ValueError:
            raise ValueError("class %r is not in class set %s (%s); valid classes: %s"
                             % (class_name, self.paper_name, self.code_name,
                                ", ".join(self.classes))) from None


CLASS_SETS: Tuple[ClassSet, ...] = (
    ClassSet("cs3-1", "CS3a", ("car", "person", "train")),
    ClassSet("cs3-2", "CS3b", ("person", "dog", "bird")),
    ClassSet("cs5-1", "CS5a", ("dog", "car", "bottle", "train", "person")),
    ClassSet("cs5-2", "CS5b", ("dog", "car", "bird", "train", "person")),
)
_BY_NAME: Dict[str, ClassSet] = {}
for _cs in CLASS_SETS:
    _BY_NAME[_cs.code_name.lower()] = _cs
    _BY_NAME[_cs.paper_name.lower()] = _cs


#: Table II as printed in the paper: code name -> (distinct parts, overlap in percent).  The paper
#: prints 2/29 = 6.897% as 6.89 (truncated) but 8/34 = 23.529% as 23.53 (rounded), so the
#: printed values agree with the exact fractions to 0.01 points, not to a single rounding rule.
PAPER_TABLE_II: Dict[str, Tuple[int, float]] = {
    "cs3-1": (29, 6.89), "cs3-2": (18, 50.00), "cs5-1": (34, 23.53), "cs5-2": (34, 29.41),
}


def class_set_names() -> Tuple[str, ...]:
    """All accepted names, paper names first (``CS3a, ..., cs3-1, ...``)."""
    return tuple(cs.paper_name for cs in CLASS_SETS) + tuple(cs.code_name for cs in CLASS_SETS)


def get_class_set(name: str) -> ClassSet:
    """Resolve a class-set name, paper (``CS5b``) or code (``cs5-2``) style, case-insensitively.

    Raises:
        ValueError: listing the valid names, when ``name`` is not one of them.
    """
    key = str(name).strip().lower()
    if key not in _BY_NAME:
        raise ValueError("unknown class set %r; valid names: %s"
                         % (name, ", ".join(class_set_names())))
    return _BY_NAME[key]


def check_class_name(name: str) -> str:
    """Return ``name`` if it is one of the 16 classes; ValueError listing them otherwise."""
    if name not in CLASS_PARTS:
        raise ValueError("unknown class %r; valid classes: %s" % (name, ", ".join(CLASSES)))
    return name


def check_part_name(name: str) -> str:
    """Return ``name`` if it is one of the 44 parts; ValueError listing them otherwise."""
    if name not in PART_IDS:
        raise ValueError("unknown part %r; valid parts: %s" % (name, ", ".join(PARTS)))
    return name


def class_feature_map(classes: Iterable[str]) -> Dict[str, FrozenSet[str]]:
    """The class-feature map V restricted to ``classes`` (in their order)."""
    return {check_class_name(c): CLASS_PARTS[c] for c in classes}


@dataclasses.dataclass(frozen=True)
class ClassSetSummary:
    """Table II row: classes, the distinct parts of their union, the shared parts and the
    overlap = shared / distinct (shared = parts that belong to >= 2 classes of the set)."""
    class_set: ClassSet
    distinct_parts: Tuple[str, ...]
    shared_parts: Tuple[str, ...]

    @property
    def overlap(self) -> float:
        return len(self.shared_parts) / len(self.distinct_parts)


def class_set_summary(name_or_set, class_parts: Mapping[str, FrozenSet[str]] = CLASS_PARTS
                      ) -> ClassSetSummary:
    """Distinct parts, shared parts and overlap of a class set (paper Table II)."""
    cs = name_or_set if isinstance(name_or_set, ClassSet) else get_class_set(name_or_set)
    counts: Dict[str, int] = {}
    for c in cs.classes:
        for p in class_parts[c]:
            counts[p] = counts.get(p, 0) + 1
    order = {p: i for i, p in enumerate(PARTS)}
    distinct = tuple(sorted(counts, key=order.__getitem__))
    shared = tuple(p for p in distinct if counts[p] >= 2)
    return ClassSetSummary(cs, distinct, shared)


def describe_class_sets() -> str:
    """Human-readable table of the four class sets (used by ``main.py --describe-classsets``)."""
    lines = ["%-5s %-6s %-32s %6s %8s %9s %7s" % ("set", "code", "classes", "parts", "shared",
                                                   "overlap", "paper")]
    for cs in CLASS_SETS:
        s = class_set_summary(cs)
        lines.append("%-5s %-6s %-32s %6d %8s %8.3f%% %6.2f%%" % (
            cs.paper_name, cs.code_name, ", ".join(cs.classes), len(s.distinct_parts),
            "%d/%d" % (len(s.shared_parts), len(s.distinct_parts)), 100 * s.overlap,
            PAPER_TABLE_II[cs.code_name][1]))
    lines.append("")
    for cs in CLASS_SETS:
        s = class_set_summary(cs)
        lines.append("%s (%s) shared parts: %s" % (cs.paper_name, cs.code_name,
                                                  ", ".join(s.shared_parts)))
    return "\n".join(lines)
