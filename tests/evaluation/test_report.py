"""Report writers: metrics.json schema, Table IV, ROC (Fig. 5) and bar (Fig. 4) figures."""
import copy
import json
import os

import numpy as np
import pytest

from evaluation import schema
from evaluation.report import figures, tables, writer
from evaluation import metrics as dm


def _metrics(class_set="cs5-2", arch="resnet50", extractor="k", with_at=True, seed=0):
    rng = np.random.default_rng(seed)
    attacks = []
    for attack, eps in tables.ATTACK_VECTORS:
        n = 40
        k = int(rng.integers(1, n))
        attacks.append(schema.attack_entry(
            attack, eps, acc_none=rng.uniform(0, 0.3),
            acc_at=rng.uniform(0.3, 0.8) if with_at else None, acc_um=rng.uniform(0.6, 0.95),
            auc=rng.uniform(0.8, 1.0), tpr=rng.uniform(0.8, 1.0), fpr=rng.uniform(0, 0.2),
            n_attacked=np.int64(n), n_successful=k))
    return schema.make_metrics(class_set, arch, extractor, threshold=0.5, mode="flagged",
                               seed=seed, versions={"numpy": np.__version__},
                               benign={"acc_none": 0.97, "acc_at": 0.92 if with_at else None,
                                       "acc_um": np.float64(0.91)},
                               attacks=attacks)


def test_valid_metrics_pass_and_are_json():
    m = _metrics()
    assert schema.validate_metrics(m) is m
    back = json.loads(json.dumps(m))
    schema.validate_metrics(back)
    assert [a["attack"] for a in back["attacks"]][:2] == ["pgd_linf", "pgd_linf"]
    assert isinstance(back["attacks"][0]["n_attacked"], int)
    schema.validate_metrics(_metrics(with_at=False))


@pytest.mark.parametrize("mutate, key", [
    (lambda m: m.pop("seed"), "'seed'"),
    (lambda m: m["benign"].pop("acc_um"), "'benign.acc_um'"),
    (lambda m: m["attacks"][2].pop("auc"), r"'attacks\[2\].auc'"),
    (lambda m: m.update(extra=1), "'extra'"),
    (lambda m: m["attacks"][0].update(note="x"), r"'attacks\[0\].note'"),
    (lambda m: m.update(threshold="0.5"), "'threshold'"),
    (lambda m: m.update(seed=True), "'seed'"),
    (lambda m: m.update(extractor="maskrcnn"), "'extractor'"),
    (lambda m: m.update(mode="some"), "'mode'"),
    (lambda m: m.update(class_set="CS5b"), "'class_set'"),
    (lambda m: m["benign"].update(acc_none=97.0), "'benign.acc_none'"),
    (lambda m: m["attacks"][1].update(acc_at=None), r"'attacks\[1\].acc_at'"),
    (lambda m: m["attacks"][1].update(n_successful=10 ** 6), r"'attacks\[1\].n_successful'"),
    (lambda m: m["attacks"][1].update(n_attacked=3.0), r"'attacks\[1\].n_attacked'"),
    (lambda m: m["attacks"][3].update(eps=-1), r"'attacks\[3\].eps'"),
    (lambda m: m["attacks"][4].update(tpr=float("nan")), r"'attacks\[4\].tpr'"),
    (lambda m: m["attacks"].append(copy.deepcopy(m["attacks"][0])), r"'attacks\[8\]'"),
    (lambda m: m["versions"].update(numpy=2), "'versions.numpy'"),
])
def test_invalid_metrics_name_the_key(mutate, key):
    m = copy.deepcopy(_metrics())
    mutate(m)
    with pytest.raises(ValueError, match=key):
        schema.validate_metrics(m)


def test_a_file_in_the_issues_exact_shape_is_valid_and_renders():
    """The issue's metrics.json has no ``mode`` (this project's addition): it validates, and
    the table and figure say the mode is not stated instead of failing."""
    m = copy.deepcopy(_metrics())
    m.pop("mode")
    assert schema.validate_metrics(m) is m
    assert tables.MODE_UNSTATED in tables.figure_title(m)
    assert tables.MODE_UNSTATED in tables.table_iv_markdown([m])


def test_a_title_without_a_run_wide_threshold_says_each_defense_chose_its_own():
    m = copy.deepcopy(_metrics())
    assert "t=%g" % m["threshold"] in tables.figure_title(m)
    m["threshold"] = None
    title = tables.figure_title(m)
    assert "t=per defense" in title and tables.MISSING not in title


def test_rates_null_iff_no_successful_attack():
    m = _metrics()
    m["attacks"][0].update(n_successful=0, auc=None, tpr=None, fpr=None)
    schema.validate_metrics(m)
    m["attacks"][0]["auc"] = 0.9
    with pytest.raises(ValueError, match=r"attacks\[0\].auc"):
        schema.validate_metrics(m)
    m["attacks"][0].update(n_successful=3, auc=None)
    with pytest.raises(ValueError, match=r"attacks\[0\].auc"):
        schema.validate_metrics(m)


def test_fmt2_paper_style():
    assert tables.fmt2(0.944) == ".94"
    assert tables.fmt2(0.0) == ".00"
    assert tables.fmt2(1.0) == "1.00"
    assert tables.fmt2(None) == "–"


def test_table_iv_layout():
    ms = [_metrics("cs3-1", "densenet121", seed=1), _metrics("cs5-2", "resnet50", seed=2),
          _metrics("cs3-2", "resnet50", with_at=False, seed=3)]
    text = tables.table_iv_markdown(ms)
    assert "Extractor: K" in text and "flagged" in text
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 3                                 # caption + PGD block + MIA block
    pgd, mia = blocks[1].splitlines(), blocks[2].splitlines()
    assert "PGD-L∞ ε=8" in pgd[0] and "PGD-L2 ε=600" in pgd[0] and "MIA" not in pgd[0]
    assert "MIA-L∞ ε=16" in mia[0] and "MIA-L2 ε=300" in mia[0]
    assert pgd[2].count("None | AT | UM") == 5
    rows = pgd[3:]
    assert [r.split("|")[1].strip() for r in rows] == ["ResNet50", "ResNet50", "DenseNet121"]
    assert [r.split("|")[2].strip() for r in rows] == ["CS3b", "CS5b", "CS3a"]
    n_cols = len(pgd[0].split("|"))
    assert all(len(r.split("|")) == n_cols for r in pgd + mia)
    # Values: the CS5b row's first attack group equals its metrics, formatted like ".94".
    m = ms[1]
    cells = [c.strip() for c in rows[1].split("|")[1:-1]]
    assert cells[2:5] == [tables.fmt2(m["benign"][k]) for k in ("acc_none", "acc_at", "acc_um")]
    a0 = m["attacks"][0]
    assert cells[5:8] == [tables.fmt2(a0[k]) for k in ("acc_none", "acc_at", "acc_um")]
    # No AT model: dashes in the AT columns.
    cs3b = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cs3b[3] == "–" and cs3b[6] == "–"


def test_table_iv_oracle_caption_and_errors():
    text = tables.table_iv_markdown([_metrics(extractor="oracle")])
    assert "ORACLE" in text
    with pytest.raises(ValueError, match="mixes extractors"):
        tables.table_iv_markdown([_metrics("cs3-1"), _metrics("cs3-2", extractor="oracle")])
    with pytest.raises(ValueError, match="several metrics"):
        tables.table_iv_markdown([_metrics(), _metrics(seed=5)])


def _roc_curves(rng):
    curves = {}
    for attack, eps in tables.ATTACK_VECTORS:
        y = np.r_[np.ones(30), np.zeros(30)]
        s = np.clip(np.r_[rng.normal(0.7, 0.2, 30), rng.normal(0.3, 0.2, 30)], 0, 1)
        curves[tables.attack_label(attack, eps)] = figures.roc_curve_for("CS5b", y, s)
    return curves


def test_write_report_files(tmp_path):
    import matplotlib.image as mpimg

    m = _metrics()
    curves = _roc_curves(np.random.default_rng(0))
    c0 = next(iter(curves.values()))
    assert c0.auc == pytest.approx(dm.auc(c0.fpr, c0.tpr))
    paths = writer.write_run_reports(str(tmp_path / "run"), m, roc_curves=curves)
    for key in ("metrics", "table_iv", "fig4_png", "fig4_pdf", "roc_png", "roc_pdf", "summary"):
        assert os.path.getsize(paths[key]) > 0, key
    with open(paths["metrics"]) as f:
        assert schema.validate_metrics(json.load(f)) == m
    for key in ("fig4_png", "roc_png"):
        img = mpimg.imread(paths[key])
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0                                    # not a blank canvas
    with open(paths["fig4_pdf"], "rb") as f:
        assert f.read(5) == b"%PDF-"
    leftovers = [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]
    assert leftovers == []
    summary = open(paths["summary"], encoding="utf-8").read()
    assert "PGD-L∞ ε=8" in summary and "K extractor" in summary
    assert len(summary.strip().splitlines()) == 3 + 1 + len(m["attacks"])


def test_roc_grid_multiple_curves_and_class_set_bars(tmp_path):
    rng = np.random.default_rng(1)
    panels = {}
    for attack, eps in tables.ATTACK_VECTORS[:3]:
        name = tables.attack_label(attack, eps)
        panels[name] = [_roc_curves(rng)[name], _roc_curves(rng)[name]]
    fig = figures.roc_figure(panels, title="two curves per panel")
    assert len(fig.axes) == 3
    assert all(len(ax.get_legend().get_texts()) == 2 for ax in fig.axes)
    assert "AUC" in fig.axes[0].get_legend().get_texts()[0].get_text()
    png, pdf = writer.save_figure(fig, str(tmp_path / "roc_grid"))
    assert os.path.getsize(png) > 0 and os.path.getsize(pdf) > 0
    ms = [_metrics("cs3-1", seed=1), _metrics("cs3-1", "densenet121", seed=2),
          _metrics("cs5-1", with_at=False, seed=3)]
    groups = figures.fig4_groups_by_class_set(ms)
    assert list(groups) == ["CS3a", "CS5a"]
    want = np.mean([a["acc_um"] for m in ms[:2] for a in m["attacks"]])
    assert groups["CS3a"]["UM"] == pytest.approx(want)
    assert groups["CS5a"]["AT"] is None
    fig4 = figures.fig4_figure(groups)
    n_bars = sum(len(c) for c in fig4.axes[0].containers)
    assert n_bars == 2 * 3 - 1                                 # no AT bar for CS5a
    with pytest.raises(ValueError):
        figures.roc_figure({})
    with pytest.raises(ValueError):
        figures.fig4_figure({})


def test_write_metrics_refuses_invalid_and_leaves_no_file(tmp_path):
    m = _metrics()
    del m["benign"]["acc_at"]
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="benign.acc_at"):
        writer.write_metrics(str(path), m)
    assert not path.exists()


def test_package_versions_has_python_and_numpy():
    v = schema.package_versions()
    assert v["python"].count(".") >= 1 and "numpy" in v


def test_table_iii_counts_twice_the_successful_attacks():
    m = _metrics("cs3-1")
    m["attacks"] = m["attacks"][:7]                         # MIA-L2 600 not run
    text = tables.table_iii_markdown([m])
    row = [c.strip() for c in text.strip().splitlines()[-1].split("|")[1:-1]]
    assert row[:2] == ["ResNet50", "CS3a"]
    assert row[2:9] == ["{:,}".format(2 * a["n_successful"]) for a in m["attacks"]]
    assert row[9] == "–"


def _sample_with_defenses():
    """A gray-box run of M alone and UnMask with K (the fields the answer reads)."""
    def row(acc, defended):
        return {"attack": "pgd_linf", "eps": 8, "threat_model": "gray-box", "goal": None,
                "acc": acc, "defended": defended, "evasion": 1 - defended, "n_attacked": 100}
    worst = lambda d: {"defended": d, "interval": [d - .05, d + .05], "attacks": 1,  # noqa
                       "by_threat": {"gray-box": {"defended": d,
                                                  "interval": [d - .05, d + .05]}}}
    return {"extractor": "k", "defenses": {
        "none": {"benign": {"acc": .96, "acc_interval": [.9, .98]}, "params": {},
                 "attacks": [row(.0, .0)], "worst_case": worst(0.0)},
        "unmask:k=robust:m=at": {"benign": {"acc": .99, "acc_interval": [.95, 1.0]},
                                 "params": {"extractor": "k"}, "attacks": [row(.8, .8)],
                                 "worst_case": worst(0.8)}}}


def test_the_answer_names_what_the_run_did_not_try_and_fits_a_terminal():
    """The run's last lines: one row per defense of at most 100 columns, the page, and the
    threat models not tried with the option that adds them (transfer only where a K runs)."""
    from evaluation.report.answer import answer, answer_text, not_tried
    m = _sample_with_defenses()
    rows = answer(m)
    assert [r["label"] for r in rows] == list(m["defenses"])
    text = answer_text(m, page="results/x/report.html")
    assert all(len(line) <= 100 for line in text.splitlines()), text
    assert "results/x/report.html" in text
    missing = not_tried(m)
    assert any(s.startswith("adaptive: add --threat gray-box,adaptive") for s in missing)
    assert any(s.startswith("transfer") for s in missing) == (
        m["extractor"] == "k"), missing
    assert "Not tried by this run" in text
    # a run whose defenses read no K (the oracle): no transfer attacker to offer
    for block in m["defenses"].values():
        block.setdefault("params", {})["extractor"] = "oracle"
    oracle = not_tried(m)
    assert any(s.startswith("adaptive") for s in oracle)
    assert not any(s.startswith("transfer") for s in oracle), oracle


def test_a_worst_case_without_one_of_the_defenses_goals_is_an_upper_bound():
    """--adaptive-goals left a goal of the defense out: its worst case over the defense-aware
    rows is marked * (that run could have found worse images), the gray-box one is not, and
    the defense is named under "not tried"."""
    from evaluation.report.answer import answer, answer_text, not_tried
    m = _sample_with_defenses()
    block = m["defenses"]["unmask:k=robust:m=at"]
    adaptive = dict(block["attacks"][0], threat_model="adaptive", goal="wrong", defended=.5,
                    acc=.5, convergence={"converged": True},
                    routes={"complete": True, "won": {"follow-m": 3}})
    block["attacks"].append(adaptive)
    block["worst_case"]["by_threat"]["adaptive"] = {"defended": .5, "interval": [.4, .6]}
    row = answer(m)[1]
    assert not row["worst"]["upper"] and not row["by_threat"]["adaptive"]["upper"]
    block["adaptive"] = {"goals": "goal undetected not attacked (--adaptive-goals wrong)"}
    row = answer(m)[1]
    assert row["worst"]["upper"] and row["by_threat"]["adaptive"]["upper"]
    assert not row["by_threat"]["gray-box"]["upper"]
    assert "unmask:k=robust:m=at: goal undetected not attacked" in "; ".join(not_tried(m))
    assert "left out routes or a goal" in answer_text(m)


def test_an_upper_bound_says_why():
    """The reason the route tables print beside a claim: not converged first, then routes
    left out, then a goal left out (defense-aware rows only); none for a complete attack."""
    from evaluation.report.answer import upper_bound, upper_bound_reason
    gray = {"threat_model": "gray-box"}
    done = {"threat_model": "adaptive", "convergence": {"converged": True},
            "routes": {"complete": True}}
    block = {"adaptive": {"goals": "goal undetected not attacked (--adaptive-goals wrong)"}}
    assert upper_bound_reason([gray, done]) is None and not upper_bound([gray, done])
    assert upper_bound_reason([gray], block) is None
    assert upper_bound_reason([done], block).startswith("goal undetected not attacked")
    partial = dict(done, routes={"complete": False})
    assert upper_bound_reason([partial], block) == "an attack behind it left out routes"
    stuck = dict(partial, convergence={"converged": False})
    assert upper_bound_reason([stuck], block) == "an attack behind it not converged"
    assert upper_bound([stuck])


def test_the_answer_keeps_a_long_label_whole_and_wraps_what_hurt_it(monkeypatch):
    """A defense label of 27 characters is printed whole (the column widens to it); a long
    'hurt most by' goes on in its own column on the next line, every word kept."""
    from evaluation.report import answer as answer_module
    m = _sample_with_defenses()
    rows = answer_module.answer(m)
    long_label = "unmask:reject:k=robust:m=at"
    weakest = "PGD-L∞ ε=8 [adaptive, wrong], route follow-m, and more words to wrap"
    for r in rows:
        r["weakest"] = weakest
    rows[0]["label"] = long_label
    monkeypatch.setattr(answer_module, "answer", lambda metrics: rows)
    lines = answer_module.answer_text(m).splitlines()
    assert all(len(line) <= 100 for line in lines), lines
    first = next(i for i, line in enumerate(lines) if line.startswith(long_label + " "))
    column = lines[first].index("PGD-L∞")
    pieces = [lines[first][column:]]
    for line in lines[first + 1:]:
        if line[:column].strip():                     # the next defense's row
            break
        pieces.append(line[column:])
    assert len(pieces) > 1 and all(p.strip() for p in pieces)
    assert " ".join(" ".join(pieces).split()) == weakest


def test_the_page_embeds_a_figure_as_lossless_webp_of_the_same_pixels(tmp_path):
    """report.html carries each PNG figure as lossless WebP: the same RGBA pixels in fewer
    bytes (the PNG stays beside the page)."""
    import io

    from PIL import Image

    from evaluation.report import page
    rng = np.random.default_rng(0)
    pixels = np.zeros((60, 90, 4), np.uint8)
    pixels[..., 3] = 255
    pixels[10:50, 20:70, :3] = rng.integers(0, 255, 3, dtype=np.uint8)   # a flat bar
    pixels[::7, :, :3] = 40                                                 # grid lines
    path = str(tmp_path / "figure.png")
    Image.fromarray(pixels, "RGBA").save(path)
    data = page.lossless_webp(path)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")),
                                  pixels)
    html = page.figure_html(path, "a caption")
    assert page.data_uri(data) in html and html.count("a caption") == 2    # alt and caption
