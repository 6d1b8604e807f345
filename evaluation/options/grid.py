"""The paper's grid of (architecture, class set) pairs and running past one machine:
:class:`GridOptions` (``--grid``, ``--workers``, ``--ray-address``, ``--shards``)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Optional, Tuple

from data.knowledge import CLASS_SETS, get_class_set
from evaluation.options.base import _at_least, _check_field, option

if TYPE_CHECKING:
    from evaluation.options.data import DataOptions
    from evaluation.options.m import MOptions


@dataclasses.dataclass
class GridOptions:
    """the paper's grid and running past one machine (--model M)"""
    grid: bool = option(False, "evaluate every (architecture, class set) pair of --archs x "
                               "--classsets (resumable work units) and write one Table IV, "
                               "bench table and Fig. 4 across them in RESULTS_DIR/grid/")
    archs: Optional[str] = option(None, "comma list of architectures for --grid (default: "
                                        "--arch)")
    classsets: Optional[str] = option(None, "comma list of class sets for --grid, or 'all' "
                                            "(default: --classset)")
    workers: Optional[int] = option(None, "run the grid's units (or, without --grid, the "
                                          "run's defense-aware attacks, one unit per image "
                                          "batch) on a local Ray cluster of N worker "
                                          "processes (default: in this process)",
                                    type=int, check=_at_least(1))
    ray_address: Optional[str] = option(None, "HOST:PORT of a running Ray cluster to run the "
                                              "grid's units (or a run's defense-aware "
                                              "attacks) on")
    shards: Optional[int] = option(None, "split every per-image attack vector of --grid into N "
                                         "image shards (work units cut at attack-batch "
                                         "boundaries; the merged numbers equal the unsharded "
                                         "run's) (default: 1)", type=int, check=_at_least(1))

    def pairs(self, data: DataOptions, m: MOptions,
              model: Optional[str]) -> Optional[Tuple[List[str], List[str]]]:
        """(architectures, class set code names) of --grid, validated (None without
        --grid); ValueError otherwise."""
        from models.classifier import get_architecture

        _check_field(self, "workers")
        if self.workers is not None and self.ray_address:
            raise ValueError("give --workers N (a local Ray cluster) or --ray-address (a "
                             "running one), not both")
        if not self.grid:
            if self.archs or self.classsets or self.shards is not None:
                raise ValueError("--archs, --classsets and --shards go with --grid")
            if (self.workers is not None or self.ray_address) and model == "K":
                raise ValueError("--workers and --ray-address run M's grid or a run's "
                                 "defense-aware attacks; K trains in one process")
            return None
        if model == "K":
            raise ValueError("--grid evaluates M's pairs; train K with `--model K` first")
        own = m.own_model_flags()
        if own:
            raise ValueError("--grid trains M and AT for each (architecture, class set) "
                             "pair, %s gives your one classifier: give one of them" % own[0])
        archs = []
        for name in filter(None, (a.strip() for a in (self.archs or m.arch).split(","))):
            try:
                spec = get_architecture(name)
            except ValueError as e:
                raise ValueError("--archs: %s" % e) from None
            if not spec.min_size <= m.input_size:
                raise ValueError("--archs: %s needs --input-size >= %d" % (spec.name,
                                                                          spec.min_size))
            if spec.name not in archs:
                archs.append(spec.name)
        text = self.classsets or get_class_set(data.classset).code_name
        if text.strip().lower() == "all":
            sets = [cs.code_name for cs in CLASS_SETS]
        else:
            sets = []
            for name in filter(None, (c.strip() for c in text.split(","))):
                try:
                    code = get_class_set(name).code_name
                except ValueError as e:
                    raise ValueError("--classsets: %s" % e) from None
                if code not in sets:
                    sets.append(code)
        if not archs or not sets:
            raise ValueError("--grid needs at least one architecture and one class set, got "
                             "--archs %r and --classsets %r" % (self.archs or m.arch, text))
        if m.distribute != "none":
            raise ValueError("--grid runs its units in separate processes (--workers); "
                             "--distribute applies to a single run, not to the grid")
        _check_field(self, "shards")
        return archs, sets
