"""``report.html``: one self-contained page per run -- configuration, the bench, Table IV,
Table III, the figures and a gallery of attacked images with the parts UnMask's extractor
saw and every defense's verdict -- and one across the pairs of a grid.

The page is a pure function of a finished run's folder (:func:`build_page`): it reads
``metrics.json``, ``run.json``, the figures and the saved records and observations, and
recomputes nothing but the parts' places on the few images shown
(:mod:`evaluation.report.gallery`).  Images are embedded as base64 data URIs; the page needs
no network, and its one small script (sorting a table by a click on its header) is not needed
to read it.  The same folder gives the same bytes.  A damaged record is named on the page,
never a reason to fail.

``python main.py --report results/<code>/<arch>`` rebuilds it (also for ``results/grid`` and
K's results folder, :mod:`evaluation.report.k_page`); every run writes it at its end
(:func:`evaluation.report.writer.write_run_page`).
"""
from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Dict, Iterable, List, Sequence

import pandas as pd

from data.knowledge import get_class_set
from evaluation.report import tables
from evaluation.report.answer import answer_html
from evaluation.report.comparison_table import (comparison_frame, comparison_markdown, params_text,
                                                sanity_text)
from evaluation.report.gallery import Section, build_gallery
from evaluation.schema import validate_metrics
from evaluation.store.run_folder import RunFolder

PAGE = "report.html"
FIGURES = (("roc.png", "ROC curves per attack vector (Fig. 5 style)"),
           ("fig4.png", "Accuracy of None / AT / UnMask per attack vector (Fig. 4 style)"),
           ("bench.png", "Accuracy of every defense per attack vector"),
           ("convergence.png", "Convergence of the adaptive attacks"))

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;margin-top:1.6em}
.sub{color:#555;margin-top:0} nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child,table.kv td{text-align:left}
table.sortable th{cursor:pointer}
.problems{background:#fff3f0;border:1px solid #e0a090;padding:.5em 1em}
.figure img{max-width:100%} .caption{color:#444;font-size:.9em;max-width:1100px}
.row{border:1px solid #ddd;margin:.8em 0;padding:.5em}
.imgs{display:flex;gap:1em;flex-wrap:wrap} figure{margin:0}
figcaption{font-size:.8em;max-width:260px} .parts{color:#666}
.ok{color:#1a7f37} .bad{color:#c62828} img.thumb{width:64px;vertical-align:middle}
table.answer td:first-child{font-weight:bold} table.answer td:last-child{text-align:left}
.nottried{background:#fff8e0;padding:.4em .8em}
details{margin:.5em 0} summary{cursor:pointer;color:#245}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th,col){
    th.addEventListener('click',function(){
      var body=t.tBodies[0], rows=Array.from(body.rows), up=th.dataset.dir!=='asc';
      th.dataset.dir=up?'asc':'desc';
      function key(r){var s=r.cells[col].textContent.trim(), v=parseFloat(s);
        return isNaN(v)?s:v;}
      rows.sort(function(a,b){var x=key(a),y=key(b);
        if(typeof x!==typeof y){return typeof x==='number'?-1:1;}
        return (x<y?-1:x>y?1:0)*(up?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


# ----------------------------------------------------------------------------- html pieces

def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def data_uri(image: bytes) -> str:
    """A data URI of PNG, JPEG or WebP bytes (told apart by their first bytes)."""
    kind = ("jpeg" if image[:3] == b"\xff\xd8\xff" else
            "webp" if image[:4] == b"RIFF" and image[8:12] == b"WEBP" else "png")
    return "data:image/%s;base64,%s" % (kind, base64.b64encode(image).decode("ascii"))


def img(png: bytes, alt: str, cls: str = "") -> str:
    return '<img src="%s" alt="%s"%s>' % (data_uri(png), esc(alt),
                                          ' class="%s"' % cls if cls else "")


def section(anchor: str, title: str, body: str) -> str:
    return '<section id="%s"><h2>%s</h2>\n%s\n</section>' % (anchor, esc(title), body)


def document(title: str, subtitle: str, problems: Sequence[str],
             sections: Sequence[tuple]) -> str:
    """The whole page: ``sections`` are ``(anchor, title, body html)``."""
    nav = " ".join('<a href="#%s">%s</a>' % (a, esc(t)) for a, t, _ in sections)
    warn = ""
    if problems:
        warn = ('<div class="problems" id="problems"><b>Problems found while building this '
                'page</b><ul>%s</ul></div>' % "".join("<li>%s</li>" % esc(p)
                                                       for p in problems))
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title>"
            "<style>%s</style></head>\n<body><h1>%s</h1><p class=\"sub\">%s</p><nav>%s</nav>"
            "\n%s\n%s\n<script>%s</script></body></html>\n"
            % (esc(title), STYLE, esc(title), esc(subtitle), nav, warn, body, SORT_SCRIPT))


def markdown_to_html(text: str) -> str:
    """The project's Markdown reports (paragraphs and pipe tables) as HTML.  In a table, the
    rows before the first one with a first cell are headers, and an empty header cell
    widens the one before it (Table IV's attack groups)."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        if table:
            out.append(_table_html(table))
            table = []
        if line.strip():
            out.append("<p class=\"caption\">%s</p>" % esc(line.strip()))
    return "\n".join(out)


def _table_html(rows: List[List[str]]) -> str:
    head = 1
    while head < len(rows) and not rows[head][0]:
        head += 1
    parts = ["<table>"]
    for i, row in enumerate(rows):
        if i < head:
            merged: List[List[Any]] = []
            for c in row:
                if not c and merged and i == 0:
                    merged[-1][1] += 1
                else:
                    merged.append([c, 1])
            parts.append("<tr>%s</tr>" % "".join(
                '<th%s>%s</th>' % (' colspan="%d"' % n if n > 1 else "", esc(c))
                for c, n in merged))
        else:
            parts.append("<tr>%s</tr>" % "".join("<td>%s</td>" % esc(c) for c in row))
    parts.append("</table>")
    return "".join(parts)


def frame_html(df: pd.DataFrame, sortable: bool = True) -> str:
    """A data frame as a (sortable) HTML table; missing values as ``–``."""
    return df.to_html(index=False, na_rep=tables.MISSING, border=0, escape=True,
                      classes="sortable" if sortable else None)


def lossless_webp(path: str) -> bytes:
    """The image file at ``path`` as lossless WebP bytes: the same pixels as the run's PNG
    figure beside the page, in about a third of its bytes."""
    import io

    from PIL import Image
    with Image.open(path) as image:
        out = io.BytesIO()
        image.save(out, format="WEBP", lossless=True, method=6)
    return out.getvalue()


def figure_html(path: str, caption: str) -> str:
    """A figure of the run (a PNG file in its folder) embedded as lossless WebP."""
    return '<div class="figure">%s<p class="caption">%s</p></div>' % (
        img(lossless_webp(path), caption), esc(caption))


def details(summary: str, body: str, open_: bool = False) -> str:
    """``body`` collapsed under ``summary`` (a click opens it; no script needed)."""
    return "<details%s><summary>%s</summary>%s</details>" % (" open" if open_ else "",
                                                             esc(summary), body)


def key_value_table(items: Iterable[tuple]) -> str:
    return '<table class="kv">%s</table>' % "".join(
        "<tr><th>%s</th><td>%s</td></tr>" % (esc(k), esc(v)) for k, v in items)


# ----------------------------------------------------------------------------- run page

def config_html(folder: RunFolder) -> str:
    """What was run: class set, M, extractor, threshold, detection set, threat models,
    defenses with their parameters, the whole configuration and the versions."""
    m, run = folder.metrics, folder.run or {}
    cs = get_class_set(m["class_set"])
    k_run = run.get("k") or {}
    extractor = {"k": "K, the Mask R-CNN part extractor (%s)" % k_run.get("checkpoint", "?"),
                 "oracle": "ORACLE: the annotated parts (the ceiling of a perfect K)"}.get(
        m["extractor"], "none (UnMask not run)")
    threats = sorted({r["threat_model"] for b in m.get("defenses", {}).values()
                      for r in b["attacks"]})
    items = [("class set", "%s (%s): %s" % (cs.paper_name, cs.code_name, ", ".join(cs.classes))),
             ("M", "%s at %s px" % (tables.arch_label(m["arch"]), run.get("input_size", "?"))),
             ("extractor", extractor),
             ("threshold t", tables.MISSING if m["threshold"] is None else "%g" % m["threshold"]),
             ("mode", m.get("mode", tables.MODE_UNSTATED)),
             ("detection set", tables.detection_set_caption(m)),
             ("threat models", ", ".join(threats) or tables.MISSING),
             ("seed", m["seed"]), ("test images", folder.n_test or tables.MISSING)]
    items += [("defense %s" % label, "%s: %s" % (b["kind"],
                                                 params_text(b["params"])))
              for label, b in m.get("defenses", {}).items()]
    config = run.get("config", {})
    if config.get("other_models"):
        items.insert(0, ("NOT THE RECORDED MODELS (--allow-other-models)",
                         "; ".join(config["other_models"])))
    body = key_value_table(items)
    if config:
        body += details("The whole configuration (%d settings)" % len(config), key_value_table(
            (k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in config.items()))
    return body + details("Versions", key_value_table(m["versions"].items()))


#: The bench's columns shown at once (the rest are a click away): it fits a 1,280-px window.
BENCH_COLUMNS = ("defense", "threat_model", "vector", "goal", "acc", "defended", "evasion", "auc",
                 "converged")


def bench_html(metrics: Dict) -> str:
    """The bench as one sortable row per (defense, threat model, vector): the main columns,
    then every column on demand; its caption and Tramer et al.'s sanity checks."""
    df = comparison_frame(metrics)
    df.insert(3, "vector", [("no attack" if a == "none" else tables.attack_label(a, e))
                            for a, e in zip(df["attack"], df["eps"])])
    df = df.drop(columns=["attack", "eps"])
    df.insert(4, "goal", df.pop("goal"))
    for col in ("clean_acc", "acc", "defended", "evasion", "robustness", "tpr", "fpr",
                "tpr_at_5fpr", "tpr_at_10fpr"):
        df[col] = [tables.fmt2(v) if pd.notna(v) else None for v in df[col]]
    df["auc"] = ["%.3f" % v if pd.notna(v) else None for v in df["auc"]]
    for col in ("n_attacked", "n_successful"):
        df[col] = [str(int(v)) if pd.notna(v) else None for v in df[col]]
    df["converged"] = [None if pd.isna(c) else ("yes" if c else "NO") + (
        "" if pd.isna(rc) or rc else ", routes missing")
        for c, rc in zip(df["converged"], df["routes_complete"])]
    caption = comparison_markdown(metrics).split("\n\n")[0]
    sanity = sanity_text(metrics)
    return ('<p class="caption">%s</p>%s%s%s' % (
        esc(caption), frame_html(df[list(BENCH_COLUMNS)]),
        details("Every column (TPRs, FPR, robustness ratio, counts)", frame_html(df)),
        "<pre>%s</pre>" % esc(sanity) if sanity else ""))


def convergence_html(folder: RunFolder) -> str:
    """The adaptive attacks' convergence: ``convergence.png`` when the run wrote one, and per
    defense-aware row the goal's success rate after each number of steps and each restart
    round, and whether it had settled ('' when there is none)."""
    rows = []
    for label, block in folder.metrics.get("defenses", {}).items():
        for r in block["attacks"]:
            conv = r.get("convergence")
            if not conv:
                continue
            row = {"defense": label, "threat model": r["threat_model"],
                   "goal": r.get("goal"), "vector": tables.attack_label(r["attack"], r["eps"])}
            row.update({"%s steps" % k: "%.2f" % v for k, v in conv["steps"].items()})
            row.update({"restart %d" % (i + 1): "%.2f" % v
                        for i, v in enumerate(conv["restarts"])})
            row["converged"] = "yes" if conv["converged"] else "NO: " + conv["why"]
            rows.append(row)
    path = os.path.join(folder.path, "convergence.png")
    out = figure_html(path, dict(FIGURES)["convergence.png"]) if os.path.isfile(path) else ""
    if rows:
        out += frame_html(pd.DataFrame(rows))
    return out


def figures_html(folder: RunFolder) -> str:
    return "\n".join(figure_html(os.path.join(folder.path, name), caption)
                     for name, caption in FIGURES[:-1]
                     if os.path.isfile(os.path.join(folder.path, name)))


def gallery_html(sections: Sequence[Section]) -> str:
    """Each section: its rows of clean | attacked | perturbation with captions and every
    defense's answers."""
    if not sections:
        return "<p>No gallery: see the problems above.</p>"
    intro = ("<p class=\"caption\">Per attack vector, %s test images chosen with the run's seed: "
             "for each defense in turn (UnMask first), one it held (right, or rejected) and one "
             "it failed. Parts are drawn in one colour per part name; s = Jaccard similarity of "
             "the parts found with those of M's class, flagged when 1 − s ≥ t.</p>"
             % max(len(s.rows) for s in sections))
    return intro + "\n".join(_section_html(s) for s in sections)


def _section_html(s: Section) -> str:
    out = ["<h3>%s</h3>" % esc(s.title)]
    if s.record:
        out.append('<p class="caption">images from %s</p>' % esc(s.record))
    out += ['<p class="caption bad">%s</p>' % esc(n) for n in s.notes]
    for r in s.rows:
        figs = "".join(_figure(r, which) for which in ("clean", "attacked", "perturbation")
                       if which in r.images)
        out.append('<div class="row"><div><b>test image %d</b> %s — true class <b>%s</b> — '
                   'shown as: %s</div><div class="imgs">%s</div>%s</div>'
                   % (r.index, esc(r.key), esc(r.true), esc(r.reason), figs, _answers(r)))
    return "\n".join(out)


def _figure(r, which: str) -> str:
    lines = [which] + r.captions.get(which, [])
    text = "<br>".join(_marked(line) for line in lines)
    if which in r.parts:
        text += '<br><span class="parts">parts: %s</span>' % esc(", ".join(r.parts[which])
                                                                  or "none")
    return "<figure>%s<figcaption>%s</figcaption></figure>" % (
        img(r.images[which], "%s image %d" % (which, r.index)), text)


def _marked(line: str) -> str:
    cls = "ok" if line.endswith("✓") else "bad" if line.endswith("✗") else ""
    return '<span class="%s">%s</span>' % (cls, esc(line)) if cls else esc(line)


def _answers(r) -> str:
    rows = []
    for a in r.answers:
        cls = "" if a.held is None else ' class="%s"' % ("ok" if a.held else "bad")
        extra = (img(a.transformed, "%s transformed" % a.label, "thumb")
                 if a.transformed else "") + esc(a.note)
        rows.append("<tr><td>%s</td><td>%s</td><td%s>%s</td><td>%s</td></tr>"
                    % (esc(a.label), esc(a.clean), cls, esc(a.attacked), extra))
    return ("<table><tr><th>defense</th><th>clean</th><th>attacked</th><th></th></tr>%s"
            "</table>" % "".join(rows))


def build_page(run_dir: str) -> str:
    """The page of the finished run in ``run_dir`` (HTML text): the answer first, then its
    figure, the gallery, the full tables and figures, and what was run last, collapsed.

    Raises:
        FileNotFoundError / ValueError: ``run_dir`` has no valid ``metrics.json``.
    """
    folder = RunFolder(run_dir)
    m = folder.metrics
    sections = build_gallery(folder)
    parts = []
    if "defenses" in m:
        answer = answer_html(m)
        path = os.path.join(folder.path, "answer.png")
        if os.path.isfile(path):
            answer += figure_html(path, "Defended rate against ε per defense and threat model")
        parts.append(("answer", "The answer", answer))
    parts.append(("gallery", "Gallery", gallery_html(sections)))
    if "defenses" in m:
        parts.append(("bench", "Defense bench", bench_html(m)))
    tables_iv = ""
    if m["benign"]["acc_um"] is not None:
        tables_iv = markdown_to_html(tables.table_iv_markdown([m]))
    parts.append(("tables", "The paper's tables", details(
        "Table IV (accuracy of None / AT / UnMask per attack)", tables_iv, open_=True)
        + details("Table III (detection counts)",
                  markdown_to_html(tables.table_iii_markdown([m])))))
    parts.append(("figures", "Figures", figures_html(folder)))
    converge = convergence_html(folder)
    if converge:
        parts.append(("convergence", "Adaptive attacks: convergence", converge))
    parts.append(("config", "What was run", config_html(folder)))
    title = "UnMask run: %s, %s" % (tables.arch_label(m["arch"]),
                                    get_class_set(m["class_set"]).paper_name)
    return document(title, tables.figure_title(m), folder.problems, parts)


def build_grid_page(grid_dir: str) -> str:
    """The grid's page: every pair's Table IV row, the bench across pairs, Fig. 4 across them
    and a link to each pair's own page."""
    with open(os.path.join(grid_dir, "grid.json"), encoding="utf-8") as f:
        grid = json.load(f)
    metrics = [validate_metrics(m) for m in grid["metrics"]]
    links = []
    for arch, code in grid["pairs"]:
        href = "../%s/%s/%s" % (code, arch, PAGE)
        there = os.path.isfile(os.path.join(grid_dir, os.pardir, code, arch, PAGE))
        links.append("<li>%s %s</li>" % (
            ('<a href="%s">%s, %s</a>' % (esc(href), esc(tables.arch_label(arch)), esc(code)))
            if there else esc("%s, %s" % (tables.arch_label(arch), code)),
            "" if there else "(no page)"))
    parts = [("pairs", "Pairs", "<ul>%s</ul>" % "".join(links))]
    if all(m["benign"]["acc_um"] is not None for m in metrics):
        parts.append(("table-iv", "Table IV",
                      markdown_to_html(tables.table_iv_markdown(metrics))))
    bench_csv = os.path.join(grid_dir, "bench.csv")
    if os.path.isfile(bench_csv):
        parts.append(("bench", "Defense bench across pairs",
                      frame_html(pd.read_csv(bench_csv).round(3))))
    fig4 = os.path.join(grid_dir, "fig4.png")
    if os.path.isfile(fig4):
        parts.append(("figures", "Fig. 4", figure_html(fig4, "UnMask across the grid")))
    return document("UnMask grid: %d pairs" % len(metrics),
                    "architectures × class sets; each pair's page has its gallery", [], parts)
