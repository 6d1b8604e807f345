"""``metrics.json``: its schema (validated), and the assembly of a run's metrics object.

One file per (M architecture, class set, extractor, threshold, mode); accuracies and rates are
fractions in [0, 1]::

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
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from data.knowledge import CLASS_SETS, get_class_set
from defense.threats import GOALS
from defense.threats import NAMES as THREAT_NAMES
from evaluation.metrics import DETECTION_SETS

TOP_KEYS = ("class_set", "arch", "extractor", "threshold", "seed", "versions", "benign",
            "attacks")
#: Written by this project, optional when reading (a file in the issue's shape has no mode).
OPTIONAL_TOP_KEYS = ("mode", "defenses", "attack_info", "detection_set", "adaptive_settings",
                     "comparisons")
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
                             "agreement", "routes", "intervals")
#: 95% intervals of a row's rates (Wilson) and of a detector's AUC and TPR at 5% FPR
#: (bootstrap over images): each [low, high] or null.
INTERVAL_KEYS = ("acc", "defended", "evasion")
DETECTOR_INTERVAL_KEYS = ("tpr", "auc", "tpr_at_5fpr")
#: Optional fields of a defense's clean block: accuracy's interval, a detector's clean
#: rejection rate and its interval.
DEFENSE_BENIGN_OPTIONAL_KEYS = ("acc_interval", "rejected", "rejected_interval")
#: A paired comparison of two defenses on the same images (evaluation.stats.paired).
COMPARISON_KEYS = ("a", "b", "over", "threat_models", "n", "a_rate", "b_rate", "difference",
                   "interval", "a_only", "b_only", "p_mcnemar", "claim")
CLAIMS = ("a > b", "a < b", "not distinguishable")
#: A defense-aware row's routes (SPEC §13): those that ran, all of the defense's for the goal,
#: whether every one ran, and per route the images it won.
ROUTE_KEYS = ("ran", "all", "complete", "won")
DEFENSE_KINDS = ("classifier", "detector")
THREAT_MODELS = THREAT_NAMES
CONVERGENCE_KEYS = ("steps", "restarts", "converged", "why")
MODES = ("flagged", "all")


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
    if "comparisons" in obj:
        _check_comparisons(obj["comparisons"])
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
        _check_exact_keys(block["benign"], ("acc",), where + ".benign",
                          DEFENSE_BENIGN_OPTIONAL_KEYS)
        _check_fraction(block["benign"]["acc"], where + ".benign.acc")
        for k in ("acc", "rejected"):
            if k + "_interval" in block["benign"]:
                _check_interval(block["benign"][k + "_interval"], block["benign"].get(k),
                                where + ".benign.%s_interval" % k)
        worst = block.get("worst_case")
        if isinstance(worst, dict) and "interval" in worst:
            _check_interval(worst["interval"], worst.get("defended"),
                            where + ".worst_case.interval")
        for threat, w in (worst or {}).get("by_threat", {}).items():
            _check_str(threat, where + ".worst_case.by_threat", THREAT_MODELS)
            _check_fraction(w["defended"], where + ".worst_case.by_threat.%s" % threat)
            _check_interval(w["interval"], w["defended"],
                            where + ".worst_case.by_threat.%s.interval" % threat)
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
    intervals = row.get("intervals")
    if intervals is not None:
        extra = DETECTOR_INTERVAL_KEYS if kind == "detector" else ()
        _check_exact_keys(intervals, INTERVAL_KEYS + extra, where + ".intervals")
        for k in INTERVAL_KEYS + (("tpr",) if extra else ()):
            _check_interval(intervals[k], row.get(k), where + ".intervals." + k)
        for k in extra[1:]:
            _check_interval(intervals[k], None, where + ".intervals." + k)
    routes = row.get("routes")
    if routes is not None:
        _check_exact_keys(routes, ROUTE_KEYS, where + ".routes")
        if not isinstance(routes["complete"], bool) or routes["complete"] != all(
                r in routes["ran"] for r in routes["all"]):
            _fail(where + ".routes.complete", "must say whether every route of 'all' ran")
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


def _check_interval(value: Any, point: Any, where: str) -> None:
    """null, or ``[low, high]`` with 0 <= low <= high <= 1 holding ``point`` (when given: a
    Wilson interval always holds its rate)."""
    if value is None:
        return
    if (not isinstance(value, list) or len(value) != 2
            or not all(_is_number(v) for v in value)
            or not 0.0 <= value[0] <= value[1] <= 1.0 + 1e-12):
        _fail(where, "must be null or [low, high] with 0 <= low <= high <= 1, got %r"
              % (value,))
    if point is not None and not value[0] - 1e-9 <= point <= value[1] + 1e-9:
        _fail(where, "must hold its rate %r, got %r" % (point, value))


def _check_comparisons(items: Any) -> None:
    """``comparisons``: paired comparisons of two defenses on the same images."""
    if not isinstance(items, list):
        _fail("comparisons", "must be a list")
    for i, c in enumerate(items):
        where = "comparisons[%d]" % i
        _check_exact_keys(c, COMPARISON_KEYS, where)
        _check_str(c["claim"], where + ".claim", CLAIMS)
        if not _is_number(c["p_mcnemar"]) or not 0.0 <= c["p_mcnemar"] <= 1.0:
            _fail(where + ".p_mcnemar", "must be a p-value in [0, 1]")
        interval = c["interval"]
        if interval is None:
            if c["claim"] != "not distinguishable":
                _fail(where + ".claim", "needs an interval")
            continue
        if (not isinstance(interval, list) or len(interval) != 2
                or not all(_is_number(v) for v in interval) or interval[0] > interval[1]):
            _fail(where + ".interval", "must be null or [low, high], got %r" % (interval,))
        lo, hi = interval
        if (c["claim"] == "a > b" and lo <= 0) or (c["claim"] == "a < b" and hi >= 0):
            _fail(where + ".claim", "must follow its interval %r" % (interval,))


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
                 adaptive_settings: Optional[Mapping[str, Any]] = None,
                 comparisons: Optional[Sequence[Mapping[str, Any]]] = None) -> Dict[str, Any]:
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
    if comparisons:
        obj["comparisons"] = json.loads(json.dumps(_plain(comparisons)))
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

