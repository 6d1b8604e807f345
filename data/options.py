"""Command-line values shared by the project's entry points (``main.py``, the PASCAL-Part
converter): a rejected value is named with its flag, the value and the accepted range.

(In ``data`` because every entry point may import it: nothing here imports the project.)
"""
from __future__ import annotations

import argparse
import numbers
from typing import Callable

#: Largest seed: every random generator the project seeds takes it (numpy's legacy seeding,
#: which ``keras.utils.set_random_seed`` uses, stops at 2**32 - 1).
MAX_SEED = 2 ** 32 - 1


def check_seed(flag: str, value) -> int:
    """``value`` (an integer, or its text) as an int in [0, MAX_SEED]; ValueError naming
    ``flag``, the value and the range otherwise."""
    number = None
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    if number is None or not 0 <= number <= MAX_SEED:
        raise ValueError("%s must be a non-negative integer <= %d, got %r"
                         % (flag, MAX_SEED, value))
    return number


def seed_argument(flag: str) -> Callable[[str], int]:
    """An argparse ``type=`` for a seed option: argparse's error names the flag, and the
    message the value and the range (``argument --seed: must be a non-negative integer <=
    4294967295, got '-1'``)."""
    def parse(text: str) -> int:
        try:
            return check_seed(flag, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)[len(flag) + 1:]) from None
    parse.__name__ = flag
    return parse
