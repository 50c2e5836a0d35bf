"""Exit policies: parsing and spelling, the network's static / per-step exits and the lazy
patience rule (the rules' shared contract: test_policy_contract.py; the loop that runs them:
tests/models/test_exit_loop.py; their calibration: tests/evaluation/test_calibration.py)."""
import math

import pytest
import torch

from libs.evaluation.engine import sweep_policies
from libs.exits.call import Threshold
from libs.exits.policy import (FULL, BudgetExit, ExitPolicyError, ProfileExit, StaticExit, ThresholdExit, parse_policies,
                              parse_policy, parse_thresholds_only)
from tests.models.test_exit_loop import GenericThreshold, lazy_head_count


# ------------------------------------------------------------------ parsing
def test_parse_spellings():
    assert [p.spec for p in parse_policies("0.9")] == ["threshold:0.9"]
    assert parse_policies(0.92) == [ThresholdExit(0.92)]
    got = parse_policies("threshold:0.8, static:3 ,profile:0.85,budget:0.7,full")
    assert [p.spec for p in got] == ["threshold:0.8", "static:3", "profile:0.85", "budget:0.7", "full"]
    assert [p.family for p in got] == ["threshold", "static", "profile", "budget", "full"]
    for full in ("full", "none", "inf", "1", "1.0", "threshold:1", "budget:1", "budget:1.0", 1, 1.0):
        assert parse_policies(full) == [FULL], full
    assert parse_policies("STATIC:2") == [StaticExit(2)]
    # the sweep always starts with the full-depth baseline
    assert [p.spec for p in sweep_policies("static:1,0.9")] == ["full", "static:1", "threshold:0.9"]
    assert [p.spec for p in sweep_policies("none")] == ["full"]


# Issue 20 item 7: near-duplicates keep their own labels, -0 is 0, nothing below 1 reads as 1.
@pytest.mark.parametrize("value, specs", [
    ("0.9,0.9000001,0.9999999,-0,budget:1", ["threshold:0.9", "threshold:0.9000001", "threshold:0.9999999",
                                             "threshold:0", "full"]),
    ("0.9999999999999999", ["threshold:0.9999999999999999"]),  # the float just below 1
    ("0.99999999999999999", ["full"]),  # reads as the float 1.0 itself: full depth
    ("-0", ["threshold:0"]), ("threshold:-0.0", ["threshold:0"]), ("static:-0", ["static:0"]),
    ("profile:-0", ["profile:0"]), ("profile:0.9000001", ["profile:0.9000001"]),
    ("budget:0.7000001", ["budget:0.7000001"]), ("1e-7", ["threshold:1e-07"]), ("static:3.0", ["static:3"]),
    ("threshold:0.30000000000000004", ["threshold:0.30000000000000004"]), ("0.25", ["threshold:0.25"]),
])
def test_spellings_keep_every_digit_and_zero_has_one_sign(value, specs):
    got = parse_policies(value)
    assert [str(p) for p in got] == [p.spec for p in got] == specs
    assert [parse_policy(s) for s in specs] == got  # each label reads back as its policy


@pytest.mark.parametrize("value, first, second", [
    ("0.9,0.9000001,0.9999999,-0,0,budget:1", "-0", "0"),  # the list
    ("0.9,threshold:0.90", "0.9", "threshold:0.90"),
    ("threshold:0.8, 0.8 ", "threshold:0.8", "0.8"),
    ("full,none", "full", "none"), ("0.5,budget:1,1.0", "budget:1", "1.0"),
    ("static:3,STATIC:3.0", "static:3", "STATIC:3.0"), ("profile:0.5,profile:.5", "profile:0.5", "profile:.5"),
])
def test_a_repeated_policy_is_refused_naming_both_spellings(value, first, second):
    with pytest.raises(ExitPolicyError) as e:
        parse_policies(value)
    msg = str(e.value)
    assert f"exit policy {second!r} repeats {first!r}" in msg and "list each policy once" in msg
    assert "\n" not in msg


def test_no_threshold_below_one_is_labelled_one():
    torch.manual_seed(0)
    values = [math.nextafter(1.0, 0.0), 0.9999999, 0.99999995, 1 - 2 ** -30] + torch.rand(200).double().tolist()
    for v in values:
        p = parse_policy(repr(v))
        assert p.spec != "threshold:1" and p.family == "threshold" and p.tau == v
        assert parse_policy(str(p)) == p and float(str(p).split(":")[1]) == v


@pytest.mark.parametrize("bad, words", [
    ("1.5", ["exit policy '1.5'", "out of range", "[0, 1)"]), ("-0.1", ["'-0.1'", "out of range"]),
    ("abc", ["'abc'", "not a number"]), ("", ["no exit policy"]), ("static:-1", ["'static:-1'", "integer"]),
    ("static:2.5", ["static:2.5", "integer"]), ("static:inf", ["static:inf", "integer"]),
    ("budget:0", ["budget:0", "(0, 1]"]), ("budget:1.2", ["budget:1.2"]), ("budget:-0", ["budget:-0", "(0, 1]"]),
    ("profile:1", ["profile:1", "[0, 1)"]), ("threshold:inf", ["threshold:inf", "out of range"]),
    ("cosine:0.3", ["cosine:0.3", "unknown exit policy"]), ("full:1", ["unknown exit policy 'full:1'"]),
    ("threshold:x", ["threshold:x", "not a number"]), ("0.9,static:oops", ["static:oops"]), ("nan", ["NaN"]),
])
def test_parse_errors_name_the_bad_item(bad, words):
    with pytest.raises(ExitPolicyError) as e:
        parse_policies(bad)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("rule, bad", [(ThresholdExit, 1.0), (ThresholdExit, -0.5), (StaticExit, -1),
                                       (StaticExit, 1.5), (ProfileExit, 1.0), (BudgetExit, 0.0), (BudgetExit, 2.0)])
def test_constructor_and_parser_refuse_with_the_same_range(rule, bad):
    """One definition of each range (``argument_problem``), asked by both."""
    problem = rule.argument_problem(bad)
    assert problem is not None
    with pytest.raises(ExitPolicyError) as built:
        rule(bad)
    assert str(built.value).endswith(problem)
    if not (bad == 1.0 and rule is ThresholdExit):  # threshold:1 parses as full depth
        with pytest.raises(ExitPolicyError) as parsed:
            parse_policy(f"{rule.family}:{bad!r}")
        assert str(parsed.value) == f"exit policy '{rule.family}:{bad!r}': {problem}"


def test_exit_threshold_flag_takes_thresholds_only():
    assert [p.spec for p in parse_thresholds_only("0.8,0.9,none")] == ["threshold:0.8", "threshold:0.9", "full"]
    with pytest.raises(ExitPolicyError, match="--exit_policy"):
        parse_thresholds_only("static:3")


def test_check_against_the_network():
    with pytest.raises(ExitPolicyError, match=r"5 blocks \(0..4\)"):
        StaticExit(5).check(5)
    StaticExit(4).check(5)
    for p in (ThresholdExit(0.9), BudgetExit(0.5), ProfileExit(0.9)):
        with pytest.raises(ExitPolicyError, match="uncertainty heads"):
            p.check(5, has_heads=False)
    StaticExit(2).check(5, has_heads=False)
    for p in (ProfileExit(0.9), BudgetExit(0.5)):
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            p.for_call(0)


# ------------------------------------------------------------------ the decisions
@pytest.mark.parametrize("patience", [2, 3])
def test_lazy_patience_exits_as_eager(patience):
    """Every pass pattern over 7 tests (3 patience in-blocks): the lazy one-row rule exits
    after the same block as the eager batch rule, with the closed-form count of heads."""
    rule, in_blocks = Threshold(0.5), 3
    for bits in range(2 ** 7):
        passing = [bool(bits >> k & 1) for k in range(7)]
        state, eager_exit, eager_heads = rule.init_state(1, "cpu"), 7, 0
        for k in range(7):
            eager_heads += 1
            exits, state = rule.decide(k, patience if k < in_blocks else 1,
                                       lambda: torch.tensor([0.9 if passing[k] else 0.1]), state)
            if exits is not None and bool(exits[0]):
                eager_exit = k
                break
        asked = []

        def certainty(block=None):
            asked.append(k if block is None else block)
            assert asked[-1] <= k and (block is None or block < in_blocks)
            return 0.9 if passing[asked[-1]] else 0.1

        state, lazy_exit = None, 7
        for k in range(7):
            exits, state = rule.decide_one(k, patience if k < in_blocks else 1, certainty, state)
            if exits:
                lazy_exit = k
                break
        assert lazy_exit == eager_exit, passing
        assert len(asked) == len(set(asked)), "a head evaluated twice"
        assert len(asked) == lazy_head_count(passing, lazy_exit, in_blocks, patience) <= eager_heads


@pytest.mark.parametrize("tau", [0.85, 0.9, 0.3, 0.0])
def test_decide_one_decides_as_decide(tau):
    """Python decisions compare as the float32 tensors do (float32(0.85) > 0.85)."""
    t32 = torch.tensor(tau, dtype=torch.float32)
    values = [t32, torch.nextafter(t32, torch.tensor(0.0)), torch.nextafter(t32, torch.tensor(1.0))]
    for rule in (Threshold(tau), GenericThreshold(tau)):
        for c in values:
            for block, patience in ((0, 2), (1, 2), (2, 2), (3, 1)):
                for prior in (0, 1):
                    state = torch.tensor([prior])
                    exits, new = rule.decide(block, patience, lambda: c.reshape(1), state)
                    if isinstance(rule, Threshold):  # lazy state: (passes, blocks not evaluated yet)
                        exits_one, _ = rule.decide_one(block, patience, lambda: c.item(), (prior, ()))
                        if exits is None:  # a deferred head: no exit here either
                            assert not exits_one
                            continue
                    else:
                        exits_one, new_one = rule.decide_one(block, patience, lambda: c.item(), state.clone())
                        assert int(new) == int(new_one)
                    assert (None if exits is None else bool(exits[0])) == exits_one, (c.item(), block, prior)
