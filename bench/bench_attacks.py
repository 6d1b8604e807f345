"""Attack speed benchmark: this project's PGD-L-inf and APGD-CE vs IBM ART's.

Two sections, measured in one run, each attacking the same tf-keras model on the same batch
with the same configuration, pixels in [0, 1]:

* PGD: untargeted PGD-L-inf, eps 8/255, step 2/255, 20 iterations, one random start, vs ART's
  ``ProjectedGradientDescent``;
* APGD (``--apgd-repeats``, 0 skips it): untargeted APGD-CE L-inf, eps 8/255, 100 iterations,
  first step 2 eps, one random start, vs ART's ``AutoProjectedGradientDescent``
  (``loss_type='cross_entropy'``, ``eps_step`` 2 eps, ``nb_random_init`` 1).  The labels are
  the model's own clean predictions, so every image is attacked by both (ART's APGD skips the
  images the model already gets wrong).

The model is the project's default M (``models.classifier.build_classifier``: MobileNetV2
alpha 0.5 at 96x96, 5 classes, random weights -- speed does not depend on the weights), or
another registered architecture with ``--arch``/``--size``.

Method: each library is warmed up once (tracing / first eager call, recorded separately), then
``--repeats`` rounds time one run of each, alternating, so that background load on a shared
machine falls on both alike.  The speed-up is the ratio of the *median* run times; the
per-round ratios and the load average before and after are recorded too.  Results go to
``bench/results/attacks.json`` (written atomically): the PGD section at the top level (as
before), the APGD section under ``"apgd"``.

Run from the repository root on an idle machine::

    .venv/bin/python bench/bench_attacks.py [--repeats 9] [--apgd-repeats 5] [--batch 32]

IBM ART 1.20.1 is pinned in ``requirements.txt`` (the tests check our APGD against it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402  (repository root is importable only after the line above)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import _machine  # noqa: E402
import attacks  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402
from models.classifier import DEFAULT_ARCH, build_classifier  # noqa: E402

tf, keras = tfcompat.import_tf()

EPS, STEP, STEPS, NUM_CLASSES = 8.0, 2.0, 20, 5
#: APGD's iterations (its first step is 2 eps, then its own schedule).
APGD_STEPS = 100
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "attacks.json")


def project_runner(model, images, labels):
    """This project's compiled pgd_linf: returns ``(run() -> x_adv, info() -> dict)``."""
    compiled = attacks.compile_attack(model, "pgd_linf", EPS, steps=STEPS, step_size=STEP)

    def run():
        return compiled.run(images, labels, batch_size=len(images), seed=0).x_adv
    return run, lambda: {"tracing_count": compiled.tracing_count}


def art_runner(model, images, labels):
    """ART's ProjectedGradientDescent on a TensorFlowV2Classifier: ``(run, info)``."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=NUM_CLASSES, input_shape=images.shape[1:],
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0))
    attack = ProjectedGradientDescent(
        classifier, norm=np.inf, eps=EPS / 255.0, eps_step=STEP / 255.0, max_iter=STEPS,
        targeted=False, num_random_init=1, batch_size=len(images), verbose=False)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]

    def run():
        return attack.generate(images, y=one_hot)
    return run, dict


def project_apgd_runner(model, images, labels):
    """This project's compiled apgd_ce (L-inf): ``(run, info)``."""
    compiled = attacks.compile_attack(model, "apgd_ce", EPS, steps=APGD_STEPS)

    def run():
        return compiled.run(images, labels, batch_size=len(images), seed=0).x_adv
    return run, lambda: {"tracing_count": compiled.tracing_count}


def art_apgd_runner(model, images, labels):
    """ART's AutoProjectedGradientDescent (cross-entropy, L-inf) on a TensorFlowV2Classifier,
    with the same settings as ours (step 2 eps, one random start): ``(run, info)``."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=NUM_CLASSES, input_shape=images.shape[1:],
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0))
    attack = AutoProjectedGradientDescent(
        classifier, norm=np.inf, eps=EPS / 255.0, eps_step=2.0 * EPS / 255.0,
        max_iter=APGD_STEPS, targeted=False, nb_random_init=1, batch_size=len(images),
        loss_type="cross_entropy", verbose=False)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]

    def run():
        np.random.seed(0)  # ART's random start
        return attack.generate(images, y=one_hot)
    return run, dict


def _check(model, images, labels, x_adv):
    """Sanity figures of one adversarial batch: max L-inf distance (0-255) and success rate."""
    pred = np.asarray(model(x_adv)).argmax(1)
    return {"max_linf_255": float(np.abs(x_adv - images).max() * 255.0),
            "success_rate": float(np.mean(pred != labels))}


def time_interleaved(runners, repeats):
    """Warm each runner up once, then time ``repeats`` rounds, alternating the runners.

    Alternating spreads any background load on the machine evenly over the contenders.
    Returns ``{name: {"warmup_s", "times_s", "x_adv"}}``.
    """
    out = {}
    for name, (run, _) in runners.items():
        start = time.perf_counter()
        x_adv = run()
        out[name] = {"warmup_s": time.perf_counter() - start, "times_s": [], "x_adv": x_adv}
    for _ in range(repeats):
        for name, (run, _) in runners.items():
            start = time.perf_counter()
            out[name]["x_adv"] = run()
            out[name]["times_s"].append(time.perf_counter() - start)
    return out


def _summarise(entry, batch):
    times = entry["times_s"]
    entry.update({"median_s": float(np.median(times)),
                  "images_per_s_median": batch / float(np.median(times)),
                  "images_per_s_best": batch / min(times)})
    return entry


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (each library once)")
    parser.add_argument("--apgd-repeats", type=int, default=5,
                        help="timed rounds of the APGD section (ART's APGD takes ~1 min a "
                             "round here); 0 skips the section")
    parser.add_argument("--batch", type=int, default=32, help="images in the batch")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="architecture of the model")
    parser.add_argument("--size", type=int, default=96, help="image height = width")
    parser.add_argument("--out", default=RESULTS, help="JSON output path")
    return parser.parse_args(argv)


def measure(runners, model, images, labels, repeats):
    """Time ``runners`` (``{"unmask_attacks": ..., "art": ...}``) interleaved; returns the
    section of the results: load averages, each runner's figures, the speed-up (ratio of
    the medians: ours / ART in images/s) and the per-round ratios."""
    section = {"repeats": repeats, "load_average_before": _machine.load_average()}
    timings = time_interleaved(runners, repeats)
    section["load_average_after"] = _machine.load_average()
    for name, entry in timings.items():
        entry.update(_check(model, images, labels, entry.pop("x_adv")))
        entry.update(runners[name][1]())
        section[name] = _summarise(entry, len(images))
        print("%-15s %.2f images/s (median of %d)" % (name, entry["images_per_s_median"],
                                                      repeats))
    ours, art = section["unmask_attacks"], section["art"]
    section["speedup_vs_art"] = art["median_s"] / ours["median_s"]
    section["speedup_per_round"] = [a / o for a, o in zip(art["times_s"], ours["times_s"])]
    return section


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = build_classifier(args.arch, NUM_CLASSES, args.size, seed=0)
    images = rng.random((args.batch, args.size, args.size, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, args.batch)
    results = {
        "attack": {"name": "pgd_linf", "eps_255": EPS, "step_255": STEP, "steps": STEPS,
                   "random_start": True},
        "model": "build_classifier(%r, %d, %d) (random weights)" % (args.arch, NUM_CLASSES,
                                                                     args.size),
        "batch": args.batch,
        "machine": _machine.machine_info(_machine.DEFAULT_PACKAGES
                                         + ("adversarial-robustness-toolbox",)),
    }
    print("PGD-L-inf, %d iterations:" % STEPS)
    results.update(measure({"unmask_attacks": project_runner(model, images, labels),
                            "art": art_runner(model, images, labels)},
                           model, images, labels, args.repeats))
    print("speed-up %.2fx (ratio of medians; per round %.2f-%.2f)"
          % (results["speedup_vs_art"], min(results["speedup_per_round"]),
             max(results["speedup_per_round"])))
    if args.apgd_repeats > 0:
        predicted = np.asarray(model(images)).argmax(1)   # every image attacked by both
        print("APGD-CE L-inf, %d iterations:" % APGD_STEPS)
        apgd = {"attack": {"name": "apgd_ce", "norm": "linf", "eps_255": EPS,
                           "first_step_255": 2.0 * EPS, "steps": APGD_STEPS,
                           "random_start": True, "labels": "the model's clean predictions",
                           "art": "AutoProjectedGradientDescent(loss_type='cross_entropy', "
                                  "eps_step=2 eps, nb_random_init=1)"}}
        apgd.update(measure({"unmask_attacks": project_apgd_runner(model, images, predicted),
                             "art": art_apgd_runner(model, images, predicted)},
                            model, images, predicted, args.apgd_repeats))
        results["apgd"] = apgd
        print("images/s ratio %.2fx (ours / ART, ratio of medians; per round %.2f-%.2f)"
              % (apgd["speedup_vs_art"], min(apgd["speedup_per_round"]),
                 max(apgd["speedup_per_round"])))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    results = _machine.relative_paths(results)  # repository-relative paths only
    write_json_atomic(args.out, results, indent=2)
    print("written to %s" % args.out)
    return results


if __name__ == "__main__":
    main()
