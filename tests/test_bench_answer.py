"""bench/bench_answer.py: what each README answer cell says it came from -- the single attack
that hurt most, or every attack when the per-image worst case is below each of them."""
import json

from benchmods import load


def _bench():
    return load("bench_answer")


def _block(worst):
    rows = [{"attack": "pgd_linf", "eps": 8.0, "threat_model": "gray-box", "defended": 0.75},
            {"attack": "autoattack", "eps": 8.0, "threat_model": "gray-box", "defended": 0.72}]
    return {"attacks": rows, "worst_case": {"by_threat": {"gray-box": {
        "defended": worst, "interval": [worst - 0.1, worst + 0.1]}}}}


def test_a_worst_case_below_every_attack_names_them_all():
    cell = _bench()._threat(_block(0.70), "gray-box")
    assert cell["rate"] == 0.70
    assert cell["by"] == "per image, worst of autoattack 8 and pgd-L∞ 8"


def test_a_worst_case_one_attack_reached_names_that_attack():
    cell = _bench()._threat(_block(0.72), "gray-box")
    assert cell["by"] == "autoattack 8"
    assert _bench()._threat(_block(0.72), "adaptive") is None


def _row_of(tmp_path, label, block, adaptive_rate, routes, converged, n, worst, by_threat):
    """``block`` with an adaptive row (``adaptive_rate``, ``routes`` won) on ``n`` images, its
    worst case ``worst`` and the adaptive threat's ``by_threat``, as bench_answer reads it from
    a run folder: the row it makes."""
    block["attacks"].append({"attack": "autoattack", "eps": 8.0, "threat_model": "adaptive",
                             "goal": "wrong", "defended": adaptive_rate, "routes": {
                                 "ran": list(routes), "all": list(routes),
                                 "complete": True, "won": dict(routes)},
                             "convergence": {"converged": converged}})
    for r in block["attacks"]:
        r["n_attacked"] = n
    block["worst_case"].update(defended=worst[0], interval=worst[1])
    block["worst_case"]["by_threat"]["adaptive"] = {"defended": by_threat[0],
                                                    "interval": by_threat[1]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"defenses": {label: block}}))
    row, = _bench().rows_of_run(str(run), "python main.py ...")
    return row


def test_a_classifiers_adaptive_cell_is_its_worst_case_over_both_white_box_attacks(tmp_path):
    """``at``'s gray-box attack is white-box too: its adaptive cell is the per-image worst of
    that and the engine's run, named by both."""
    block = _block(0.70)
    block.update(kind="classifier", benign={"acc": 0.9})
    row = _row_of(tmp_path, "at", block, 0.71, {"white-box": 5}, True, 40,
                  (0.65, [0.55, 0.75]), (0.71, [0.6, 0.8]))
    cell = row["adaptive"]
    assert (cell["rate"], cell["interval"], cell["upper_bound"]) == (0.65, [0.55, 0.75], False)
    assert cell["by"] == ("per image, worst of autoattack 8 and autoattack 8 [adaptive] and "
                          "pgd-L∞ 8")
    assert row["gray_box"]["rate"] == 0.70


def test_a_detectors_adaptive_cell_is_its_worst_case_over_every_attack_too(tmp_path):
    """The attacker who knows UnMask may also run the gray-box attack: its adaptive cell is the
    per-image worst over both (the paired comparisons' worst case), not the adaptive rows'
    own -- one definition for every row of the answer table."""
    block = _block(0.70)
    block.update(kind="detector", benign={"acc": 0.97})
    row = _row_of(tmp_path, "unmask", block, 0.44, {"follow-m": 9, "k-only": 1}, False, 300,
                  (0.43, [0.37, 0.48]), (0.44, [0.38, 0.49]))
    cell = row["adaptive"]
    assert (cell["rate"], cell["interval"], cell["upper_bound"]) == (0.43, [0.37, 0.48], True)
    assert cell["by"].startswith("per image, worst of autoattack 8 and autoattack 8 [adaptive]")
    assert row["gray_box"]["rate"] == 0.70
