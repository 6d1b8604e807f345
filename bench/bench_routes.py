"""The route-complete adaptive attack of a finished run, as three tables under
``bench/results/tables/`` (written into the docs by ``bench/doc_tables.py``):

* ``NAME.json`` -- per defense and attack: clean accuracy, the gray-box row, the adaptive
  wrong-goal row (defended accuracy) and undetected-goal row (evasion), each with its 95%
  interval, ``*`` where not converged, and the images each route won;
* ``NAME_paired.json`` -- each defense against ``at`` on the same images (the run's
  ``comparisons``: the difference of the two defended rates with its paired bootstrap
  interval, McNemar's exact p, and the claim the interval allows);
* ``NAME_cost.json`` -- what each defense-aware attack cost: per goal, the target
  evaluations per image of each route (its share of the row's count over all the row's
  images, with the images it ran on and won), the row's total and its worker time.

    .venv/bin/python bench/bench_routes.py --run results/cs5-2/mobilenetv2_050 \\
        --name routes_linf8 --command "python main.py ..."
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from evaluation.report.answer import (clean_text, rate_text,  # noqa: E402
                                      upper_bound_reason)
from evaluation.store.records import eps_tag  # noqa: E402

TABLES = os.path.join(ROOT, "bench", "results", "tables")


def _rate(value, interval, converged=True) -> str:
    return rate_text(value, interval, upper=not converged)


def _row(rows, threat, goal, key):
    for r in rows:
        if r["threat_model"] == threat and r.get("goal") == goal:
            conv = (r.get("convergence") or {}).get("converged", True)
            return r, _rate(r[key], r["intervals"][key], conv)
    return None, "–"


def _routes(r) -> str:
    if not r or not r.get("routes"):
        return "–"
    won = r["routes"]["won"]
    return ", ".join("%s %d" % (k, v) for k, v in won.items())


def cost_table(metrics: dict) -> dict:
    """The cost of every defense-aware row of a run's metrics (``cost``: ``routes`` with
    ``images``, ``won`` and ``evaluations_per_image``; ``seconds``), one line per attack,
    defense and goal."""
    rows = []
    for label, block in metrics["defenses"].items():
        for r in block["attacks"]:
            cost = r.get("cost") or {}
            if r["threat_model"] == "gray-box" or not cost:
                continue
            routes = " · ".join("%s %s (%d images, won %d)" % (
                name, "{:,.0f}".format(c["evaluations_per_image"]), c["images"], c["won"])
                for name, c in (cost.get("routes") or {}).items()) or "–"
            rows.append(["%s %g" % (r["attack"], r["eps"]), "`%s`" % label,
                         "%s, %s" % (r["threat_model"], r.get("goal") or "–"), routes,
                         "{:,.0f}".format(cost["evaluations_per_image"]),
                         "%.2f" % (cost["seconds"] / 3600.0) if "seconds" in cost else "–"])
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    return {"columns": ["attack", "defense", "threat, goal",
                        "target evaluations per image, by route (images it ran on, images it "
                        "won)", "evaluations per image", "worker hours"], "rows": rows}


def tables_of(metrics: dict):
    """(the per-defense table, the paired table) of a run's metrics."""
    attacks = sorted({(r["attack"], r["eps"]) for b in metrics["defenses"].values()
                      for r in b["attacks"]})
    rows = []
    for attack, eps in attacks:
        for label, block in metrics["defenses"].items():
            mine = [r for r in block["attacks"] if (r["attack"], r["eps"]) == (attack, eps)]
            gray = _row(mine, "gray-box", None, "defended")[1]
            wrong_row, wrong = _row(mine, "adaptive", "wrong", "defended")
            if wrong_row and wrong_row["acc"] != wrong_row["defended"]:     # rejections
                wrong += " (right %s, rejected %s)" % (
                    _rate(wrong_row["acc"], None),
                    _rate(wrong_row["defended"] - wrong_row["acc"], None))
            hidden_row, hidden = _row(mine, "adaptive", "undetected", "evasion")
            b = block["benign"]
            clean = clean_text(b["acc"], b.get("acc_interval"), b.get("rejected") or None)
            evals = "–" if not wrong_row else "%.0f" % wrong_row["cost"]["evaluations_per_image"]
            rows.append(["%s %g" % (attack, eps), "`%s`" % label, clean, gray, wrong,
                         _routes(wrong_row), hidden, _routes(hidden_row), evals])
    def why_upper(label, over):
        """Why ``label``'s side of a comparison over ``over`` (a vector, or "worst case")
        is an upper bound, or None."""
        block = metrics["defenses"][label]
        mine = [r for r in block["attacks"]
                if over == "worst case" or "%s_%s" % (r["attack"], eps_tag(r["eps"])) == over]
        return upper_bound_reason(mine, block)

    def claim(c):
        text = (c["claim"] if c["claim"] != "not distinguishable"
                else "not distinguishable on %d images" % c["n"])
        # an upper bound matters where a stronger attack could overturn the claim: on the
        # side said to be higher, or on either when they are not told apart
        at_risk = {"a > b": (c["a"],), "a < b": (c["b"],)}.get(c["claim"], (c["a"], c["b"]))
        rate = {c["a"]: c["a_rate"], c["b"]: c["b_rate"]}
        # a side that defends nothing cannot be over-stated
        upper = [(x, why_upper(x, c["over"])) for x in at_risk if rate[x] > 0]
        return text + "".join(" (an upper bound on `%s`: %s)" % (x, why)
                              for x, why in upper if why)

    paired = [["%s" % c["over"], "`%s` − `%s`" % (c["a"], c["b"]),
               "%.2f − %.2f = %+.2f" % (c["a_rate"], c["b_rate"], c["difference"]),
               "[%+.2f, %+.2f]" % tuple(c["interval"]), "%d / %d" % (c["a_only"], c["b_only"]),
               "%.3g" % c["p_mcnemar"], claim(c)]
              for c in metrics.get("comparisons", [])]
    main = {"columns": ["attack", "defense", "clean", "gray-box", "adaptive: defended, right or "
                        "rejected (wrong goal)", "won by route", "adaptive: evasion (undetected goal)",
                        "won by route", "evaluations per image (wrong)"], "rows": rows}
    pairs = {"columns": ["over", "A − B", "defended: A − B", "95% interval (paired bootstrap)",
                         "images only A / only B defends", "McNemar p", "claim"],
             "rows": paired}
    return main, pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True)
    args = p.parse_args(argv)
    with open(os.path.join(args.run, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    main_table, pairs = tables_of(metrics)
    source = "%s (run %s; its metrics.json: %s)" % (
        args.command, _machine.repo_relative(args.run), "metrics.json")
    from data.fileio import write_json_atomic
    for name, table in ((args.name, main_table), (args.name + "_paired", pairs),
                        (args.name + "_cost", cost_table(metrics))):
        path = os.path.join(TABLES, name + ".json")
        write_json_atomic(path, dict(table, source=source), indent=1)
        print("wrote %s" % os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
