"""Head-gated reuse (libs/exits/gated.py): a gate that never fires is the rule it wraps, one that
always fires is full depth, a batch decides as each row alone with exits, reuse, forecasts and
gates mixed, the gate's head is counted, and bad spellings are one-line errors."""
import pytest
import torch

from libs.exits.call import Call, ExitPolicyError, Threshold
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.policy import FULL, ThresholdExit
from libs.exits.recorder import ExitRecorder
from libs.exits.registry import parse_policy
from libs.exits.reuse import DeepCache, PhaseSplit
from libs.exits.sampling_run import SamplingRun
from tests.helpers.tiny_uvit import set_head_certainty, tiny

TIMES = [900.0, 760.0, 640.0, 500.0, 420.0, 300.0, 250.0]


def _inputs(B=6):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 3, 8, 8, generator=g), torch.randint(0, 5, (B,), generator=g)


def run_calls(net, policy, x, y, recorder=None):
    run = SamplingRun(net, policy, recorder)
    with torch.no_grad():
        return [run(x, torch.full((x.shape[0],), t), y) for t in TIMES]


@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("rule", [DeepCache(2, 1), Forecast(2, 1, 2), Forecast(3, 2, 1)])
def test_a_gate_that_never_fires_is_its_rule_and_one_that_always_fires_is_full_depth(B, rule):
    net, (x, y) = tiny(num_classes=5), _inputs(B)
    set_head_certainty(net, [0.3] * net.num_blocks)  # every row reads 0.3 before any span
    want_rule, want_full = run_calls(net, rule, x, y), run_calls(net, FULL, x, y)
    rec = ExitRecorder(net.num_blocks)
    never = run_calls(net, GatedReuse(0.2, rule), x, y, rec)  # 0.3 >= 0.2: every row reuses
    assert all(torch.equal(a, b) for a, b in zip(never, want_rule)) and int(rec.reused.sum()) > 0
    rec = ExitRecorder(net.num_blocks)
    always = run_calls(net, GatedReuse(0.5, rule), x, y, rec)  # 0.3 < 0.5: every row computes the span
    assert all(torch.equal(a, b) for a, b in zip(always, want_full)) and int(rec.reused.sum()) == 0
    reusing_calls = sum(1 for c in range(len(TIMES)) if rule.for_call(c).reuse is not None)
    assert int(rec.head_evals) == B * reusing_calls  # one head per row and gated call


def test_gate_1_recomputes_every_row():
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs()
    full = run_calls(net, FULL, x, y)
    assert all(torch.equal(a, b) for a, b in zip(run_calls(net, parse_policy("gate:1:forecast:2:1:1"), x, y), full))


def test_a_batch_decides_as_each_row_alone_with_exits_reuse_forecasts_and_gates_mixed():
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs()
    policy = PhaseSplit(0.3, ThresholdExit(0.5), GatedReuse(0.5, Forecast(2, 1, 2)), switch=2, calls=len(TIMES))
    rec, each = ExitRecorder(net.num_blocks), ExitRecorder(net.num_blocks)
    got = run_calls(net, policy, x, y, rec)
    for r in range(6):
        each.start_run()
        alone = run_calls(net, policy, x[r:r + 1], y[r:r + 1], each)
        for c in range(len(TIMES)):
            torch.testing.assert_close(got[c][r:r + 1], alone[c], atol=1e-6, rtol=1e-6)
    assert torch.equal(rec.reused, each.reused) and torch.equal(rec.forecast, each.forecast)  # counted as alone
    assert 0 < int(rec.forecast.sum()) < int(rec.reused.sum())  # some reusing rows forecast, some copied
    reused = rec.reused
    assert 0 < int(reused[:, 1].sum()) < 6 * 2  # the gate let some rows reuse and sent others to compute
    assert 0 < int(rec.counts[:2, :-1].sum())  # rows exited early in the threshold phase


class _Mixed(PhaseSplit):
    """Per-call values of any kind, with a forecast cache of order 2 (for the tests)."""

    def __init__(self, calls):
        self.actions, self.calls, self.switch = calls, len(calls), 0
        self.first = self.then = Forecast(2, 1, 2)
        self.fraction, self.uses_heads, self.reuses, self.forecast_order = 0.0, True, True, 2

    def cache_spans(self, num_blocks):
        return ((1, 4), (2, 3))

    def _call(self, call):
        return self.actions[call]


def test_gates_with_exits_inside_one_call_decide_as_each_row_alone():
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs()
    rule = Threshold(0.5)
    policy = _Mixed([Call(rule=rule), Call(reuse=1, gate=0.5), Call(), Call(reuse=2, rule=rule, gate=0.45),
                     Call(), Call(reuse=1, rule=rule, gate=0.6), Call(reuse=2)])
    got = run_calls(net, policy, x, y)
    for r in range(6):
        alone = run_calls(net, policy, x[r:r + 1], y[r:r + 1])
        for c in range(len(TIMES)):
            torch.testing.assert_close(got[c][r:r + 1], alone[c], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("text, words", [
    ("gate:0.5", "gate:G:RULE"), ("gate:1.5:deepcache:2:1", "G in [0, 1]"), ("gate:x:deepcache:2:1", "not a number"),
    ("gate:0.5:threshold:0.9", "cannot be gated"), ("gate:0.5:gate:0.5:deepcache:2:1", "cannot be gated"),
    ("gate:0.5:phase:0.4:full+deepcache:2:1", "cannot be gated"), ("gate:0.5:forecast:2:1", "forecast:N:k:O")])
def test_bad_spellings_are_one_line_errors(text, words):
    with pytest.raises(ExitPolicyError) as e:
        parse_policy(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_spelling_calls_and_heads():
    p = parse_policy("gate:0.6:forecast:2:1:1")
    assert p.spec == "gate:0.6:forecast:2:1:1" and parse_policy(p.spec) == p and p.forecast_order == 1
    assert [p.for_call(c).spec for c in range(3)] == ["full", "reuse:1+gate:0.6", "full"]
    with pytest.raises(ExitPolicyError, match="needs trained uncertainty heads"):
        p.check(5, has_heads=False)
    with pytest.raises(ExitPolicyError, match="reuse gate"):
        Call(gate=0.5)
