"""Which command runs: :class:`Commands`, the first group of the command line."""
from __future__ import annotations

import dataclasses
from typing import Optional

from evaluation.options.base import option


@dataclasses.dataclass
class Commands:
    """commands (one at a time)"""
    prepare_data: bool = option(False, "generate the synthetic UnMask data set in --data-dir "
                                       "(reused if it is already there) and print its summary")
    describe_classsets: bool = option(False, "print the four class sets with their classes, "
                                             "distinct parts and part overlap (paper Table II)")
    report: Optional[str] = option(
        None, "rebuild report.html of a finished run from what it saved, recomputing nothing: "
              "an evaluation's folder (results/<code>/<arch>), the grid's (results/grid) or "
              "K's (--k-results-dir)", metavar="RUN_DIR")
    status: Optional[str] = option(
        None, "where the adaptive attacks of a run stand, from its folder alone (it may be "
              "running): batches and images done, goal reached, worker time so far and the time "
              "left if every image still standing holds", metavar="RUN_DIR")
    model: Optional[str] = option(
        None, "K: train/evaluate the Mask R-CNN part extractor; M: train/load the classifier "
              "for --classset, attack it and evaluate UnMask", type=str.upper,
        choices=("K", "M"))
    config: Optional[str] = option(
        None, "rerun a finished run from the config.json it wrote beside its results (an "
              "evaluation, a grid or K); --data-dir, --results-dir, --checkpoint-dir, "
              "--k-log-dir, --k-results-dir, --no-progress, --workers and --ray-address may "
              "be given with it to run elsewhere", metavar="CONFIG_JSON")
    report_out: Optional[str] = option(
        None, "with --report: write the page to this file instead of RUN_DIR/report.html (a "
              "shared or read-only run folder)", metavar="FILE")
    allow_other_models: bool = option(
        False, "with --config: rerun even where a model the rerun loads is not the one the run "
               "recorded (its sha1 differs); the run's report and config.json say so")

    def validate(self) -> None:
        given = [self.prepare_data, self.describe_classsets, self.model is not None,
                 self.report is not None, self.config is not None, self.status is not None]
        if sum(bool(g) for g in given) > 1:
            raise ValueError("give one command at a time: --prepare-data, "
                             "--describe-classsets, --report, --status, --config or --model")
        if self.report_out is not None and self.report is None:
            raise ValueError("--report-out FILE goes with --report RUN_DIR (where to write "
                             "that run's page)")
        if self.allow_other_models and self.config is None:
            raise ValueError("--allow-other-models goes with --config (a rerun of a recorded "
                             "run)")
