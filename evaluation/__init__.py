"""The evaluation harness: trains and evaluates the models end to end, runs the defense
comparison (what the reports call "the bench") and writes every report.

In the order a run goes through them:

* :mod:`evaluation.config` -- a run's configuration (:class:`~evaluation.config.EvalConfig`);
* :mod:`evaluation.run` -- one run of M's comparison: data, M (and AT), the defenses' fit, the
  attacks, the results; :mod:`evaluation.model_k` -- K's counterpart (train, evaluate);
* :mod:`evaluation.comparison` -- the comparison's image sets and its stores:
  :mod:`evaluation.store.attack_store` (gray-box attack records, image shards, universal
  perturbations), :mod:`evaluation.store.adaptive_store` (the adaptive engine's records) and
  :mod:`evaluation.store.observations` (the defenses' observations), all fingerprinted
  (:mod:`evaluation.store.records`);
* :mod:`evaluation.results` and :mod:`evaluation.metrics` -- every defense's rows of
  ``metrics.json`` (:mod:`evaluation.schema`);
* :mod:`evaluation.grid` -- the paper's grid as resumable work units, on an executor
  (:mod:`evaluation.executors`: this process or a Ray cluster);
* the reports: :mod:`evaluation.report.tables`, :mod:`evaluation.report.comparison_table`,
  :mod:`evaluation.report.figures`, :mod:`evaluation.report.trajectory_table`, the pages
  (:mod:`evaluation.report.page`, :mod:`evaluation.report.gallery`,
  :mod:`evaluation.store.run_folder`, :mod:`evaluation.report.k_page`) -- and
  :mod:`evaluation.report.writer`, the one module that writes every output file.

This file imports nothing.
"""
