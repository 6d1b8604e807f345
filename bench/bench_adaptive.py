"""Speed of the adaptive (M + K) attack on UnMask next to the gray-box attack on M alone.

Both run PGD-L∞ ε=8, 20 steps, on the same test images of the default M (synthetic CS5b)
with the trained synthetic K: the gray-box attack is the registry's compiled ``pgd_linf`` on
M; the adaptive one is :class:`defense.adaptive.UnMaskObjective` through
:func:`attacks.objective.pgd_objective` -- per step one forward/backward of M, one of K's ROI
head path (:class:`models.mrcnn.attack_interface.PartScorer`), whose session run also gives
K's detection layer: the verdict on each 8-bit candidate comes from those same passes.  The
returned images are judged again by the real pipeline (``PartExtractor``); the record says
whether both verdicts agree.  Goal: the adaptive attack at most 5x slower per image.  M and K must be trained (``python main.py --model K`` and ``python main.py``).
Records machine, versions and load in ``bench/results/adaptive.json``.

Run from the repository root::

    .venv/bin/python bench/bench_adaptive.py [--images 50]
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402,F401
import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "adaptive.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    import numpy as np

    from attacks import run_attack
    from attacks.objective import pgd_objective
    from defense import evaluate as ev
    from defense.defenses import build_defense

    import tempfile
    cfg = ev.EvalConfig(class_set=get_class_set(args.classset), extractor="k",
                        n_test=args.images, progress=False, target_fpr=0.1,
                        results_dir=tempfile.mkdtemp(prefix="bench_adaptive_"))
    data = ev.load_data(cfg, print)
    m, _ = ev.get_models(cfg, data, print)
    bench = ev.Bench(cfg, data, {"m": m}, print)
    made = {}

    def extractors():
        if not made:
            kind, ex_val, ex_test = ev.make_extractors(cfg, data, print)
            made["v"] = (kind, ex_val, ex_test, None)
        return made["v"]

    um = build_defense("unmask")
    um.fit(bench.fit_context(extractors))
    test = bench.images("test")
    x, y = test.x, test.labels
    run_attack(m, x[:2], y[:2], "pgd_linf", eps=8)                 # compile outside timing
    load_before = _machine.load_average()
    t0 = time.time()
    gray = run_attack(m, x, y, "pgd_linf", eps=8, batch_size=len(x))
    gray_s = time.time() - t0
    objective = um.adaptive_objective()

    def decide(z):
        from defense.base import ImageSet
        probe = ImageSet(name="probe", split="test", x=z, keys=test.keys, labels=y)
        pred = um.decide(um.observe(probe)).pred
        return ((pred != y) & (pred != -1)).astype(float)

    objective.start(x[:2], y[:2])
    objective(x[:2], y[:2])                                        # build K's callables
    t0 = time.time()
    objective.start(x, y)
    res = pgd_objective(lambda z: objective(z, y), decide, x, eps=8 / 255, step_size=2 / 255,
                        steps=20, norm="linf", rand_init=True,
                        evaluate=lambda z: objective.evaluate(z, y))
    adaptive_s = time.time() - t0
    real_wrong = decide(res.x_adv)                  # the real pipeline on the returned images
    n = len(x)
    record = {
        "what": "PGD-Linf eps=8, 20 steps: gray-box on M vs adaptive on UnMask (M + K)",
        "images": n,
        "gray_box_images_per_second": round(n / gray_s, 2),
        "adaptive_images_per_second": round(n / adaptive_s, 3),
        "slowdown": round(adaptive_s / gray_s, 1), "goal_slowdown": 5,
        "gray_box_m_wrong": float(np.mean(gray.pred_adv != y)),
        "adaptive_unmask_wrong": float(np.mean(real_wrong)),    # UnMask wrong, not rejected
        "verdicts_agree": bool(np.array_equal(real_wrong, res.verdict)),
        "machine": _machine.machine_info(), "load_average_before": load_before,
        "load_average_after": _machine.load_average(),
    }
    write_json_atomic(args.out, record, indent=2)
    print("gray-box %.2f img/s, adaptive %.3f img/s: %.1fx slower (goal <= 5x); written to %s"
          % (record["gray_box_images_per_second"], record["adaptive_images_per_second"],
             record["slowdown"], os.path.relpath(args.out, ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
