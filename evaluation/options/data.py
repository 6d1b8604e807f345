"""The data every command reads: :class:`DataOptions` (the data folder, the seed, the class
set)."""
from __future__ import annotations

import dataclasses

from data.knowledge import class_set_names, get_class_set
from data.options import seed_argument
from data.synthetic import DEFAULT_DATA_DIR
from evaluation.options.base import option

DEFAULT_CLASS_SET = "CS5b"


@dataclasses.dataclass
class DataOptions:
    """data"""
    data_dir: str = option(DEFAULT_DATA_DIR, "UnMask data folder (original layout: VOC2010/, "
                                             "cs3-1/, ...); the synthetic data set is generated "
                                             "here when it is missing")
    seed: int = option(0, "seed of the synthetic data set and of every random choice of a run",
                       type=seed_argument("--seed"))
    classset: str = option(DEFAULT_CLASS_SET, lambda: "class set for --model M: " + ", ".join(
        class_set_names()) + " (case-insensitive)")

    def validate(self) -> None:
        try:
            get_class_set(self.classset)
        except ValueError as e:
            raise ValueError("--classset: %s" % e) from None
