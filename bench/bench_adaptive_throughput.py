"""Throughput of the adaptive engine on UnMask's target: image-evaluations per second, the
engine of before the full-batch change against today's, in one run on the same machine.

Both engines attack the same images (a fixed slice of the test set: the first ``--images`` of
the run's class-balanced subset) through each UnMask row of the hardened L-inf eps=8 command
(``unmask``, ``unmask:k=robust``, ``unmask:k=robust:m=at``) with the same adaptive target (the
two-phase route: the work both engines can do) and the full recipe (100 steps, 2 restarts,
every target class, 8-bit iterates, the goal "wrong").
*Before* is ``attacks/engine.py`` and UnMask's target of ``defense/adaptive.py`` at
``--before`` (git history; it attacks batches of ``--adaptive-batch`` images and leaves each
image's row out once it reaches the goal, so the tail of every run evaluates K on a few
images, and it runs K's backward pass for every image); *after* is today's engine
(``--slots`` images evaluated together, a freed slot taking the next job) and target (K's
backward pass only where the two-phase rule uses it).  The figure is target
evaluations of an image (one pass of M and one session run of K) per second of wall time;
``ratio`` = after / before.  A profile of one engine's time per part of an evaluation (M's
pass, K's session run, the verdict, the rest) is recorded for each.

``ceiling``: what no engine can beat on this machine -- the seconds of one image's evaluation
at full batch (``--slots`` images: K's session run forward only and with its backward pass,
M's forward and backward pass), measured in the same run, mixed as today's engine needed them
(the share of evaluations whose K's gradient was asked for): ``ratio`` of an engine that
spent nothing but those passes.  (The backward run fills its last chunk with images whose
gradient was not asked for, so the real share is a little higher and the ceiling a little
optimistic.)  A ``ratio`` goal above the ceiling's cannot be met by scheduling;
only cheaper passes of M or K could.

Needs the trained K, robust K, M and AT of the default run (``python main.py --model K``,
``python main.py --model K --adv-train``, ``python main.py --adv-train``).  Run from the
repository root::

    .venv/bin/python bench/bench_adaptive_throughput.py [--images 40] [--before 3574b3b]
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tfcompat  # noqa: E402,F401
import _machine  # noqa: E402
from data.fileio import write_json_atomic  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "adaptive_throughput.json")
#: The last commit of the engine that attacked fixed batches (before full batches).
BEFORE = "3574b3b"


def old_module(commit: str, path: str):
    """The project's module ``path`` as it was at ``commit``, loaded as a module of its own
    (its imports are today's modules)."""
    source = subprocess.run(["git", "show", "%s:%s" % (commit, path)], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    name = "before_" + path.replace("/", "_")[:-len(".py")]
    file = os.path.join(tempfile.mkdtemp(prefix="bench_before_"), name + ".py")
    with open(file, "w", encoding="utf-8") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Profile:
    """Seconds spent in each part of the target's evaluations (wrapped methods)."""

    def __init__(self):
        self.seconds = {}

    def timed(self, fn, part: str):
        """``fn``, its seconds added to ``part``."""
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0
        return timed

    def wrap(self, obj, name: str, part: str):
        inner = getattr(obj, name)
        setattr(obj, name, self.timed(inner, part))
        return inner

    def wrap_factory(self, obj, name: str, part: str):
        """Time the calls of the functions ``obj.name(...)`` returns (e.g. a compiled step)."""
        make = getattr(obj, name)
        setattr(obj, name, lambda *args, **kwargs: self.timed(make(*args, **kwargs), part))

    def shares(self, total: float) -> dict:
        out = {part: round(s / total, 3) for part, s in self.seconds.items()}
        out["rest (engine, attack steps, threads)"] = round(1 - sum(out.values()), 3)
        return out


def _counting_backward(scorer) -> dict:
    """Count the images whose K ran its backward pass (``need_grad``) in ``scorer``'s calls."""
    counts = {"images": 0, "backward": 0}
    inner = scorer.hinge_value_and_grad

    def counted(images, *args, **kwargs):
        need = kwargs.get("need_grad")
        n = len(images)
        counts["images"] += n
        counts["backward"] += n if need is None else int(sum(bool(v) for v in need))
        return inner(images, *args, **kwargs)
    scorer.hinge_value_and_grad = counted
    return counts


def _seconds(fn, repeats: int = 3) -> float:
    fn()                                    # warm: graphs built, caches filled
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def pass_costs(target, x, y, slots: int) -> dict:
    """Seconds per image of each pass at full batch (``slots`` images, the first of ``x``
    repeated as needed): K forward only, K with its backward pass, M with its backward, M
    forward only (the k-only route's)."""
    import numpy as np
    from attacks.losses import cross_entropy
    idx = np.arange(slots) % len(x)
    xb, yb = np.asarray(x)[idx], np.asarray(y)[idx]
    present = target.masks[(yb + 1) % len(target.masks)]

    def k(need):
        return lambda: target.scorer.hinge_value_and_grad(
            xb, present, 1.0 - present, return_parts=True, need_grad=np.full(slots, need),
            **target.hinge)
    t = (yb + 1) % len(target.masks)
    if getattr(target, "samples", None):
        raise ValueError("the pass costs of an EOT target (%d draws per image) are not those "
                         "of one image; measure a fixed-input UnMask row" % target.samples)

    def m(need):
        return lambda: target._m_terms(xb, yb, t, [cross_entropy] * slots,
                                       np.full(slots, need))
    return {"k_forward": _seconds(k(False)) / slots, "k_backward": _seconds(k(True)) / slots,
            "m_forward_backward": _seconds(m(True)) / slots,
            "m_forward": _seconds(m(False)) / slots}


def ceiling(costs: dict, backward_share: float, before_rate: float) -> dict:
    """The ratio of an engine that spent only the passes of ``costs`` (seconds per image),
    K's backward pass on ``backward_share`` of its evaluations."""
    per_eval = (costs["k_forward"] + backward_share * (costs["k_backward"] - costs["k_forward"])
                + costs["m_forward_backward"])
    return {"seconds_per_evaluation": round(per_eval, 5),
            "image_evaluations_per_second": round(1.0 / per_eval, 2),
            "ratio": round(1.0 / per_eval / before_rate, 2)}


def _engine_run(which: str, defense, config, settings, x, y, args, seed: int) -> dict:
    """One engine (``before`` or ``after``) on ``defense``'s two-phase target; its figures."""
    import numpy as np

    from attacks.engine import AdaptiveEngine
    from defense.base import AdaptiveOptions
    from defense.threats import Goal, Threat

    target = defense.attack_target(Threat.ADAPTIVE, Goal.WRONG,
                                   AdaptiveOptions(routes=("two-phase",)))
    profile = Profile()
    if which == "before":         # the engine and the target of before, on the same K
        old = old_module(args.before, "defense/adaptive.py")
        target = old.UnMaskTarget(target.model, target.scorer,
                                  [sorted(p) for p in target.class_parts], target.judge,
                                  mode=target.mode)
        profile.wrap_factory(target, "_m_step", "M's pass")
    else:
        profile.wrap(target, "_m_terms", "M's pass")
    counts = _counting_backward(target.scorer)
    profile.wrap(target.scorer, "hinge_value_and_grad", "K's session run")
    profile.wrap(target, "judge", "verdict (Algorithm 1)")
    load = _machine.load_average()
    t0 = time.perf_counter()
    if which == "before":
        module = old_module(args.before, "attacks/engine.py")
        engine = module.AdaptiveEngine(config, target, module.EngineSettings(
            steps=settings.steps, restarts=settings.restarts), seed=seed)
        res = engine.run(x, y, batch_size=args.adaptive_batch)
    else:
        engine = AdaptiveEngine(config, target, settings, seed=seed)
        res = engine.run(x, y, slots=args.slots)
    seconds = time.perf_counter() - t0
    evaluations = int(np.sum(res.evaluations))
    return {"seconds": round(seconds, 1), "evaluations": evaluations,
            "evaluations_per_image": round(evaluations / len(x), 1),
            "image_evaluations_per_second": round(evaluations / seconds, 2),
            "goal_reached": float(np.mean(res.success)), "profile": profile.shares(seconds),
            "k_backward_share": round(counts["backward"] / max(counts["images"], 1), 3),
            "load_average_before": load, "load_average_after": _machine.load_average(),
            "_target": target}


def measure(args) -> dict:
    from attacks import resolve_config
    from attacks.engine import EngineSettings
    from data.knowledge import get_class_set
    from evaluation import run as ev
    from evaluation.config import EvalConfig

    labels = [d.strip() for d in args.defenses.split(",") if d.strip()]
    cfg = EvalConfig(class_set=get_class_set(args.classset), extractor="k", adv_train=True,
                     defenses=tuple(labels), n_test=args.images, progress=False,
                     results_dir=tempfile.mkdtemp(prefix="bench_throughput_"))
    comparison, _, defenses, _ = ev.open_comparison(cfg, print, labels)
    test = comparison.images("test")
    x, y = test.x[:args.images], test.labels[:args.images]
    settings = EngineSettings(steps=args.steps, restarts=args.restarts)
    name, _, eps = args.attack.partition(":")
    config = resolve_config(name, float(eps))
    out = {"defenses": {}}
    for defense in defenses:
        rows = out["defenses"][defense.label] = {}
        for which in ("before", "after"):
            rows[which] = _engine_run(which, defense, config, settings, x, y, args, cfg.seed)
            target = rows[which].pop("_target")
            print(defense.label, which, json.dumps(rows[which]))
        rows["ratio"] = round(rows["after"]["image_evaluations_per_second"]
                              / rows["before"]["image_evaluations_per_second"], 2)
        costs = pass_costs(target, x, y, args.slots)
        rows["pass_seconds_per_image"] = {k: round(v, 5) for k, v in costs.items()}
        rows["ceiling"] = ceiling(costs, rows["after"]["k_backward_share"],
                                  rows["before"]["image_evaluations_per_second"])
    for which in ("before", "after"):
        evaluations = sum(r[which]["evaluations"] for r in out["defenses"].values())
        seconds = sum(r[which]["seconds"] for r in out["defenses"].values())
        out[which] = {"evaluations": evaluations, "seconds": round(seconds, 1),
                      "image_evaluations_per_second": round(evaluations / seconds, 2)}
    out["ratio"] = round(out["after"]["image_evaluations_per_second"]
                         / out["before"]["image_evaluations_per_second"], 2)
    # what the cost model uses for an UnMask row the bench did not measure: the passes and
    # the two-phase route's backward share, weighted by each row's evaluations
    weights = {label: r["after"]["evaluations"] for label, r in out["defenses"].items()}
    total = float(sum(weights.values()))
    out["pass_seconds_per_image"] = {
        k: round(sum(w * out["defenses"][label]["pass_seconds_per_image"][k]
                     for label, w in weights.items()) / total, 5)
        for k in next(iter(out["defenses"].values()))["pass_seconds_per_image"]}
    out["after"]["k_backward_share"] = round(sum(
        w * out["defenses"][label]["after"]["k_backward_share"]
        for label, w in weights.items()) / total, 3)
    # the ceiling over every defense: each one's ideal seconds for its own evaluations
    ideal = sum(r["after"]["evaluations"] * r["ceiling"]["seconds_per_evaluation"]
                for r in out["defenses"].values())
    out["ceiling"] = {"image_evaluations_per_second": round(out["after"]["evaluations"] / ideal,
                                                            2),
                      "ratio": round(out["after"]["evaluations"] / ideal
                                     / out["before"]["image_evaluations_per_second"], 2)}
    out.update(what="image-evaluations per second of UnMask's adaptive target (one pass of M "
                    "and one session run of K per image), the engine and target at %s "
                    "(batches of %d) against today's (%d slots), same images, target and "
                    "recipe; per defense and over all of them" % (
                        args.before, args.adaptive_batch, args.slots),
               attack=args.attack, goal="wrong", route="two-phase", images=len(x),
               settings={"steps": args.steps, "restarts": args.restarts},
               command="python bench/bench_adaptive_throughput.py --images %d" % args.images)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classset", default="CS5b")
    p.add_argument("--defenses", default="unmask,unmask:k=robust,unmask:k=robust:m=at",
                   help="the UnMask rows of the hardened command to measure")
    p.add_argument("--attack", default="pgd_linf:8")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--adaptive-batch", type=int, default=100)
    p.add_argument("--before", default=BEFORE)
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    record = measure(args)
    record["machine"] = _machine.machine_info()
    write_json_atomic(args.out, record, indent=2)
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    print("written to %s" % os.path.relpath(args.out, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
