"""The one table of exit rules (libs/exits/registry.py): both rule families are in it, the
--exit_policy help is rendered from it, a spelling cannot be registered twice, and a call
index past a calibrated table is refused in one place."""
import pytest

from libs.exits.call import Call, ExitPolicyError
from libs.exits.policy import ProfileExit, StaticExit
from libs.exits.registry import RULES, WORDS, ExitPolicy, parse_policy, register, spelling_help


def test_both_rule_families_are_in_the_one_table():
    assert list(RULES) == ["threshold", "static", "profile", "budget", "full", "deepcache", "phase", "plan",
                           "forecast", "gate", "search"]
    assert set(WORDS) == {"full", "none", "inf"}


def test_the_help_has_a_line_per_rule_reuse_included():
    lines = spelling_help().splitlines()
    assert [line.split()[0] for line in lines] == ["threshold:T", "static:K", "profile:T", "budget:R", "full",
                                                   "deepcache:N:k", "phase:F:A+B", "plan:R", "forecast:N:k:O",
                                                   "gate:G:RULE", "search:R"]
    assert all(len(line) <= 100 and line.split(None, 1)[1] for line in lines)


def test_a_spelling_is_registered_once():
    class Again(ExitPolicy):
        family = "static"

    with pytest.raises(ValueError, match="'static' is registered twice"):
        register(Again)
    assert RULES["static"] is StaticExit


def test_calls_past_a_calibrated_table_are_refused():
    p = ProfileExit(0.5, [1, 2])
    assert [p.for_call(c) for c in (0, 1)] == [Call(last=1), Call(last=2)] and p.calls == 2
    with pytest.raises(ExitPolicyError, match="calibrated for 2 network calls per sampling run, but call 3"):
        p.for_call(2)


@pytest.mark.parametrize("text", ["1e309", "-1e309", "1E400"])
def test_an_overflowing_number_is_refused_naming_the_full_depth_words(text):
    """The word 'inf' is full depth; a bare number that overflows to infinity is refused in one
    line that says how to write full depth (the two no longer look alike and act apart)."""
    with pytest.raises(ExitPolicyError, match="not a finite number; for full depth write full"):
        parse_policy(text)
    assert parse_policy("inf").spec == "full"
