"""bench/bench_routes.py's cost table: per defense-aware row, each route's target evaluations
per image with the images it ran on and won, the row's total and its worker time."""
import json

from benchmods import load


def test_the_cost_table_gives_each_routes_share_and_the_rows_total():
    cost = {"evaluations_per_image": 3000.0, "seconds": 7200.0, "routes": {
        "follow-m": {"images": 300, "won": 147, "evaluations_per_image": 1071.6},
        "k-only": {"images": 134, "won": 3, "evaluations_per_image": 1928.4}}}
    metrics = {"defenses": {
        "at": {"attacks": [{"attack": "autoattack", "eps": 8.0, "threat_model": "gray-box"}]},
        "unmask": {"attacks": [
            {"attack": "autoattack", "eps": 8.0, "threat_model": "gray-box",
             "cost": {"evaluations_per_image": 5.0}},
            {"attack": "autoattack", "eps": 8.0, "threat_model": "adaptive", "goal": "wrong",
             "cost": cost}]}}}
    table = load("bench_routes").cost_table(json.loads(json.dumps(metrics)))
    assert table["rows"] == [["autoattack 8", "`unmask`", "adaptive, wrong",
                              "follow-m 1,072 (300 images, won 147) · "
                              "k-only 1,928 (134 images, won 3)", "3,000", "2.00"]]
    assert len(table["columns"]) == len(table["rows"][0])
