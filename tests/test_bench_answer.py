"""bench/bench_answer.py: what each README answer cell says it came from -- the single attack
that hurt most, or every attack when the per-image worst case is below each of them."""
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
