"""The bill of an adaptive evaluation before it is run: target evaluations per image (per
defense, goal and route, from a recorded run) x seconds per evaluation at full batch (the
throughput bench) -> predicted wall time for N images on W workers; checked against a run's
measured time.

The count of target evaluations an image costs is a property of the defense, the attack and
the recipe, not of the machine: a run's ``metrics.json`` records it per row and route
(``cost.routes``).  What a machine adds is the seconds one evaluation of an image takes at
full batch (one pass of M and one session run of K): ``bench/results/adaptive_throughput.json``
(today's engine, per defense).  A work unit is one image batch of one goal run, so W workers
divide the time by at most the number of units; each worker is assumed to have the
resources of the machine the seconds were measured on (one GPU, or the CPU cores, per worker).

    .venv/bin/python bench/bench_cost_model.py --from-run results/cs5-2/mobilenetv2_050 \\
        --images 300 --workers 4 [--goals wrong] [--steps 200]
    .venv/bin/python bench/bench_cost_model.py --from-run RUN --check RUN [--check-log LOG]

``--check RUN``: predict the defense-aware attacks of a finished run from its own counts (the
machine-independent part) and the throughput bench, and compare with the seconds its rows
recorded (``cost.seconds``, summed over the rows run one after the other); the result goes to
``bench/results/cost_model.json``.
"""
import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from defense.routes import K_GRADIENT_EVERY_STEP, M_FORWARD_ONLY  # noqa: E402
from evaluation.options import parse_goals  # noqa: E402

THROUGHPUT = os.path.join(ROOT, "bench", "results", "adaptive_throughput.json")
RESULTS = os.path.join(ROOT, "bench", "results", "cost_model.json")


def _read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def seconds_per_evaluation(throughput: dict, defense: str, route: str = "two-phase") -> float:
    """Seconds of one target evaluation of one image at full batch along ``route``: the
    defense's own measurement, else the overall one (today's engine, ``after``, measured on
    the two-phase route).  UnMask's routes differ from two-phase by their passes (measured by
    the throughput bench, the defense's own or, for an UnMask row it did not measure, the
    average): a route whose every step runs K's backward pass costs K's backward on the share
    of evaluations the two-phase measurement ran without it; ``k-only`` runs M forward only."""
    own = throughput.get("defenses", {}).get(defense)
    rate = (own or throughput)["after"]["image_evaluations_per_second"]
    seconds = 1.0 / float(rate)
    if not defense.startswith("unmask"):
        return seconds
    source = own if own and own.get("pass_seconds_per_image") else throughput
    passes = source.get("pass_seconds_per_image")
    share = source.get("after", {}).get("k_backward_share")
    if route in K_GRADIENT_EVERY_STEP and passes and share is not None:
        seconds += (1.0 - share) * (passes["k_backward"] - passes["k_forward"])
    if route in M_FORWARD_ONLY and passes and "m_forward" in passes:
        seconds -= passes["m_forward_backward"] - passes["m_forward"]
    return seconds


def rows_of(metrics: dict):
    """(defense, row) of every defense-aware row with a recorded cost."""
    for label, block in metrics["defenses"].items():
        for row in block["attacks"]:
            if row.get("cost"):
                yield label, row


def predict(metrics: dict, throughput: dict, images: int, workers: int, batch: int,
            goals=None, steps=None) -> dict:
    """Predicted seconds of the defense-aware attacks of ``metrics``'s run on ``images``
    images and ``workers`` workers (work units: ``ceil(images / batch)`` per goal run);
    ``goals``: only the rows of these goals (``--adaptive-goals``); ``steps``: each run
    of ``steps`` steps instead of the run's, its evaluations scaled by the ratio (an upper
    bound, hence at least the run's steps: an image that reaches the goal early stops early
    at any step count)."""
    rows, total, units = [], 0.0, 0
    run_steps = (metrics.get("adaptive_settings") or {}).get("steps")
    if steps is not None and not run_steps:
        raise ValueError("--steps: the run records no adaptive steps to scale from")
    if steps is not None and steps < run_steps:
        raise ValueError("--steps %d: below the run's %d steps the scaled count is no bound "
                         "(images stop early); price from a run of at most %d steps"
                         % (steps, run_steps, steps))
    scale = 1.0 if steps is None else float(steps) / float(run_steps)
    for label, row in rows_of(metrics):
        if goals is not None and row.get("goal") not in goals:
            continue
        per_image = scale * float(row["cost"]["evaluations_per_image"])
        by_route = {r: scale * float(v["evaluations_per_image"])
                    for r, v in row["cost"].get("routes", {}).items()}
        if by_route:
            seconds = images * sum(n * seconds_per_evaluation(throughput, label, r)
                                   for r, n in by_route.items())
        else:
            seconds = per_image * images * seconds_per_evaluation(throughput, label)
        routes = {r: round(v, 1) for r, v in by_route.items()}
        rows.append({"defense": label, "attack": row["attack"], "eps": row["eps"],
                     "threat_model": row["threat_model"], "goal": row["goal"],
                     "evaluations_per_image": round(per_image, 1),
                     "evaluations_per_image_per_route": routes,
                     "predicted_seconds_one_worker": round(seconds, 1)})
        total += seconds
        units += math.ceil(images / batch)
    if not rows:
        raise ValueError("no defense-aware row of the run%s has a recorded cost" % (
            "" if goals is None else " of goal %s" % ", ".join(goals)))
    parallel = max(1, min(workers, units))
    return {"images": images, "workers": workers, "work_units": units,
            "predicted_seconds": round(total / parallel, 1),
            "predicted_seconds_one_worker": round(total, 1), "rows": rows}


def check(metrics: dict, throughput: dict, workers: int, measured_seconds=None) -> dict:
    """The prediction for a finished run (its own images and evaluation counts) against
    the seconds it took."""
    images = max(r["n_attacked"] for _, r in rows_of(metrics))
    batch = int((metrics.get("adaptive_settings") or {}).get("batch", 100))
    out = predict(metrics, throughput, images, workers, batch)
    if measured_seconds is None and workers != 1:
        raise ValueError("--check of a run on %d workers needs its measured wall time "
                         "(--measured-seconds): the rows' own seconds overlap" % workers)
    measured = (sum(float(r["cost"]["seconds"]) for _, r in rows_of(metrics))
                if measured_seconds is None else float(measured_seconds))
    out.update(measured_seconds=round(measured, 1),
               measured_from=("the rows' recorded seconds" if measured_seconds is None
                              else "the wall time given"),
               error=round(out["predicted_seconds"] / measured - 1.0, 3))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-run", required=True,
                   help="a finished run (RESULTS/<code>/<arch>) whose counts are used")
    p.add_argument("--throughput", default=THROUGHPUT)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=100, help="images per work unit")
    p.add_argument("--goals", default=None,
                   help="comma list: price only the rows of these goals (--adaptive-goals)")
    p.add_argument("--steps", type=int, default=None,
                   help="price runs of this many steps (evaluations scaled from the run's; "
                        "an upper bound)")
    p.add_argument("--check", action="store_true",
                   help="compare the prediction with the run's own recorded seconds")
    p.add_argument("--measured-seconds", type=float, default=None,
                   help="with --check: the run's measured wall time of its adaptive attacks "
                        "(default: the seconds its rows recorded)")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    metrics = _read(os.path.join(args.from_run, "metrics.json"))
    throughput = _read(args.throughput)
    if args.check and (args.goals or args.steps):
        p.error("--check compares a run with its own rows and steps: drop --goals / --steps")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1, got %d" % args.steps)
    try:
        goals = parse_goals(args.goals, flag="--goals")
        if args.check:
            record = check(metrics, throughput, args.workers, args.measured_seconds)
        else:
            record = predict(metrics, throughput, args.images, args.workers, args.batch,
                             goals=goals, steps=args.steps)
            record.update(goals=goals and list(goals), steps=args.steps)
    except ValueError as e:
        p.error(str(e))
    record.update(run=_machine.repo_relative(args.from_run),
                  throughput=_machine.repo_relative(args.throughput),
                  machine=_machine.machine_info())
    if args.check:
        from data.fileio import write_json_atomic
        write_json_atomic(args.out, record, indent=2)
        print("written to %s" % os.path.relpath(args.out, ROOT))
    print(json.dumps({k: v for k, v in record.items() if k not in ("machine", "rows")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
