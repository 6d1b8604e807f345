#!/usr/bin/env python
"""UnMask on current TensorFlow: command-line entry point.

    python main.py                                  # the default job (synthetic CS5b evaluation)
    python main.py --prepare-data                   # generate the synthetic data set
    python main.py --describe-classsets             # Table II: classes, parts, overlap
    python main.py --model K                        # train (or evaluate) the part extractor K
    python main.py --model M --classset CS5b        # train M, attack it, evaluate UnMask
    python main.py --report results/cs5-2/mobilenetv2_050   # rebuild a finished run's page
    python main.py --config results/cs5-2/mobilenetv2_050/config.json   # rerun a finished run

``main()`` only parses the command line into its options (:mod:`evaluation.options`, where
every option's default, range and help are) and hands them to :func:`evaluation.commands.run`,
which checks them, builds the run's configuration and runs it.
"""
from __future__ import annotations

import sys

import tfcompat  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from evaluation import commands
from evaluation.options import parse_args


def main(argv=None) -> int:
    return commands.run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
