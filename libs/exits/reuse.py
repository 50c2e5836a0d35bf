"""Cross-step reuse: rules whose calls take a span of blocks' output from the cache of an
earlier call of the same sampling run, and that cache.

A *span* ``(start, stop)`` is blocks start .. stop-1. A call that computes a span's blocks
stores what the backbone needs to stand in for them (``ExitBackbone.cache_value``: U-ViT the
span's output tokens, a DiT the span's residual); a later call whose policy names the span
(``reuse_span``) takes it from the cache (``ExitBackbone.reuse_value``) and runs no block of
the span. The spans of the rules here are DeepCache's: depth k is ``(k, num_blocks - k)``, the
k shallow blocks on each side run and the middle is reused (U-ViT: a full call caches the
tokens entering the out-block paired with in-block k-1; a reusing call runs in-blocks
0..k-1 and their out-blocks on the cached tokens with fresh long skips, 2k blocks).

Rules (spelled in ``--exit_policy``, see ``libs/exits/policy.py``):

* ``deepcache:N:k`` (``DeepCache``): call c computes every block when c mod N = 0, else reuses
  depth k;
* ``phase:F:A+B`` (``PhaseSplit``): rule A on the first round(F x calls) calls, B after;
* ``plan:R`` (``ComputePlan``): per call one action (``full``, ``reuse:k``, ``static:K``),
  chosen greedily on the calibration images under the compute ratio R (``calibrate``).

The cache (``ReuseCache``) belongs to one sampling run of one batch: ``ExitRecorder.wrap``
makes a new one for every run, so nothing is shared between batches, runs or processes. It
keeps, per span, one value per row of the batch in the batch's original row order and which
rows hold one; rows that exit (batch compaction) read and write their own rows through the
loop's index of active rows. A row with nothing cached for the span computes it (and caches
it); the rest reuse. No exit test runs after a block of a span the call reuses, whether the
row reused it or computed it, so a row decides the same in any batch.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from libs.exits.policy import (FULL, ExitPolicy, ExitPolicyError, StaticExit, _finite, _fmt, _number, _refuse,
                               _refuse_spelled, parse_policy)

Span = Tuple[int, int]


def deepcache_span(k: int, num_blocks: int) -> Span:
    """DeepCache's span of depth k: blocks k .. num_blocks-1-k."""
    return (k, num_blocks - k)


def _depth_problem(k: int, num_blocks: int) -> Optional[str]:
    if 2 * k < num_blocks:
        return None
    return (f"the network has {num_blocks} blocks, so k (the shallow blocks kept on each side of the reused "
            f"span) must be below {num_blocks / 2:g}: choose k <= {(num_blocks - 1) // 2}")


def _integer(v, low: int) -> bool:
    return _finite(v) and v == int(v) and v >= low


class ReuseCache:
    """The cached span values of one sampling run of one batch (module docstring).

    ``store(span, rows, value)``: ``rows`` are the original rows of ``value``'s rows (None:
    every row, in order). ``fetch(span, rows)`` -> ``(values, have)``: ``have`` is True
    (every asked row holds a value), False (none does: ``values`` is None) or a (b,) bool
    mask."""

    def __init__(self, spans: Sequence[Span]):
        self.spans = tuple(sorted(set(spans)))
        self.batch: Optional[int] = None
        self._values: Dict[Span, torch.Tensor] = {}
        self._valid: Dict[Span, object] = {}  # span -> True (every row) or a (B,) bool tensor

    def bind(self, batch: int) -> None:
        """The batch size of the run (the first call's); a later call with another is refused."""
        if self.batch is None:
            self.batch = batch
        elif batch != self.batch:
            raise ValueError(f"a reuse cache belongs to one sampling run of one batch: it holds {self.batch} rows, "
                             f"but a call brought {batch}; make a new cache (ExitRecorder.wrap) per run")

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


# ----------------------------------------------------------------------------- per-call actions
class ReuseCall(ExitPolicy):
    """One call that takes the DeepCache span of depth k from the cache and otherwise runs
    ``inner`` (full depth by default; a threshold rule may exit rows before or after the span).
    Not a ``--exit_policy`` spelling: what the reuse rules return from ``for_call``."""

    family = "reuse"
    reuses = True

    def __init__(self, k: int, inner: ExitPolicy = FULL):
        if not _integer(k, 1):
            raise ExitPolicyError(f"reuse depth {k!r}: k is an integer >= 1")
        self.k, self.inner = int(k), inner

    @property
    def spec(self) -> str:
        return f"reuse:{self.k}" if self.inner.is_full else f"reuse:{self.k}+{self.inner.spec}"

    @property
    def uses_heads(self) -> bool:
        return self.inner.uses_heads

    def effective_threshold(self) -> float:
        return self.inner.effective_threshold()

    def check(self, num_blocks, has_heads=True):
        problem = _depth_problem(self.k, num_blocks)
        if problem:
            raise ExitPolicyError(f"{self.spec}: {problem}")
        self.inner.check(num_blocks, has_heads)
        last = self.inner.static_exit(num_blocks)
        if last is not None and last < num_blocks - self.k - 1:
            raise ExitPolicyError(f"{self.spec}: the inner rule stops before the reused span ends")

    def cache_spans(self, num_blocks):
        return (deepcache_span(self.k, num_blocks),)

    def reuse_span(self, num_blocks):
        return deepcache_span(self.k, num_blocks)

    def static_exit(self, num_blocks):
        return self.inner.static_exit(num_blocks)

    def init_state(self, batch, device):
        return self.inner.init_state(batch, device)

    def decide(self, block, patience, certainty, state):
        return self.inner.decide(block, patience, certainty, state)

    def decide_one(self, block, patience, certainty, state):
        return self.inner.decide_one(block, patience, certainty, state)


def parse_action(text: str) -> ExitPolicy:
    """A plan's action: 'full', 'reuse:k' or 'static:K'."""
    family, _, arg = str(text).strip().lower().partition(":")
    if family == "full" and not arg:
        return FULL
    if family in ("reuse", "static") and _integer(_number(arg, text), family == "reuse"):
        return ReuseCall(int(float(arg))) if family == "reuse" else StaticExit(int(float(arg)))
    raise ExitPolicyError(f"plan action {text!r}: spell actions as full, reuse:k (k >= 1) or static:K (K >= 0)")


def _blocks_computed(action: ExitPolicy, num_blocks: int) -> int:
    """Blocks a call of ``action`` computes (a full call, a reuse call, a static exit)."""
    if isinstance(action, ReuseCall):
        return 2 * action.k
    last = action.static_exit(num_blocks)
    return num_blocks if last is None else last + 1


def _computes(action: ExitPolicy, span: Span, num_blocks: int) -> bool:
    """Whether a call of ``action`` computes every block of ``span`` (and so caches it)."""
    if isinstance(action, ReuseCall):
        s, e = action.reuse_span(num_blocks)
        return e <= span[0] or span[1] <= s  # disjoint from the span it reuses
    return _blocks_computed(action, num_blocks) >= span[1]


# ----------------------------------------------------------------------------- rules
class DeepCache(ExitPolicy):
    """``deepcache:N:k``: a full call every N calls, DeepCache depth k reused in between."""

    family = "deepcache"
    reuses = True

    def __init__(self, every: int, k: int):
        _refuse(DeepCache, (every, k))
        self.every, self.k = int(every), int(k)

    @classmethod
    def argument_problem(cls, value):
        if isinstance(value, tuple) and len(value) == 2 and _integer(value[0], 1) and _integer(value[1], 1):
            return None
        return "spell it deepcache:N:k with N >= 1 (a full call every N calls) and k >= 1 (shallow blocks per side)"

    @classmethod
    def parse(cls, arg: str, text: str) -> "DeepCache":
        parts = arg.split(":")
        if len(parts) != 2:
            raise ExitPolicyError(f"exit policy {text!r}: {cls.argument_problem(None)}")
        value = tuple(_number(p, text) for p in parts)
        _refuse_spelled(cls, value, text)
        return cls(*value)

    @property
    def spec(self) -> str:
        return f"deepcache:{self.every}:{self.k}"

    def check(self, num_blocks, has_heads=True):
        problem = _depth_problem(self.k, num_blocks)
        if problem:
            raise ExitPolicyError(f"exit policy {self.spec}: {problem}")

    def cache_spans(self, num_blocks):
        return (deepcache_span(self.k, num_blocks),)

    def for_call(self, call):
        return FULL if call % self.every == 0 else ReuseCall(self.k)

    def static_exit(self, num_blocks):
        raise ExitPolicyError(f"{self.spec} varies per call: call policy.for_call(call) (the evaluation engine's "
                              f"recorder does) and pass the result to the network")


class PhaseSplit(ExitPolicy):
    """``phase:F:A+B``: rule A on the first ``switch`` = round(F x calls) calls of a run, B after
    (B's call indices restart at the switch). Calibration counts the calls of a run."""

    family = "phase"

    def __init__(self, fraction: float, first, then, switch: Optional[int] = None, calls: Optional[int] = None):
        first, then = parse_policy(first), parse_policy(then)
        _refuse(PhaseSplit, (float(fraction), first, then))
        self.fraction, self.first, self.then = float(fraction) + 0.0, first, then
        self.switch, self.calls = switch, calls

    @classmethod
    def argument_problem(cls, value):
        if not (isinstance(value, tuple) and len(value) == 3 and _finite(value[0]) and 0 <= value[0] <= 1):
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
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ExitPolicyError(f"exit policy {text!r}: {cls.argument_problem(None)}")
        value = (_number(head, text), parse_policy(parts[0]), parse_policy(parts[1]))
        _refuse_spelled(cls, value, text)
        return cls(*value)

    @property
    def spec(self) -> str:
        return f"phase:{_fmt(self.fraction)}:{self.first.spec}+{self.then.spec}"

    @property
    def needs_calibration(self) -> bool:
        return self.switch is None

    @property
    def reuses(self) -> bool:
        return self.first.reuses or self.then.reuses

    @property
    def uses_heads(self) -> bool:
        return self.first.uses_heads or self.then.uses_heads

    def calibration(self) -> str:
        return "" if self.switch is None else f"rule B from call {self.switch + 1} of {self.calls}"

    def calibrate(self, run: Callable[..., dict], **_) -> "PhaseSplit":
        """Counts the network calls of a run (a static:0 run: one block a call)."""
        calls = len(run(StaticExit(0))["exit_block_per_step"])
        return PhaseSplit(self.fraction, self.first, self.then, int(math.floor(self.fraction * calls + 0.5)), calls)

    def check(self, num_blocks, has_heads=True):
        self.first.check(num_blocks, has_heads)
        self.then.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return tuple(sorted(set(self.first.cache_spans(num_blocks)) | set(self.then.cache_spans(num_blocks))))

    def for_call(self, call):
        if self.switch is None:
            raise ExitPolicyError(f"{self.spec} is not calibrated: run it through the evaluation engine, or "
                                  f"calibrate it first (libs.evaluation (calibrate_policy))")
        if call >= self.calls:
            raise ExitPolicyError(f"{self.spec} was calibrated for {self.calls} network calls per sampling run, "
                                  f"but call {call + 1} was made: calibrate with the same sampler and steps")
        return self.first.for_call(call) if call < self.switch else self.then.for_call(call - self.switch)

    def static_exit(self, num_blocks):
        raise ExitPolicyError(f"{self.spec} varies per call: call policy.for_call(call) and pass the result to "
                              f"the network")


class ComputePlan(ExitPolicy):
    """``plan:R``: per network call one action (full, reuse:k, static:K), calibrated under the
    compute ratio R (``calibrate``)."""

    family = "plan"
    reuses = True

    def __init__(self, ratio: float, actions: Optional[Sequence] = None, proxy: Optional[float] = None,
                 achieved: Optional[float] = None):
        ratio = float(ratio)
        _refuse(ComputePlan, ratio)
        self.ratio = ratio
        self.actions = None if actions is None else tuple(parse_action(a) if isinstance(a, str) else a
                                                          for a in actions)
        self.proxy, self.achieved = proxy, achieved

    @classmethod
    def argument_problem(cls, ratio):
        if _finite(ratio) and 0 < ratio <= 1:
            return None
        return "R is a compute ratio (GFLOPs/img over full depth's at the same steps) in (0, 1]"

    @classmethod
    def parse(cls, arg: str, text: str) -> "ComputePlan":
        value = _number(arg, text)
        _refuse_spelled(cls, value, text)
        return cls(value)

    @property
    def spec(self) -> str:
        return f"plan:{_fmt(self.ratio)}"

    @property
    def needs_calibration(self) -> bool:
        return self.actions is None

    def calibration(self) -> str:
        if self.actions is None:
            return ""
        return (f"compute ratio {self.achieved:.3f}, proxy {self.proxy:.4g}; per call: "
                + " ".join(a.spec for a in self.actions))

    def check(self, num_blocks, has_heads=True):
        for a in self.actions or ():
            a.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return tuple(sorted({a.reuse_span(num_blocks) for a in self.actions or () if a.reuses}))

    def for_call(self, call):
        if self.actions is None:
            raise ExitPolicyError(f"{self.spec} is not calibrated: run it through the evaluation engine, or "
                                  f"calibrate it first (libs.evaluation (calibrate_policy))")
        if call >= len(self.actions):
            raise ExitPolicyError(f"{self.spec} was calibrated for {len(self.actions)} network calls per sampling "
                                  f"run, but call {call + 1} was made: calibrate with the same sampler and steps")
        return self.actions[call]

    def static_exit(self, num_blocks):
        raise ExitPolicyError(f"{self.spec} varies per call: call policy.for_call(call) and pass the result to "
                              f"the network")

    def calibrate(self, run: Callable[..., tuple], **_) -> "ComputePlan":
        """Greedy (``greedy_plan``): ``run(policy, keep=True) -> (summary, samples x_0)``."""
        return greedy_plan(self.ratio, run)


def plan_actions(num_blocks: int) -> List[ExitPolicy]:
    """What a plan may do at a call besides computing every block: reuse DeepCache depth k
    (k = 1 .. (num_blocks-1)//2), or stop after block K (K = num_blocks//2 .. num_blocks-2: the
    deep half only; stopping earlier leaves the out-blocks' long skips unused)."""
    return ([ReuseCall(k) for k in range(1, (num_blocks - 1) // 2 + 1)]
            + [StaticExit(K) for K in range(num_blocks // 2, num_blocks - 1)])


def proxy_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """The plan's quality proxy: the mean over images and elements of (x_0 - x_0^full)^2 (the
    frontier's proxy: the distance of the samples to the full-depth samples from the same noise)."""
    return float(((samples.double() - reference.double()) ** 2).mean())


def greedy_plan(ratio: float, run: Callable[..., tuple]) -> ComputePlan:
    """A plan under the compute ratio ``ratio``, training-free, in the spirit of Learning-to-Cache's
    per-timestep router:

    1. one calibration run per (call, action) with every other call at full depth gives the
       action's harm there: the proxy distance of the samples to full depth's;
    2. greedy: take (call, action) changes by harm per GFLOP saved, smallest first (a cheaper
       action may replace a call's earlier one), until the plan's GFLOPs/img is at most
       ``ratio`` x full depth's. A call's GFLOPs depend only on its action (the actions decide
       nothing per sample), so the plan's cost is the sum over its calls. A reuse is taken only
       where the call before computes its span, so every reused value is one call old, as in
       the runs that measured its harm;
    3. one run of the plan gives its proxy (harms are not additive) and its compute ratio.

    ``run(policy, keep=True) -> (summary, samples x_0)`` samples the calibration images."""
    ref_summary, reference = run(FULL, keep=True)
    full_g, N = ref_summary["gflops_per_image"], ref_summary["num_blocks"]
    calls = len(ref_summary["exit_block_per_step"])
    changes = []  # (harm per GFLOP saved, call, action, GFLOPs saved)
    for c in range(calls):
        for a in plan_actions(N):
            if a.reuses and c == 0:
                continue  # nothing cached yet
            trial = [FULL] * calls
            trial[c] = a
            summary, x0 = run(ComputePlan(ratio, trial, 0.0, 0.0), keep=True)
            saved = full_g - summary["gflops_per_image"]
            if saved > 0:
                changes.append((proxy_distance(x0, reference) / saved, c, a, saved))
    actions, saved_at = [FULL] * calls, [0.0] * calls
    g = full_g
    for _, c, a, saved in sorted(changes, key=lambda ch: (ch[0], ch[1], ch[2].spec)):
        if g <= ratio * full_g * (1 + 1e-9):
            break
        if saved <= saved_at[c] or not _fits(actions, c, a, N):
            continue
        g -= saved - saved_at[c]
        actions[c], saved_at[c] = a, saved
    if g > ratio * full_g * (1 + 1e-9):
        raise ExitPolicyError(f"plan:{_fmt(ratio)} cannot be reached: the cheapest plan found runs "
                              f"{g / full_g:.3f} of full depth's GFLOPs/img; raise R")
    summary, x0 = run(ComputePlan(ratio, actions, 0.0, 0.0), keep=True)
    return ComputePlan(ratio, actions, proxy_distance(x0, reference), summary["gflops_per_image"] / full_g)


def _fits(actions: List[ExitPolicy], c: int, a: ExitPolicy, num_blocks: int) -> bool:
    """Whether call c may take action ``a``: a reuse needs the call before to compute its span, and
    a reuse at the call after must still find its span computed at c."""
    if a.reuses and not _computes(actions[c - 1], a.reuse_span(num_blocks), num_blocks):
        return False
    after = actions[c + 1] if c + 1 < len(actions) else None
    return after is None or not after.reuses or _computes(a, after.reuse_span(num_blocks), num_blocks)


#: the reuse rules of each family spelled ``family:...`` (``libs.exits.policy.parse_policy``)
RULES = {"deepcache": DeepCache, "phase": PhaseSplit, "plan": ComputePlan}
