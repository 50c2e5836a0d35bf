"""The frontier (Pareto flags), the compute budget (parsing, choice, proxy), Spearman, and
the spellings of config.sample.sample_steps."""
import math

import pytest

from libs.diffusion.registry import StepCountError, parse_step_counts, reference_steps
from libs.evaluation.frontier import BudgetError, choose_under_budget, pareto_flags, parse_compute_budget, spearman


def test_pareto_flags_on_hand_made_rows():
    gflops = [2.7, 1.9, 1.36, 0.81, 0.81, 0.59, 0.54, 0.39, 1.0]
    fid = [11.8, 13.6, 11.7, 11.7, 12.0, 13.2, 17.3, 17.4, math.nan]
    #      off   off   off   on    off   on    on    on    no FID
    assert pareto_flags(gflops, fid) == [False, False, False, True, False, True, True, True, False]


def test_pareto_ties():
    # equal on both axes: neither beats the other, both on the frontier; equal GFLOPs, lower FID wins
    assert pareto_flags([1.0, 1.0, 2.0], [5.0, 5.0, 5.0]) == [True, True, False]
    assert pareto_flags([1.0, 1.0], [5.0, 4.0]) == [False, True]
    assert pareto_flags([1.0], [None]) == [False]


def _cand(steps, policy, ratio, proxy):
    return dict(sample_steps=steps, policy=policy, compute_ratio=ratio, proxy=proxy)


def test_budget_choice_on_hand_made_proxies():
    cands = [_cand(50, "full", 1.0, 0.0), _cand(50, "threshold:0.85", 0.7, 0.02), _cand(15, "full", 0.3, 0.01),
             _cand(15, "threshold:0.9", 0.22, 0.03), _cand(10, "full", 0.2, 0.05)]
    assert choose_under_budget(cands, 1.0) == 0  # the reference itself
    assert choose_under_budget(cands, 0.8) == 2  # 15 steps full beats the exit rule at 50 steps
    assert choose_under_budget(cands, 0.3) == 2  # the budget's edge is included
    assert choose_under_budget(cands, 0.25) == 3
    assert choose_under_budget(cands, 0.2) == 4
    with pytest.raises(BudgetError, match=r"cheapest, full at 10 steps, needs 0.200"):
        choose_under_budget(cands, 0.1)
    tie = [_cand(50, "full", 1.0, 0.0), _cand(20, "a", 0.4, 0.01), _cand(20, "b", 0.35, 0.01)]
    assert choose_under_budget(tie, 0.5) == 2  # equal proxies: the cheaper


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "abc", "nan", "inf", True])
def test_bad_budgets_are_one_line_errors(value):
    with pytest.raises(BudgetError, match=r"\(0, 1\]") as e:
        parse_compute_budget(value)
    assert "\n" not in str(e.value)


def test_budget_spellings():
    assert parse_compute_budget(None) is None and parse_compute_budget("") is None
    assert parse_compute_budget("0.3") == 0.3 and parse_compute_budget(1) == 1.0


@pytest.mark.parametrize("value,counts", [(50, (50,)), ("50", (50,)), ("10,15,20,50", (10, 15, 20, 50)),
                                          ((20, 10), (20, 10)), ([10, 10, 5], (10, 5)), (" 10, 15 ", (10, 15))])
def test_step_count_spellings(value, counts):
    assert parse_step_counts(value) == counts and reference_steps(value) == max(counts)


@pytest.mark.parametrize("value,what", [(0, "the item 0"), ("10,,20", "an empty item"), ("abc", "'abc'"),
                                        ("10,-5", "'-5'"), ("", "an empty item"), (2.5, "2.5"), (True, "True"),
                                        ([], "empty")])
def test_bad_step_counts_are_one_line_errors(value, what):
    with pytest.raises(StepCountError, match="comma-separated") as e:
        parse_step_counts(value)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_bad_spellings_fail_in_the_config_check_before_any_work():
    from configs.digits_uvit_tiny import get_config
    from libs.cli.config_check import ConfigError, check_config

    config = get_config()
    for field, value in (("sample_steps", "10,,20"), ("sample_steps", 0), ("sample_steps", "abc"),
                         ("compute_budget", 1.5), ("compute_budget", "0")):
        c = get_config()
        with c.sample.unlocked():
            c.sample[field] = value
        with pytest.raises(ConfigError, match=f"sample.{field}|compute budget"):
            check_config(c, "eval")
    config.sample.sample_steps = "10,15"  # a list is valid, and so is a tuple (a comma-separated override)
    check_config(config, "eval")
    config.sample.sample_steps = (10, 15)
    check_config(config, "eval")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy's value with ties
