"""The answer a user came for, per defense, from finished runs: clean accuracy, the worst
case over the gray-box attacks, the worst case of the attacker who knows the defense (per
image, over every attack the run tried: the defense-aware ones and the others, which that
attacker may run too) and through a surrogate, each with its 95% interval ->
``bench/results/answer.json`` (the README's "results at a glance", written by
``bench/doc_tables.py``).

Each run folder's ``metrics.json`` gives, per defense, the images defended under every attack
of each threat model (``worst_case.by_threat``, with its Wilson interval) and which attack or
route was the strongest; a number is marked an upper bound when an attack behind it was not
converged or left out routes of the defense's decision rule.  Where several runs hold a
defense, the first given wins (give the run with the most attacks first); the rows come in
one order whatever the runs' (M alone, AT, UnMask and its variants, the rivals).
``--legacy FILE`` adds rows recorded from earlier runs whose folders were not kept (their
intervals are Wilson intervals of the recorded rate over the recorded number of images).

    .venv/bin/python bench/bench_answer.py --run results_routes/cs5-2/mobilenetv2_050 \\
        --command "python main.py ..." [--run ...] [--legacy bench/results/tables/legacy_answer.json]
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from evaluation.report.answer import is_white_box, upper_bound  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "answer.json")
#: What each defense is, in a few words (the README's second column).
WHAT = {"none": "M alone", "at": "adversarial training of M (PGD-L∞ ε=4)",
        "unmask": "UnMask (K standard, M)", "unmask:m=at": "UnMask, the AT model as M",
        "unmask:k=robust": "UnMask, a robust K",
        "unmask:k=robust:m=at": "UnMask hardened: robust K, AT model",
        "unmask:k=robust:m=at:reject": "the same, flagged images rejected",
        "unmask:reject:k=robust:m=at": "hardened, flagged images rejected",
        "unmask:reject": "UnMask's detector, flagged images rejected",
        "unmask:confident": "UnMask, rectified only where K's parts vouch",
        "unmask:k=robust:m=at:confident": "hardened, rectified only where K's parts vouch",
        "unmask:confident:k=robust:m=at": "hardened, rectified only where K's parts vouch",
        "trajectory": "seed-003 detector (M's layers, LSTM)", "pca": "input transform (PCA)",
        "noise": "input transform (noise, EOT)"}


def _entry(rate, interval, upper=False, by=None):
    return {"rate": rate, "interval": interval, "upper_bound": bool(upper),
            **({"by": by} if by else {})}


def _attack_name(r) -> str:
    return "%s %g" % (r["attack"].replace("_linf", "-L∞").replace("_l2", "-L2"), r["eps"])


def _weakest(rows, worst=None):
    """What the worst case ``worst`` (a defended rate) came from: the row with the lowest
    defended rate, named ``attack eps`` (and route) -- or, when the per-image worst case is
    below every single row, every attack it was taken over."""
    r = min(rows, key=lambda r: r["defended"])
    if worst is not None and worst < r["defended"] - 1e-9:
        names = sorted({_attack_name(x) + ("" if x["threat_model"] == "gray-box"
                                           else " [%s]" % x["threat_model"]) for x in rows})
        return "per image, worst of " + " and ".join(names)
    name = _attack_name(r)
    if r.get("routes"):
        won = r["routes"]["won"]
        best = max(won, key=lambda k: won[k]) if won and max(won.values()) else None
        if best:
            name += ", route %s" % best
    return name


def _threat(block, threat):
    """The worst case of ``block`` under ``threat``: rate, interval, upper bound, weakest."""
    worst = block.get("worst_case", {}).get("by_threat", {}).get(threat)
    rows = [r for r in block["attacks"] if r["threat_model"] == threat]
    if not worst or not rows:
        return None
    return _worst_entry(worst, rows, block)


def _worst_entry(worst, rows, block):
    """The cell of a worst case ``worst`` (``defended``, ``interval``) over ``rows``."""
    return _entry(worst["defended"], worst["interval"], upper_bound(rows, block),
                  _weakest(rows, worst["defended"]))


def rows_of_run(folder: str, command: str):
    with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    source = {"label": os.path.basename(os.path.dirname(os.path.dirname(folder)))
              or folder, "json": "bench/results/answer.json", "command": command,
              "run": _machine.repo_relative(folder)}
    out = []
    for label, block in metrics["defenses"].items():
        b = block["benign"]
        n = max(r["n_attacked"] for r in block["attacks"])
        adaptive = _threat(block, "adaptive")
        note = (block.get("adaptive") or {}).get("adaptive", "")
        if adaptive is None and str(note).startswith("none needed"):
            # M alone, the AT model in a run before they had an adaptive row: the gray-box
            # attack is already white-box on what decides
            gray = _threat(block, "gray-box")
            adaptive = gray and dict(gray, by="= gray-box: white-box on the model itself")
        elif adaptive is not None or any(is_white_box(r) for r in block["attacks"]):
            # the attacker who knows the defense may also run every other attack of the run
            # (a classifier's gray-box attack is white-box already): per image, the worst of
            # them all -- one definition for every row, the one the paired comparisons use
            adaptive = _worst_entry(block["worst_case"], block["attacks"], block)
        out.append({"defense": label, "what": WHAT.get(label, label),
                    "clean": _entry(b["acc"], b.get("acc_interval")),
                    "clean_rejected": (_entry(b["rejected"], b.get("rejected_interval"))
                                       if "rejected" in b else None),
                    "gray_box": _threat(block, "gray-box"),
                    "adaptive": adaptive,
                    "transfer": _threat(block, "transfer"),
                    "n": n, "source": dict(source, label="%s, %d images" % (source["label"], n))})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", default=[], help="a finished run's folder")
    p.add_argument("--command", action="append", default=[],
                   help="the command of each --run, in the same order")
    p.add_argument("--legacy", default=None, help="rows recorded from earlier runs")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if len(args.command) != len(args.run):
        p.error("give one --command per --run")
    rows, seen = [], set()
    for folder, command in zip(args.run, args.command):
        for row in rows_of_run(folder, command):
            if row["defense"] not in seen:
                rows.append(row)
                seen.add(row["defense"])
    if args.legacy:
        with open(args.legacy, encoding="utf-8") as f:
            for row in json.load(f)["rows"]:
                if row["defense"] not in seen:
                    rows.append(row)
                    seen.add(row["defense"])
    # one order whatever the runs' order: M alone, AT, UnMask and its variants, the rivals
    order = {label: i for i, label in enumerate(WHAT)}
    rows.sort(key=lambda r: order.get(r["defense"], len(order)))
    from data.fileio import write_json_atomic
    write_json_atomic(args.out, {"what": __doc__.splitlines()[0], "rows": rows}, indent=1)
    print("written to %s (%d defenses)" % (os.path.relpath(args.out, ROOT), len(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
