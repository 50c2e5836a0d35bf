"""Forecast reuse (libs/exits/forecast.py): order 0 is deepcache bit for bit, orders 1 and 2 are
the hand-computed extrapolations on a toy backbone whose span values are known functions of
time, each row forecasts from its own history (compaction), no cache leaks, one-line errors."""
import pytest
import torch

from libs.exits.call import ExitPolicyError
from libs.exits.forecast import Forecast, ForecastCache, lagrange_weights, make_cache
from libs.exits.policy import FULL, ThresholdExit
from libs.exits.recorder import ExitRecorder
from libs.exits.registry import parse_policy
from libs.exits.reuse import DeepCache, PhaseSplit, ReuseCache
from libs.exits.sampling_run import SamplingRun
from libs.models.backbone import ExitBackbone
from tests.helpers.tiny_uvit import tiny


class PolyBackbone(ExitBackbone):
    """Tokens (B, 2); block i adds ``a_i t^2 + b_i t + c_i`` (t: the row's network time) to
    each row: a span's residual, what the cache keeps, is a known polynomial in t."""

    num_blocks = 5

    def __init__(self, degree: int):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.coef = torch.randn(self.num_blocks, 3, generator=g, dtype=torch.float64)
        if degree < 2:
            self.coef[:, 0] = 0
        if degree < 1:
            self.coef[:, 1] = 0

    def embed(self, x, timesteps, cond):
        t = timesteps.double().expand(x.shape[0]) if timesteps.ndim == 0 else timesteps.double()
        return x.double(), t

    def run_block(self, i, h, carry):
        a, b, c = self.coef[i]
        return h + (a * carry ** 2 + b * carry + c)[:, None]

    def select_rows(self, carry, rows):
        return carry[rows]

    def output_head(self, h):
        return h

    def span_residual(self, span, t: float) -> torch.Tensor:
        a, b, c = self.coef[span[0]:span[1]].sum(0)
        return a * t ** 2 + b * t + c


def run_calls(net, policy, x, times, y=None):
    run = SamplingRun(net, policy)
    with torch.no_grad():
        return [run(x, torch.full((x.shape[0],), float(t)), y) for t in times], run


TIMES = [900.0, 760.0, 640.0, 500.0, 420.0, 300.0, 250.0]


def test_order_1_and_2_equal_the_hand_computation():
    """forecast:2:1:O on the toy: calls 0, 2, 4, 6 compute; 1, 3, 5 forecast the span (1, 4)."""
    net, x = PolyBackbone(degree=2), torch.randn(3, 2, dtype=torch.float64)
    full, _ = run_calls(net, FULL, x, TIMES)
    r = [net.span_residual((1, 4), t) for t in TIMES]  # the span's true residual at each call
    t = TIMES
    for order in (1, 2):
        got, run = run_calls(net, Forecast(2, 1, order), x, TIMES)
        assert torch.equal(got[0], full[0]) and torch.equal(got[2], full[2])
        # call 1: one value in the history (call 0): a copy
        torch.testing.assert_close(got[1] - full[1], (r[0] - r[1]).expand(3, 2))
        # call 3: the line through (t0, r0), (t2, r2)
        line = r[2] + (r[2] - r[0]) / (t[2] - t[0]) * (t[3] - t[2])
        torch.testing.assert_close(got[3] - full[3], (line - r[3]).expand(3, 2))
        # call 5: order 1 the line through calls 2 and 4; order 2 the parabola through 0, 2, 4
        d1, d0 = (r[4] - r[2]) / (t[4] - t[2]), (r[2] - r[0]) / (t[2] - t[0])
        want = r[4] + d1 * (t[5] - t[4])
        if order == 2:
            want = want + (d1 - d0) / (t[4] - t[0]) * (t[5] - t[4]) * (t[5] - t[2])
        torch.testing.assert_close(got[5] - full[5], (want - r[5]).expand(3, 2))
        assert run.cache.bytes_per_row() == (order + 1) * 2 * 8  # O + 1 values of 2 float64s


@pytest.mark.parametrize("order", [1, 2])
def test_a_forecast_of_a_polynomial_of_its_order_is_exact(order):
    net, x = PolyBackbone(degree=order), torch.randn(2, 2, dtype=torch.float64)
    full, _ = run_calls(net, FULL, x, TIMES)
    got, _ = run_calls(net, Forecast(2, 1, order), x, TIMES)
    for c in range(2 * order + 1, len(TIMES)):  # once the history holds order + 1 values
        torch.testing.assert_close(got[c], full[c], atol=1e-9, rtol=1e-9)


def _inputs(B=6):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 3, 8, 8, generator=g), torch.randint(0, 5, (B,), generator=g)


@pytest.mark.parametrize("B", [1, 6])
def test_order_0_is_deepcache_bit_for_bit(B):
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs(B)
    for k, rule in [(1, None), (2, None), (1, ThresholdExit(0.5))]:
        fc, dc = Forecast(3, k, 0), DeepCache(3, k)
        if rule is not None:  # with exits on the first calls (rows exit before the span: no value)
            fc, dc = (PhaseSplit(0.3, rule, p, switch=2, calls=7) for p in (fc, dc))
        got, run = run_calls(net, fc, x, TIMES, y)
        want, _ = run_calls(net, dc, x, TIMES, y)
        assert isinstance(run.cache, ForecastCache)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_each_row_keeps_its_own_history_through_compaction():
    """Rows written at different calls (a compacted subset) forecast from their own times."""
    cache = ForecastCache([(1, 4)], order=2)
    span, v = (1, 4), lambda rows, val: torch.full((len(rows), 3), float(val))
    cache.begin_call(4, torch.tensor(10.0))
    cache.store(span, None, v(range(4), 1.0))  # every row: value 1 at t = 10
    cache.begin_call(4, torch.tensor(8.0))
    cache.store(span, torch.tensor([1, 3]), v([1, 3], 3.0))  # rows 1, 3: value 3 at t = 8
    cache.begin_call(4, torch.tensor(7.0))
    cache.store(span, torch.tensor([3]), v([3], 4.0))  # row 3: value 4 at t = 7
    cache.begin_call(4, torch.tensor(6.0))
    got, have = cache.fetch(span, None)
    assert have is True
    # rows 0, 2: one value (a copy); row 1: line through (10, 1), (8, 3) at 6 -> 5;
    # row 3: parabola through (10, 1), (8, 3), (7, 4) at 6 -> 5 (a line here too)
    assert got[:, 0].tolist() == pytest.approx([1.0, 5.0, 1.0, 5.0])
    sub, have = cache.fetch(span, torch.tensor([3, 1]))  # the active rows of a compacted batch
    assert have is True and sub[:, 0].tolist() == pytest.approx([5.0, 5.0])
    cache.store(span, torch.tensor([0]), v([0], 0.0))  # row 0 at t = 6: its own history only
    assert cache.fetch(span, torch.tensor([1]))[0][0, 0].item() == pytest.approx(5.0)
    assert cache.bytes_per_row() == 3 * 3 * 4


def test_lagrange_weights_sum_to_one_and_drop_to_the_history_held():
    times = torch.tensor([[0.0, 0.0, 4.0], [0.0, 2.0, 4.0], [1.0, 2.0, 4.0]], dtype=torch.float64)
    w = lagrange_weights(times, torch.tensor([1, 2, 3]), torch.full((3,), 5.0), order=2)
    assert w.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert w[0].tolist() == [0.0, 0.0, 1.0] and w[1, 0] == 0.0
    assert w[1, 1:].tolist() == pytest.approx([-0.5, 1.5])


def test_no_forecast_leaks_across_runs_or_batches():
    net, (x, y) = tiny(num_classes=5), _inputs()
    first, _ = run_calls(net, Forecast(2, 1, 2), x, TIMES, y)
    run_calls(net, Forecast(2, 1, 2), torch.randn(6, 3, 8, 8), TIMES, y)  # another batch in between
    again, _ = run_calls(net, Forecast(2, 1, 2), x, TIMES, y)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    cache = ForecastCache([(1, 4)], order=1)
    cache.begin_call(6, torch.tensor(5.0))
    with pytest.raises(ValueError, match="one sampling run of one batch"):
        cache.begin_call(3, torch.tensor(4.0))


def test_the_run_makes_the_cache_its_rule_needs():
    assert type(make_cache(DeepCache(2, 1), 5)) is ReuseCache and make_cache(FULL, 5) is None
    assert make_cache(Forecast(2, 1, 1), 5).order == 1
    assert make_cache(PhaseSplit(0.5, ThresholdExit(0.9), Forecast(2, 1, 2), 1, 4), 5).order == 2
    rec = ExitRecorder(5)
    net, (x, y) = tiny(num_classes=5), _inputs()
    run = SamplingRun(net, Forecast(2, 1, 1), rec)
    with torch.no_grad():
        for t in TIMES[:4]:
            run(x, torch.full((6,), t), y)
    assert rec.reused[1].tolist() == [0, 6, 6, 6, 0] and rec.cache_bytes_per_image == 2 * 18 * 32 * 4


@pytest.mark.parametrize("text, words", [
    ("forecast:2:1", "forecast:N:k:O"), ("forecast:2:1:3", "O in 0, 1, 2"), ("forecast:0:1:1", "N >= 1"),
    ("forecast:2:0:1", "k >= 1"), ("forecast:2:1:x", "not a number"), ("forecast:2:1:1.5", "forecast:N:k:O")])
def test_bad_spellings_are_one_line_errors(text, words):
    with pytest.raises(ExitPolicyError) as e:
        parse_policy(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_spelling_reads_back():
    for text in ("forecast:2:1:0", "forecast:3:2:2", "phase:0.4:threshold:0.9+forecast:2:1:1"):
        p = parse_policy(text)
        assert p.spec == text and parse_policy(p.spec) == p
    assert parse_policy("forecast:2.0:1:1") == Forecast(2, 1, 1)
    with pytest.raises(ExitPolicyError, match="must be below"):
        Forecast(2, 3, 1).check(5)


def test_on_a_dit_order_0_is_deepcache_and_a_batch_with_its_own_times_per_row_is_each_row_alone():
    """The DiT caches the span's residual; rows carry different times (each forecasts in its own)."""
    from tests.models.test_dit import inputs, randomise, tiny as tiny_dit
    net = randomise(tiny_dit(learn_sigma=False))
    x, t, y = inputs(4)

    def calls(policy, rows):
        run = SamplingRun(net, policy)
        with torch.no_grad():
            return [run(x[rows], t[rows] * (1 - 0.15 * c), y[rows]) for c in range(6)]

    every = [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(calls(Forecast(2, 1, 0), every), calls(DeepCache(2, 1), every)))
    for policy in (Forecast(2, 1, 2), parse_policy("gate:0.5:forecast:3:1:1")):
        batch = calls(policy, every)
        for r in every:
            for c, out in enumerate(calls(policy, [r])):
                torch.testing.assert_close(batch[c][r:r + 1], out, atol=1e-6, rtol=1e-6)
