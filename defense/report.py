"""UnMask result files: ``metrics.json`` (validated schema), Table IV, Fig. 4, Fig. 5, summary.

``metrics.json`` schema (one file per (M architecture, class set, extractor, threshold, mode);
accuracies and rates are fractions in [0, 1])::

    {"class_set": "cs5-2", "arch": "resnet50", "extractor": "k" | "oracle",
     "threshold": 0.5, "mode": "flagged" | "all", "seed": 0, "versions": {"numpy": "2.4.0", ...},
     "benign": {"acc_none": .97, "acc_at": .92 | null, "acc_um": .91},
     "attacks": [{"attack": "pgd_linf", "eps": 8, "acc_none": ..., "acc_at": ... | null,
                  "acc_um": ..., "auc": ..., "tpr": ..., "fpr": ..., "n_attacked": 500,
                  "n_successful": 480}, ...]}

Rules checked by :func:`validate_metrics` (ValueError naming the key): exactly these keys
(``mode`` may be absent: it is this project's addition to the issue's schema; readers that
find none assume nothing about it);
``class_set`` is a code name of ``data.knowledge.CLASS_SETS``; ``acc_at`` is null everywhere
(no AT model) or nowhere; ``auc``/``tpr``/``fpr`` are null exactly when ``n_successful`` is 0;
``n_successful <= n_attacked``; each ``(attack, eps)`` appears once.  ``eps`` is on the 0-255
scale (8, 16 for L∞; 300, 600 for L2).

Figures use matplotlib's Agg canvas directly (no pyplot, no global state) and are written
atomically as PNG and PDF.  Results made with the oracle extractor are labelled "oracle" in
captions and titles: they are the ceiling of UnMask, not a measurement of K.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data.fileio import atomic_path, write_json_atomic, write_text_atomic
from data.knowledge import CLASS_SETS, get_class_set
from defense.metrics import DETECTION_SETS, auc, roc_curve
from defense.threats import GOALS
from defense.threats import NAMES as THREAT_NAMES

TOP_KEYS = ("class_set", "arch", "extractor", "threshold", "seed", "versions", "benign",
            "attacks")
#: Written by this project, optional when reading (a file in the issue's shape has no mode).
OPTIONAL_TOP_KEYS = ("mode", "defenses", "attack_info", "detection_set", "adaptive_settings")
DETECTION_SET_UNSTATED = "not stated"
MODE_UNSTATED = "not stated"
BENIGN_KEYS = ("acc_none", "acc_at", "acc_um")
ATTACK_KEYS = ("attack", "eps", "acc_none", "acc_at", "acc_um", "auc", "tpr", "fpr",
               "n_attacked", "n_successful")
EXTRACTORS = ("k", "oracle")
#: Keys of one defense's block (``defenses.<label>``) and of its per-vector rows.
DEFENSE_KEYS = ("kind", "attacked_model", "params", "benign", "attacks")
DEFENSE_OPTIONAL_KEYS = ("worst_case", "adaptive")
DEFENSE_ROW_KEYS = ("attack", "eps", "threat_model", "acc", "defended", "evasion",
                    "robustness", "auc", "tpr", "fpr", "n_attacked", "n_successful")
#: Written by this project since the adaptive engine (optional when reading older files):
#: the goal of a defense-aware row (null for gray-box), the detector's TPR at 5% / 10% benign
#: FPR, and for defense-aware rows the convergence trace, the cost and the agreement of the
#: attack's own verdicts with the real evaluation.
DEFENSE_ROW_OPTIONAL_KEYS = ("goal", "tpr_at_5fpr", "tpr_at_10fpr", "convergence", "cost",
                             "agreement")
DEFENSE_KINDS = ("classifier", "detector")
THREAT_MODELS = THREAT_NAMES
CONVERGENCE_KEYS = ("steps", "restarts", "converged", "why")
MODES = ("flagged", "all")

#: Attack names used in metrics files and their display labels.
ATTACK_LABELS: Dict[str, str] = {"pgd_linf": "PGD-L∞", "pgd_l2": "PGD-L2",
                                 "mia_linf": "MIA-L∞", "mia_l2": "MIA-L2"}
#: The paper's 8 attack vectors, in Table IV order.
ATTACK_VECTORS: Tuple[Tuple[str, int], ...] = (
    ("pgd_linf", 8), ("pgd_linf", 16), ("pgd_l2", 300), ("pgd_l2", 600),
    ("mia_linf", 8), ("mia_linf", 16), ("mia_l2", 300), ("mia_l2", 600))
ARCH_LABELS: Dict[str, str] = {"resnet50": "ResNet50", "densenet121": "DenseNet121"}
MISSING = "–"


# ----------------------------------------------------------------------------- schema

def _fail(key: str, msg: str) -> None:
    raise ValueError("metrics: key %r %s" % (key, msg))


def _check_exact_keys(obj: Any, keys: Sequence[str], where: str,
                      optional: Sequence[str] = ()) -> None:
    """``obj`` is a dict holding every key of ``keys``, and no key outside ``keys`` and
    ``optional`` (a typo is an error, not an ignored field)."""
    if not isinstance(obj, dict):
        _fail(where or "<root>", "must be an object, got %s" % type(obj).__name__)
    prefix = where + "." if where else ""
    for k in keys:
        if k not in obj:
            _fail(prefix + k, "is missing")
    allowed = tuple(keys) + tuple(optional)
    for k in obj:
        if k not in allowed:
            _fail(prefix + str(k), "is not part of the schema (allowed: %s)"
                  % ", ".join(allowed))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_fraction(x: Any, key: str, nullable: bool = False) -> None:
    if x is None and nullable:
        return
    if not _is_number(x) or not 0.0 <= x <= 1.0:
        _fail(key, "must be a fraction in [0, 1]%s, got %r" % (" or null" if nullable else "", x))


def _check_count(x: Any, key: str) -> None:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        _fail(key, "must be an integer >= 0, got %r" % (x,))


def _check_str(x: Any, key: str, allowed: Optional[Sequence[str]] = None) -> None:
    if not isinstance(x, str) or not x:
        _fail(key, "must be a non-empty string, got %r" % (x,))
    if allowed is not None and x not in allowed:
        _fail(key, "must be one of %s, got %r" % (", ".join(map(repr, allowed)), x))


def _check_top(obj: Dict[str, Any]) -> None:
    _check_str(obj["class_set"], "class_set")
    codes = [cs.code_name for cs in CLASS_SETS]
    if obj["class_set"] not in codes:
        _fail("class_set", "must be a class-set code name (%s), got %r"
              % (", ".join(codes), obj["class_set"]))
    _check_str(obj["arch"], "arch")
    has_um = obj["benign"].get("acc_um") is not None if isinstance(obj["benign"], dict) else True
    if has_um or obj["extractor"] is not None:
        _check_str(obj["extractor"], "extractor", EXTRACTORS)
    _check_fraction(obj["threshold"], "threshold", nullable=not has_um)
    if "mode" in obj:
        _check_str(obj["mode"], "mode", MODES)
    if "detection_set" in obj:
        _check_str(obj["detection_set"], "detection_set", DETECTION_SETS)
    if not isinstance(obj["seed"], int) or isinstance(obj["seed"], bool):
        _fail("seed", "must be an integer, got %r" % (obj["seed"],))
    versions = obj["versions"]
    if not isinstance(versions, dict):
        _fail("versions", "must be an object of package -> version string")
    for name, v in versions.items():
        if not isinstance(v, str):
            _fail("versions." + str(name), "must be a version string, got %r" % (v,))


def _check_attack(entry: Any, i: int, has_at: bool, has_um: bool = True) -> Tuple[str, float]:
    where = "attacks[%d]" % i
    _check_exact_keys(entry, ATTACK_KEYS, where)
    _check_str(entry["attack"], where + ".attack")
    if not _is_number(entry["eps"]) or entry["eps"] <= 0:
        _fail(where + ".eps", "must be a positive number (0-255 scale), got %r" % (entry["eps"],))
    _check_fraction(entry["acc_none"], where + ".acc_none")
    for k, has in (("acc_at", has_at), ("acc_um", has_um)):
        _check_fraction(entry[k], where + "." + k, nullable=True)
        if (entry[k] is None) == has:
            _fail(where + "." + k, "must be %s like benign.%s" % ("a number" if has else "null",
                                                                   k))
    _check_count(entry["n_attacked"], where + ".n_attacked")
    _check_count(entry["n_successful"], where + ".n_successful")
    if entry["n_successful"] > entry["n_attacked"]:
        _fail(where + ".n_successful", "exceeds n_attacked (%d > %d)"
              % (entry["n_successful"], entry["n_attacked"]))
    none_rates = entry["n_successful"] == 0 or not has_um
    for k in ("auc", "tpr", "fpr"):
        _check_fraction(entry[k], where + "." + k, nullable=none_rates)
        if none_rates and entry[k] is not None:
            _fail(where + "." + k, "must be null when n_successful is 0 (no detection set) "
                                   "or UnMask was not run")
    return entry["attack"], float(entry["eps"])


def validate_metrics(obj: Any) -> Dict[str, Any]:
    """Check ``obj`` against the ``metrics.json`` schema (module docstring); returns it.

    Raises:
        ValueError: naming the first bad key (``attacks[2].auc``, ``benign.acc_at``, ...).
    """
    _check_exact_keys(obj, TOP_KEYS, "", OPTIONAL_TOP_KEYS)
    _check_exact_keys(obj["benign"], BENIGN_KEYS, "benign")
    _check_top(obj)
    _check_fraction(obj["benign"]["acc_none"], "benign.acc_none")
    for k in ("acc_at", "acc_um"):
        _check_fraction(obj["benign"][k], "benign." + k, nullable=True)
    has_at = obj["benign"]["acc_at"] is not None
    has_um = obj["benign"]["acc_um"] is not None
    if not isinstance(obj["attacks"], list):
        _fail("attacks", "must be a list")
    seen = {}
    for i, entry in enumerate(obj["attacks"]):
        key = _check_attack(entry, i, has_at, has_um)
        if key in seen:
            _fail("attacks[%d]" % i, "repeats attack %r eps %g of attacks[%d]"
                  % (key[0], key[1], seen[key]))
        seen[key] = i
    if "defenses" in obj:
        _check_defenses(obj["defenses"], set(seen))
    if "attack_info" in obj and obj["attack_info"] is not None \
            and not isinstance(obj["attack_info"], dict):
        _fail("attack_info", "must be an object (attack_eps -> details) or null")
    return obj


def _check_defenses(blocks: Any, vectors: set) -> None:
    """The ``defenses`` block: label -> {kind, attacked_model, params, benign, attacks}."""
    if not isinstance(blocks, dict) or not blocks:
        _fail("defenses", "must be a non-empty object (defense label -> results)")
    for label, block in blocks.items():
        where = "defenses.%s" % label
        _check_exact_keys(block, DEFENSE_KEYS, where, DEFENSE_OPTIONAL_KEYS)
        _check_str(block["kind"], where + ".kind", DEFENSE_KINDS)
        _check_str(block["attacked_model"], where + ".attacked_model")
        if not isinstance(block["params"], dict):
            _fail(where + ".params", "must be an object")
        _check_exact_keys(block["benign"], ("acc",), where + ".benign")
        _check_fraction(block["benign"]["acc"], where + ".benign.acc")
        if not isinstance(block["attacks"], list):
            _fail(where + ".attacks", "must be a list")
        rows = set()
        for i, row in enumerate(block["attacks"]):
            w = "%s.attacks[%d]" % (where, i)
            _check_exact_keys(row, DEFENSE_ROW_KEYS, w, DEFENSE_ROW_OPTIONAL_KEYS)
            _check_str(row["threat_model"], w + ".threat_model", THREAT_MODELS)
            _check_row_extras(row, w, block["kind"])
            _check_fraction(row["acc"], w + ".acc")
            _check_fraction(row["defended"], w + ".defended")
            _check_fraction(row["evasion"], w + ".evasion")
            if row["defended"] + 1e-12 < row["acc"]:
                _fail(w + ".defended", "cannot be below acc (right answers are defended)")
            if row["robustness"] is not None and (not _is_number(row["robustness"])
                                                  or row["robustness"] < 0):
                _fail(w + ".robustness", "must be a number >= 0 or null")
            _check_count(row["n_attacked"], w + ".n_attacked")
            _check_count(row["n_successful"], w + ".n_successful")
            for k in ("auc", "tpr", "fpr"):
                _check_fraction(row[k], w + "." + k, nullable=True)
                if block["kind"] != "detector" and row[k] is not None:
                    _fail(w + "." + k, "must be null for a defense that is not a detector")
            key = (row["attack"], float(row["eps"]), row["threat_model"], row.get("goal"))
            if key in rows:
                _fail(w, "repeats attack %r eps %g (%s, goal %s)" % key)
            rows.add(key)
            if key[:2] not in vectors:
                _fail(w, "attack %r eps %g is not among the run's attacks" % key[:2])


def _check_row_extras(row: Mapping[str, Any], where: str, kind: str) -> None:
    """The optional fields of a defense row: a goal only on defense-aware rows, TPRs at
    fixed FPRs only for detectors, a convergence trace with rates in [0, 1]."""
    goal = row.get("goal")
    if row["threat_model"] == "gray-box" and goal is not None:
        _fail(where + ".goal", "must be null for a gray-box row")
    if goal is not None:
        _check_str(goal, where + ".goal", GOALS)
    for k in ("tpr_at_5fpr", "tpr_at_10fpr"):
        _check_fraction(row.get(k), where + "." + k, nullable=True)
        if kind != "detector" and row.get(k) is not None:
            _fail(where + "." + k, "must be null for a defense that is not a detector")
    conv = row.get("convergence")
    if conv is None:
        return
    _check_exact_keys(conv, CONVERGENCE_KEYS, where + ".convergence")
    if not isinstance(conv["steps"], dict) or not conv["steps"]:
        _fail(where + ".convergence.steps", "must be a non-empty object (steps -> rate)")
    for rate in list(conv["steps"].values()) + list(conv["restarts"]):
        _check_fraction(rate, where + ".convergence")
    if not isinstance(conv["converged"], bool):
        _fail(where + ".convergence.converged", "must be true or false")


def _num(x: Any) -> Any:
    """numpy scalars -> Python numbers (JSON-serialisable); None stays None."""
    if x is None:
        return None
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    return float(x)


def eps_value(eps: float) -> Any:
    """``eps`` as written to reports: an int when whole (8, not 8.0)."""
    return int(eps) if float(eps).is_integer() else float(eps)


def attack_entry(attack: str, eps: float, acc_none: float, acc_at: Optional[float],
                 acc_um: float, auc: Optional[float], tpr: Optional[float],
                 fpr: Optional[float], n_attacked: int, n_successful: int) -> Dict[str, Any]:
    """One ``attacks[]`` entry with numpy numbers converted (``eps`` on the 0-255 scale)."""
    return {"attack": str(attack), "eps": eps_value(eps), "acc_none": _num(acc_none),
            "acc_at": _num(acc_at), "acc_um": _num(acc_um), "auc": _num(auc),
            "tpr": _num(tpr), "fpr": _num(fpr), "n_attacked": int(n_attacked),
            "n_successful": int(n_successful)}


def package_versions(names: Iterable[str] = ("numpy", "tensorflow", "tf-keras", "matplotlib",
                                             "scikit-image", "cleverhans")) -> Dict[str, str]:
    """Installed versions (``"python"`` plus each installed distribution of ``names``)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def make_metrics(class_set: str, arch: str, extractor: Optional[str],
                 threshold: Optional[float], mode: str, seed: int,
                 benign: Mapping[str, Optional[float]], attacks: Sequence[Mapping[str, Any]],
                 versions: Optional[Mapping[str, str]] = None,
                 defenses: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 attack_info: Optional[Mapping[str, Any]] = None,
                 detection_set: Optional[str] = None,
                 adaptive_settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Assemble and validate a metrics object (class set names are converted to code names).

    ``extractor`` and ``threshold`` are UnMask's (None when UnMask was not among the
    defenses); ``defenses`` holds every defense's results keyed by its label."""
    obj = {"class_set": get_class_set(class_set).code_name, "arch": str(arch),
           "extractor": None if extractor is None else str(extractor),
           "threshold": None if threshold is None else float(threshold), "mode": str(mode),
           "seed": int(seed),
           "versions": dict(package_versions() if versions is None else versions),
           "benign": {k: _num(benign.get(k)) for k in BENIGN_KEYS},
           "attacks": [dict(a) for a in attacks]}
    if detection_set is not None:
        obj["detection_set"] = str(detection_set)
    if defenses is not None:
        obj["defenses"] = json.loads(json.dumps(_plain(defenses)))
    if attack_info is not None:
        obj["attack_info"] = json.loads(json.dumps(_plain(attack_info)))
    if adaptive_settings is not None:
        obj["adaptive_settings"] = json.loads(json.dumps(_plain(adaptive_settings)))
    return validate_metrics(obj)


def _plain(obj: Any) -> Any:
    """numpy numbers and arrays inside dicts/lists -> plain Python (JSON-serialisable)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return _num(obj)
    return obj


def write_metrics(path: str, obj: Mapping[str, Any]) -> str:
    """Validate and write ``metrics.json`` atomically; returns ``path``."""
    validate_metrics(obj)
    write_json_atomic(path, obj, indent=2)
    return path


# ----------------------------------------------------------------------------- Table IV

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


def _row_order(m: Mapping[str, Any]) -> Tuple[int, str, int]:
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
    rows = sorted((validate_metrics(m) for m in metrics_list), key=_row_order)
    keys = [(m["arch"].lower(), m["class_set"]) for m in rows]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError("Table IV has several metrics for (arch, class set) %s" % sorted(dup))
    caption = _caption(rows)
    return "\n\n".join([caption, _table_block(rows, ATTACK_VECTORS[:4]),
                        _table_block(rows, ATTACK_VECTORS[4:])]) + "\n"


def write_table_iv(path: str, metrics_list: Sequence[Mapping[str, Any]]) -> str:
    """Write :func:`table_iv_markdown` to ``path`` atomically; returns ``path``."""
    write_text_atomic(path, table_iv_markdown(metrics_list))
    return path


def table_iii_markdown(metrics_list: Sequence[Mapping[str, Any]]) -> str:
    """Table III style counts: images in each detection evaluation (2 x successful attacks:
    the successfully attacked images plus their benign counterparts), per (M, class set) row
    and attack vector; ``–`` where the attack was not run."""
    if not metrics_list:
        raise ValueError("table_iii_markdown needs at least one metrics object")
    rows = sorted((validate_metrics(m) for m in metrics_list), key=_row_order)
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


# ----------------------------------------------------------------------------- figures

def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str) -> Tuple[str, str]:
    """Save ``fig`` to ``stem.png`` and ``stem.pdf`` atomically; returns both paths."""
    paths = (stem + ".png", stem + ".pdf")
    for path, fmt in zip(paths, ("png", "pdf")):
        with atomic_path(path, suffix="." + fmt) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
    return paths


@dataclasses.dataclass(frozen=True)
class RocCurve:
    """One ROC curve: ``fpr``/``tpr`` float [P] (from :func:`defense.metrics.roc_curve`)."""
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
    fig = _new_figure(3.2 * ncols, 3.2 * nrows + (0.4 if title else 0.0))
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
    for m in sorted((validate_metrics(x) for x in metrics_list), key=_row_order):
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
    fig = _new_figure(max(4.0, 1.1 * len(names) + 1.5), 3.6)
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


def _extractor_tag(m: Mapping[str, Any]) -> str:
    if m["extractor"] is None:
        return "no UnMask"
    return "oracle extractor (ceiling)" if m["extractor"] == "oracle" else "K extractor"


def figure_title(m: Mapping[str, Any]) -> str:
    """``ResNet50, CS5b, K extractor, t=0.5, mode flagged``."""
    t = MISSING if m["threshold"] is None else "%g" % m["threshold"]
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


# ----------------------------------------------------------------------------- summary

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
        from defense import bench_report
        text += "\n" + bench_report.bench_markdown(m)
    return text


#: Every report file a run may write into its output folder (caches in vectors/ excluded).
REPORT_FILES = ("metrics.json", "table_iv.md", "table_iii.md", "fig4.png", "fig4.pdf",
                "roc.png", "roc.pdf", "bench.md", "bench.csv", "bench.png", "bench.pdf",
                "convergence.png", "convergence.pdf", "summary.txt", "trajectory_table.md",
                "trajectory_table.json", "run.json", "report.html")


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


def write_report(out_dir: str, metrics: Mapping[str, Any],
                 roc_curves: Optional[Mapping[str, Any]] = None) -> Dict[str, str]:
    """Write one run's report into ``out_dir``; returns name -> path.

    Files: ``metrics.json``, ``table_iv.md`` (one row), ``table_iii.md`` (detection counts),
    ``fig4.png/.pdf``, ``summary.txt``; with a ``defenses`` block, the bench table
    ``bench.md``/``bench.csv`` and figure ``bench.png/.pdf``; when ``roc_curves`` (attack label
    -> a :class:`RocCurve` or a list of them, one per detector) is given, ``roc.png/.pdf``.
    """
    m = validate_metrics(metrics)
    paths = {"metrics": write_metrics(os.path.join(out_dir, "metrics.json"), m),
             "table_iv": write_table_iv(os.path.join(out_dir, "table_iv.md"), [m])}
    paths["table_iii"] = os.path.join(out_dir, "table_iii.md")
    write_text_atomic(paths["table_iii"], table_iii_markdown([m]))
    paths["fig4_png"], paths["fig4_pdf"] = save_figure(
        fig4_figure(fig4_groups_by_attack(m), title=figure_title(m)),
        os.path.join(out_dir, "fig4"))
    if "defenses" in m:
        from defense import bench_report
        paths.update(bench_report.write_bench(out_dir, m))
    if roc_curves:
        panels = {name: (list(c) if isinstance(c, (list, tuple)) else [c])
                  for name, c in roc_curves.items()}
        paths["roc_png"], paths["roc_pdf"] = save_figure(
            roc_figure(panels, title=figure_title(m)), os.path.join(out_dir, "roc"))
    summary = os.path.join(out_dir, "summary.txt")
    write_text_atomic(summary, summary_text(m))
    paths["summary"] = summary
    return paths
