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


def test_a_classifiers_adaptive_cell_is_its_worst_case_over_both_white_box_attacks(tmp_path):
    """``at``'s gray-box attack is white-box too: its adaptive cell is the per-image worst of
    that and the engine's run, named by both."""
    block = _block(0.70)
    block.update(kind="classifier", benign={"acc": 0.9})
    block["attacks"].append({"attack": "autoattack", "eps": 8.0, "threat_model": "adaptive",
                             "goal": "wrong", "defended": 0.71, "routes": {
                                 "ran": ["white-box"], "all": ["white-box"],
                                 "complete": True, "won": {"white-box": 5}},
                             "convergence": {"converged": True}})
    for r in block["attacks"]:
        r["n_attacked"] = 40
    block["worst_case"].update(defended=0.65, interval=[0.55, 0.75])
    block["worst_case"]["by_threat"]["adaptive"] = {"defended": 0.71, "interval": [0.6, 0.8]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"defenses": {"at": block}}))
    row, = _bench().rows_of_run(str(run), "python main.py ...")
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
    block["attacks"].append({"attack": "autoattack", "eps": 8.0, "threat_model": "adaptive",
                             "goal": "wrong", "defended": 0.44, "routes": {
                                 "ran": ["follow-m", "k-only"], "all": ["follow-m", "k-only"],
                                 "complete": True, "won": {"follow-m": 9, "k-only": 1}},
                             "convergence": {"converged": False}})
    for r in block["attacks"]:
        r["n_attacked"] = 300
    block["worst_case"].update(defended=0.43, interval=[0.37, 0.48])
    block["worst_case"]["by_threat"]["adaptive"] = {"defended": 0.44, "interval": [0.38, 0.49]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"defenses": {"unmask": block}}))
    row, = _bench().rows_of_run(str(run), "python main.py ...")
    cell = row["adaptive"]
    assert (cell["rate"], cell["interval"], cell["upper_bound"]) == (0.43, [0.37, 0.48], True)
    assert cell["by"].startswith("per image, worst of autoattack 8 and autoattack 8 [adaptive]")
    assert row["gray_box"]["rate"] == 0.70
