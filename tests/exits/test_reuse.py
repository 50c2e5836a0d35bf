"""The reuse rules and their cache (libs/exits/reuse.py): the cache's rows and validity, the
spellings and their one-line errors, a plan's actions (the greedy planner that picks them:
tests/evaluation/test_calibration.py)."""
import pytest
import torch

from libs.exits.call import Call
from libs.exits.policy import FULL, ExitPolicyError, StaticExit, ThresholdExit, parse_policies, parse_policy
from libs.exits.reuse import ComputePlan, DeepCache, PhaseSplit, ReuseCache, ReuseCall, parse_action


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


def test_plan_actions_are_calls():
    assert parse_action("reuse:2") == ReuseCall(2) == Call(reuse=2) and parse_action("static:4") == Call(last=4)
    assert parse_action("full") == Call() and StaticExit(4).for_call(0) == Call(last=4)
    for bad in ("reuse:0", "skip:1", "static:-1", "reuse:x"):
        with pytest.raises(ExitPolicyError):
            parse_action(bad)
    with pytest.raises(ExitPolicyError, match="stops before the reused span ends"):
        Call(reuse=1, last=2).check(7)
