"""Cross-step reuse: rules whose calls take a span of blocks' output from the cache of an
earlier call of the same sampling run, and that cache.

A *span* ``(start, stop)`` is blocks start .. stop-1; a call computing it stores
``ExitBackbone.cache_value`` (U-ViT: its output tokens; DiT: its residual), a later call whose
``Call.reuse`` names it takes ``reuse_value`` and runs none of its blocks. DeepCache's depth k
is ``(k, num_blocks - k)``: the k shallow blocks on each side run, the middle is reused.
Rules: ``deepcache:N:k`` (``DeepCache``), ``phase:F:A+B`` (``PhaseSplit``), ``plan:R``
(``ComputePlan``).

``ReuseCache`` belongs to one sampling run of one batch (a new one per run). It keeps, per
span, one value per row in the batch's original order and which rows hold one; a row with
nothing cached computes the span. No exit test runs inside a reused span, so a row decides the
same in any batch."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from libs.exits.call import Call, ExitPolicyError, Rule, Span, deepcache_span, finite, fmt, integer
from libs.exits.registry import ExitPolicy, PerCallTable, number, parse_policy, register


class ReuseCache:
    """``store(span, rows, value)``: ``rows`` are the original rows of ``value``'s rows (None: all,
    in order). ``fetch(span, rows)`` -> ``(values, have)``, ``have`` True (every row holds a
    value), False (none: ``values`` is None) or a (b,) bool mask."""

    def __init__(self, spans: Sequence[Span]):
        self.spans = tuple(sorted(set(spans)))
        self.batch: Optional[int] = None
        self._values: Dict[Span, torch.Tensor] = {}
        self._valid: Dict[Span, object] = {}  # span -> True (every row) or a (B,) bool tensor
        self.checked_for = None  # the network whose reuse_problem passed every span (exit loop)

    def bind(self, batch: int) -> None:
        """The batch size of the run (the first call's); a later call with another is refused."""
        if self.batch is None:
            self.batch = batch
        elif batch != self.batch:
            raise ValueError(f"a reuse cache belongs to one sampling run of one batch: it holds {self.batch} rows, "
                             f"but a call brought {batch}; make a new cache (ExitRecorder.wrap) per run")

    def begin_call(self, batch: int, times) -> None:
        """A network call of ``batch`` rows at network time ``times`` starts (a copy needs no
        time; a forecast does: ``libs/exits/forecast.py``)."""
        self.bind(batch)

    def store(self, span: Span, rows: Optional[torch.Tensor], value: torch.Tensor) -> None:
        if rows is None:
            self._values[span], self._valid[span] = value, True  # a reference: blocks never write in place
            return
        old, valid = self._values.get(span), self._valid.get(span)
        if old is None:
            old = value.new_zeros((self.batch, *value.shape[1:]))
            valid = torch.zeros(self.batch, dtype=torch.bool, device=value.device)
        self._values[span] = old.index_copy(0, rows, value.to(old.dtype))  # out of place: the old may be in use
        self._valid[span] = True if valid is True else valid.index_fill(0, rows, True)

    def fetch(self, span: Span, rows: Optional[torch.Tensor]):
        value, valid = self._values.get(span), self._valid.get(span)
        if value is None:
            return None, False
        if rows is not None:
            value = value[rows]
            if valid is not True:
                valid = valid[rows]
        if valid is True:
            return value, True
        n = int(valid.sum())  # host sync: only when some rows lack a value
        return (value, True) if n == valid.shape[0] else (None, False) if n == 0 else (value, valid)

    def bytes_per_row(self) -> int:
        """Memory the cache holds per image (row), summed over its spans."""
        return sum(v[0].numel() * v.element_size() for v in self._values.values())


def ReuseCall(k: int, rule: Optional[Rule] = None) -> Call:  # noqa: N802 (the released name of a reuse call)
    """A call that takes the DeepCache span of depth k from the cache (and may exit rows by ``rule``)."""
    return Call(reuse=k, rule=rule)


def parse_action(text: str) -> Call:
    """A plan's action: 'full', 'reuse:k' or 'static:K'."""
    family, _, arg = str(text).strip().lower().partition(":")
    if family == "full" and not arg:
        return Call()
    if family in ("reuse", "static") and integer(number(arg, text), family == "reuse"):
        return Call(reuse=int(float(arg))) if family == "reuse" else Call(last=int(float(arg)))
    raise ExitPolicyError(f"plan action {text!r}: spell actions as full, reuse:k (k >= 1) or static:K (K >= 0)")


# ----------------------------------------------------------------------------- rules
@register
class DeepCache(ExitPolicy):
    """``deepcache:N:k``: every N-th call (0, N, 2N, ...) computes every block and caches the span
    of depth k; the calls between reuse it. N >= 1, k >= 1 with 2k < num_blocks."""

    family = "deepcache"
    spelling = "deepcache:N:k DeepCache: every N-th call computes every block; the others reuse depth k"
    reuses = per_call = True

    def __init__(self, every: int, k: int):
        self.refuse((every, k))
        self.every, self.k = int(every), int(k)
        self._reuse = Call(reuse=self.k)

    @classmethod
    def argument_problem(cls, value):
        if isinstance(value, tuple) and len(value) == 2 and integer(value[0], 1) and integer(value[1], 1):
            return None
        return "spell it deepcache:N:k with N >= 1 (a full call every N calls) and k >= 1 (shallow blocks per side)"

    arity = 2  # numbers in the spelling (forecast:N:k:O has 3)

    @classmethod
    def parse(cls, arg: str, text: str) -> "DeepCache":
        parts = arg.split(":")
        value = tuple(number(p, text) for p in parts) if len(parts) == cls.arity else None
        cls.refuse(value, text)
        return cls(*value)

    @property
    def spec(self) -> str:
        return f"deepcache:{self.every}:{self.k}"

    def check(self, num_blocks, has_heads=True):
        self._reuse.check(num_blocks, has_heads, name=self.spec)

    def cache_spans(self, num_blocks):
        return (deepcache_span(self.k, num_blocks),)

    def _call(self, call):
        return Call() if call % self.every == 0 else self._reuse


@register
class PhaseSplit(ExitPolicy):
    """``phase:F:A+B``: rule A on the first round(F x calls) calls of a run, B after (its call indices
    restart at the switch); A and B need no calibration."""

    family = "phase"
    spelling = "phase:F:A+B   rule A on the first round(F x calls) calls of a run, rule B after"
    per_call = True

    def __init__(self, fraction: float, first, then, switch: Optional[int] = None, calls: Optional[int] = None):
        first, then = parse_policy(first), parse_policy(then)
        self.refuse((float(fraction), first, then))
        self.fraction, self.first, self.then = float(fraction) + 0.0, first, then
        self.switch, self.calls = switch, calls
        self.uses_heads, self.reuses = first.uses_heads or then.uses_heads, first.reuses or then.reuses
        orders = [o for o in (first.forecast_order, then.forecast_order) if o is not None]
        self.forecast_order = max(orders) if orders else None

    @classmethod
    def argument_problem(cls, value):
        if not (isinstance(value, tuple) and len(value) == 3 and finite(value[0]) and 0 <= value[0] <= 1):
            return "spell it phase:F:A+B with F in [0, 1] (the fraction of calls that run rule A) and rules A, B"
        bad = [p.spec for p in value[1:] if not isinstance(p, ExitPolicy) or p.needs_calibration]
        if bad:
            return (f"{', '.join(bad)} cannot be a phase (A and B are rules that need no calibration: threshold, "
                    f"static, full, deepcache)")
        return None

    @classmethod
    def parse(cls, arg: str, text: str) -> "PhaseSplit":
        head, _, rest = arg.partition(":")
        parts = rest.split("+")
        value = None
        if len(parts) == 2 and all(p.strip() for p in parts):
            value = (number(head, text), parse_policy(parts[0]), parse_policy(parts[1]))
        cls.refuse(value, text)
        return cls(*value)

    @property
    def spec(self) -> str:
        return f"phase:{fmt(self.fraction)}:{self.first.spec}+{self.then.spec}"

    @property
    def needs_calibration(self) -> bool:
        return self.switch is None

    def calibration(self) -> str:
        return "" if self.switch is None else f"rule B from call {self.switch + 1} of {self.calls}"

    def check(self, num_blocks, has_heads=True):
        self.first.check(num_blocks, has_heads)
        self.then.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return tuple(sorted(set(self.first.cache_spans(num_blocks)) | set(self.then.cache_spans(num_blocks))))

    def _call(self, call):
        return self.first.for_call(call) if call < self.switch else self.then.for_call(call - self.switch)


@register
class ComputePlan(PerCallTable):
    """``plan:R``: per network call one action (a ``Call``: full, reuse:k, static:K, or any other
    call value), calibrated under the compute ratio R (``libs/evaluation/calibration.py``)."""

    family = "plan"
    spelling = "plan:R        a calibrated per-call plan (full, reuse:k, static:K) under the compute ratio R"
    reuses = True

    def __init__(self, ratio: float, actions: Optional[Sequence] = None, proxy: Optional[float] = None,
                 achieved: Optional[float] = None):
        ratio = float(ratio)
        self.refuse(ratio)
        self.ratio = ratio
        self.table = None if actions is None else tuple(parse_action(a) if isinstance(a, str) else a for a in actions)
        self.proxy, self.achieved = proxy, achieved
        self.uses_heads = any(a.uses_heads for a in self.table or ())

    @classmethod
    def argument_problem(cls, ratio):
        if finite(ratio) and 0 < ratio <= 1:
            return None
        return "R is a compute ratio (GFLOPs/img over full depth's at the same steps) in (0, 1]"

    @property
    def spec(self) -> str:
        return f"plan:{fmt(self.ratio)}"

    def calibration(self) -> str:
        if self.table is None:
            return ""
        return (f"compute ratio {self.achieved:.3f}, proxy {self.proxy:.4g}; per call: "
                + " ".join(a.spec for a in self.table))

    def check(self, num_blocks, has_heads=True):
        for a in self.table or ():
            a.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return tuple(sorted({a.reuse_span(num_blocks) for a in self.table or () if a.reuse is not None}))

