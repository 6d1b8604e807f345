"""Cost of the full adaptive recipe on UnMask (SPEC §11), per image, beside the gray-box attack.

The recipe is what ``--threat adaptive`` runs: the adaptive engine (:mod:`attacks.engine`) on
UnMask's target (:class:`defense.adaptive.UnMaskTarget`: M and K together toward every other
class, ranked by part overlap), 100 steps per run, 2 restart rounds, 8-bit iterates, an image
left alone once it reaches the goal; each goal ("wrong": the final answer wrong and not "no
class"; "undetected": M fooled and not flagged) has its own run.  Per step: one forward and
backward pass of M and one session run of K (which also gives K's part sets for the verdict).

Two ways to record ``bench/results/adaptive.json``:

* measure (default): on ``--images`` test images of the default run (trained K and M needed:
  ``python main.py``), time the gray-box PGD-L∞ ε=8 (20 steps, compiled, on M) and the recipe
  for each goal of ``--attack`` (default ``pgd_linf:8``), and check that the real pipeline
  agrees with the attack's own verdicts on the returned images;
* ``--from-run RESULTS/<code>/<arch>``: collect the cost every defense-aware row of a finished
  run recorded in its ``metrics.json`` (seconds, target evaluations per image, success,
  convergence), without computing anything.

Run from the repository root::

    .venv/bin/python bench/bench_adaptive.py [--images 100] [--attack pgd_linf:8]
    .venv/bin/python bench/bench_adaptive.py --from-run results/cs5-2/mobilenetv2_050
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402,F401
import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "adaptive.json")


def from_run(folder: str) -> dict:
    """The cost of every defense-aware row recorded in a finished run's ``metrics.json``."""
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    rows = []
    for label, block in metrics["defenses"].items():
        for r in block["attacks"]:
            if "cost" not in r:
                continue
            images = r["n_attacked"]
            rows.append({"defense": label, "attack": r["attack"], "eps": r["eps"],
                         "threat_model": r["threat_model"], "goal": r["goal"],
                         "images": images, "seconds": r["cost"]["seconds"],
                         "seconds_per_image": round(r["cost"]["seconds"] / images, 2),
                         "evaluations_per_image": round(r["cost"]["evaluations_per_image"], 1),
                         "defended": r["defended"], "evasion": r["evasion"],
                         "converged": r["convergence"]["converged"]})
    return {"what": "cost of every defense-aware attack of a finished run, from its "
                    "metrics.json (nothing recomputed)",
            "run": _machine.repo_relative(folder), "settings": metrics.get("adaptive_settings"),
            "rows": rows}


def measure(classset: str, images: int, attack: str) -> dict:
    """Time the gray-box attack and the recipe for each goal (see the module docstring)."""
    import numpy as np

    from attacks import resolve_config, run_attack
    from attacks.engine import AdaptiveEngine, convergence
    from evaluation import run as ev
    from evaluation.config import EvalConfig
    from defense.threats import Goal, Threat

    name, _, eps = attack.partition(":")
    cfg = EvalConfig(class_set=get_class_set(classset), extractor="k", n_test=images,
                     defenses=("unmask",), progress=False,
                     results_dir=tempfile.mkdtemp(prefix="bench_adaptive_"))
    # the run's own way to load M and K and fit UnMask
    comparison, _, (um,), _ = ev.open_comparison(cfg, print, ["unmask"])
    m = comparison.models["m"]
    test = comparison.images("test")
    x, y = test.x, test.labels
    run_attack(m, x[:2], y[:2], "pgd_linf", eps=8)                 # compile outside timing
    load_before = _machine.load_average()
    t0 = time.time()
    gray = run_attack(m, x, y, "pgd_linf", eps=8, batch_size=50)
    gray_s = time.time() - t0
    out = {"gray_box_seconds_per_image": round(gray_s / len(x), 3),
           "gray_box_m_wrong": float(np.mean(gray.pred_adv != y)), "goals": {}}
    settings = cfg.engine_settings()
    for goal in (Goal.WRONG, Goal.UNDETECTED):
        target = um.attack_target(Threat.ADAPTIVE, goal, cfg.adaptive_options())
        engine = AdaptiveEngine(resolve_config(name, float(eps) if eps else None), target,
                                settings, seed=cfg.seed)
        t0 = time.time()
        res = engine.run(x, y, slots=cfg.adaptive_slots)
        seconds = time.time() - t0
        real = _real_verdict(um, test, res.x_adv, goal, m)
        out["goals"][str(goal)] = {
            "seconds_per_image": round(seconds / len(x), 2),
            "slowdown_vs_gray_box": round(seconds / gray_s, 1),
            "evaluations_per_image": round(float(np.mean(res.evaluations)), 1),
            "success": float(np.mean(res.success)),
            "verdicts_agree": float(np.mean(real == res.success)),
            "convergence": convergence(res.first_step, settings.steps)}
    out.update(what="full adaptive recipe on UnMask (%s), per goal, beside the gray-box "
                    "PGD-Linf eps=8 (20 steps) on M" % attack, images=len(x),
               settings=dict(steps=settings.steps, restarts=settings.restarts,
                             max_targets=settings.max_targets, slots=cfg.adaptive_slots,
                             routes=list(um.adaptive_routes(Goal.WRONG))),
               load_average_before=load_before, load_average_after=_machine.load_average())
    return out


def _real_verdict(um, test, x_adv, goal, m):
    """The real pipeline's verdict for ``goal`` on the returned images."""
    import numpy as np

    from defense.base import ImageSet
    probe = ImageSet(name="bench-probe", split="test", x=x_adv, keys=test.keys,
                     labels=test.labels)
    out = um.decide(um.observe(probe))
    if str(goal) == "wrong":
        return (out.pred != test.labels) & (out.pred != -1)
    pred = np.argmax(m.predict(x_adv, verbose=0), axis=1)
    return (pred != test.labels) & ~out.flags


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--attack", default="pgd_linf:8")
    p.add_argument("--from-run", default=None,
                   help="collect the costs of a finished run (RESULTS/<code>/<arch>)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    record = (from_run(args.from_run) if args.from_run
              else measure(args.classset, args.images, args.attack))
    record["machine"] = _machine.machine_info()
    write_json_atomic(args.out, record, indent=2)
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1)[:3000])
    print("written to %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
