"""The reuse rules and their cache (libs/exits/reuse.py): the cache's rows and validity, the
spellings and their one-line errors, the greedy compute plan on a hand-made calibration run."""
import pytest
import torch

from libs.exits.policy import FULL, ExitPolicyError, StaticExit, ThresholdExit, parse_policies, parse_policy
from libs.exits.reuse import (ComputePlan, DeepCache, PhaseSplit, ReuseCache, ReuseCall, greedy_plan, parse_action,
                              plan_actions)


def test_cache_rows_follow_the_original_order_and_validity():
    cache = ReuseCache([(1, 4)])
    cache.bind(4)
    assert cache.fetch((1, 4), None) == (None, False)
    v = torch.arange(8.0).reshape(4, 2)
    cache.store((1, 4), None, v)
    got, have = cache.fetch((1, 4), torch.tensor([3, 1]))
    assert have is True and got.tolist() == [[6, 7], [2, 3]]
    assert cache.fetch((1, 4), None)[0] is v  # every row: a reference, no copy
    cache.store((1, 4), torch.tensor([2]), torch.tensor([[-1.0, -2.0]]))  # a compacted row writes its own row
    assert cache.fetch((1, 4), None)[0].tolist() == [[0, 1], [2, 3], [-1, -2], [6, 7]]
    assert v[2].tolist() == [4, 5]  # out of place: the old value is untouched
    assert cache.bytes_per_row() == 2 * 4


def test_cache_with_some_rows_missing_reports_which():
    cache = ReuseCache([(2, 3)])
    cache.bind(3)
    cache.store((2, 3), torch.tensor([0, 2]), torch.ones(2, 5))
    got, have = cache.fetch((2, 3), None)
    assert have.tolist() == [True, False, True] and got.shape == (3, 5)
    assert cache.fetch((2, 3), torch.tensor([1]))[1] is False
    assert cache.fetch((2, 3), torch.tensor([2, 0]))[1] is True
    with pytest.raises(ValueError, match="one sampling run of one batch"):
        cache.bind(2)


@pytest.mark.parametrize("text, policy", [
    ("deepcache:2:1", DeepCache(2, 1)), ("DeepCache:3:2", DeepCache(3, 2)), ("deepcache:2.0:1", DeepCache(2, 1)),
    ("phase:0.4:threshold:0.9+deepcache:2:1", PhaseSplit(0.4, ThresholdExit(0.9), DeepCache(2, 1))),
    ("phase:0.5:0.9+full", PhaseSplit(0.5, ThresholdExit(0.9), FULL)),
    ("plan:0.6", ComputePlan(0.6)), ("plan:1", ComputePlan(1.0))])
def test_spellings(text, policy):
    assert parse_policy(text) == policy and parse_policy(policy.spec) == policy
    assert "," not in policy.spec  # a list item


def test_a_list_of_reuse_rules():
    got = parse_policies("0.9,deepcache:2:1,phase:0.4:threshold:0.9+deepcache:2:1,plan:0.5")
    assert [p.family for p in got] == ["threshold", "deepcache", "phase", "plan"]


@pytest.mark.parametrize("text, words", [
    ("deepcache:2", "deepcache:N:k"), ("deepcache:0:1", "N >= 1"), ("deepcache:2:0", "k >= 1"),
    ("deepcache:2:1.5", "deepcache:N:k"), ("deepcache:a:1", "not a number"), ("deepcache:2:1:1", "deepcache:N:k"),
    ("phase:0.4:threshold:0.9", "phase:F:A+B"), ("phase:1.5:full+full", "F in [0, 1]"),
    ("phase:0.4:profile:0.9+full", "cannot be a phase"), ("phase:0.4:full+plan:0.5", "cannot be a phase"),
    ("phase:0.4:full+", "phase:F:A+B"), ("phase:x:full+full", "not a number"),
    ("phase:0.4:full+bogus:1", "unknown exit policy"),
    ("plan:0", "(0, 1]"), ("plan:1.5", "(0, 1]"), ("plan:abc", "not a number")])
def test_bad_spellings_are_one_line_errors(text, words):
    with pytest.raises(ExitPolicyError) as e:
        parse_policy(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_plan_actions_and_their_spelling():
    assert [a.spec for a in plan_actions(7)] == ["reuse:1", "reuse:2", "reuse:3", "static:3", "static:4", "static:5"]
    assert parse_action("reuse:2") == ReuseCall(2) and parse_action("static:4") == StaticExit(4)
    assert parse_action("full") is FULL
    for bad in ("reuse:0", "skip:1", "static:-1", "reuse:x"):
        with pytest.raises(ExitPolicyError):
            parse_action(bad)
    with pytest.raises(ExitPolicyError, match="stops before the reused span ends"):
        ReuseCall(1, StaticExit(2)).check(7)


def _fake_run(num_blocks=7, calls=4, harm=None):
    """A calibration run on hand-made numbers: a call costs its blocks computed (GFLOPs), and an
    action at call c moves every sample by ``harm[(c, action)]`` (squared-distance units)."""
    from libs.exits.reuse import _blocks_computed
    harm = harm or {}
    runs = []

    def run(policy, keep=False):
        assert keep
        actions = [policy.for_call(c) for c in range(calls)]
        runs.append([a.spec for a in actions])
        g = sum(_blocks_computed(a, num_blocks) for a in actions)
        d = sum(harm.get((c, a.spec), 1.0 if not a.is_full else 0.0) for c, a in enumerate(actions))
        summary = {"gflops_per_image": float(g), "num_blocks": num_blocks, "exit_block_per_step": [0.0] * calls}
        return summary, torch.full((2, 3), d ** 0.5)

    return run, runs


def test_greedy_plan_picks_the_cheapest_harm_per_flop_under_the_ratio():
    harm = {(1, "reuse:1"): 0.1, (3, "reuse:1"): 0.2, (2, "static:5"): 0.01}  # every other change costs 1.0
    run, runs = _fake_run(harm=harm)
    plan = greedy_plan(0.65, run)  # 28 blocks in all; at most 18.2
    # by harm per block saved: static:5 at call 2 (0.01 for 1), reuse:1 at call 1 (0.1 for 5), then at
    # call 3 (0.2 for 5; static:5 computes the span it reuses); call 0 never reuses
    assert [a.spec for a in plan.actions] == ["full", "reuse:1", "static:5", "reuse:1"]
    assert plan.achieved == pytest.approx(17 / 28) and plan.proxy == pytest.approx(0.31)
    assert all(r[0] != "reuse:1" for r in runs)  # no reuse before any call computed the span
    assert plan.calibration().startswith("compute ratio 0.607, proxy 0.31")
    assert len(runs) == 1 + 3 + 3 * 6 + 1  # full, each action at each call (no reuse at call 0), the plan


def test_greedy_plan_reuses_only_one_call_old_values():
    run, _ = _fake_run(calls=6, harm={(c, "reuse:1"): 0.01 for c in range(6)})
    plan = greedy_plan(0.7, run)  # 42 blocks, at most 29.4: three reuses at least
    specs = [a.spec for a in plan.actions]
    assert specs[0] != "reuse:1" and all(not (a == b == "reuse:1") for a, b in zip(specs, specs[1:])), specs


def test_greedy_plan_that_cannot_reach_the_ratio_says_so():
    run, _ = _fake_run(calls=1)  # one call: nothing to reuse from, the cheapest is static:3 (4 of 7 blocks)
    with pytest.raises(ExitPolicyError, match="cannot be reached"):
        greedy_plan(0.3, run)
    assert [a.spec for a in greedy_plan(0.6, run).actions] == ["static:3"]
