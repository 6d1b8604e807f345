"""No stale numbers: every result table of README.md and docs/*.md is what its JSON under
bench/results/ gives (bench/doc_tables.py writes them), and a changed JSON value makes the
check fail; the README stays short and its links lead somewhere."""
import json
import os
import re
import shutil

from benchmods import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _doc_tables():
    return load("doc_tables")


def test_every_result_table_is_what_its_json_gives():
    tables = _doc_tables()
    assert tables.stale() == []
    marked = [m.group(1) for path in tables.documents()
              for m in tables.MARKER.finditer(open(path, encoding="utf-8").read())]
    assert "answer" in marked and len(marked) >= 10


def test_a_planted_change_of_a_json_value_is_caught(tmp_path):
    tables = _doc_tables()
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs",
                    ignore=shutil.ignore_patterns("*.png"))
    shutil.copytree(os.path.join(ROOT, "bench", "results"), root / "bench" / "results")
    shutil.copy(os.path.join(ROOT, "README.md"), root / "README.md")
    assert tables.stale(str(root)) == []
    path = root / "bench" / "results" / "tables" / "hardened_linf8.json"
    table = json.loads(path.read_text())
    table["rows"][0][1] = ".93"                        # a planted edit of one figure
    path.write_text(json.dumps(table))
    assert tables.stale(str(root)) == [(os.path.join("docs", "hardening.md"),
                                        "hardened_linf8")]
    answer = root / "bench" / "results" / "answer.json"
    data = json.loads(answer.read_text())
    data["rows"][0]["clean"]["rate"] = 0.123
    answer.write_text(json.dumps(data))
    assert ("README.md", "answer") in tables.stale(str(root))


def test_a_tables_caption_is_written_under_it_and_checked(tmp_path):
    tables = _doc_tables()
    root = tmp_path / "repo"
    (root / "bench" / "results" / "tables").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "README.md").write_text("# a page without tables\n")
    src = root / "bench" / "results" / "tables" / "pair.json"
    src.write_text(json.dumps({"columns": ["a"], "rows": [["1"]],
                               "caption": "On 6 images: +0.33 [+0.00, +0.67], p = 0.5."}))
    doc = root / "docs" / "page.md"
    doc.write_text("<!-- table: pair -->\nold\n<!-- /table -->\n")
    doc.write_text(tables.rewrite(doc.read_text(), str(root)))
    assert "| 1 |\n\nOn 6 images: +0.33 [+0.00, +0.67], p = 0.5.\n<!-- /table -->" \
        in doc.read_text()
    assert tables.stale(str(root)) == []
    src.write_text(json.dumps({"columns": ["a"], "rows": [["1"]], "caption": "p = 0.6."}))
    assert tables.stale(str(root)) == [(os.path.join("docs", "page.md"), "pair")]


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    missing = [link for link in links if not link.startswith("http")
               and not os.path.exists(os.path.join(ROOT, link))]
    assert missing == []
    for page in os.listdir(os.path.join(ROOT, "docs")):
        if page.endswith(".md"):
            first = open(os.path.join(ROOT, "docs", page), encoding="utf-8").read()
            assert "What you learn here" in first.split("\n\n")[1], page
