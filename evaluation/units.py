"""Work units: what the grid and a run's adaptive attacks hand to an executor (in this
process, or Ray workers: :mod:`evaluation.executors`).  Each is a pure function of its run's
configuration and its own fields, and records when it is done (:mod:`evaluation.grid`)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

from data.knowledge import get_class_set
from evaluation.store.records import eps_tag, safe_name


@dataclasses.dataclass(frozen=True)
class Unit:
    """One work unit: ``kind`` in train / attack / defense / evaluate / adaptive, for
    (``arch``, ``class_set`` code name); an attack names its ``vector`` (attack name, eps)
    and, when sharded, its ``shard`` (index, count); a defense unit its ``defense`` label; an
    adaptive unit -- one image batch of one defense-aware attack -- its defense, vector,
    ``threat``, ``goal`` and ``batch``."""
    kind: str
    arch: str
    class_set: str
    vector: Optional[Tuple[str, float]] = None
    shard: Optional[Tuple[int, int]] = None
    defense: Optional[str] = None
    threat: Optional[str] = None
    goal: Optional[str] = None
    batch: Optional[int] = None

    @property
    def name(self) -> str:
        tail = "" if self.vector is None else "-%s_%s" % (self.vector[0],
                                                          eps_tag(self.vector[1]))
        if self.shard is not None:
            tail += "-shard%dof%d" % (self.shard[0] + 1, self.shard[1])
        if self.defense is not None:
            tail += "-" + safe_name(self.defense)
        if self.threat is not None:
            tail += "-%s-%s-batch%04d" % (self.threat, self.goal, self.batch)
        return "%s-%s-%s%s" % (self.kind, self.class_set, self.arch, tail)


def pair_config(base, arch: str, class_set: str):
    """``base`` with the pair's architecture and class set (everything else unchanged)."""
    return dataclasses.replace(base, arch=arch, class_set=get_class_set(class_set))


def unit_record_path(base, unit: Unit) -> str:
    """Where a unit records that it is done: the grid's folder, or an adaptive unit's run
    folder (a single run's adaptive attacks are units too)."""
    if unit.kind == "adaptive":
        return os.path.join(pair_config(base, unit.arch, unit.class_set).out_dir, "units",
                            unit.name + ".json")
    return os.path.join(base.results_dir, "grid", "units", unit.name + ".json")


def forget_unit(base, unit: Unit) -> bool:
    """Remove the record saying ``unit`` is done (True when there was one): its output is
    known to be of no use any more, so an executor runs the unit again."""
    try:
        os.remove(unit_record_path(base, unit))
    except FileNotFoundError:
        return False
    return True
