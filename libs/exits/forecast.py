"""Forecast reuse: a reusing call predicts the span's value from its values at the last calls
that computed it, by polynomial extrapolation in the network's time input, per sample.

Spelling (``--exit_policy``):

* ``forecast:N:k:O`` (``Forecast``): call c computes every block when c mod N = 0, else takes
  the DeepCache span of depth k (as ``deepcache:N:k``) from a forecast of order O:

  - O = 0: the value of the last call that computed the span (a copy: ``deepcache:N:k``);
  - O = 1: the line through the last two values, evaluated at the call's time;
  - O = 2: the parabola through the last three.

  With fewer values in a row's history the order drops to what it holds (one value: a copy).

Why a polynomial in time: a span's output along the sampling trajectory is a smooth function
of the solver's time, and the values at the last full calls are samples of it; the
extrapolation through the last O+1 samples is the order-O Taylor expansion at the newest one
with its derivatives replaced by divided differences (TaylorSeer's forecast, written for
uneven time steps). The time is the network's time input of the call (``t_net``): it is an
affine function of the solver's time t (999 t or 1000 t), and the extrapolation is the same
in any affine time, so no conversion is needed.

The cache (``ForecastCache``, a ``ReuseCache``) keeps per span and row the last O+1 values
and the time of each, and how many it holds; a row writes only its own history (compaction,
rows that exit before the span, rows a gate sends to compute it), so every row forecasts
from its own calls. Memory: O+1 values per row and span (``bytes_per_row``). A call tells the
cache its time (``begin_call``) before any block runs.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from libs.exits.call import Call, ExitPolicyError, Span, integer
from libs.exits.registry import register
from libs.exits.reuse import DeepCache, ReuseCache

MAX_ORDER = 2


def lagrange_weights(times: torch.Tensor, count: torch.Tensor, t: torch.Tensor, order: int) -> torch.Tensor:
    """Per-row weights of the history slots for the extrapolation to time ``t``.

    ``times``: (B, H) the times of the H = order + 1 slots, oldest first (the newest is slot
    H-1); ``count``: (B,) how many of the newest slots hold a value; ``t``: (B,). Row b uses
    the polynomial through its last m = min(order, count - 1) + 1 values: weight of slot j is
    prod_{i != j} (t - t_i) / (t_j - t_i) over those m slots, 0 for the others. (B, H) float64."""
    B, H = times.shape
    times, t = times.double(), t.double()
    m = (count.clamp(min=1, max=order + 1)).to(torch.long)  # points used per row
    used = torch.arange(H, device=times.device)[None, :] >= (H - m)[:, None]  # (B, H)
    w = torch.zeros(B, H, dtype=torch.float64, device=times.device)
    for j in range(H):
        wj = torch.ones(B, dtype=torch.float64, device=times.device)
        for i in range(H):
            if i == j:
                continue
            both = used[:, i] & used[:, j]
            gap = torch.where(both, times[:, j] - times[:, i], torch.ones_like(t))
            wj = wj * torch.where(both, (t - times[:, i]) / gap, torch.ones_like(t))
        w[:, j] = torch.where(used[:, j], wj, torch.zeros_like(t))
    return w


class ForecastCache(ReuseCache):
    """Per span and row, the last ``order`` + 1 values with their times (module docstring).

    ``fetch(span, rows)`` returns the forecast at the current call's time instead of the last
    value (order 0, or a row with one value: the last value itself, bit for bit)."""

    def __init__(self, spans: Sequence[Span], order: int):
        super().__init__(spans)
        if not (integer(order, 0) and order <= MAX_ORDER):
            raise ExitPolicyError(f"forecast order {order!r}: choose 0 (copy), 1 (linear) or 2 (quadratic)")
        self.order = int(order)
        self._hist: Dict[Span, torch.Tensor] = {}  # span -> (H, B, ...) values, oldest first
        self._times: Dict[Span, torch.Tensor] = {}  # span -> (B, H) float64 times
        self._count: Dict[Span, torch.Tensor] = {}  # span -> (B,) long: slots that hold a value
        self._now: Optional[torch.Tensor] = None  # (B,) float64 time of the current call

    def begin_call(self, batch: int, times: torch.Tensor) -> None:
        """A call of ``batch`` rows at network time ``times`` (a scalar or (batch,)) starts."""
        self.bind(batch)
        times = torch.as_tensor(times).detach().to(torch.float64)
        self._now = times.expand(batch).clone() if times.ndim == 0 else times.reshape(batch).clone()

    def store(self, span: Span, rows: Optional[torch.Tensor], value: torch.Tensor) -> None:
        if self._now is None:
            raise ValueError("a forecast cache needs the call's time: call begin_call(batch, times) first")
        H = self.order + 1
        hist, times, count = self._hist.get(span), self._times.get(span), self._count.get(span)
        if hist is None:
            hist = value.new_zeros((H, self.batch, *value.shape[1:]))
            times = torch.zeros(self.batch, H, dtype=torch.float64, device=value.device)
            count = torch.zeros(self.batch, dtype=torch.long, device=value.device)
        if rows is None:  # every row of the run: the shifted history is the whole new one (no gather, no scatter)
            self._hist[span] = torch.cat([hist[1:], value.to(hist.dtype)[None]], 0)
            self._times[span] = torch.cat([times[:, 1:], self._now.to(value.device)[:, None]], 1)
            self._count[span] = (count + 1).clamp(max=H)
            return
        idx = rows
        now = self._now.to(value.device)[idx]
        # Shift the rows' histories one slot older and put the new value last (out of place).
        new_hist = torch.cat([hist[1:, idx], value.to(hist.dtype)[None]], 0)  # (H, b, ...)
        self._hist[span] = hist.index_copy(1, idx, new_hist)
        self._times[span] = times.index_copy(0, idx, torch.cat([times[idx, 1:], now[:, None]], 1))
        self._count[span] = count.index_copy(0, idx, (count[idx] + 1).clamp(max=H))

    def fetch(self, span: Span, rows: Optional[torch.Tensor]):
        hist = self._hist.get(span)
        if hist is None:
            return None, False
        times, count, now = self._times[span], self._count[span], self._now.to(self._times[span].device)
        if rows is not None:
            times, count, now, hist = times[rows], count[rows], now[rows], hist[:, rows]
        n_have = int((count > 0).sum())  # host sync
        if n_have == 0:
            return None, False
        have = True if n_have == count.shape[0] else count > 0
        last = hist[-1]
        if self.order == 0 or int(count.max()) <= 1:  # a copy of each row's last value
            return last, have
        w = lagrange_weights(times, count, now, self.order).to(hist.dtype)  # (b, H)
        w = w.T.reshape(w.shape[1], w.shape[0], *([1] * (hist.ndim - 2)))  # (H, b, 1, ...)
        value = (w * hist).sum(0)
        one = (count <= 1).reshape(-1, *([1] * (value.ndim - 1)))  # rows with one value keep it exactly
        return torch.where(one, last, value), have

    def bytes_per_row(self) -> int:
        return sum(v[:, 0].numel() * v.element_size() for v in self._hist.values())

    def extrapolates(self, span: Span) -> Optional[torch.Tensor]:
        """(B,) bool: the rows whose ``fetch`` of ``span`` now is a forecast (order >= 1 and two
        or more values held), not a copy; None when none can be (order 0, nothing stored)."""
        count = self._count.get(span)
        return None if self.order == 0 or count is None else count > 1


def forecast_rows(cache: Optional[ReuseCache], span: Optional[Span]) -> Optional[torch.Tensor]:
    """After a call that reused ``span``: (B,) bool, the rows whose value for it was a forecast
    (a reusing row stores nothing in the span it reused, so its history is what it fetched
    from); None for a copying cache or no span (what ``ExitRecorder.record_call`` takes)."""
    if span is None or not isinstance(cache, ForecastCache):
        return None
    return cache.extrapolates(span)


def make_cache(policy, num_blocks: int) -> Optional[ReuseCache]:
    """The reuse cache of one sampling run of ``policy``: None when it never reuses, a
    ``ForecastCache`` when it forecasts (``policy.forecast_order`` is not None), else a
    ``ReuseCache``."""
    if not policy.reuses:
        return None
    spans, order = policy.cache_spans(num_blocks), policy.forecast_order
    return ReuseCache(spans) if order is None else ForecastCache(spans, order)


@register
class Forecast(DeepCache):
    """``forecast:N:k:O``: ``deepcache:N:k`` whose reusing calls take an order-O forecast."""

    family = "forecast"
    arity = 3
    spelling = "forecast:N:k:O deepcache:N:k, the reused span forecast at order O (0 copy, 1 linear, 2 quadratic)"

    def __init__(self, every: int, k: int, order: int):
        self.refuse((every, k, order))
        self.every, self.k, self.order = int(every), int(k), int(order)
        self.forecast_order = self.order
        self._reuse = Call(reuse=self.k)

    @classmethod
    def argument_problem(cls, value):
        if (isinstance(value, tuple) and len(value) == 3 and integer(value[0], 1) and integer(value[1], 1)
                and integer(value[2], 0) and value[2] <= MAX_ORDER):
            return None
        return ("spell it forecast:N:k:O with N >= 1 (a full call every N calls), k >= 1 (shallow blocks per side) "
                "and O in 0, 1, 2 (the forecast's order: copy, linear, quadratic)")

    @property
    def spec(self) -> str:
        return f"forecast:{self.every}:{self.k}:{self.order}"
