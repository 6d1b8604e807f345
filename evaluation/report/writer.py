"""Every output file of the evaluation is written here, atomically -- a run's reports
(``metrics.json``, Table IV and III, the comparison's ``bench.*``, the figures, the summary,
the seed-003 table, ``run.json`` and ``report.html``), a grid's merged reports and pages, and
K's evaluation and page -- so the modules that compute and lay out the reports never write,
and nothing imports in a circle: this module imports them, none of them imports it.

A run owns its output folder: the report files an earlier run wrote there that this run did
not write are removed (:func:`remove_stale_reports`), so no report disagrees with
``metrics.json``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from data.fileio import atomic_path, write_json_atomic, write_text_atomic
from evaluation.config import CONFIG_FILE
from evaluation.report import figures, k_page, page, trajectory_table
from evaluation.report.comparison_table import (comparison_frame, comparison_markdown,
                                                convergence_rows, grid_frame, grid_markdown,
                                                summary_text)
from evaluation.report.tables import figure_title, table_iii_markdown, table_iv_markdown
from evaluation.schema import validate_metrics
from evaluation.store import run_folder

#: Every report file a run may write into its output folder (caches in vectors/ excluded).
REPORT_FILES = ("metrics.json", "config.json", "table_iv.md", "table_iii.md", "fig4.png", "fig4.pdf",
                "roc.png", "roc.pdf", "bench.md", "bench.csv", "bench.png", "bench.pdf",
                "answer.png", "answer.pdf",
                "convergence.png", "convergence.pdf", "summary.txt", "trajectory_table.md",
                "trajectory_table.json", "run.json", "report.html")


# ----------------------------------------------------------------------------- pieces

def save_figure(fig, stem: str) -> Tuple[str, str]:
    """Save ``fig`` to ``stem.png`` and ``stem.pdf`` atomically; returns both paths."""
    paths = (stem + ".png", stem + ".pdf")
    for path, fmt in zip(paths, ("png", "pdf")):
        with atomic_path(path, suffix="." + fmt) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
    return paths


def write_metrics(path: str, obj: Mapping[str, Any]) -> str:
    """Validate and write ``metrics.json`` atomically; returns ``path``."""
    validate_metrics(obj)
    write_json_atomic(path, obj, indent=2)
    return path


def write_table_iv(path: str, metrics_list: Sequence[Mapping[str, Any]]) -> str:
    """Write :func:`~evaluation.report.tables.table_iv_markdown` to ``path``; returns ``path``."""
    write_text_atomic(path, table_iv_markdown(metrics_list))
    return path


def write_comparison(out_dir: str, metrics: Mapping[str, Any]) -> Dict[str, str]:
    """Write the comparison's ``bench.csv``, ``bench.md`` and ``bench.png/.pdf`` (and the
    adaptive attacks' ``convergence.png/.pdf`` when there are any); returns name -> path."""
    paths = {"bench_csv": os.path.join(out_dir, "bench.csv"),
             "bench_md": os.path.join(out_dir, "bench.md")}
    write_text_atomic(paths["bench_csv"], comparison_frame(metrics).to_csv(index=False))
    write_text_atomic(paths["bench_md"], comparison_markdown(metrics))
    paths["bench_png"], paths["bench_pdf"] = save_figure(
        figures.comparison_figure(metrics), os.path.join(out_dir, "bench"))
    paths["answer_png"], paths["answer_pdf"] = save_figure(
        figures.answer_figure(metrics), os.path.join(out_dir, "answer"))
    if convergence_rows(metrics):
        paths["convergence_png"], paths["convergence_pdf"] = save_figure(
            figures.convergence_figure(metrics), os.path.join(out_dir, "convergence"))
    return paths


# ----------------------------------------------------------------------------- a run

def write_run_reports(out_dir: str, metrics: Mapping[str, Any],
                      roc_curves: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """Write one run's reports into ``out_dir``; returns name -> path.

    Files: ``metrics.json``, ``table_iv.md`` (one row), ``table_iii.md`` (detection counts),
    ``fig4.png/.pdf``, ``summary.txt``; with a ``defenses`` block, the comparison's
    ``bench.md``/``bench.csv`` and figure ``bench.png/.pdf``; when ``roc_curves`` (attack
    label -> a :class:`~evaluation.report.figures.RocCurve` or a list of them, one per detector) is
    given, ``roc.png/.pdf``.
    """
    m = validate_metrics(metrics)
    paths = {"metrics": write_metrics(os.path.join(out_dir, "metrics.json"), m),
             "table_iv": write_table_iv(os.path.join(out_dir, "table_iv.md"), [m])}
    paths["table_iii"] = os.path.join(out_dir, "table_iii.md")
    write_text_atomic(paths["table_iii"], table_iii_markdown([m]))
    paths["fig4_png"], paths["fig4_pdf"] = save_figure(
        figures.fig4_figure(figures.fig4_groups_by_attack(m), title=figure_title(m)),
        os.path.join(out_dir, "fig4"))
    if "defenses" in m:
        paths.update(write_comparison(out_dir, m))
    if roc_curves:
        panels = {name: (list(c) if isinstance(c, (list, tuple)) else [c])
                  for name, c in roc_curves.items()}
        paths["roc_png"], paths["roc_pdf"] = save_figure(
            figures.roc_figure(panels, title=figure_title(m)), os.path.join(out_dir, "roc"))
    summary = os.path.join(out_dir, "summary.txt")
    write_text_atomic(summary, summary_text(m))
    paths["summary"] = summary
    return paths


def write_config(folder: str, record: Mapping[str, Any]) -> str:
    """A run's ``config.json`` (:func:`evaluation.config.record`) in ``folder``; returns its
    path."""
    path = os.path.join(folder, CONFIG_FILE)
    write_json_atomic(path, record, indent=1)
    return path


def write_trajectory_table(out_dir: str, table: Dict[str, Dict]) -> Dict[str, str]:
    """The seed-003 table (:mod:`evaluation.report.trajectory_table`) as Markdown and JSON."""
    paths = {"trajectory_table_md": os.path.join(out_dir, "trajectory_table.md"),
             "trajectory_table_json": os.path.join(out_dir, "trajectory_table.json")}
    write_text_atomic(paths["trajectory_table_md"], trajectory_table.table_markdown(table))
    write_json_atomic(paths["trajectory_table_json"], table, indent=1)
    return paths


def remove_stale_reports(out_dir: str, written: Iterable[str]) -> List[str]:
    """A run owns its output folder: remove the report files an earlier run wrote there that
    this run did not write (e.g. an old ``roc.png`` when no attack succeeded this time), so no
    report disagrees with ``metrics.json``.  Returns the removed paths."""
    keep = {os.path.abspath(p) for p in written}
    removed = []
    for name in REPORT_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path) and os.path.abspath(path) not in keep:
            os.remove(path)
            removed.append(path)
    return removed


def write_run_file(cfg, metrics: Dict[str, Any]) -> str:
    """Write ``run.json`` (:func:`evaluation.store.run_folder.describe_run`) into ``cfg.out_dir``
    atomically; returns its path."""
    path = os.path.join(cfg.out_dir, run_folder.RUN_FILE)
    write_json_atomic(path, run_folder.describe_run(cfg, metrics), indent=1)
    return path


def write_page(run_dir: str, log: Callable[[str], None] = print,
               start: Optional[float] = None, out: Optional[str] = None) -> str:
    """Build the page of the finished run in ``run_dir`` and write it to ``out`` (default
    ``report.html`` there); returns its path (the log line gives the seconds since
    ``start``, default now)."""
    start = time.time() if start is None else start
    path = out or os.path.join(run_dir, page.PAGE)
    write_text_atomic(path, page.build_page(run_dir))
    log("wrote %s (%.1f s)" % (path, time.time() - start))
    return path


def write_run_page(cfg, log: Callable[[str], None] = print) -> str:
    """The end of a run: record ``run.json`` for its configuration and write the page;
    returns the page's path."""
    start = time.time()
    with open(os.path.join(cfg.out_dir, "metrics.json"), encoding="utf-8") as f:
        write_run_file(cfg, json.load(f))
    return write_page(cfg.out_dir, log, start)


# ----------------------------------------------------------------------------- a grid

def write_grid_reports(out_dir: str, merged: Mapping[str, Any]) -> Dict[str, str]:
    """A grid's ``grid.json`` (``merged``: its pairs and their metrics), and across the pairs
    Table IV, the comparison (``bench.csv``, ``bench.md``), Fig. 4 and the page; returns
    name -> path."""
    metrics = merged["metrics"]
    paths = {"grid": os.path.join(out_dir, "grid.json")}
    write_json_atomic(paths["grid"], merged, indent=1)
    with_um = all(m.get("benign", {}).get("acc_um") is not None for m in metrics)
    if with_um:
        paths["table_iv"] = write_table_iv(os.path.join(out_dir, "table_iv.md"), metrics)
    paths["bench_csv"] = os.path.join(out_dir, "bench.csv")
    write_text_atomic(paths["bench_csv"], grid_frame(metrics).to_csv(index=False))
    paths["bench_md"] = os.path.join(out_dir, "bench.md")
    write_text_atomic(paths["bench_md"], grid_markdown(metrics))
    if with_um:
        fig = figures.fig4_figure(figures.fig4_groups_by_class_set(metrics),
                                  title="UnMask across the grid")
        paths["fig4_png"], paths["fig4_pdf"] = save_figure(fig, os.path.join(out_dir, "fig4"))
    paths["page"] = write_grid_page(out_dir, log=lambda s: None)
    return paths


def write_grid_page(grid_dir: str, log: Callable[[str], None] = print,
                    out: Optional[str] = None) -> str:
    """A grid's ``report.html`` (:func:`evaluation.report.page.build_grid_page`), or ``out``."""
    path = out or os.path.join(grid_dir, page.PAGE)
    write_text_atomic(path, page.build_grid_page(grid_dir))
    log("wrote %s" % path)
    return path


# ----------------------------------------------------------------------------- K

def write_k_eval(results_dir: str, split: str, metrics: Mapping[str, Any]) -> str:
    """K's evaluation on ``split``: ``eval_<split>.json``; returns its path."""
    path = os.path.join(results_dir, "eval_%s.json" % split)
    write_json_atomic(path, metrics, indent=1)
    return path


def write_k_page(results_dir: str, split: Optional[str] = None,
                 log: Callable[[str], None] = print, out: Optional[str] = None) -> str:
    """Write K's ``report.html`` (:func:`evaluation.report.k_page.build_k_page`) into
    ``results_dir`` (or to ``out``); returns its path."""
    path = out or os.path.join(results_dir, page.PAGE)
    write_text_atomic(path, k_page.build_k_page(results_dir, split))
    log("wrote %s" % path)
    return path
