"""The results of a run: every defense's block of ``metrics.json`` -- its row per (threat
model, attack vector, goal) with accuracy, defended and evasion rates, a detector's AUC and
TPRs, an adaptive attack's convergence and cost -- and the paper's Table IV fields, from the
comparison's attacked images and the defenses' decisions."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from attacks import get_attack
from defense.base import ADAPTIVE, GRAY_BOX, REJECTED, Defense
from defense.threats import DEFENSE_AWARE, Goal
from evaluation.comparison import Comparison
from evaluation.metrics import accuracy, detection_set, evaluate_detection, tpr_at_fpr
from evaluation.report.figures import roc_curve_for
from evaluation.report.tables import attack_label
from evaluation.schema import attack_entry, eps_value
from evaluation.stats import detection_intervals, paired, rate_interval, worst_of
from evaluation.store.records import eps_tag
from models.progress import Eta


def robustness(adv: Optional[float], clean: Optional[float]) -> Optional[float]:
    """Seed 004's robustness: accuracy under attack / clean accuracy (None when clean is 0)."""
    if adv is None or not clean:
        return None
    return float(adv) / float(clean)


def adaptive_vectors(vectors) -> Tuple[List[Tuple[str, float]], Dict[str, str]]:
    """The vectors the adaptive engine runs (per-image attacks), and why the others are not
    run adaptively (vector label -> reason): a universal perturbation is one image-agnostic
    ``v`` fitted on M, and ``ga`` attacks random classes by design (the engine picks its
    targets itself) -- each is refused by the engine with that reason, never replaced by
    another attack."""
    run, skipped = [], {}
    for name, eps in vectors:
        spec = get_attack(name)
        if spec.universal:
            skipped["%s_%s" % (name, eps_tag(eps))] = (
                "a universal perturbation is one image-agnostic v fitted on M; there is no "
                "per-image attack through the defense to adapt")
        elif spec.targeting == "always":
            skipped["%s_%s" % (name, eps_tag(eps))] = (
                "attacks random target classes by design; the adaptive engine chooses its own "
                "targets (see the pgd/apgd rows)")
        else:
            run.append((name, eps))
    return run, skipped


def chosen_goals(defense: Defense, chosen) -> Tuple[Tuple, List[str]]:
    """The goals ``defense``'s defense-aware attacks run under ``--adaptive-goals``
    ``chosen`` (None: all), and the names of those left out.  A defense whose one run serves
    both goals (a classifier, a rejecting detector) keeps it whatever is chosen."""
    goals = tuple(defense.adaptive_goals())
    if chosen is None or len(goals) == 1:
        return goals, []
    return (tuple(g for g in goals if str(g) in chosen),
            [str(g) for g in goals if str(g) not in chosen])


def defense_runs(comparison: Comparison, defense: Defense, vectors) -> List[Tuple]:
    """(threat, goal, attack, eps) of every row of ``defense`` (goal None for gray-box)."""
    return _runs_of(comparison, defense, vectors)[0]


def _runs_of(comparison: Comparison, defense: Defense, vectors) -> Tuple[List[Tuple], Dict]:
    """(threat, goal, attack, eps) of every row of ``defense``, and the notes on the
    defense-aware threats it has no attack for."""
    runs = [(GRAY_BOX, None, name, eps) for name, eps in vectors]
    notes: Dict[str, Any] = {}
    adaptive, skipped = adaptive_vectors(vectors)
    for threat in DEFENSE_AWARE:
        if threat not in comparison.cfg.threats:
            continue
        reason = defense.no_adaptive_reason(threat)
        if reason is not None:
            notes[str(threat)] = reason
            continue
        if skipped:
            notes["skipped"] = skipped
        goals, left_out = chosen_goals(defense, comparison.cfg.adaptive_goals)
        if left_out:
            notes["goals"] = "goal %s not attacked (--adaptive-goals %s)" % (
                ", ".join(left_out), ",".join(comparison.cfg.adaptive_goals))
        runs += [(threat, goal, name, eps) for name, eps in adaptive for goal in goals]
    return runs, notes


def _detector_rates(ds, threshold: float) -> Dict:
    """AUC and TPR at the operating threshold and at 5% / 10% benign FPR of a detection
    set (None where it holds no successful attack)."""
    det = evaluate_detection(ds, threshold)
    out = {"auc": det.auc, "tpr": det.tpr, "fpr": det.fpr, "tpr_at_5fpr": None,
           "tpr_at_10fpr": None}
    if ds.n_successful:
        out["tpr_at_5fpr"] = tpr_at_fpr(ds.labels, ds.scores, 0.05)
        out["tpr_at_10fpr"] = tpr_at_fpr(ds.labels, ds.scores, 0.10)
    return out


def _detector_intervals(ds, threshold: float, seed: int) -> Dict:
    """A detector row's intervals: its TPR at the operating threshold (Wilson over the
    successfully attacked images), and AUC and TPR at 5% benign FPR (bootstrap over the
    images of the detection set, each with its benign and attacked version)."""
    k = ds.n_successful
    if not k:
        return {"tpr": None, "auc": None, "tpr_at_5fpr": None}
    attacked, benign = ds.scores[:k], ds.scores[k:]
    return dict(detection_intervals(benign, attacked, 0.05, seed),
                tpr=rate_interval(attacked >= threshold))


def _adaptive_fields(comparison: Comparison, defense: Defense, threat, goal, name, eps,
                     a_out) -> Dict:
    """Convergence, cost and agreement of an adaptive row: the engine's trace and whether the
    real evaluation agrees with the attacker's verdicts (the transfer attacker judges by its
    surrogate, so only the adaptive threat must agree)."""
    info = comparison.adaptive_records.info[(threat, goal, defense.label, name, float(eps))]
    y = comparison.images("test").labels
    if goal == Goal.WRONG:
        real = (a_out.pred != y) & (a_out.pred != REJECTED)
    else:
        adv = comparison.adaptive(defense, name, eps, threat, goal)
        real = (_preds(comparison, adv, defense.attacked_model()) != y) & ~a_out.flags
    agree = float(np.mean(real == info["success"]))
    if threat == ADAPTIVE and agree < 0.98:
        comparison.log("WARNING: %s %s eps=%g [%s]: the real evaluation agrees with the attack's "
                       "own verdicts on only %.1f%% of the images (K's or M's answers differ "
                       "between the attack and the evaluation)" % (defense.label, name, eps,
                                                                   goal, 100 * agree))
    every = list(defense.adaptive_routes(goal))
    return {"convergence": info["convergence"], "cost": info["cost"], "agreement": agree,
            "routes": {"ran": info["routes"], "all": every,
                       "complete": all(r in info["routes"] for r in every),
                       "won": {r: v["won"] for r, v in info["cost"].get("routes", {}).items()}}}


def defense_results(comparison: Comparison, defense: Defense, vectors) -> Dict:
    """One defense's block of ``metrics.json`` plus its ROC data per vector: the gray-box rows
    (in ``vectors`` order), then the defense-aware rows (adaptive, transfer) per vector and
    goal where the defense has an attack for them, and the per-image worst case over every
    attack tried."""
    benign = comparison.images("test")
    y = benign.labels
    model = defense.attacked_model()
    b_out = defense.decide(comparison.observe(defense, benign))
    rows, curves, defended, keys = [], {}, [], []
    runs, notes = _runs_of(comparison, defense, vectors)
    eta = Eta(len(runs) + 1, done=1)
    for threat, goal, name, eps in runs:
        adv = (comparison.attacked(model, name, eps, "test") if threat == GRAY_BOX
               else comparison.adaptive(defense, name, eps, threat, goal))
        a_out = defense.decide(comparison.observe(defense, adv))
        timing = eta.step()
        if comparison.cfg.progress:
            comparison.log("%s: %d of %d image sets judged, %s (%s)" % (
                defense.label, eta.done, eta.total, adv.name, timing))
        rows.append(_row(comparison, defense, threat, goal, name, eps, adv, a_out, b_out, curves))
        defended.append((a_out.pred == y) | (a_out.pred == REJECTED))
        keys.append((threat, goal, name, eps))
    block = {"kind": "detector" if defense.detector else "classifier",
             "attacked_model": model, "params": defense.params(),
             "benign": _benign_fields(b_out.pred, y, defense.detector), "attacks": rows}
    if defended:
        worst = worst_of(defended)
        block["worst_case"] = {"defended": float(np.mean(worst)), "attacks": len(defended),
                               "threat_models": sorted({r["threat_model"] for r in rows}),
                               "interval": rate_interval(worst),
                               "by_threat": _worst_by_threat(keys, defended)}
    if notes:
        block["adaptive"] = notes
    return {"block": block, "curves": curves, "benign_pred": b_out.pred,
            "defended": dict(zip(keys, defended))}


def _worst_by_threat(keys, defended) -> Dict[str, Dict]:
    """Per threat model, the images defended under every attack of it (with its interval)."""
    out = {}
    for threat in dict.fromkeys(str(k[0]) for k in keys):
        rows = [d for k, d in zip(keys, defended) if str(k[0]) == threat]
        worst = worst_of(rows)
        out[threat] = {"defended": float(np.mean(worst)), "attacks": len(rows),
                       "interval": rate_interval(worst)}
    return out


def _benign_fields(pred: np.ndarray, y: np.ndarray, detector: bool) -> Dict:
    """Clean accuracy with its interval; a detector's clean rejection rate (what rejecting
    flagged images costs on benign ones) with its own."""
    out = {"acc": accuracy(pred, y), "acc_interval": rate_interval(pred == y)}
    if detector:
        rejected = pred == REJECTED
        out.update(rejected=float(np.mean(rejected)), rejected_interval=rate_interval(rejected))
    return out


def comparisons(results: Dict[str, Dict], vectors, against: str = "at") -> List[Dict]:
    """Every defense against ``against`` (the AT model alone) on the same test images
    (:func:`evaluation.stats.paired`): per attack vector, each defense's images defended under
    every threat model it was attacked with against ``against``'s under its own attack of that
    vector; then the worst cases over every attack tried."""
    if against not in results:
        return []
    base = results[against]["defended"]
    out = []
    for label, res in results.items():
        if label == against:
            continue
        mine = res["defended"]
        for name, eps in vectors:
            a = [v for k, v in mine.items() if k[2:] == (name, eps)]
            b = [v for k, v in base.items() if k[2:] == (name, eps)]
            if a and b:
                out.append(dict(paired(worst_of(a), worst_of(b)), a=label, b=against,
                                over="%s_%s" % (name, eps_tag(eps)),
                                threat_models=sorted({str(k[0]) for k in mine
                                                      if k[2:] == (name, eps)})))
        if mine and base:
            out.append(dict(paired(worst_of(list(mine.values())),
                                   worst_of(list(base.values()))),
                            a=label, b=against, over="worst case",
                            threat_models=sorted({str(k[0]) for k in mine})))
    return out


def _preds(comparison: Comparison, images, model: str) -> np.ndarray:
    """Model ``model``'s predictions on ``images``: those the set carries, else computed once
    and kept with it (an adaptive record carries M's; ``unmask:m=at`` holds the AT model)."""
    if model not in images.preds:
        images.preds[model] = comparison.predict(model, images.x)
    return images.preds[model]


def _row(comparison, defense, threat, goal, name, eps, adv, a_out, b_out, curves) -> Dict:
    """One result row of a defense (see ``metrics.json`` in the README)."""
    y = comparison.images("test").labels
    model = defense.attacked_model()
    acc = accuracy(a_out.pred, y)
    stopped = (a_out.pred == y) | (a_out.pred == REJECTED)
    fooled = _preds(comparison, adv, model) != y
    evaded = fooled & ~a_out.flags if defense.detector else a_out.pred != y
    clean = accuracy(b_out.pred, y)
    row = {"attack": name, "eps": eps_value(eps), "threat_model": str(threat),
           "goal": None if goal is None else str(goal), "acc": acc,
           "defended": float(np.mean(stopped)), "evasion": float(np.mean(evaded)),
           "robustness": robustness(acc, clean), "auc": None, "tpr": None, "fpr": None,
           "tpr_at_5fpr": None, "tpr_at_10fpr": None}
    ds = detection_set(b_out.score if defense.detector else np.zeros(len(y)),
                       a_out.score if defense.detector else np.zeros(len(y)), y,
                       comparison.images("test").preds[model], _preds(comparison, adv, model),
                       require_benign_correct=comparison.cfg.detection_set == "strict")
    row.update(n_attacked=ds.n_attacked, n_successful=ds.n_successful)
    row["intervals"] = {"acc": rate_interval(a_out.pred == y), "defended": rate_interval(stopped),
                        "evasion": rate_interval(evaded)}
    if defense.detector:
        row.update(_detector_rates(ds, defense.threshold))
        row["intervals"].update(_detector_intervals(ds, defense.threshold,
                                                    comparison.cfg.seed))
        if ds.n_successful:
            label = attack_label(name, eps) + ("" if threat == GRAY_BOX else
                                               " [%s, %s]" % (threat, goal))
            curves[label] = roc_curve_for(defense.label, ds.labels, ds.scores)
    if threat != GRAY_BOX:
        row.update(_adaptive_fields(comparison, defense, threat, goal, name, eps, a_out))
    return row


def table_iv_fields(comparison: Comparison, results: Dict[str, Dict],
                    vectors) -> Tuple[Dict, List]:
    """The paper's Table IV fields (None / AT / UM) from the defenses' results."""
    y = comparison.images("test").labels

    def acc_of(label, i=None):
        if label not in results:
            return None
        block = results[label]["block"]
        return block["benign"]["acc"] if i is None else block["attacks"][i]["acc"]

    benign = {"acc_none": accuracy(comparison.images("test").preds["m"], y),
              "acc_at": acc_of("at"), "acc_um": acc_of("unmask")}
    entries = []
    for i, (name, eps) in enumerate(vectors):
        adv = comparison.attacked("m", name, eps, "test")
        ds = detection_set(np.zeros(len(y)), np.zeros(len(y)), y,
                           comparison.images("test").preds["m"], adv.preds["m"],
                           require_benign_correct=comparison.cfg.detection_set == "strict")
        um = results["unmask"]["block"]["attacks"][i] if "unmask" in results else {}
        entries.append(attack_entry(
            name, eps, acc_none=accuracy(adv.preds["m"], y), acc_at=acc_of("at", i),
            acc_um=um.get("acc"), auc=um.get("auc"), tpr=um.get("tpr"), fpr=um.get("fpr"),
            n_attacked=ds.n_attacked, n_successful=ds.n_successful))
    return benign, entries

