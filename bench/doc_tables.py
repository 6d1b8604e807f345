"""The result tables of README.md and docs/*.md, written from the JSON files they cite, so
no figure in them can go stale.

A table sits between two markers in a Markdown file::

    <!-- table: NAME -->
    | ... generated ... |
    <!-- /table -->

and ``NAME`` names its source, a JSON file under ``bench/results/``:

* ``answer`` -- ``bench/results/answer.json`` (written by ``bench/bench_answer.py`` from the
  runs' ``metrics.json``): the README's results at a glance, one row per defense with 95%
  intervals; ``throughput`` and ``cost_model`` -- the JSON their benchmark wrote
  (:data:`SPECIAL`);
* any other ``NAME`` -- ``bench/results/tables/NAME.json``: ``{"source": ..., "columns": [...],
  "rows": [[...], ...], "caption": ...}``, a table recorded by the run or benchmark its
  ``source`` names (``--record`` writes one from a table already in a file, for results whose
  run folder is not kept: its ``source`` then says where the figures came from).

    .venv/bin/python bench/doc_tables.py --write     # rewrite every marked table
    .venv/bin/python bench/doc_tables.py --check     # exit 1 naming each stale table

``tests/test_docs.py`` runs the check.
"""
import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from evaluation.report.answer import clean_text, rate_text  # noqa: E402

TABLES = os.path.join(ROOT, "bench", "results", "tables")
MARKER = re.compile(r"<!-- table: ([a-z0-9_]+) -->\n(.*?)<!-- /table -->", re.S)


def documents(root: str = ROOT):
    """The Markdown files whose tables are generated: README.md and docs/*.md."""
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs",
                                                                             "*.md")))


def _cell(value) -> str:
    return "–" if value is None else str(value)


def markdown(columns, rows) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _rate(entry) -> str:
    """``.47 [.37, .57]`` of a rate with its interval (``*`` when it is an upper bound), then
    what it was measured under."""
    if not entry:
        return "–"
    text = rate_text(entry["rate"], entry.get("interval"), entry.get("upper_bound", False))
    return text + (" (%s)" % entry["by"] if entry.get("by") else "")


def render_answer(answer: dict) -> str:
    """The README's table: one row per defense -- clean accuracy, the worst case gray-box,
    under the adaptive attacker and through a surrogate -- each with its 95% interval and
    where it comes from."""
    rows = []
    for r in answer["rows"]:
        rejected = (r.get("clean_rejected") or {}).get("rate") or None
        clean = (clean_text(r["clean"]["rate"], r["clean"].get("interval"), rejected)
                 if r.get("clean") else "–")
        rows.append(["`%s`" % r["defense"], r["what"], clean,
                     _rate(r.get("gray_box")), _rate(r.get("adaptive")),
                     _rate(r.get("transfer")), "[%s](%s)" % (r["source"]["label"],
                                                             r["source"]["json"])])
    return markdown(["defense", "what it is", "clean", "gray-box worst case",
                     "adaptive worst case", "transfer", "from"], rows)


def render_throughput(bench: dict) -> str:
    """Image-evaluations per second of UnMask's adaptive target, the engine of before against
    today's, per defense and over all of them, with the ceiling of an engine that spends
    nothing but M's and K's passes (``bench_adaptive_throughput.py``)."""
    def ceiling(r):
        c = r.get("ceiling")
        return "%.2f×" % c["ratio"] if c else "–"

    def share(r):
        v = r["after"].get("k_backward_share")
        return "%.2f" % v if v is not None else "–"

    rows = [["`%s`" % label, r["before"]["image_evaluations_per_second"],
             r["after"]["image_evaluations_per_second"], "%.2f×" % r["ratio"], ceiling(r),
             share(r), r["after"]["evaluations_per_image"]]
            for label, r in bench["defenses"].items()]
    rows.append(["all three", bench["before"]["image_evaluations_per_second"],
                 bench["after"]["image_evaluations_per_second"], "**%.2f×**" % bench["ratio"],
                 ceiling(bench), "–", "–"])
    return markdown(["UnMask row", "before (evaluations/s)", "after (evaluations/s)", "ratio",
                     "ceiling (passes only)", "share with K's backward", "evaluations per image"],
                    rows)


def render_cost_model(cost: dict) -> str:
    """The cost model's prediction for a finished run against its measured time."""
    return markdown(["run", "images", "workers", "predicted (s)", "measured (s)", "error"],
                    [[cost["run"], cost["images"], cost["workers"], cost["predicted_seconds"],
                      cost["measured_seconds"], "%+.0f%%" % (100 * cost["error"])]])


#: Tables written from a benchmark's own JSON by a renderer of their own.
SPECIAL = {"answer": ("answer.json", render_answer),
           "throughput": ("adaptive_throughput.json", render_throughput),
           "cost_model": ("cost_model.json", render_cost_model)}


def render(name: str, root: str = ROOT) -> str:
    """The Markdown of table ``name`` from its JSON (ValueError when it has none)."""
    if name in SPECIAL:
        file, renderer = SPECIAL[name]
        with open(os.path.join(root, "bench", "results", file), encoding="utf-8") as f:
            return renderer(json.load(f))
    path = os.path.join(root, os.path.relpath(TABLES, ROOT), name + ".json")
    if not os.path.isfile(path):
        raise ValueError("table %r has no JSON: %s" % (name, os.path.relpath(path, root)))
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    text = markdown(table["columns"], table["rows"])
    # a caption carries what the rows cannot (a paired interval, a p-value): it is part of the
    # table, so the stale-table check covers it too
    return text + ("\n" + table["caption"].strip() + "\n" if table.get("caption") else "")


def rewrite(text: str, root: str = ROOT) -> str:
    """``text`` with every marked table generated anew."""
    return MARKER.sub(lambda m: "<!-- table: %s -->\n%s<!-- /table -->"
                      % (m.group(1), render(m.group(1), root)), text)


def stale(root: str = ROOT):
    """``(file, table)`` of every marked table that differs from what its JSON gives."""
    out = []
    for path in documents(root):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for m in MARKER.finditer(text):
            if m.group(2) != render(m.group(1), root):
                out.append((os.path.relpath(path, root), m.group(1)))
    return out


def record(path: str, name: str, source: str) -> str:
    """Write ``bench/results/tables/NAME.json`` from the table marked ``NAME`` in ``path`` (a
    result whose run folder is not kept; ``source`` says where its figures came from)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = [m for m in MARKER.finditer(text) if m.group(1) == name]
    if not found:
        raise ValueError("%s has no table marked %r" % (path, name))
    lines = [ln.strip() for ln in found[0].group(2).strip().splitlines()]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    columns, rows = cells[0], [r for r in cells[2:]]
    out = os.path.join(TABLES, name + ".json")
    os.makedirs(TABLES, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"source": source, "columns": columns, "rows": rows}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help="rewrite every marked table")
    g.add_argument("--check", action="store_true", help="exit 1 naming each stale table")
    g.add_argument("--record", nargs=3, metavar=("FILE", "NAME", "SOURCE"),
                   help="record the table NAME of FILE as its JSON, citing SOURCE")
    args = p.parse_args(argv)
    if args.record:
        print("wrote %s" % os.path.relpath(record(*args.record), ROOT))
        return 0
    if args.check:
        bad = stale()
        for path, name in bad:
            print("stale: table %r of %s differs from its JSON (python bench/doc_tables.py "
                  "--write)" % (name, path))
        return 1 if bad else 0
    for path in documents():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = rewrite(text)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print("rewrote %s" % os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
