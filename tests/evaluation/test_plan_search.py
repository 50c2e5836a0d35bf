"""The search behind search:R (libs/evaluation/plan_search.py) on hand-made calibration runs: the
family it scores (every hand rule of the forecast measurements, one run per distinct plan),
the least compute that lets it skip plans over R, the pick under the ratio, the gated second
round, the plan it reports, and the error when no plan fits; the least compute on a trained
model; search:R's spelling."""
import pytest
import torch

from libs.evaluation.calibration import proxy_distance
from libs.evaluation.plan_search import (CONTRAST_WEIGHT, GATES, contrast_gap, family, gated, least_gflops, plan_key,
                                         prefixes, search_plan)
from libs.exits.call import ExitPolicyError
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.policy import FULL, ThresholdExit
from libs.exits.registry import parse_policy
from libs.exits.reuse import PhaseSplit
from libs.exits.search import PlanSearch

CALLS, N = 10, 7
PIECES = {"embed_output": 0.0, "blocks": [1.0] * N, "head": 0.0}  # a block costs 1, nothing else
HAND_RULES = ("threshold:0.9", "deepcache:2:1", "forecast:2:1:1", "forecast:2:1:2", "forecast:3:1:0", "forecast:3:1:1",
              "forecast:3:1:2", "forecast:4:1:1", "forecast:4:1:2", "phase:0.4:threshold:0.9+deepcache:2:1",
              "phase:0.4:threshold:0.9+forecast:2:1:2", "phase:0.2:threshold:0.9+forecast:4:1:1",
              "phase:0.3:threshold:0.9+forecast:4:1:1")  # docs/reuse_forecast.md's, ungated


def fake_run(harm):
    """A calibration run on hand-made numbers: a call costs the blocks it computes (a reuse call
    2k, a threshold call 5, a full call 7), and the images move from full depth's by
    ``harm(policy)`` (squared-distance units)."""
    runs = []

    def run(policy, keep=False, images=False):
        assert keep and images
        runs.append(policy.spec)
        per_call = [2.0 * call.reuse if call.reuse is not None else 5.0 if call.rule is not None else 7.0
                    for call in (policy.for_call(c) for c in range(CALLS))]
        summary = {"gflops_per_image": sum(per_call), "num_blocks": N, "exit_block_per_step": [0.0] * CALLS,
                   "gflops_per_step": per_call, "gflops_pieces": PIECES}
        return summary, torch.full((2, 3), (0.0 if policy.is_full else harm(policy)) ** 0.5)

    return run, runs


def test_the_family_and_its_gated_variants():
    plans = family(N, CALLS)
    specs = {p.spec for p in plans}
    assert {"threshold:0.9", "forecast:2:1:0", "forecast:4:2:2", "phase:0.4:threshold:0.9+forecast:2:1:1",
            "phase:0.2:full+forecast:3:1:2"} <= specs
    assert len(plans) == len(specs) == 3 + 3 * 2 * 3 * (1 + 3 * 2) == 129
    phase = next(p for p in plans if p.spec == "phase:0.4:full+forecast:2:1:1")
    assert phase.switch == 4 and phase.calls == CALLS
    for calls in (8, 10, 12, 15):  # every hand rule is a plan of the family (the same actions per call)
        keys = {plan_key(p, calls) for p in family(N, calls)}
        for spec in HAND_RULES:
            rule = parse_policy(spec)
            if isinstance(rule, PhaseSplit):
                rule = PhaseSplit(rule.fraction, rule.first, rule.then, int(rule.fraction * calls + 0.5), calls)
            assert plan_key(rule, calls) in keys, (spec, calls)
    # at 8 calls F = 0.2 and 0.3 both switch after call 2: one run of each such pair
    assert len(family(N, 8)) == 3 + 3 * 2 * 3 * (1 + 2 * 2)
    assert plan_key(Forecast(2, 1, 0), CALLS) == plan_key(parse_policy("deepcache:2:1"), CALLS)
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
    assert plan.tried == len(runs) - 1 and plan.tried + plan.skipped >= len(family(N, CALLS)) + 3 * len(GATES)
    assert plan.skipped > plan.tried > 3 * len(GATES)  # most of the family cannot fit 0.6
    skipped = [p for p in family(N, CALLS) if p.spec not in runs]
    assert 0 < len(skipped) <= plan.skipped
    for p in skipped:  # a plan skipped really is over the ratio
        assert run(p, keep=True, images=True)[0]["gflops_per_image"] > 0.6 * 70
    assert plan.calibration().startswith(f"gate:0.7:forecast:4:1:1 (compute ratio 0.500, score 0.3, best of "
                                         f"{plan.tried} run, {plan.skipped} over R unrun)")
    assert plan.actions()[:5] == ["full"] + ["reuse:1+gate:0.7"] * 3 + ["full"]
    assert plan.for_call(1).gate == 0.7 and plan.forecast_order == 1 and plan.reuses
    assert len(plan.scored) == plan.tried and plan.scored[0][0] == "threshold:0.8"
    with pytest.raises(ExitPolicyError, match="calibrated for 10 network calls"):
        plan.for_call(CALLS)


def test_least_compute_takes_repeated_calls_from_the_runs_made_and_a_floor_for_the_others():
    pieces = {"embed_output": 0.5, "blocks": [1.0, 2.0, 3.0, 4.0, 5.0], "head": 0.1}
    calls, seen = 5, {}
    thr = ThresholdExit(0.9)
    # nothing seen: a threshold call can stop after block 0 (0.5 + 1)
    assert least_gflops(thr, calls, seen, pieces) == pytest.approx(5 * 1.5)
    seen.update((key, g) for (_, key), g in zip(prefixes(thr, calls), [9.0, 8.0, 7.0, 6.0, 5.0]))
    phase = PhaseSplit(0.4, thr, Forecast(2, 1, 1), switch=2, calls=calls)
    # calls 0, 1 repeat threshold:0.9's run; then full (15.5), reuse of (1, 4): 0.5 + 1 + 5, full
    assert least_gflops(phase, calls, seen, pieces) == pytest.approx(9 + 8 + 15.5 + 6.5 + 15.5)
    assert least_gflops(thr, calls, seen, pieces) == pytest.approx(35)
    gated_phase = gated(phase)[0]  # a gated call: the same floor (rows may compute the span: more)
    assert least_gflops(gated_phase, calls, seen, pieces) == pytest.approx(9 + 8 + 15.5 + 6.5 + 15.5)
    # after a reusing call, a repeated call counts only for the same forecast order (the values differ)
    seen.update((key, 1.0) for (_, key), _g in zip(prefixes(Forecast(2, 1, 2), calls), range(calls)))
    assert least_gflops(Forecast(2, 1, 2), calls, seen, pieces) == pytest.approx(5)
    assert least_gflops(Forecast(2, 1, 1), calls, seen, pieces) == pytest.approx(1 + 6.5 + 15.5 + 6.5 + 15.5)


def test_least_compute_is_below_the_measured_on_a_trained_model(trained_digits):
    """On a trained model's calibration runs: a phase's first calls cost what threshold:0.9's
    cost there (the same trajectory), and every plan's least compute is at most its GFLOPs/img."""
    from libs.evaluation.calibration import calibration_run
    from libs.tasks.pixel import PixelTask

    net, config = trained_digits
    config.sample.update(sample_steps=6, calib_samples=8, mini_batch_size=8)
    task = PixelTask(config, load_data=False)

    def run(policy):
        return calibration_run(net, task, config, policy, "cpu", keep=True, images=True)[0]

    calls, seen = 6, {}
    thr = run(ThresholdExit(0.5))
    pieces = thr["gflops_pieces"]
    seen.update((key, g) for (_, key), g in zip(prefixes(ThresholdExit(0.5), calls), thr["gflops_per_step"]))
    phase = PhaseSplit(0.5, ThresholdExit(0.5), Forecast(2, 1, 1), switch=3, calls=calls)
    got = run(phase)
    assert got["gflops_per_step"][:3] == thr["gflops_per_step"][:3]
    for p in (phase, ThresholdExit(0.5), ThresholdExit(0.3), Forecast(3, 1, 1), gated(Forecast(2, 1, 2))[1],
              PhaseSplit(0.3, FULL, Forecast(2, 1, 0), switch=2, calls=calls)):
        measured = got if p is phase else run(p)
        assert least_gflops(p, calls, seen, pieces) <= measured["gflops_per_image"] * (1 + 1e-9), p.spec
        assert least_gflops(p, calls, {}, pieces) <= measured["gflops_per_image"] * (1 + 1e-9), p.spec


def test_the_score_adds_the_loss_of_contrast_to_the_squared_distance():
    """Two plans under the ratio: forecast:4:1:1's images move less from full depth's (squared
    distance) but lose contrast (scaled by 0.9); forecast:4:1:2's move more without losing any.
    The search's score (squared distance + 64 x contrast gap) picks the second."""
    ref = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    shifted = ref + 0.06 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    shifted = (shifted - shifted.mean()) / shifted.std() * ref.std() + ref.mean()  # the reference's contrast
    scaled = (ref - ref.mean()) * 0.9 + ref.mean()
    assert contrast_gap(shifted, ref) < 1e-12 and contrast_gap(scaled, ref) == pytest.approx(0.01 * ref.std() ** 2)
    assert proxy_distance(scaled, ref) < proxy_distance(shifted, ref)
    made = {"forecast:4:1:1": scaled, "forecast:4:1:2": shifted, "full": ref}
    costs, _ = fake_run(lambda p: 0.0)

    def run(policy, keep=True, images=True):
        return costs(policy, keep, images)[0], made.get(policy.spec, ref + 1.0)  # every other plan: far away

    plan = search_plan(0.55, run, proxy_distance)
    assert plan.plan.spec == "forecast:4:1:2"
    assert plan.proxy == pytest.approx(proxy_distance(shifted, ref) + CONTRAST_WEIGHT * contrast_gap(shifted, ref))


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
