"""Calibration of the calibrated rules (libs/evaluation/calibration.py): profile: and budget:
on a fake sampler and on a trained model, phase: counting calls, the greedy compute plan on a
hand-made calibration run, and the one quality proxy."""
import math

import pytest
import torch

from libs.evaluation.calibration import calibrate, calibrate_policy, greedy_plan, plan_actions, proxy_distance
from libs.exits.call import Call, ExitPolicyError, Threshold
from libs.exits.policy import FULL, BudgetExit, ProfileExit, ThresholdExit
from libs.exits.reuse import PhaseSplit


# ------------------------------------------------------------------ profile and budget (pure, with a fake sampler)
def _fake_run(ratio_of_tau, per_step=None):
    calls = []

    def run(rule):
        calls.append(rule)
        return {"layer_ratio": ratio_of_tau(rule.tau), "exit_block_per_step": per_step or []}

    return run, calls


def test_budget_bisection_converges_and_reports_the_threshold():
    run, calls = _fake_run(lambda tau: 2 / 7 + (5 / 7) * tau ** 3)  # monotone, floor 2/7
    b = calibrate(BudgetExit(0.6), run)
    assert abs(b.achieved - 0.6) <= 0.01 and b.achieved == pytest.approx(2 / 7 + 5 / 7 * b.tau ** 3)
    assert b.spec == "budget:0.6" and b.family == "budget" and "threshold 0." in b.calibration()
    assert b.effective_threshold() == b.tau and b.for_call(7) == Call(rule=Threshold(b.tau))
    assert len(calls) <= 12


def test_budget_below_the_reachable_range_is_a_clear_error():
    run, _ = _fake_run(lambda tau: 2 / 7 + (5 / 7) * tau)
    with pytest.raises(ExitPolicyError, match=r"budget:0.1 cannot be reached.*\[0.286, 1\].*R >= 0.29"):
        calibrate(BudgetExit(0.1), run)


def test_profile_calibration_rounds_the_mean_exit_block_per_step():
    run, calls = _fake_run(lambda tau: 0.5, per_step=[1.0, 1.49, 1.5, 5.7, 6.0])
    p = calibrate(ProfileExit(0.85), run)
    assert p.blocks == (1, 1, 2, 6, 6) and calls == [ThresholdExit(0.85)]


# ------------------------------------------------------------------ calibration on a trained model
@pytest.mark.slow
def test_budget_and_profile_on_a_trained_model(trained_digits):
    """A small trained digits model: budget: meets its target on the calibration set and
    profile: reproduces threshold:T's per-step exits."""
    from libs.tasks.pixel import PixelTask

    net, config = trained_digits
    config.sample.update(sample_steps=8, calib_samples=16, mini_batch_size=16)
    task = PixelTask(config, load_data=False)
    budget = calibrate_policy(BudgetExit(0.7), net, task, config, "cpu")
    assert abs(budget.achieved - 0.7) <= 0.01, budget.calibration()
    profile = calibrate_policy(ProfileExit(0.5), net, task, config, "cpu")
    assert len(profile.blocks) == 8 and all(0 <= b < net.num_blocks for b in profile.blocks)
    with pytest.raises(ExitPolicyError, match="cannot be reached"):
        calibrate_policy(BudgetExit(0.05), net, task, config, "cpu")
    assert not math.isnan(budget.tau)


def test_phase_calibration_counts_the_calls_of_a_run():
    p = calibrate(PhaseSplit(0.4, ThresholdExit(0.6), FULL), lambda rule: {"exit_block_per_step": [0.0] * 15})
    assert (p.switch, p.calls) == (6, 15) and p.calibration() == "rule B from call 7 of 15"


# ------------------------------------------------------------------ the plan search (greedy, pure)
def test_plan_actions():
    assert [a.spec for a in plan_actions(7)] == ["reuse:1", "reuse:2", "reuse:3", "static:3", "static:4", "static:5"]


def _fake_plan_run(num_blocks=7, calls=4, harm=None):
    """A calibration run on hand-made numbers: a call costs its blocks computed (GFLOPs), and an
    action at call c moves every sample by ``harm[(c, action)]`` (squared-distance units)."""
    harm = harm or {}
    runs = []

    def run(policy, keep=False):
        assert keep
        actions = [policy.for_call(c) for c in range(calls)]
        runs.append([a.spec for a in actions])
        g = sum(a.blocks_computed(num_blocks) for a in actions)
        d = sum(harm.get((c, a.spec), 1.0 if a != Call() else 0.0) for c, a in enumerate(actions))
        summary = {"gflops_per_image": float(g), "num_blocks": num_blocks, "exit_block_per_step": [0.0] * calls}
        return summary, torch.full((2, 3), d ** 0.5)

    return run, runs


def test_greedy_plan_picks_the_cheapest_harm_per_flop_under_the_ratio():
    harm = {(1, "reuse:1"): 0.1, (3, "reuse:1"): 0.2, (2, "static:5"): 0.01}  # every other change costs 1.0
    run, runs = _fake_plan_run(harm=harm)
    plan = greedy_plan(0.65, run)  # 28 blocks in all; at most 18.2
    # by harm per block saved: static:5 at call 2 (0.01 for 1), reuse:1 at call 1 (0.1 for 5), then at
    # call 3 (0.2 for 5; static:5 computes the span it reuses); call 0 never reuses
    assert [a.spec for a in plan.table] == ["full", "reuse:1", "static:5", "reuse:1"]
    assert plan.achieved == pytest.approx(17 / 28) and plan.proxy == pytest.approx(0.31)
    assert all(r[0] != "reuse:1" for r in runs)  # no reuse before any call computed the span
    assert plan.calibration().startswith("compute ratio 0.607, proxy 0.31")
    assert len(runs) == 1 + 3 + 3 * 6 + 1  # full, each action at each call (no reuse at call 0), the plan


def test_greedy_plan_reuses_only_one_call_old_values():
    run, _ = _fake_plan_run(calls=6, harm={(c, "reuse:1"): 0.01 for c in range(6)})
    plan = greedy_plan(0.7, run)  # 42 blocks, at most 29.4: three reuses at least
    specs = [a.spec for a in plan.table]
    assert specs[0] != "reuse:1" and all(not (a == b == "reuse:1") for a, b in zip(specs, specs[1:])), specs


def test_greedy_plan_that_cannot_reach_the_ratio_says_so():
    run, _ = _fake_plan_run(calls=1)  # one call: nothing to reuse from, the cheapest is static:3 (4 of 7 blocks)
    with pytest.raises(ExitPolicyError, match="cannot be reached"):
        greedy_plan(0.3, run)
    assert [a.spec for a in greedy_plan(0.6, run).table] == ["static:3"]


def test_proxy_distance():
    ref = torch.zeros(4, 1, 2, 2)
    assert proxy_distance(ref + 0.5, ref) == pytest.approx(0.25)
