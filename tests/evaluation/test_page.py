"""report.html: a tiny run's page, as a browser shows it; the gallery's seeded choice; the
oracle's parts; damaged records named on the page; --report rebuilding it from the folder."""
import json
import os
import shutil

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from browser import Browser, find_chromium  # noqa: E402
from data.knowledge import get_class_set  # noqa: E402
from evaluation.report import gallery, page, tables  # noqa: E402
from evaluation.store import attack_store  # noqa: E402
from evaluation import run as ev  # noqa: E402
from evaluation.config import EvalConfig  # noqa: E402
from evaluation.store.run_folder import RunFolder  # noqa: E402
from models.train_classifier import TrainConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))
DEFENSES = ("none", "unmask", "jpeg", "noise:10")
TINY_DATA = dict(seed=3, per_class=(16, 6, 6))

pytestmark = pytest.mark.slow        # every test reads one finished run (M trained, attacked)


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A finished tiny run (oracle extractor, 9 test images, two vectors, four defenses, the
    transforms' adaptive attacks too)."""
    tmp = tmp_path_factory.mktemp("page")
    cfg = EvalConfig(
        class_set=get_class_set("CS3a"), data_dir=tiny_data, input_size=32,
        train=TrainConfig(epochs=1, batch_size=16, learning_rate=0.01),
        vectors=(("pgd_linf", 8), ("fgsm", 8)), n_test=9, attack_batch=8,
        results_dir=str(tmp / "results"), checkpoint_dir=str(tmp / "ckpt"), progress=False,
        extractor="oracle", defenses=DEFENSES, threats=("gray-box", "adaptive"),
        adaptive_steps=2)
    logs = []
    metrics = ev.run_evaluation(cfg, log=logs.append)
    return {"dir": cfg.out_dir, "metrics": metrics, "logs": logs, "cfg": cfg}


def _copy(run, tmp_path):
    return shutil.copytree(run["dir"], str(tmp_path / "run"))


def test_a_run_writes_its_page_and_report_rebuilds_it_from_the_folder(run, monkeypatch):
    import main
    import defense.base

    path = os.path.join(run["dir"], page.PAGE)
    assert any(m.startswith("wrote %s (" % path) for m in run["logs"])
    before = open(path, "rb").read()
    # self-contained: images inline (figures as lossless WebP), no URL (base64 has no ':',
    # so "://" is a link)
    assert b"<img src=\"data:image/webp;base64," in before and b"://" not in before

    def no_models(*args, **kwargs):
        raise AssertionError("--report must not run M or an attack")
    monkeypatch.setattr(defense.base, "model_predictions", no_models)
    monkeypatch.setattr(attack_store, "run_attack", no_models)
    os.remove(path)
    assert main.main(["--report", run["dir"]]) == 0
    assert open(path, "rb").read() == before        # the same folder, the same page


def test_report_of_a_folder_it_cannot_write_says_so_and_can_write_elsewhere(
        run, tmp_path, monkeypatch, capsys):
    """--report probes the run folder before it writes: a shared, read-only folder is a clear
    error naming it and the way out, nothing is written there, and --report-out FILE writes
    the page elsewhere."""
    import errno

    import data.fileio as fio
    import main

    folder = _copy(run, tmp_path)
    before = sorted((os.path.relpath(os.path.join(d, f), folder),
                     os.path.getmtime(os.path.join(d, f)))
                    for d, _, fs in os.walk(folder) for f in fs)
    real = fio._create_temporary

    def create(where, prefix, suffix):
        if os.path.abspath(where).startswith(os.path.abspath(folder)):
            raise OSError(errno.EROFS, "Read-only file system", where)
        return real(where, prefix, suffix)

    monkeypatch.setattr(fio, "_create_temporary", create)
    assert main.main(["--report", folder]) == 2
    err = capsys.readouterr().err
    assert folder in err and "cannot be written" in err and "--report-out" in err
    assert "Traceback" not in err
    out = tmp_path / "elsewhere" / "page.html"
    out.parent.mkdir()
    assert main.main(["--report", folder, "--report-out", str(out)]) == 0
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<h2>Defense bench</h2>" in html
    after = sorted((os.path.relpath(os.path.join(d, f), folder),
                    os.path.getmtime(os.path.join(d, f)))
                   for d, _, fs in os.walk(folder) for f in fs)
    assert after == before, "nothing written in the read-only run folder"
    assert main.main(["--report", folder, "--report-out", str(out.parent)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_report_of_a_folder_without_a_run_names_it(tmp_path, capsys):
    import main

    assert main.main(["--report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "metrics.json" in err and "Traceback" not in err


def test_the_gallery_picks_the_same_images_for_the_same_seed(run):
    rng = np.random.default_rng(0)
    held = {"unmask": rng.random(300) < 0.8, "none": rng.random(300) < 0.1}
    first = gallery.pick_images(held, 4, seed=0, salt="pgd_linf_8")
    assert first == gallery.pick_images(held, 4, seed=0, salt="pgd_linf_8")
    assert [r for _, r in first] == ["unmask held", "unmask failed", "none held",
                                     "none failed"]
    assert all(held[r.split()[0]][i] == (r.endswith("held")) for i, r in first)
    others = {tuple(i for i, _ in gallery.pick_images(held, 4, seed=s, salt="pgd_linf_8"))
              for s in range(1, 6)}
    assert tuple(i for i, _ in first) not in others or len(others) > 1
    assert len(others) > 1                            # another seed, other images
    assert len(gallery.pick_images({"none": np.zeros(3, bool)}, 4, 0, "x")) == 3
    # on the run: the page's rows are that choice
    folder = RunFolder(run["dir"])
    rows = [[r.index for r in s.rows] for s in gallery.build_gallery(folder)]
    assert rows == [[r.index for r in s.rows] for s in gallery.build_gallery(RunFolder(
        run["dir"]))]
    assert all(len(r) == 4 for r in rows)


def test_an_oracle_run_shows_the_annotated_parts_and_the_runs_decisions(run):
    folder = RunFolder(run["dir"])
    sections = gallery.build_gallery(folder)
    assert folder.problems == []
    gray = " — gray-box (the attack sees M)"
    assert [s.title for s in sections] == [
        "PGD-L∞ ε=8" + gray, "fgsm ε=8" + gray] + [
        "%s — adaptive attack on %s, run for goal 'wrong'" % (v, d)
        for d in ("jpeg", "noise:10") for v in ("PGD-L∞ ε=8", "fgsm ε=8")]
    source = gallery.parts_source(folder)
    for s in sections:
        target = (s.title.split(" attack on ")[-1].split(",")[0] if "adaptive" in s.title
                  else None)
        for r in s.rows:
            assert set(r.images) == {"clean", "attacked", "perturbation"}
            drawn = source.parts([r.key], [None])[0]
            assert drawn and all(p.mask is not None and p.mask.any() for p in drawn)
            plain = gallery._enlarged(gallery.to_pixels(r.x_adv))
            assert r.images["attacked"] != plain                 # the parts are drawn on it
            assert [a.label for a in r.answers] == (
                [target] if target else ["unmask", "none", "jpeg", "noise:10"])
            assert all(a.transformed for a in r.answers if a.label in ("jpeg", "noise:10"))
            if target is None:                # the parts UnMask used are the annotated ones
                assert {p.name for p in drawn} == set(r.parts["clean"]) == set(
                    r.parts["attacked"])
    # the restored defenses decide as the run did: their accuracies are the metrics'
    defenses = gallery.restored_defenses(folder)
    for label, block in run["metrics"]["defenses"].items():
        for row in block["attacks"]:
            kind, where = (("attacks", "m") if row["threat_model"] == "gray-box"
                           else ("adaptive", label.replace(":", "-")))
            rec = folder.record(kind, where, row["attack"], row["eps"], row.get("goal"))
            _, obs = folder.observation(label, rec.fingerprint)
            acc = float(np.mean(defenses[label].decide(obs).pred == folder.labels()))
            assert acc == pytest.approx(row["acc"]), (label, row)
    html = page.build_page(run["dir"])
    assert "ORACLE" in html and "parts: " in html


def test_a_damaged_record_is_named_on_the_page_not_a_crash(run, tmp_path):
    folder = _copy(run, tmp_path)
    record = os.path.join(folder, "vectors", "attacks", "m", "test-fgsm_8.npz")
    with open(record, "r+b") as f:
        f.truncate(100)
    observation = os.path.join(folder, "vectors", "defenses", "noise-10", "benign-test.json")
    with open(observation, "w") as f:
        f.write('{"fingerprint": ')
    html = page.build_page(folder)
    assert "vectors/attacks/m/test-fgsm_8.npz is damaged" in html
    assert "vectors/defenses/noise-10/benign-test.json is damaged" in html
    pgd, fgsm = gallery.build_gallery(RunFolder(folder))[:2]
    assert pgd.rows and not fgsm.rows and any("test-fgsm_8.npz" in n for n in fgsm.notes)
    noise = [a for r in pgd.rows for a in r.answers if a.label == "noise:10"]
    assert noise and all(a.attacked == tables.MISSING for a in noise)
    os.remove(os.path.join(folder, "run.json"))
    assert "run.json is missing" in page.build_page(folder)


def test_the_adaptive_attacks_convergence_plot_is_shown_when_the_run_has_one(run, tmp_path):
    folder = _copy(run, tmp_path)
    plot_path = os.path.join(folder, "convergence.png")
    html = page.build_page(folder)
    assert 'id="convergence"' in html and page.data_uri(page.lossless_webp(plot_path)) in html
    assert "2 steps" in html and "restart 1" in html        # the trace, per row
    # a run without defense-aware attacks has no such section
    os.remove(plot_path)
    metrics_path = os.path.join(folder, "metrics.json")
    metrics = json.load(open(metrics_path))
    for block in metrics["defenses"].values():
        block["attacks"] = [r for r in block["attacks"] if r["threat_model"] == "gray-box"]
        block.pop("adaptive", None)
    metrics.pop("adaptive_settings", None)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f)
    assert 'id="convergence"' not in page.build_page(folder)


def test_the_grid_page_holds_the_grids_tables_and_links_each_pairs_page(run):
    from evaluation import grid

    cfg = run["cfg"]
    grid.merge(cfg, [(cfg.arch, cfg.class_set.code_name)], log=lambda s: None)
    html = open(os.path.join(cfg.results_dir, "grid", page.PAGE), encoding="utf-8").read()
    assert '<a href="../cs3-1/mobilenetv2_050/report.html">' in html
    assert "Table IV" in html and tables.fmt2(run["metrics"]["benign"]["acc_um"]) in html
    assert html.count("<img ") == 1                              # Fig. 4 across the grid


def _bench_rows(metrics):
    """The bench rows a reader must find in the page's main bench table: defense, threat
    model, vector, goal and the three rates, as the table's text shows them."""
    rows = []
    for label, block in metrics["defenses"].items():
        for r in block["attacks"]:
            rows.append("\t".join([label, r["threat_model"],
                                   tables.attack_label(r["attack"], r["eps"]),
                                   r.get("goal") or tables.MISSING, tables.fmt2(r["acc"]),
                                   tables.fmt2(r["defended"]), tables.fmt2(r["evasion"])]))
    return rows


CHECK = """(async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.onload = r; i.onerror = r; })));
  const sections = Array.from(document.querySelectorAll('section')).map(s => s.id);
  const top = document.querySelector('section').getBoundingClientRect().top;
  // what overflows a 1,280-px window as the page opens (details closed)
  const wide = Array.from(document.querySelectorAll('table'))
      .filter(t => !t.closest('details:not([open])'))   // closed: laid out, not shown
      .filter(t => t.getBoundingClientRect().right > window.innerWidth)
      .map(t => [t.closest('section').id, Math.round(t.getBoundingClientRect().right)]);
  document.querySelectorAll('details').forEach(d => d.open = true);
  const tables = {};
  document.querySelectorAll('section').forEach(s =>
      tables[s.id] = Array.from(s.querySelectorAll('table')).map(t => t.innerText));
  return {images: imgs.map(i => [i.alt, i.naturalWidth, i.naturalHeight,
                                 i.getBoundingClientRect().width]),
          tables: tables, sections: sections, wide: wide, width: window.innerWidth,
          answer_top: top, answer_text: document.querySelector('#answer').innerText};
})()"""

SORT = """(() => {
  const th = Array.from(document.querySelectorAll('#bench thead th'))
      .find(h => h.textContent === 'acc');
  th.click();
  const col = Array.from(th.parentNode.children).indexOf(th);
  return Array.from(th.closest('table').querySelectorAll('tbody tr'))
      .map(r => r.cells[col].textContent);
})()"""

#: The default job's page must stay at most this big (its images at the size shown).
PAGE_BUDGET = 1.5e6


def test_the_page_in_a_real_browser(run, tmp_path):
    """Headless Chromium opens the page from the file system in a 1,280-px window: it opens
    on the answer, which holds the run's numbers; no table is wider than the window; every
    image loads with a size; the tables hold the run's numbers; a click sorts the bench; no
    console error; and the page is small."""
    from evaluation.report.answer import answer, rate_text
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on this machine (install Debian's chromium package; .ci/run "
                    "does when it can)")
    path = os.path.join(run["dir"], page.PAGE)
    os.makedirs(ARTIFACTS, exist_ok=True)
    with Browser(binary, str(tmp_path / "profile")) as browser:
        browser.open("file://" + os.path.abspath(path))
        seen = browser.evaluate(CHECK)
        browser.screenshot(os.path.join(ARTIFACTS, "report_page.png"))
        sorted_acc = browser.evaluate(SORT)
        errors = browser.errors()
    assert errors == []
    assert seen["width"] == 1280
    assert seen["sections"][0] == "answer", seen["sections"]
    assert seen["answer_top"] < 400, "the answer is on the first screen"
    for r in answer(run["metrics"]):
        worst = r["worst"]
        assert r["label"] in seen["answer_text"]
        assert rate_text(worst["rate"], worst["interval"], worst["upper"]) in seen["answer_text"]
    # gray-box and adaptive tried; with the oracle there is no K to transfer through
    assert "Every threat model of the bench was tried" in seen["answer_text"]
    assert seen["wide"] == [], "tables wider than a 1,280-px window: %s" % seen["wide"]
    images = seen["images"]
    assert len(images) >= 6 * 4 * 3 + 2             # six sections of 4 rows, figures
    bad = [i for i in images if not (i[1] > 0 and i[2] > 0 and i[3] > 0)]
    assert bad == []
    bench = "\n".join(seen["tables"]["bench"])
    missing = [row for row in _bench_rows(run["metrics"]) if row not in bench]
    assert missing == []
    m = run["metrics"]
    assert tables.fmt2(m["benign"]["acc_um"]) in seen["tables"]["tables"][0]
    # Table IV is two tables (PGD, then MIA), Table III the last
    assert "%d" % (2 * m["attacks"][0]["n_successful"]) in seen["tables"]["tables"][-1]
    assert len(seen["tables"]["gallery"]) == 6 * 4     # each row's answers
    values = [float(v) if v != tables.MISSING else np.inf for v in sorted_acc]
    assert values == sorted(values)
    assert os.path.getsize(os.path.join(ARTIFACTS, "report_page.png")) > 10000
    assert os.path.getsize(path) <= PAGE_BUDGET / 2, "a 9-image run's page"
