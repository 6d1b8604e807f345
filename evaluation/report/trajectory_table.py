"""The seed-003 table on this project's data: rows = the four detector configurations (LSTM x
{centroid, medoid} x {L2, cosine}), columns = BIM, CW, MI-FGSM and their macro-AUC, targeted
and untargeted (Massoli et al. 2020, Table 2 layout).

Each configuration is fitted as the bench fits it (training / validation images only); the
table is computed on the **test** images: the correctly classified ones (natural, label 0) and
their successful adversarials under the training attacks (label 1).  An entry is the AUC of
that family's adversarials against all natural test images (BIM pools BIM-L∞ and BIM-L2);
macro-AUC is the plain mean over the three families, as in the seed.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from defense import trajectory as tj
from defense.defenses.trajectory import TRAIN_ATTACKS, TrajectoryDefense

CONFIGURATIONS = ("centroid-l2", "centroid-cosine", "medoid-l2", "medoid-cosine")
FAMILIES = (("BIM", ("bim_linf", "bim_l2")), ("CW", ("cw_l2",)), ("MI-FGSM", ("mifgsm",)))


def family_aucs(scores: np.ndarray, groups: np.ndarray, targeted: bool) -> Dict[str, float]:
    """AUC per family (and ``macro``) of one detector's scores on labelled test trajectories."""
    natural = groups == 0
    out = {}
    for family, members in FAMILIES:
        ids = [g for g, a in enumerate(TRAIN_ATTACKS, start=1)
               if a[3] == targeted and a[0].rsplit("-", 1)[0] in members]
        adv = np.isin(groups, ids)
        if not adv.any():
            out[family] = None
            continue
        keep = natural | adv
        out[family] = float(roc_auc_score(adv[keep].astype(int), scores[keep]))
    present = [v for v in out.values() if v is not None]
    out["macro"] = float(np.mean(present)) if present else None
    return out


def seed_table(ctx, test_images, log: Callable[[str], None]) -> Dict[str, Dict]:
    """Fit the four configurations and score them on the test images; returns
    ``{configuration: {"targeted": {family: auc, "macro": m}, "untargeted": {...}}}``."""
    table = {}
    for config in CONFIGURATIONS:
        d = TrajectoryDefense(config + "-lstm")
        d.label = "trajectory:%s-lstm" % config
        d.fit(ctx)
        x, _, groups = d.labelled_trajectories(ctx, test_images)
        scores = tj.detector_scores(d._model, x)
        table[config] = {kind: family_aucs(scores, groups, kind == "targeted")
                         for kind in ("targeted", "untargeted")}
        log("trajectory %s: targeted macro-AUC %s, untargeted %s" % (
            config, _fmt(table[config]["targeted"]["macro"]),
            _fmt(table[config]["untargeted"]["macro"])))
    return table


def _fmt(x) -> str:
    return "–" if x is None else "%.3f" % x


def table_markdown(table: Dict[str, Dict], n_natural: int = None) -> str:
    rows = []
    for config, kinds in table.items():
        rep, metric = config.split("-")
        row = {"model": "LSTM + %s + %s" % ("C" if rep == "centroid" else "M",
                                            "L2" if metric == "l2" else "cos")}
        for kind in ("targeted", "untargeted"):
            for family, _ in FAMILIES:
                row["%s %s" % (kind, family)] = _fmt(kinds[kind][family])
            row["%s macro-AUC" % kind] = _fmt(kinds[kind]["macro"])
        rows.append(row)
    caption = ("Trajectory detector (seed 003 layout) on the test images: AUC of each attack "
               "family's successful adversarials against the correctly classified natural "
               "test images; C = centroid, M = medoid representatives; detectors trained on "
               "training/validation images only (BIM-L∞ ε8, BIM-L2 ε300, MI-FGSM ε8, CW-L2 "
               "≤ε300, targeted and untargeted).\n\n")
    return caption + pd.DataFrame(rows).to_markdown(index=False) + "\n"
