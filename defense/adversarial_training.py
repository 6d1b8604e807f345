"""The adversarial-training baseline ("AT") of the paper: Madry-style PGD training of M.

Each training batch is replaced by its PGD-L-inf adversarial examples against the current
weights (original config: eps = 4/255, 7 steps, step 2/255), and M is trained on those.
``line_search`` repeats this for eps in {1, 2, 4, 6, 8, 16} and picks the eps with the best
mean validation accuracy over the attack vectors, as the paper did (it found eps = 4).

Lives in ``defense`` because it needs ``attacks``; ``models.train_classifier`` only offers
the ``perturb`` hook it plugs into.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Sequence

import numpy as np

import tfcompat
from attacks import compile_attack, run_attack
from data.fileio import write_json_atomic
from models.classifier import build_classifier
from models.train_classifier import TrainConfig, train_classifier

tf, keras = tfcompat.import_tf()

AT_EPS = 4
AT_STEPS = 7
AT_STEP_SIZE = 2
LINE_SEARCH_EPS = (1, 2, 4, 6, 8, 16)


def pgd_perturb(model, eps: float = AT_EPS, steps: int = AT_STEPS,
                step_size: float = AT_STEP_SIZE, seed: int = 0) -> Callable:
    """``perturb(x, y, batch_index) -> x_adv`` for ``train_classifier``: PGD-L-inf against
    ``model``'s current weights (eps and step on the 0-255 scale).  The attack is compiled
    once; every batch gets its own random start, seeded by (``seed``, its index from the start
    of training), so a resumed run draws the same starts."""
    attack = compile_attack(model, "pgd_linf", eps=eps, steps=steps,
                            step_size=min(step_size, eps))

    def perturb(x, y, batch_index):
        x_adv = attack.attack_batch(np.asarray(x), np.asarray(y), seed=seed,
                                    batch_index=int(batch_index))
        return tf.convert_to_tensor(x_adv)
    return perturb


def at_checkpoint_dir(base_dir: str, eps: float) -> str:
    """Folder of the AT model trained with ``eps`` next to M's folder ``base_dir``."""
    return base_dir.rstrip(os.sep) + "_at_eps%g" % eps


def train_adversarial(arch: str, num_classes: int, input_size: int, data: Dict,
                      checkpoint_dir: str, config: TrainConfig, eps: float = AT_EPS,
                      steps: int = AT_STEPS, log: Callable = print, progress: bool = True,
                      strategy=None):
    """Build a fresh M and train it adversarially (or load it when already trained).

    ``data`` holds uint8 arrays ``x_train, y_train, x_val, y_val``.  Returns the model.
    """
    with (strategy.scope() if strategy is not None else contextlib.nullcontext()):
        model = build_classifier(arch, num_classes, input_size, seed=config.seed)
    perturb = pgd_perturb(model, eps=eps, steps=steps, seed=config.seed)
    log("adversarial training: PGD-Linf eps=%g/255, %d steps -> %s" % (eps, steps,
                                                                         checkpoint_dir))
    train_classifier(model, data["x_train"], data["y_train"], data["x_val"], data["y_val"],
                     checkpoint_dir, config, perturb=perturb, log=log, progress=progress,
                     strategy=strategy)
    return model


def robust_accuracy(model, images: np.ndarray, labels: np.ndarray,
                    vectors: Sequence, seed: int = 0) -> Dict[str, float]:
    """Accuracy of ``model`` on float [0, 1] ``images`` under each (attack, eps) vector."""
    out = {}
    for name, eps in vectors:
        res = run_attack(model, images, labels, name, eps=eps, seed=seed)
        out["%s_%g" % (name, eps)] = res.adv_accuracy
    return out


def line_search(arch: str, num_classes: int, input_size: int, data: Dict, base_dir: str,
                config: TrainConfig, vectors: Sequence, eps_values=LINE_SEARCH_EPS,
                log: Callable = print, progress: bool = True) -> Dict:
    """Train one AT model per eps and score it on validation data under ``vectors``.

    Returns ``{"best_eps", "results": {eps: {"benign": acc, vector: acc, ..., "mean": m}}}``
    where ``mean`` averages the attacked accuracies (the paper's selection criterion); the same
    is written to :func:`line_search_path` (atomically).  Each eps's AT model is checkpointed,
    so an interrupted search resumes.
    """
    x_val = data["x_val"].astype(np.float32) / 255.0
    results = {}
    for eps in eps_values:
        model = train_adversarial(arch, num_classes, input_size, data,
                                  at_checkpoint_dir(base_dir, eps), config, eps=eps, log=log,
                                  progress=progress)
        accs = robust_accuracy(model, x_val, data["y_val"], vectors, seed=config.seed)
        benign = float(np.mean(np.argmax(model(x_val, training=False).numpy(), 1)
                               == data["y_val"]))
        results[eps] = dict(accs, benign=benign, mean=float(np.mean(list(accs.values()))))
        log("AT eps=%g: benign %.3f, mean attacked %.3f" % (eps, benign, results[eps]["mean"]))
    best = max(results, key=lambda e: results[e]["mean"])
    out = {"best_eps": best, "results": results}
    write_json_atomic(line_search_path(base_dir), {
        "best_eps": best, "vectors": [[name, eps] for name, eps in vectors],
        "results": {"%g" % e: r for e, r in results.items()}}, indent=1)
    return out


def line_search_path(base_dir: str) -> str:
    """Where :func:`line_search` records its validation accuracies and the chosen eps."""
    return base_dir.rstrip(os.sep) + "_at_line_search.json"
