"""The defense comparison's tables -- ``bench.csv`` (tidy) and ``bench.md`` (one row per
defense), as the reports call them -- Tramer et al.'s sanity checks, and the console summary
of a run.

Columns of ``bench.csv`` -- one row per (defense, threat model, attack vector), the benign row
first with ``attack = "none"``: ``defense, kind, threat_model, attack, eps, clean_acc, acc,
defended, evasion, robustness, auc, tpr, fpr, n_attacked, n_successful``.  ``acc`` counts a
rejected image (-1) as wrong, the paper's rule; ``defended`` counts it as stopped (right *or*
rejected), the fair figure for a detector that only rejects; ``evasion`` is the attacker's
success: for a detector, M fooled *and* not flagged at the operating threshold, for a
classifier, a wrong answer.  Threat models: ``gray-box`` (the attack sees the classifier, not
the defense) and ``adaptive`` (it sees the whole defense, :mod:`defense.adaptive`).
``robustness`` is seed 004's metric, accuracy under attack / clean accuracy of the same
defended model; it rewards a defense that wrecks clean accuracy, so the table always prints
both accuracies beside it.

``bench.md`` pivots that table: rows = defenses, columns = clean accuracy and, per vector,
"acc (ratio)" and, for detectors, "defended · AUC / TPR" at the chosen operating threshold.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import pandas as pd

from evaluation.report.tables import (MISSING, arch_label, attack_label, detection_set_caption,
                                      figure_title, fmt2)
from evaluation.schema import validate_metrics


CSV_COLUMNS = ("defense", "kind", "threat_model", "goal", "attack", "eps", "clean_acc", "acc",
               "defended", "evasion", "robustness", "auc", "tpr", "fpr", "tpr_at_5fpr",
               "tpr_at_10fpr", "n_attacked", "n_successful", "converged", "routes_complete")


def comparison_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The tidy bench table of a validated metrics object (see module docstring)."""
    rows = []
    for label, block in metrics["defenses"].items():
        clean = block["benign"]["acc"]
        rows.append({"defense": label, "kind": block["kind"], "threat_model": "-",
                     "attack": "none", "eps": 0, "clean_acc": clean, "acc": clean})
        for r in block["attacks"]:
            conv, routes = r.get("convergence"), r.get("routes")
            rows.append(dict({"defense": label, "kind": block["kind"], "clean_acc": clean,
                              "converged": None if conv is None else conv["converged"],
                              "routes_complete": None if routes is None
                              else routes["complete"]},
                             **{k: r[k] for k in CSV_COLUMNS if k in r}))
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


#: Marks a number whose attack had not settled (SPEC §11): the last doubling of steps or the
#: last restart still changed it by more than a point.
NOT_CONVERGED = " (not converged)"
#: Marks a number whose attack left out routes of the defense's decision rule (SPEC §13,
#: ``--adaptive-routes``): an upper bound like an unconverged one.
ROUTES_MISSING = " (routes missing)"


def _column(attack: str, eps: Any, threat: str, goal: Any) -> str:
    """Column title of a vector: ``PGD-L∞ ε8``, ``PGD-L∞ ε8 [adaptive, wrong]``."""
    label = attack_label(attack, eps)
    if threat == "gray-box":
        return label
    return label + " [%s%s]" % (threat, "" if _missing(goal) else ", " + str(goal))


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _cell_acc(acc: Any, ratio: Any) -> str:
    if acc is None or (isinstance(acc, float) and np.isnan(acc)):
        return MISSING
    if ratio is None or (isinstance(ratio, float) and np.isnan(ratio)):
        return fmt2(acc)
    return "%s (%.2f)" % (fmt2(acc), ratio)


def _cell_det(defended: Any, auc: Any, tpr: Any) -> str:
    out = fmt2(defended)
    if auc is None or (isinstance(auc, float) and np.isnan(auc)):
        return out + " · " + MISSING
    return "%s · %.3f / %s" % (out, auc, fmt2(tpr))


def comparison_markdown(metrics: Mapping[str, Any]) -> str:
    """``bench.md``: caption, then rows = defenses, columns = clean accuracy and per vector
    the accuracy under attack with the robustness ratio, and a detector's AUC / TPR."""
    df = comparison_frame(metrics)
    attacked = df[df["attack"] != "none"]
    vectors = list(dict.fromkeys(zip(attacked["attack"], attacked["eps"],
                                     attacked["threat_model"], attacked["goal"])))
    detectors = set(df.loc[df["kind"] == "detector", "defense"])
    table = {}
    for label, group in df.groupby("defense", sort=False):
        row = {"defense": label, "clean": fmt2(group["clean_acc"].iloc[0])}
        if detectors:
            aucs = group.loc[(group["attack"] != "none") & (group["threat_model"] == "gray-box"),
                             "auc"].dropna()
            row["macro-AUC (gray-box)"] = ("%.3f" % aucs.mean() if label in detectors
                                           and len(aucs) else MISSING)
        worst = metrics["defenses"][label].get("worst_case")
        if any("worst_case" in b for b in metrics["defenses"].values()):
            row["worst case: defended"] = (fmt2(worst["defended"]) if worst
                                           else MISSING)
        for attack, eps, threat, goal in vectors:
            same_goal = (group["goal"].isna() if _missing(goal) else group["goal"] == goal)
            hit = group[(group["attack"] == attack) & (group["eps"] == eps)
                        & (group["threat_model"] == threat) & same_goal]
            col = _column(attack, eps, threat, goal)
            if hit.empty:
                row[col] = MISSING
                if detectors:
                    row[col + " defended · AUC / TPR"] = MISSING
                continue
            r = hit.iloc[0]
            row[col] = _cell_acc(r["acc"], r["robustness"]) + (
                NOT_CONVERGED if r["converged"] is False else "") + (
                ROUTES_MISSING if r["routes_complete"] is False else "")
            if detectors:
                row[col + " defended · AUC / TPR"] = (
                    _cell_det(r["defended"], r["auc"], r["tpr"]) if label in detectors
                    else MISSING)
        table[label] = row
    wide = pd.DataFrame(list(table.values()))
    caption = (
        "Defense bench, %s, %s. Accuracy (fraction) on %d test images, clean and under each "
        "attack vector -- gray-box (the attack sees the classifier: M, or the AT model for "
        "at; never the defense) and, marked [adaptive], defense-aware (it sees the whole "
        "defense: BPDA / EOT through transforms, the detector through its LSTM, K for "
        "UnMask) -- with the robustness ratio (attacked / clean accuracy) in brackets; a "
        "rejected image (-1) counts as wrong. Detectors also give the defended rate (right or "
        "rejected: the attack was stopped) and AUC / TPR at their operating threshold on the "
        "contamination-0.5 set. Defense-aware columns name their goal: [.., wrong] is the "
        "attack run for a wrong final answer (its accuracy is the defended accuracy), "
        "[.., undetected] the one run for M fooled and not flagged (its evasion rate is in "
        "bench.csv); a number marked 'not converged' moved by more than a point with the "
        "last doubling of steps or the last restart, and one marked 'routes missing' was "
        "attacked along only some of the routes of the defense's decision rule: either is an "
        "upper bound on the defense. 'worst case' = images defended under every attack "
        "tried. "
        "%s\n\nParameters: %s\n"
        % (arch_label(metrics["arch"]), metrics["class_set"], _n_test(metrics),
           detection_set_caption(metrics),
           "; ".join("%s: %s" % (label, params_text(b["params"]))
                     for label, b in metrics["defenses"].items())))
    notes = ["%s: %s" % (label, _adaptive_note(b["adaptive"]))
             for label, b in metrics["defenses"].items() if "adaptive" in b]
    if notes:
        caption += "\n" + "; ".join(notes) + ".\n"
    text = caption + "\n" + wide.to_markdown(index=False) + "\n"
    sanity = sanity_text(metrics)
    return text + ("\n" + sanity if sanity else "")


def goal_success(row: Mapping[str, Any], detector: bool) -> Optional[float]:
    """The share of images on which the attacker behind ``row`` reached its own goal: a
    wrong final answer (goal ``wrong``, or any attack on a classifier), M fooled and not
    flagged (``undetected``), or -- a gray-box attack on a detector, which sees M only --
    M fooled (None where the row does not say)."""
    goal = row.get("goal")
    if goal == "undetected":
        return row["evasion"]
    if goal == "wrong" or not detector:
        return 1.0 - row["defended"]
    n = row.get("n_attacked")
    return float(row["n_successful"]) / n if n and "n_successful" in row else None


def sanity_checks(metrics: Mapping[str, Any], tolerance: float = 0.02):
    """Tramer et al.'s sanity checks on the results, as ``(ok, message)`` pairs:

    * an attack's success at its own goal (:func:`goal_success`) does not fall when its ε
      grows (same defense, attack, threat model and goal; ``tolerance`` allows for the noise
      of a few images) -- a gray-box attack on a detector aims at M, so its *evasion* may
      fall at a large ε (the image is changed enough for the detector to see it) and that
      is not checked;
    * the defense-aware attack is at least as strong as the gray-box one on the same vector
      (else its gradients are broken): evasion against evasion where the run has the
      undetected goal, else wrong answers against wrong answers; and a transfer attack never
      beats the white-box one;
    * at a large L∞ budget (ε >= :data:`LARGE_LINF_EPS`) an iterative per-image attack that
      knows the defense reaches its goal on nearly every image (SPEC §8: success approaches
      100%): the defense-aware rows, and a classifier's white-box (gray-box) rows.  Below
      :data:`LARGE_EPS_SUCCESS` it is the attack, not the defense, that may be holding.
    """
    out = []
    for label, block in metrics["defenses"].items():
        rows = block["attacks"]
        detector = block.get("kind") == "detector"
        out += _large_eps_checks(label, block)
        by_family: Dict[tuple, list] = {}
        for r in rows:
            by_family.setdefault((r["attack"], r["threat_model"], r.get("goal")),
                                 []).append(r)
        for (attack, threat, goal), group in by_family.items():
            group = sorted(group, key=lambda r: float(r["eps"]))
            for lo, hi in zip(group, group[1:]):
                a, b = goal_success(lo, detector), goal_success(hi, detector)
                if a is None or b is None:
                    continue
                ok = b + tolerance >= a
                out.append((ok, "%s, %s [%s%s]: success %.2f at eps %g -> %.2f at eps %g" % (
                    label, attack, threat, ", " + goal if goal else "", a, lo["eps"], b,
                    hi["eps"])))
        out += _adaptive_against_gray_box(label, rows, tolerance)
    return out


def _adaptive_against_gray_box(label: str, rows, tolerance: float):
    """Per vector with a gray-box row: the adaptive attack at least as strong, the transfer
    attack no stronger than the adaptive one -- compared on evasion where the run has the
    undetected goal, else on wrong final answers (1 - defended)."""
    index = {(r["attack"], float(r["eps"]), r["threat_model"], r.get("goal")): r
             for r in rows}
    out = []
    for attack, eps in sorted({k[:2] for k in index if k[2] == "gray-box"}):
        gray = index[(attack, eps, "gray-box", None)]
        goal = ("undetected" if (attack, eps, "adaptive", "undetected") in index
                else "wrong")
        what = "evasion" if goal == "undetected" else "wrong answers"

        def number(row):
            return row["evasion"] if goal == "undetected" else 1.0 - row["defended"]

        white = index.get((attack, eps, "adaptive", goal))
        transfer = index.get((attack, eps, "transfer", goal))
        if white is not None:
            ok = number(white) + tolerance >= number(gray)
            out.append((ok, "%s, %s eps %g: adaptive %s %.2f vs gray-box %.2f" % (
                label, attack, eps, what, number(white), number(gray))))
        if white is not None and transfer is not None:
            ok = number(transfer) <= number(white) + tolerance
            out.append((ok, "%s, %s eps %g: transfer %s %.2f vs white-box %.2f" % (
                label, attack, eps, what, number(transfer), number(white))))
    return out


#: An L∞ budget (0-255 scale) at which an attack that knows the defense must nearly always
#: reach its goal, and how nearly (SPEC §8's sanity check).
LARGE_LINF_EPS = 64.0
LARGE_EPS_SUCCESS = 0.9


def _large_eps_checks(label: str, block: Mapping[str, Any]):
    """``(ok, message)`` per row of ``block`` at a large L∞ budget whose attacker knows the
    defense and iterates per image: its success (the goal reached: a wrong final answer, or
    M fooled and not flagged) must approach 100% (at least :data:`LARGE_EPS_SUCCESS`)."""
    from attacks.registry import get_attack
    out = []
    for r in block["attacks"]:
        knows = (r["threat_model"] == "adaptive"
                 or (r["threat_model"] == "gray-box" and block.get("kind") == "classifier"))
        try:
            spec = get_attack(r["attack"])
        except ValueError:
            continue                                   # an attack of another version's file
        # one step, one universal perturbation or random targets: not asked to approach 1
        iterative = not (spec.fixed_steps or spec.universal or spec.targeting == "always")
        if (not knows or not iterative or spec.norm != "linf"
                or float(r["eps"]) < LARGE_LINF_EPS):
            continue
        success = goal_success(r, block.get("kind") == "detector")
        ok = success >= LARGE_EPS_SUCCESS
        out.append((ok, "%s, %s eps %g [%s%s]: success %.2f at a large budget (should "
                        "approach 1; below %.2f the attack may be what holds)" % (
                            label, r["attack"], float(r["eps"]), r["threat_model"],
                            ", " + r["goal"] if r.get("goal") else "", success,
                            LARGE_EPS_SUCCESS)))
    return out


def sanity_text(metrics: Mapping[str, Any]) -> str:
    checks = sanity_checks(metrics)
    if not checks:
        return ""
    bad = [m for ok, m in checks if not ok]
    head = ("Sanity checks (Tramer et al. 2020): %d of %d pass." % (len(checks) - len(bad),
                                                                      len(checks)))
    lines = [head] + ["- FAILED: " + m for m in bad]
    return "\n".join(lines) + "\n"


def _n_test(metrics: Mapping[str, Any]) -> int:
    for block in metrics["defenses"].values():
        for r in block["attacks"]:
            return int(r["n_attacked"])
    return 0


def params_text(params: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k not in ("grid", "selection")}
    text = ", ".join("%s=%s" % (k, ("%.4g" % v) if isinstance(v, float) else v)
                     for k, v in shown.items())
    return text or "-"


def _adaptive_note(note: Any) -> str:
    """Text of a defense's ``adaptive`` note (a string in older files; a dict of threat,
    ``skipped`` or ``goals`` -> reason)."""
    if isinstance(note, str):
        return "adaptive attack " + note
    parts = []
    for key, why in note.items():
        if key == "goals":
            parts.append(why)
        elif key == "skipped":
            parts.append("not run adaptively: " + "; ".join(
                "%s (%s)" % (vector, reason) for vector, reason in why.items()))
        else:
            parts.append("%s attack %s" % (key, why))
    return "; ".join(parts)


def convergence_rows(metrics: Mapping[str, Any]):
    """(defense, row) of every defense-aware row with a convergence trace."""
    return [(label, r) for label, block in metrics["defenses"].items()
            for r in block["attacks"] if r.get("convergence")]


def summary_text(metrics: Mapping[str, Any]) -> str:
    """Plain-text table for the console: one line per attack plus the benign line."""
    m = validate_metrics(metrics)
    head = "%-16s %6s %6s %6s %6s %6s %6s %13s" % ("attack", "None", "AT", "UM", "AUC", "TPR",
                                                    "FPR", "succ/attacked")
    lines = [figure_title(m), head, "-" * len(head)]
    b = m["benign"]
    lines.append("%-16s %6s %6s %6s" % ("no attack", fmt2(b["acc_none"]), fmt2(b["acc_at"]),
                                         fmt2(b["acc_um"])))
    for a in m["attacks"]:
        lines.append("%-16s %6s %6s %6s %6s %6s %6s %13s" % (
            attack_label(a["attack"], a["eps"]), fmt2(a["acc_none"]), fmt2(a["acc_at"]),
            fmt2(a["acc_um"]), fmt2(a["auc"]), fmt2(a["tpr"]), fmt2(a["fpr"]),
            "%d/%d" % (a["n_successful"], a["n_attacked"])))
    text = "\n".join(lines) + "\n"
    if "defenses" in m:
        text += "\n" + comparison_markdown(m)
    return text



def grid_frame(metrics_list) -> pd.DataFrame:
    """The tidy comparison table across the pairs of a grid (``arch`` and ``class_set``
    columns first), in the order of ``metrics_list``."""
    frames = []
    for m in metrics_list:
        frame = comparison_frame(m)
        frame.insert(0, "class_set", m["class_set"])
        frame.insert(0, "arch", m["arch"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def grid_markdown(metrics_list) -> str:
    """``bench.md`` of a grid: each pair's comparison under its own heading."""
    return "\n\n".join("## %s, %s\n\n%s" % (arch_label(m["arch"]), m["class_set"],
                                             comparison_markdown(m))
                       for m in metrics_list) + "\n"
