"""What every option group is built from: :func:`option` (a dataclass field that is a
command-line option), :func:`flag_of`, the range checks the fields name (``check=``), the
error wording that names a flag and the names the registries accept."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import numbers
from typing import Any, Callable, List, Optional, Sequence

#: Sanity bound of K's learning rate (matterport trains at 0.001-0.02): a larger one can only
#: diverge, and a NaN/inf one trains a model full of NaN.
MAX_LEARNING_RATE = 10.0


def option(default: Any = None, help: Any = "", *, type: Optional[Callable] = None,
           choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
           check: Optional[Callable[[str, Any], Any]] = None) -> Any:
    """A dataclass field that is a command-line option ``--<name-with-dashes>``.

    Args:
        default: its default (a bool option is a switch, off by default).
        help: its help text, or a callable returning it (for lists read from registries).
        type: argparse's conversion of the text (``int``, ``float``, ``str.lower``, ...).
        choices: the accepted values (argparse refuses others).
        check: ``check(flag, value)`` raising ValueError when the value is out of range;
            run on the parsed value (argparse names the flag) and by ``validate()``.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "type": type, "choices": choices, "metavar": metavar, "check": check})


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(obj, name: str) -> None:
    """Run the range check of field ``name`` of an options dataclass on its value."""
    meta = next(f.metadata for f in dataclasses.fields(obj) if f.name == name)
    value = getattr(obj, name)
    if meta.get("check") is not None and value is not None:
        meta["check"](flag_of(name), value)


# ----------------------------------------------------------------------------- ranges

def check_count(flag: str, value, minimum: int = 1, what: str = "") -> Optional[int]:
    """``value`` as an int >= ``minimum`` (None stays None: the default applies).

    Raises:
        ValueError: naming ``flag``; 0 is refused, never taken to mean "the default".
    """
    if value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise ValueError("%s must be an integer >= %d%s, got %r (leave it out for the default)"
                         % (flag, minimum, " (%s)" % what if what else "", value))
    return int(value)


def check_positive(flag: str, value, maximum: Optional[float] = None,
                   what: str = "") -> Optional[float]:
    """``value`` as a finite float > 0 (and <= ``maximum``); None stays None.

    Raises:
        ValueError: naming ``flag`` for NaN, infinity, 0, negative values or values above
        ``maximum``.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0 or (
            maximum is not None and number > maximum):
        bound = " and <= %g" % maximum if maximum is not None else ""
        raise ValueError("%s must be a finite number > 0%s%s, got %r"
                         % (flag, bound, " (%s)" % what if what else "", value))
    return number


def check_learning_rate(value, flag: str = "--k-lr") -> Optional[float]:
    """A finite learning rate in (0, MAX_LEARNING_RATE] (None: the config's)."""
    return check_positive(flag, value, MAX_LEARNING_RATE,
                          "learning rate; a NaN, infinite or huge one trains a model full of NaN")


def _at_least(minimum: int, integer: bool = False):
    """``check`` of an integer option >= ``minimum`` (None: not given)."""
    def check(flag: str, value) -> None:
        if value is not None and value < minimum:
            raise ValueError("%s must be %s>= %d, got %r" % (flag, "an integer " if integer
                                                             else "", minimum, value))
    return check


def _k_count(what: str):
    return lambda flag, value: check_count(flag, value, 1, what)


def _in_unit_interval(flag: str, value) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError("%s must be in [0, 1], got %r" % (flag, value))


def _at_budget(flag: str, value) -> None:
    if not 0 < value <= 255:
        raise ValueError("%s must be in (0, 255] (the 0-255 scale, e.g. 4), got %r"
                         % (flag, value))


def _checked(convert: Callable, check: Callable, flag: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` then ``check`` (argparse's error names the flag)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%s: invalid number %r" % (flag, text)) from None
        try:
            check(flag, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value
    parse.__name__ = flag
    return parse


# ----------------------------------------------------------------------------- errors and names

@contextlib.contextmanager
def _option(flag: str, value):
    """Errors of the library checks run for ``flag`` name the flag and its value (the
    library phrases them with its argument names; the command line's names are flags)."""
    try:
        yield
    except ValueError as e:
        text = str(e)
        if text.startswith(flag):
            raise
        if str(value) in text:
            raise ValueError("%s: %s" % (flag, text)) from None
        raise ValueError("%s %s: %s" % (flag, value, text)) from None


def _threat_names() -> Sequence[str]:
    from defense.threats import NAMES
    return NAMES


def _goal_names() -> Sequence[str]:
    from defense.threats import GOALS
    return GOALS


def _defense_names() -> List[str]:
    from defense.defenses import list_defenses
    return list_defenses()


def _route_names() -> List[str]:
    from defense.defenses import route_names
    return route_names()
