"""The figures of the reports, as matplotlib ``Figure`` objects (Agg canvas, no pyplot, no
global state; :mod:`evaluation.report.writer` saves them as PNG and PDF): Fig. 4 (accuracy of
None / AT / UnMask), Fig. 5 (ROC curves), the comparison of every defense per attack vector
and the adaptive attacks' convergence.  Results made with the oracle extractor are labelled
"oracle" in titles.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.knowledge import get_class_set
from evaluation.metrics import auc, roc_curve
from evaluation.report.comparison_table import comparison_frame, convergence_rows
from evaluation.report.tables import ATTACK_LABELS, attack_label, figure_title, row_order
from evaluation.schema import validate_metrics


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


@dataclasses.dataclass(frozen=True)
class RocCurve:
    """One ROC curve: ``fpr``/``tpr`` float [P] (from :func:`evaluation.metrics.roc_curve`)."""
    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def roc_curve_for(label: str, labels: Any, scores: Any) -> RocCurve:
    """:class:`RocCurve` of binary ``labels`` (1 = adversarial) and distances ``scores``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return RocCurve(label=str(label), fpr=fpr, tpr=tpr, auc=auc(fpr, tpr))


def roc_figure(panels: Mapping[str, Sequence[RocCurve]], title: Optional[str] = None,
               ncols: int = 4) -> Figure:
    """Fig. 5 style: one axes per attack (panel title), its curves with AUC in the legend."""
    if not panels:
        raise ValueError("roc_figure needs at least one panel (attack -> curves)")
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(math.ceil(len(panels) / ncols))
    fig = new_figure(3.2 * ncols, 3.2 * nrows + (0.4 if title else 0.0))
    for i, (name, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for c in curves:
            ax.plot(c.fpr, c.tpr, lw=1.6, label="%s (AUC %.3f)" % (c.label, c.auc))
        ax.plot([0, 1], [0, 1], ls=":", color="gray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("False positive rate", fontsize=8)
        ax.set_ylabel("True positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        if curves:
            ax.legend(loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def fig4_groups_by_attack(metrics: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Bars of one metrics object: "No attack" then each attack vector -> None/AT/UM."""
    m = validate_metrics(metrics)
    groups = {"No attack": {"None": m["benign"]["acc_none"], "AT": m["benign"]["acc_at"],
                            "UM": m["benign"]["acc_um"]}}
    for a in m["attacks"]:
        groups[attack_label(a["attack"], a["eps"])] = {"None": a["acc_none"], "AT": a["acc_at"],
                                                       "UM": a["acc_um"]}
    return groups


def fig4_groups_by_class_set(metrics_list: Sequence[Mapping[str, Any]]
                             ) -> Dict[str, Dict[str, Optional[float]]]:
    """Paper Fig. 4: per class set, accuracy averaged over attack vectors and models."""
    acc: Dict[str, Dict[str, List[float]]] = {}
    for m in sorted((validate_metrics(x) for x in metrics_list), key=row_order):
        name = get_class_set(m["class_set"]).paper_name
        bucket = acc.setdefault(name, {"None": [], "AT": [], "UM": []})
        for a in m["attacks"]:
            for col, key in (("None", "acc_none"), ("AT", "acc_at"), ("UM", "acc_um")):
                if a[key] is not None:
                    bucket[col].append(a[key])
    return {cs: {col: (float(np.mean(v)) if v else None) for col, v in cols.items()}
            for cs, cols in acc.items()}


def fig4_figure(groups: Mapping[str, Mapping[str, Optional[float]]],
                title: Optional[str] = None) -> Figure:
    """Fig. 4 style grouped bars (accuracy in %) of None / AT / UM per group; missing = no bar."""
    if not groups:
        raise ValueError("fig4_figure needs at least one group")
    names = list(groups)
    fig = new_figure(max(4.0, 1.1 * len(names) + 1.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.27
    colors = {"None": "#9e9e9e", "AT": "#4c72b0", "UM": "#dd8452"}
    for j, col in enumerate(("None", "AT", "UM")):
        vals = [groups[g].get(col) for g in names]
        xs = [x[i] + (j - 1) * width for i, v in enumerate(vals) if v is not None]
        hs = [100.0 * v for v in vals if v is not None]
        if hs:
            bars = ax.bar(xs, hs, width, label=col, color=colors[col])
            ax.bar_label(bars, fmt="%.0f", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 120)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig



def comparison_figure(metrics: Mapping[str, Any]):
    """Grouped bars: accuracy (%) of every defense, clean and per attack vector."""
    df = comparison_frame(metrics)
    df = df[df["threat_model"].isin(["-", "gray-box"])].copy()
    df["group"] = [("No attack" if a == "none" else attack_label(a, e))
                   for a, e in zip(df["attack"], df["eps"])]
    pivot = df.pivot_table(index="group", columns="defense", values="acc", sort=False)
    pivot = pivot[list(metrics["defenses"])]
    groups = list(dict.fromkeys(df["group"]))
    pivot = pivot.loc[groups]
    fig = new_figure(max(6.0, 0.9 * len(groups) * max(1, len(pivot.columns)) / 2 + 2), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(pivot.columns))
    for j, label in enumerate(pivot.columns):
        ax.bar(x + (j - (len(pivot.columns) - 1) / 2) * width, 100.0 * pivot[label].to_numpy(),
               width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=7, ncol=min(4, len(pivot.columns)), loc="upper right")
    ax.set_title("Defense bench (gray-box), " + figure_title(metrics), fontsize=9)
    fig.tight_layout()
    return fig


def answer_figure(metrics: Mapping[str, Any]):
    """Defended rate (right, or rejected) against ε, one panel per attack and one line per
    defense and threat model (the clean rate at ε = 0): how each defense holds as the budget
    grows and as the attacker learns more about it."""
    df = comparison_frame(metrics)
    attacks = list(dict.fromkeys(a for a in df["attack"] if a != "none"))
    fig = new_figure(max(5.0, 3.6 * len(attacks)), 3.6)
    for k, attack in enumerate(attacks):
        ax = fig.add_subplot(1, len(attacks), k + 1)
        rows = df[df["attack"] == attack]
        for (label, threat), group in rows.groupby(["defense", "threat_model"], sort=False):
            worst = group.groupby("eps")["defended"].min().sort_index()
            clean = float(df[(df["defense"] == label) & (df["attack"] == "none")]["acc"].iloc[0])
            xs, ys = [0.0] + list(worst.index), [clean] + list(worst.to_numpy())
            ax.plot(xs, [100.0 * v for v in ys], "-" if threat == "gray-box" else "--",
                    marker="o", label="%s [%s]" % (label, threat))
        ax.set_title(ATTACK_LABELS.get(attack, attack), fontsize=9)
        ax.set_xlabel("ε (0-255 scale)")
        ax.set_ylabel("defended (% of test images)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=6, loc="best")
    fig.suptitle("Defended rate against ε (solid: gray-box, dashed: defense-aware), "
                 + figure_title(metrics), fontsize=9)
    fig.tight_layout()
    return fig


def convergence_figure(metrics: Mapping[str, Any]):
    """The goal's success rate of every defense-aware attack after 10, 20, 50, 100 (200)
    steps (left) and after each restart round (right); dashed: not converged."""
    rows = convergence_rows(metrics)
    fig = new_figure(10.0, 4.2)
    by_steps, by_restart = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, r in rows:
        conv = r["convergence"]
        name = "%s: %s [%s, %s]" % (label, attack_label(r["attack"], r["eps"]),
                                    r["threat_model"], r["goal"])
        style = "-" if conv["converged"] else "--"
        steps = sorted((int(k), v) for k, v in conv["steps"].items())
        line, = by_steps.plot([k for k, _ in steps], [100.0 * v for _, v in steps], style,
                              marker="o", label=name)
        by_restart.plot(range(1, len(conv["restarts"]) + 1),
                        [100.0 * v for v in conv["restarts"]], style, marker="s",
                        color=line.get_color())
    by_steps.set_xscale("log")
    by_steps.set_xlabel("steps per run")
    by_restart.set_xlabel("restart rounds")
    for ax in (by_steps, by_restart):
        ax.set_ylabel("goal reached (% of test images)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    by_steps.legend(fontsize=6, loc="lower right")
    fig.suptitle("Convergence of the defense-aware attacks (dashed: not converged), "
                 + figure_title(metrics), fontsize=9)
    fig.tight_layout()
    return fig

