"""The command line's options, one dataclass per command: every option's flag, default,
accepted range and help are its field's (:func:`~evaluation.options.base.option`), the parser
is built from the fields (:func:`~evaluation.options.parser.build_parser`) and each dataclass
validates its own values.  One module per concern: ``base`` (the field helper, the range
checks), ``values`` (the parsers of list and budget options), ``commands`` (which command
runs), ``data`` (the data every command reads), ``m`` (``--model M``: M, the attacks, the
defenses, the evaluation), ``grid`` (the paper's grid, running past one machine), ``k``
(``--model K``: the part extractor) and ``parser`` (:class:`Options`, one of each, and
:func:`parse_args`, which turns a command line into it).  Every name is also importable from
here, ``from evaluation.options import parse_args``.
"""
from evaluation.options.base import (MAX_LEARNING_RATE, check_count, check_learning_rate,
                                     check_positive, flag_of, option)
from evaluation.options.commands import Commands
from evaluation.options.data import DEFAULT_CLASS_SET, DataOptions
from evaluation.options.grid import GridOptions
from evaluation.options.k import EVAL_SPLITS, K_CONFIGS, ROBUST_K_DIRS, KOptions
from evaluation.options.m import MAX_INPUT_SIZE, RECIPE, MOptions
from evaluation.options.parser import (CONFIG_OVERRIDES, GROUPS, Options, build_parser,
                                       k_defaults, parse_args)
from evaluation.options.values import (check_l2_budgets, parse_attack_eps, parse_goals,
                                       parse_routes, parse_stage_epochs, parse_threats,
                                       parse_vectors)

__all__ = [
    "CONFIG_OVERRIDES", "Commands", "DEFAULT_CLASS_SET", "DataOptions", "EVAL_SPLITS", "GROUPS",
    "GridOptions", "KOptions", "K_CONFIGS", "MAX_INPUT_SIZE", "MAX_LEARNING_RATE", "MOptions",
    "Options", "RECIPE", "ROBUST_K_DIRS", "build_parser", "check_count", "check_l2_budgets",
    "check_learning_rate", "check_positive", "flag_of", "k_defaults", "option",
    "parse_args", "parse_attack_eps", "parse_goals", "parse_routes", "parse_stage_epochs",
    "parse_threats", "parse_vectors",
]
