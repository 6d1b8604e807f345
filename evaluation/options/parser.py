"""The whole command line: :class:`Options` holds one of each option group
(:data:`GROUPS`), :func:`build_parser` builds the parser from the groups' fields and
:func:`parse_args` turns a command line into :class:`Options`."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

from evaluation.options.base import _checked, flag_of
from evaluation.options.commands import Commands
from evaluation.options.data import DataOptions
from evaluation.options.grid import GridOptions
from evaluation.options.k import ROBUST_K_DIRS, KOptions
from evaluation.options.m import MOptions


#: The option groups in the order --help lists them.
GROUPS = (("commands", Commands), ("data", DataOptions), ("m", MOptions),
          ("grid", GridOptions), ("k", KOptions))


@dataclasses.dataclass
class Options:
    """A whole command line: which command, and every option of every command."""
    commands: Commands = dataclasses.field(default_factory=Commands)
    data: DataOptions = dataclasses.field(default_factory=DataOptions)
    m: MOptions = dataclasses.field(default_factory=MOptions)
    grid: GridOptions = dataclasses.field(default_factory=GridOptions)
    k: KOptions = dataclasses.field(default_factory=KOptions)
    #: the options given on the command line (the others took their defaults)
    given: Tuple[str, ...] = ()

    def flat(self) -> Dict[str, Any]:
        """Option name -> value, every option of every group."""
        return {f.name: getattr(getattr(self, g), f.name)
                for g, cls in GROUPS for f in dataclasses.fields(cls)}

    @classmethod
    def from_flat(cls, values: Dict[str, Any], given: Sequence[str] = ()) -> "Options":
        """The options whose values ``values`` gives (option name -> value; the others take
        their defaults); KeyError for a name that is no option."""
        names = {f.name: g for g, c in GROUPS for f in dataclasses.fields(c)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError("no such option: %s" % ", ".join(unknown))
        groups = {g: c(**{k: v for k, v in values.items() if names[k] == g})
                  for g, c in GROUPS}
        return cls(given=tuple(given), **groups)

    def refuse_m_options_for_k(self) -> None:
        """``--model K`` reads three options of M's group (``--weights``, ``--adv-train``,
        ``--no-progress``); any other of them that says what to evaluate (``--m-model``,
        ``--arch``, ``--attacks``, ``--classset``, ...) would be silently ignored, so it is refused
        (ValueError naming them).  M's folders (``--results-dir``, ``--checkpoint-dir``) may
        be given to both commands alike: K writes to its own (``--k-*-dir``)."""
        unused = [n for n in self.given if (n in _M_FIELDS or n == "classset")
                  and n not in K_READS_FROM_M + M_FOLDERS]
        if unused:
            raise ValueError("%s: option(s) of --model M, which --model K does not read "
                             "(K learns the parts of every class); drop them"
                             % ", ".join(flag_of(n) for n in unused))

    def k_options(self) -> Dict[str, Any]:
        """What K's runner takes (:func:`evaluation.model_k.run_model_k`): K's options with
        the data folder, the seeds, the initial weights and the progress display."""
        out = dict(dataclasses.asdict(self.k), data_dir=self.data.data_dir,
                   seed=self.data.seed, weights=self.m.weights,
                   no_progress=self.m.no_progress,
                   # --adv-train means a robust K only for --model K (for M: the AT model)
                   adv_train=bool(self.m.adv_train and self.commands.model == "K"))
        if out["adv_train"]:       # a robust K lives in its own folders unless told otherwise
            for name, robust in ROBUST_K_DIRS.items():
                if name not in self.given:
                    out[name] = robust
        return out


#: The options of M's group that K's runner reads (:meth:`Options.k_options`).
K_READS_FROM_M = ("weights", "adv_train", "no_progress")
#: M's folders, which a script may pass to both commands (K has its own).
M_FOLDERS = ("results_dir", "checkpoint_dir")
_M_FIELDS = frozenset(f.name for f in dataclasses.fields(MOptions))


def k_defaults() -> Dict[str, Any]:
    """The defaults of what K's runner takes (:meth:`Options.k_options`)."""
    return Options().k_options()


# ----------------------------------------------------------------------------- parsing

def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The command line's parser, from the fields of :data:`GROUPS` (``defaults=False``:
    every default suppressed, so the namespace holds only the options given)."""
    p = argparse.ArgumentParser(
        prog="main.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="UnMask: knowledge-based adversarial detection and defense (TF 2 port). "
                    "Without a command, runs the default job: `--model M --classset CS5b` on "
                    "the synthetic data set.")
    for _, cls in GROUPS:
        group = p.add_argument_group(cls.__doc__)
        for f in dataclasses.fields(cls):
            meta, flag = f.metadata, flag_of(f.name)
            help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
            kw: Dict[str, Any] = {"help": help_text}
            if not defaults:
                kw["default"] = argparse.SUPPRESS
            if f.type in ("bool", bool):
                group.add_argument(flag, action="store_true", **kw)
                continue
            if defaults:
                kw["default"] = f.default
            convert = meta["type"]
            if cls is KOptions and meta["check"] is not None:
                # K's numbers are refused by argparse itself, naming the flag
                convert = _checked(convert or str, meta["check"], flag)
            for key in ("choices", "metavar"):
                if meta[key] is not None:
                    kw[key] = meta[key]
            if convert is not None:
                kw["type"] = convert
            group.add_argument(flag, **kw)
    return p


#: Options that may be given with --config (where the rerun reads and writes).
CONFIG_OVERRIDES = ("data_dir", "results_dir", "checkpoint_dir", "k_log_dir", "k_results_dir",
                    "no_progress", "workers", "ray_address", "allow_other_models")


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    """The :class:`Options` of a command line (SystemExit with argparse's message for a
    malformed one)."""
    values = vars(build_parser().parse_args(argv))
    given = tuple(sorted(vars(build_parser(defaults=False).parse_args(argv))))
    return Options.from_flat(values, given)
