"""Attack speed benchmark: this project's PGD-L-inf vs IBM ART's ProjectedGradientDescent.

Both attack the same tf-keras model on the same batch with the same configuration (untargeted
PGD-L-inf, eps 8/255, step 2/255, 20 iterations, one random start, pixels in [0, 1]).
Timings exclude the one-off warm-up call (tracing / first eager call), which is recorded
separately; the timed runs alternate between the two libraries so that background load on a
shared machine affects both alike (the load average is recorded too).  Results go to ``bench/results/attacks.json`` (written atomically).

Default model: ``MobileNetV2(weights=None, input_shape=(128, 128, 3), alpha=1.0, classes=5)``
with a final linear layer (logits) and a ``[0, 1] -> [-1, 1]`` rescaling in front; batch 32.

Run from the repository root::

    .venv/bin/python bench/bench_attacks.py [--repeats 3] [--batch 32] [--size 128]

ART is a benchmark-only dependency (``bench/requirements.txt``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfcompat  # noqa: E402  (repository root is importable only after the line above)

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402

import numpy as np  # noqa: E402

import attacks  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402

tf, keras = tfcompat.import_tf()

EPS, STEP, STEPS, NUM_CLASSES = 8.0, 2.0, 20, 5
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "attacks.json")


def build_model(size, alpha=1.0):
    """MobileNetV2 (random weights, width ``alpha``) taking ``[B, size, size, 3]`` pixels in
    [0, 1] -> logits [B, 5]."""
    inputs = keras.Input((size, size, 3))
    scaled = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=alpha,
                                         classes=NUM_CLASSES, classifier_activation=None)
    return keras.Model(inputs, net(scaled))


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


def machine_info():
    """CPU, core count, OS and package versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "tf-keras", "cleverhans", "adversarial-robustness-toolbox",
                    "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "versions": versions}


def _summarise(entry, batch):
    best = min(entry["times_s"])
    mean = float(np.mean(entry["times_s"]))
    entry.update({"images_per_s_mean": batch / mean, "images_per_s_best": batch / best})
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library")
    parser.add_argument("--batch", type=int, default=32, help="images in the batch")
    parser.add_argument("--size", type=int, default=128, help="image height = width")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="MobileNetV2 width (the project's default M: --alpha 0.5 "
                             "--size 96)")
    parser.add_argument("--out", default=RESULTS, help="JSON output path")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    model = build_model(args.size, args.alpha)
    images = rng.random((args.batch, args.size, args.size, 3), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, args.batch)

    results = {
        "attack": {"name": "pgd_linf", "eps_255": EPS, "step_255": STEP, "steps": STEPS,
                   "random_start": True},
        "model": "MobileNetV2(weights=None, alpha=%g, classes=%d), input %dx%dx3"
                 % (args.alpha, NUM_CLASSES, args.size, args.size),
        "batch": args.batch, "repeats": args.repeats,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
    }
    results["load_average_before"] = os.getloadavg()
    runners = {"unmask_attacks": project_runner(model, images, labels),
               "art": art_runner(model, images, labels)}
    timings = time_interleaved(runners, args.repeats)
    results["load_average_after"] = os.getloadavg()
    for name, entry in timings.items():
        entry.update(_check(model, images, labels, entry.pop("x_adv")))
        entry.update(runners[name][1]())
        results[name] = _summarise(entry, args.batch)
        print("%-15s %.2f images/s" % (name, entry["images_per_s_mean"]))
    results["speedup_vs_art"] = (results["unmask_attacks"]["images_per_s_mean"]
                                 / results["art"]["images_per_s_mean"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json_atomic(args.out, results, indent=2)
    print("speed-up %.2fx; written to %s" % (results["speedup_vs_art"], args.out))
    return results


if __name__ == "__main__":
    main()
