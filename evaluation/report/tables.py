"""The text of the reports: labels (attacks, architectures, numbers in the paper's style),
the paper's Table IV and Table III in Markdown, and the captions and titles every report
shares.  Results made with the oracle extractor are labelled "oracle": they are the ceiling of
UnMask, not a measurement of K.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from data.knowledge import CLASS_SETS, get_class_set
from evaluation.schema import validate_metrics

DETECTION_SET_UNSTATED = "not stated"
MODE_UNSTATED = "not stated"
#: Attack names used in metrics files and their display labels.
ATTACK_LABELS: Dict[str, str] = {"pgd_linf": "PGD-L∞", "pgd_l2": "PGD-L2",
                                 "mia_linf": "MIA-L∞", "mia_l2": "MIA-L2"}
#: The paper's 8 attack vectors, in Table IV order.
ATTACK_VECTORS: Tuple[Tuple[str, int], ...] = (
    ("pgd_linf", 8), ("pgd_linf", 16), ("pgd_l2", 300), ("pgd_l2", 600),
    ("mia_linf", 8), ("mia_linf", 16), ("mia_l2", 300), ("mia_l2", 600))
ARCH_LABELS: Dict[str, str] = {"resnet50": "ResNet50", "densenet121": "DenseNet121"}
MISSING = "–"


def fmt2(x: Optional[float]) -> str:
    """Two decimals in the paper's style (``.94``, ``1.00``); ``–`` for missing values."""
    if x is None:
        return MISSING
    s = "%.2f" % x
    return s[1:] if s.startswith("0.") else s


def attack_label(attack: str, eps: float) -> str:
    """``PGD-L∞ ε=8`` style label (unknown names are shown as given)."""
    return "%s ε=%g" % (ATTACK_LABELS.get(attack, attack), eps)


def arch_label(arch: str) -> str:
    return ARCH_LABELS.get(arch.lower(), arch)


def _find_attack(m: Mapping[str, Any], attack: str, eps: float) -> Optional[Mapping[str, Any]]:
    for a in m["attacks"]:
        if a["attack"] == attack and float(a["eps"]) == float(eps):
            return a
    return None


def row_order(m: Mapping[str, Any]) -> Tuple[int, str, int]:
    archs = list(ARCH_LABELS)
    a = m["arch"].lower()
    cs = [c.code_name for c in CLASS_SETS].index(m["class_set"])
    return (archs.index(a) if a in archs else len(archs), a, cs)


def _group_cells(acc: Optional[Mapping[str, Any]]) -> List[str]:
    if acc is None:
        return [MISSING] * 3
    return [fmt2(acc["acc_none"]), fmt2(acc["acc_at"]), fmt2(acc["acc_um"])]


def _table_block(rows: Sequence[Mapping[str, Any]], vectors: Sequence[Tuple[str, int]]) -> str:
    groups = ["No attack"] + [attack_label(a, e) for a, e in vectors]
    head = "| M | CS | " + " | ".join(g + " | |" for g in groups) + " |"
    sep = "|" + "---|" * (2 + 3 * len(groups))
    sub = "| | | " + " | ".join("None | AT | UM" for _ in groups) + " |"
    lines = [head, sep, sub]
    for m in rows:
        cells = [arch_label(m["arch"]), get_class_set(m["class_set"]).paper_name]
        cells += _group_cells(m["benign"])
        for a, e in vectors:
            cells += _group_cells(_find_attack(m, a, e))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _caption(rows: Sequence[Mapping[str, Any]]) -> str:
    kinds = {m["extractor"] for m in rows}
    if len(kinds) != 1:
        raise ValueError("Table IV mixes extractors %s; make one table per extractor"
                         % sorted(kinds))
    kind = kinds.pop()
    ext = ("K (Mask R-CNN part detector)" if kind == "k" else
           "ORACLE (ground-truth parts: a perfect K, the ceiling of UnMask, not a K result)"
           if kind == "oracle" else "none (UnMask not run)")
    modes = sorted({m.get("mode", MODE_UNSTATED) for m in rows})
    ts = sorted({float(m["threshold"]) for m in rows if m["threshold"] is not None})
    return ("Table IV (reproduction). Accuracy (fraction) with no defense (None), adversarial "
            "training (AT) and UnMask (UM) at contamination 1. Extractor: %s. Rectification "
            "mode: %s. Threshold t: %s. %s %s = not available (no AT model or attack not "
            "run)." % (ext, "/".join(modes), ", ".join("%g" % t for t in ts),
                       " ".join(sorted({detection_set_caption(m) for m in rows})), MISSING))


def table_iv_markdown(metrics_list: Sequence[Mapping[str, Any]]) -> str:
    """Table IV in Markdown: rows (M, class set), two blocks (PGD, MIA) of None/AT/UM groups.

    Raises ValueError for an invalid metrics object, a repeated (arch, class set) row, or
    rows made with different extractors.
    """
    if not metrics_list:
        raise ValueError("table_iv_markdown needs at least one metrics object")
    rows = sorted((validate_metrics(m) for m in metrics_list), key=row_order)
    keys = [(m["arch"].lower(), m["class_set"]) for m in rows]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError("Table IV has several metrics for (arch, class set) %s" % sorted(dup))
    caption = _caption(rows)
    return "\n\n".join([caption, _table_block(rows, ATTACK_VECTORS[:4]),
                        _table_block(rows, ATTACK_VECTORS[4:])]) + "\n"


def table_iii_markdown(metrics_list: Sequence[Mapping[str, Any]]) -> str:
    """Table III style counts: images in each detection evaluation (2 x successful attacks:
    the successfully attacked images plus their benign counterparts), per (M, class set) row
    and attack vector; ``–`` where the attack was not run."""
    if not metrics_list:
        raise ValueError("table_iii_markdown needs at least one metrics object")
    rows = sorted((validate_metrics(m) for m in metrics_list), key=row_order)
    head = "| M | CS | " + " | ".join(attack_label(a, e) for a, e in ATTACK_VECTORS) + " |"
    sets = sorted({detection_set_caption(m) for m in rows})
    lines = ["Images used to evaluate detection (successful attacks + benign counterparts). "
             + " ".join(sets), "", head, "|" + "---|" * (2 + len(ATTACK_VECTORS))]
    for m in rows:
        cells = [arch_label(m["arch"]), get_class_set(m["class_set"]).paper_name]
        for a, e in ATTACK_VECTORS:
            entry = _find_attack(m, a, e)
            cells.append(MISSING if entry is None else "{:,}".format(2 * entry["n_successful"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _extractor_tag(m: Mapping[str, Any]) -> str:
    if m["extractor"] is None:
        return "no UnMask"
    return "oracle extractor (ceiling)" if m["extractor"] == "oracle" else "K extractor"


def figure_title(m: Mapping[str, Any]) -> str:
    """``ResNet50, CS5b, K extractor, t=0.5, mode flagged``. A run without the plain
    ``unmask`` row has no run-wide threshold (each variant chose its own): the title says so
    instead of printing an empty ``t``."""
    t = "per defense" if m["threshold"] is None else "%g" % m["threshold"]
    return "%s, %s, %s, t=%s, mode %s, detection set %s" % (
        arch_label(m["arch"]), get_class_set(m["class_set"]).paper_name, _extractor_tag(m), t,
        m.get("mode", MODE_UNSTATED), detection_set_of(m))


def detection_set_of(m: Mapping[str, Any]) -> str:
    """The detection-set rule a metrics object was made with (``not stated`` in old files)."""
    return m.get("detection_set", DETECTION_SET_UNSTATED)


def detection_set_caption(m: Mapping[str, Any]) -> str:
    rule = detection_set_of(m)
    text = {"original": "every test image M misclassifies after the attack, and its benign "
                        "version (the original code's rule)",
            "strict": "every test image M classifies right before the attack and wrong after "
                      "it, and its benign version (--detection-set strict)"}
    return "Detection set: %s." % text.get(rule, "not stated")

