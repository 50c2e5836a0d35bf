"""The search behind search:R (libs/evaluation/plan_search.py) on hand-made calibration runs: the
family it scores, the pick under the ratio, the gated second round, the plan it reports, and
the error when no plan fits; search:R's spelling."""
import pytest
import torch

from libs.evaluation.calibration import proxy_distance
from libs.evaluation.plan_search import GATES, family, gated, search_plan
from libs.exits.call import ExitPolicyError
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.policy import ThresholdExit
from libs.exits.registry import parse_policy
from libs.exits.reuse import PhaseSplit
from libs.exits.search import PlanSearch

CALLS, N = 10, 7


def fake_run(harm):
    """A calibration run on hand-made numbers: a call costs the blocks it computes (a reuse call
    2k, a threshold call 5, a full call 7), and the images move from full depth's by
    ``harm(policy)`` (squared-distance units)."""
    runs = []

    def run(policy, keep=False, images=False):
        assert keep and images
        runs.append(policy.spec)
        cost = 0.0
        for c in range(CALLS):
            call = policy.for_call(c)
            cost += 2 * call.reuse if call.reuse is not None else 5 if call.rule is not None else 7
        summary = {"gflops_per_image": cost, "num_blocks": N, "exit_block_per_step": [0.0] * CALLS}
        return summary, torch.full((2, 3), (0.0 if policy.is_full else harm(policy)) ** 0.5)

    return run, runs


def test_the_family_and_its_gated_variants():
    plans = family(N, CALLS)
    specs = {p.spec for p in plans}
    assert {"threshold:0.9", "forecast:2:1:0", "forecast:4:2:2", "phase:0.4:threshold:0.9+forecast:2:1:1",
            "phase:0.2:full+forecast:3:1:2"} <= specs
    assert len(plans) == len(specs) == 3 + 3 * 2 * 3 * (1 + 2 * 2)
    phase = next(p for p in plans if p.spec == "phase:0.4:full+forecast:2:1:1")
    assert phase.switch == 4 and phase.calls == CALLS
    assert [g.spec for g in gated(phase)] == [f"phase:0.4:full+gate:{g}:forecast:2:1:1" for g in GATES]
    assert [g.spec for g in gated(Forecast(2, 1, 0))] == [f"gate:{g}:forecast:2:1:0" for g in GATES]
    assert gated(ThresholdExit(0.9)) == []


def test_the_search_picks_the_closest_plan_under_the_ratio_and_reports_it():
    def harm(p):  # forecasts of order 1 are the best; a gate at 0.7 better still; phases worse
        h = 1.0 + (0.5 if isinstance(p, PhaseSplit) else 0.0)
        rule = p.then if isinstance(p, PhaseSplit) else p
        if isinstance(rule, GatedReuse):
            h -= 0.3 if rule.gate == 0.7 else 0.1
            rule = rule.rule
        return h - (0.4 if isinstance(rule, Forecast) and rule.order == 1 else 0.0)

    run, runs = fake_run(harm)
    plan = search_plan(0.6, run, proxy_distance)
    # forecast:N:k:1 alone costs (5 x 7 + 5 x 2k) / 70 = 0.643 (N=2, k=1): over 0.6; N = 3, k = 1:
    # 4 full + 6 reuse = 40 / 70 = 0.571 fits, N = 4: 3 full + 7 reuse = 35 / 70, as close and cheaper
    assert plan.plan.spec == "gate:0.7:forecast:4:1:1"
    assert plan.achieved == pytest.approx(35 / 70) and plan.proxy == pytest.approx(0.3)
    assert plan.tried == len(runs) - 1 and len(family(N, CALLS)) + 3 * len(GATES) <= plan.tried
    assert plan.calibration().startswith("gate:0.7:forecast:4:1:1 (compute ratio 0.500, proxy 0.3, best of")
    assert plan.actions()[:5] == ["full"] + ["reuse:1+gate:0.7"] * 3 + ["full"]
    assert plan.for_call(1).gate == 0.7 and plan.forecast_order == 1 and plan.reuses
    assert len(plan.scored) == plan.tried and plan.scored[0][0] == "threshold:0.8"
    with pytest.raises(ExitPolicyError, match="calibrated for 10 network calls"):
        plan.for_call(CALLS)


def test_a_ratio_no_plan_reaches_says_so():
    run, _ = fake_run(lambda p: 1.0)
    with pytest.raises(ExitPolicyError, match="cannot be reached.*raise R"):
        search_plan(0.2, run, proxy_distance)


def test_search_spelling():
    p = parse_policy("search:0.5")
    assert p == PlanSearch(0.5) and p.needs_calibration and p.spec == "search:0.5"
    with pytest.raises(ExitPolicyError, match="not calibrated"):
        p.for_call(0)
    for bad, words in [("search:0", "(0, 1]"), ("search:1.5", "(0, 1]"), ("search:x", "not a number")]:
        with pytest.raises(ExitPolicyError) as e:
            parse_policy(bad)
        assert words in str(e.value) and "\n" not in str(e.value)
