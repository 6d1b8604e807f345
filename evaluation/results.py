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
from evaluation.figures import roc_curve_for
from evaluation.metrics import accuracy, detection_set, evaluate_detection, tpr_at_fpr
from evaluation.records import eps_tag
from evaluation.schema import attack_entry, eps_value
from evaluation.tables import attack_label
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
        runs += [(threat, goal, name, eps) for name, eps in adaptive
                 for goal in defense.adaptive_goals()]
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
    return {"convergence": info["convergence"], "cost": info["cost"], "agreement": agree}


def defense_results(comparison: Comparison, defense: Defense, vectors) -> Dict:
    """One defense's block of ``metrics.json`` plus its ROC data per vector: the gray-box rows
    (in ``vectors`` order), then the defense-aware rows (adaptive, transfer) per vector and
    goal where the defense has an attack for them, and the per-image worst case over every
    attack tried."""
    benign = comparison.images("test")
    y = benign.labels
    model = defense.attacked_model()
    b_out = defense.decide(comparison.observe(defense, benign))
    clean = accuracy(b_out.pred, y)
    rows, curves, defended = [], {}, []
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
    block = {"kind": "detector" if defense.detector else "classifier",
             "attacked_model": model, "params": defense.params(),
             "benign": {"acc": clean}, "attacks": rows}
    if defended:
        worst = np.all(np.stack(defended), axis=0)
        block["worst_case"] = {"defended": float(np.mean(worst)), "attacks": len(defended),
                               "threat_models": sorted({r["threat_model"] for r in rows})}
    if notes:
        block["adaptive"] = notes
    return {"block": block, "curves": curves, "benign_pred": b_out.pred}


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
    if defense.detector:
        row.update(_detector_rates(ds, defense.threshold))
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

