"""The throughput bench's ceiling: the arithmetic of an engine that spends only its passes,
and the count of images whose K ran its backward pass."""
import numpy as np
import pytest

from benchmods import load


@pytest.fixture(scope="module")
def bench():
    return load("bench_adaptive_throughput")


def test_ceiling_mixes_k_passes_by_the_share_that_ran_backward(bench):
    costs = {"k_forward": 0.004, "k_backward": 0.010, "m_forward_backward": 0.003}
    # 0.004 + 0.25 x (0.010 - 0.004) + 0.003 = 0.0085 s per evaluation
    out = bench.ceiling(costs, 0.25, before_rate=50.0)
    assert out["seconds_per_evaluation"] == pytest.approx(0.0085)
    assert out["image_evaluations_per_second"] == pytest.approx(117.65, abs=0.01)
    assert out["ratio"] == pytest.approx(2.35, abs=0.01)
    # every evaluation backward: K's full pass; none: its forward alone
    assert bench.ceiling(costs, 1.0, 50.0)["seconds_per_evaluation"] == pytest.approx(0.013)
    assert bench.ceiling(costs, 0.0, 50.0)["seconds_per_evaluation"] == pytest.approx(0.007)


def test_backward_count_follows_need_grad(bench):
    class Scorer:
        def hinge_value_and_grad(self, images, present, absent, **kwargs):
            return len(images)

    scorer = Scorer()
    counts = bench._counting_backward(scorer)
    assert scorer.hinge_value_and_grad(np.zeros((4, 2)), None, None,
                                       need_grad=[True, False, True, False]) == 4
    scorer.hinge_value_and_grad(np.zeros((3, 2)), None, None)          # all: backward
    assert counts == {"images": 7, "backward": 5}


def test_cost_model_charges_k_backward_to_the_routes_that_run_it_every_step():
    cost = load("bench_cost_model")
    throughput = {"after": {"image_evaluations_per_second": 50.0},
                  "defenses": {"unmask": {
                      "after": {"image_evaluations_per_second": 100.0, "k_backward_share": 0.2},
                      "pass_seconds_per_image": {"k_forward": 0.004, "k_backward": 0.009,
                                                 "m_forward_backward": 0.003,
                                                 "m_forward": 0.001}}}}
    # two-phase: as measured; every-step routes: + (1 - 0.2) x (0.009 - 0.004) = + 0.004;
    # k-only also runs M forward only: - (0.003 - 0.001)
    assert cost.seconds_per_evaluation(throughput, "unmask") == pytest.approx(0.01)
    for route in ("follow-m", "joint"):
        assert cost.seconds_per_evaluation(throughput, "unmask", route) == pytest.approx(0.014)
    assert cost.seconds_per_evaluation(throughput, "unmask", "k-only") == pytest.approx(0.012)
    # a defense the bench did not measure: the overall rate, whatever the route
    assert cost.seconds_per_evaluation(throughput, "bitdepth", "bpda") == pytest.approx(0.02)
    # an UnMask row it did not measure: the overall rate and the average passes
    throughput.update(pass_seconds_per_image={"k_forward": 0.005, "k_backward": 0.010,
                                              "m_forward_backward": 0.003},
                      after={"image_evaluations_per_second": 50.0, "k_backward_share": 0.5})
    assert cost.seconds_per_evaluation(throughput, "unmask:m=at", "joint") == pytest.approx(
        0.02 + 0.5 * 0.005)
    metrics = {"defenses": {"unmask": {"attacks": [{
        "attack": "pgd_linf", "eps": 8.0, "threat_model": "adaptive", "goal": "wrong",
        "cost": {"evaluations_per_image": 30.0, "seconds": 1.0,
                 "routes": {"two-phase": {"evaluations_per_image": 10.0},
                            "joint": {"evaluations_per_image": 20.0}}}}]}}}
    out = cost.predict(metrics, throughput, images=10, workers=1, batch=100)
    assert out["predicted_seconds_one_worker"] == pytest.approx(10 * (10 * 0.01 + 20 * 0.014))


def test_cost_model_prices_only_the_goals_asked_for_and_scales_to_other_steps():
    cost = load("bench_cost_model")
    throughput = {"after": {"image_evaluations_per_second": 10.0}}

    def row(goal, evaluations):
        return {"attack": "pgd_linf", "eps": 8.0, "threat_model": "adaptive", "goal": goal,
                "cost": {"evaluations_per_image": evaluations, "seconds": 1.0}}

    metrics = {"adaptive_settings": {"steps": 100},
               "defenses": {"trajectory": {"attacks": [row("wrong", 30.0),
                                                       row("undetected", 50.0)]}}}
    both = cost.predict(metrics, throughput, images=4, workers=1, batch=4)
    assert both["predicted_seconds_one_worker"] == pytest.approx(4 * 80 * 0.1)
    wrong = cost.predict(metrics, throughput, images=4, workers=1, batch=4, goals=("wrong",))
    assert wrong["predicted_seconds_one_worker"] == pytest.approx(4 * 30 * 0.1)
    assert [r["goal"] for r in wrong["rows"]] == ["wrong"] and wrong["work_units"] == 1
    doubled = cost.predict(metrics, throughput, images=4, workers=1, batch=4,
                           goals=("wrong",), steps=200)
    assert doubled["predicted_seconds_one_worker"] == pytest.approx(2 * 4 * 30 * 0.1)
    assert doubled["rows"][0]["evaluations_per_image"] == pytest.approx(60.0)
    del metrics["adaptive_settings"]
    with pytest.raises(ValueError, match="--steps: the run records no adaptive steps"):
        cost.predict(metrics, throughput, images=4, workers=1, batch=4, steps=200)
    # below the run's steps the scaled count is no bound; a goal without rows prices nothing
    metrics["adaptive_settings"] = {"steps": 100}
    with pytest.raises(ValueError, match="--steps 50: below the run's 100 steps"):
        cost.predict(metrics, throughput, images=4, workers=1, batch=4, steps=50)
    metrics["defenses"]["trajectory"]["attacks"].pop()           # the undetected row
    with pytest.raises(ValueError, match="no defense-aware row of the run of goal undetected"):
        cost.predict(metrics, throughput, images=4, workers=1, batch=4, goals=("undetected",))
