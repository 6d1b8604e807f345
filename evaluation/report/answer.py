"""The answer a run gives, first: per defense, the share of test images it still defends under
every attack and threat model the run tried (the per-image worst case, with its 95% interval),
the attack or route that hurt it most, and the threat models the run did *not* try -- on the
page (:func:`answer_html`, its first section) and as the last lines of the run on the terminal
(:func:`answer_text`, at most 100 columns).

A number whose attack was not converged or left out routes of the defense's decision rule (or,
for a worst case, a goal the defense has) is an upper bound: it is marked ``*``.
"""
from __future__ import annotations

import html
import textwrap
from typing import Any, Dict, List, Mapping, Optional

from defense.routes import WHITE_BOX
from defense.threats import NAMES as THREATS
from evaluation.report.tables import attack_label

#: How a run adds a threat model it did not try.
ADD_THREAT = {"gray-box": "--threat gray-box (the paper's attacker, who sees M only)",
              "adaptive": "--threat gray-box,adaptive (an attacker who knows the defense)",
              "transfer": "--threat gray-box,adaptive,transfer --k-transfer PATH (the "
                          "adaptive attack through a K of another seed)"}


def _short(rate: Optional[float]) -> str:
    if rate is None:
        return "–"
    return "1.00" if rate >= 1 else ("%.2f" % rate).lstrip("0")


def rate_text(rate: Optional[float], interval=None, upper: bool = False) -> str:
    """``.47 [.37, .57]`` (``*``: an upper bound)."""
    text = _short(rate)
    if interval:
        text += " [%s, %s]" % (_short(interval[0]), _short(interval[1]))
    return text + ("*" if upper else "")


def clean_text(rate: Optional[float], interval=None, rejected: Optional[float] = None) -> str:
    """Clean accuracy with its interval, and ``(rejects r)`` where ``rejected`` (a
    detector's clean rejection rate) is given."""
    text = rate_text(rate, interval)
    return text if rejected is None else text + " (rejects %s)" % rate_text(rejected)


def goals_left_out(block: Mapping[str, Any]) -> Optional[str]:
    """The note of a defense block whose goals ``--adaptive-goals`` left out, else None."""
    notes = block.get("adaptive")
    return notes.get("goals") if isinstance(notes, Mapping) else None


def upper_bound_reason(rows, block: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Why a worst case over the bench ``rows`` (of defense ``block``) is an upper bound, or
    None: an attack not converged, one without all of its defense's routes, or -- for the
    defense-aware rows -- a goal of the defense left out by ``--adaptive-goals`` (that run's
    images could have been worse still; the reason is the defense's note)."""
    if any((r.get("convergence") or {}).get("converged") is False for r in rows):
        return "an attack behind it not converged"
    if any((r.get("routes") or {}).get("complete") is False for r in rows):
        return "an attack behind it left out routes"
    if block is not None and any(r["threat_model"] != "gray-box" for r in rows):
        return goals_left_out(block)
    return None


def is_white_box(row: Mapping[str, Any]) -> bool:
    """Whether a result row is a classifier's white-box attack run by the adaptive engine (the
    only route of ``none`` and ``at``): the gray-box attack on the same model, run longer."""
    return (row.get("routes") or {}).get("all") == [WHITE_BOX]


def upper_bound(rows, block: Optional[Mapping[str, Any]] = None) -> bool:
    """Whether a worst case over ``rows`` is an upper bound (:func:`upper_bound_reason`)."""
    return upper_bound_reason(rows, block) is not None


def _row_name(r: Mapping[str, Any]) -> str:
    name = attack_label(r["attack"], r["eps"])
    if r["threat_model"] != "gray-box":
        name += " [%s%s]" % (r["threat_model"], ", " + r["goal"] if r.get("goal") else "")
    won = (r.get("routes") or {}).get("won") or {}
    if won and max(won.values()) > 0:
        name += ", route %s" % max(won, key=lambda k: won[k])
    return name


def answer(metrics: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per defense: ``label``, ``clean`` (rate, interval), ``rejected`` (a rejecting
    detector's clean rejections, or None), ``worst`` (rate, interval, upper bound) over every
    attack tried, ``by_threat`` (threat -> the same), and ``weakest`` (the row that defended
    the fewest images)."""
    out = []
    for label, block in metrics.get("defenses", {}).items():
        rows = block["attacks"]
        worst = block.get("worst_case") or {}
        by = {t: {"rate": w["defended"], "interval": w.get("interval"),
                  "upper": upper_bound([r for r in rows if r["threat_model"] == t], block)}
              for t, w in worst.get("by_threat", {}).items()}
        benign = block["benign"]
        out.append({
            "label": label, "clean": {"rate": benign["acc"],
                                      "interval": benign.get("acc_interval")},
            "rejected": ({"rate": benign["rejected"],
                          "interval": benign.get("rejected_interval")}
                         if "rejected" in benign else None),
            "worst": ({"rate": worst["defended"], "interval": worst.get("interval"),
                       "upper": upper_bound(rows, block)} if worst else None),
            "by_threat": by,
            "weakest": _row_name(min(rows, key=lambda r: r["defended"])) if rows else None})
    return out


def not_tried(metrics: Mapping[str, Any]) -> List[str]:
    """The threat models no defense of the run was evaluated under, each with the option
    that adds it (a threat model only some defense can have is left out when no defense of
    the run has it: ``transfer`` needs UnMask with K), then the defenses whose goals
    ``--adaptive-goals`` left out."""
    tried = {r["threat_model"] for b in metrics.get("defenses", {}).values()
             for r in b["attacks"]}
    kinds = {b.get("params", {}).get("extractor") for b in metrics.get("defenses", {}).values()}
    out = []
    for threat in THREATS:
        if threat in tried:
            continue
        if threat == "transfer" and "k" not in kinds:
            continue
        out.append("%s: add %s" % (threat, ADD_THREAT[threat]))
    for label, block in metrics.get("defenses", {}).items():
        goals = goals_left_out(block)
        if goals:
            out.append("%s: %s" % (label, goals))
    return out


def answer_text(metrics: Mapping[str, Any], page: Optional[str] = None) -> str:
    """The terminal's last lines: one row per defense (at most 100 columns), the page's path
    and the threat models the run did not try."""
    rows = answer(metrics)
    width = min(34, max([len("defense")] + [len(r["label"]) for r in rows]))
    cells = "%%-%ds %%-16s %%-20s " % width
    head = cells % ("defense", "clean", "worst case [95%]") + "hurt most by"
    lines = ["The answer: images still defended under every attack this run tried", head,
             "-" * min(100, len(head) + 20)]
    for r in rows:
        worst = r["worst"] or {}
        start = cells % (
            r["label"][:width], rate_text(r["clean"]["rate"], r["clean"]["interval"]),
            rate_text(worst.get("rate"), worst.get("interval"), worst.get("upper", False)))
        # what hurt it most, in its column, continued on the next lines where it is long
        room = max(20, 100 - len(start))
        pieces = textwrap.wrap(r["weakest"] or "–", room, break_long_words=False,
                               break_on_hyphens=False)
        lines.append((start + pieces[0])[:100])
        lines += [(" " * (100 - room) + piece)[:100] for piece in pieces[1:]]
    if any((r["worst"] or {}).get("upper") for r in rows):
        lines.append("* an upper bound: an attack behind it was not converged or left out "
                     "routes or a goal")
    missing = not_tried(metrics)
    if missing:
        lines.append("Not tried by this run -- " + "; ".join(missing))
    if page:
        lines.append("The page: %s" % page)
    return "\n".join(line if len(line) <= 100 else _wrap(line) for line in lines) + "\n"


def _wrap(line: str, width: int = 100) -> str:
    """A line cut at spaces into pieces of at most ``width`` characters, continued indented."""
    return textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def answer_html(metrics: Mapping[str, Any]) -> str:
    """The page's first section: the answer table, the not-tried line and how to read it."""
    esc = lambda t: html.escape(str(t), quote=True)  # noqa: E731
    rows = answer(metrics)
    threats = [t for t in THREATS if any(t in r["by_threat"] for r in rows)]
    head = ("<tr><th>defense</th><th>clean</th><th>worst case, every attack</th>%s"
            "<th>hurt most by</th></tr>" % "".join("<th>%s</th>" % esc(t) for t in threats))
    body = []
    for r in rows:
        worst = r["worst"] or {}
        clean = clean_text(r["clean"]["rate"], r["clean"]["interval"],
                           r["rejected"]["rate"] if r["rejected"] else None)
        cells = [esc(r["label"]), esc(clean),
                 "<b>%s</b>" % esc(rate_text(worst.get("rate"), worst.get("interval"),
                                             worst.get("upper", False)))]
        cells += [esc(rate_text(r["by_threat"][t]["rate"], r["by_threat"][t]["interval"],
                                r["by_threat"][t]["upper"])) if t in r["by_threat"] else "–"
                  for t in threats]
        cells.append(esc(r["weakest"] or "–"))
        body.append("<tr>%s</tr>" % "".join("<td>%s</td>" % c for c in cells))
    missing = not_tried(metrics)
    note = ('<p class="nottried"><b>Not tried by this run:</b> %s.</p>'
            % esc("; ".join(missing)) if missing else
            '<p class="caption">Every threat model of the bench was tried.</p>')
    caption = ("<p class=\"caption\">Share of the %s test images each defense still gets right "
               "(or rejects) under every attack the run tried, per image, with 95%% Wilson "
               "intervals; the columns per threat model are the same worst case within it. * "
               "= an upper bound (an attack behind it was not converged or left out routes of "
               "the defense's decision rule, or one of its goals).</p>" % _n_test(metrics))
    return "<table class=\"answer\">%s%s</table>%s%s" % (head, "".join(body), caption, note)


def _n_test(metrics: Mapping[str, Any]) -> str:
    for block in metrics.get("defenses", {}).values():
        for r in block["attacks"]:
            return str(r["n_attacked"])
    return "?"
