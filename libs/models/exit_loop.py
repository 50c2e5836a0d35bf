"""The one early-exit loop of an ``ExitBackbone`` (contract: ``libs/models/backbone.py``):
blocks, exit tests, batch compaction and the reuse cache, for any ``Call`` and batch size.

``forward`` dispatches one call: a plain truncated forward when no rule decides per sample
and nothing is cached, else ``run`` over blocks 0 .. ``call.last_block``. After each block but
the last, the call's per-sample rule picks the rows that stop; they take the shared output
head on that block's tokens and leave the batch (activations, carry, rule state and pending
cache entries are compacted). One host read per deciding block.

With a reuse cache (``libs/exits/reuse.py``) the loop stores ``cache_value`` after the last
block of each cached span it computes, and at the first block of the reused span takes each
row's cached value (``reuse_value``) or computes the span for rows with nothing cached; no
exit test inside that span. A ``gate`` (``libs/exits/gated.py``) lets only rows whose head
certainty after block span[0]-1 is >= gate take the cached value.

A batch of one (``_OneRow``) decides on Python values and returns Python ints; same samples
and exits per row as the batch form (bitwise on CPU in fp32).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from libs.exits.call import Call, float32
from libs.exits.policy import as_call


class EarlyExitOutput:
    """sample: (B, C, H, W) noise prediction at each row's exit block; exit_block: (B,) int64
    0-based block each row exited after (``num_blocks - 1`` = full depth); uem_evals: (B,)
    int64 heads evaluated; reused: None (no cache), a (B,) bool of rows that took the reused
    span, or a Python bool for a batch of one. A batch of one may hold Python ints, readable
    as ``one_row`` = (exit block, heads evaluated), else None; they become tensors on first access."""

    __slots__ = ("sample", "_exit_block", "_uem_evals", "one_row", "reused")

    def __init__(self, sample: torch.Tensor, exit_block, uem_evals, reused=None):
        self.sample, self.reused = sample, reused
        one = isinstance(exit_block, int) and isinstance(uem_evals, int)
        self.one_row = (exit_block, uem_evals) if one else None
        self._exit_block, self._uem_evals = (None, None) if one else (exit_block, uem_evals)

    def _as_tensor(self, v: int) -> torch.Tensor:
        return torch.full((1,), v, dtype=torch.long, device=self.sample.device)

    @property
    def exit_block(self) -> torch.Tensor:
        if self._exit_block is None:
            self._exit_block = self._as_tensor(self.one_row[0])
        return self._exit_block

    @property
    def uem_evals(self) -> torch.Tensor:
        if self._uem_evals is None:
            self._uem_evals = self._as_tensor(self.one_row[1])
        return self._uem_evals

    @property
    def blocks_run(self) -> torch.Tensor:
        return self.exit_block + 1


def call_from_args(exit_threshold, exit_policy) -> Call:
    """The ``Call`` of a forward's ``exit_threshold`` (a float) or ``exit_policy`` (a ``Call``
    or a rule that is the same at every call)."""
    if exit_threshold is not None and exit_policy is not None:
        raise TypeError("pass exit_threshold (a float) or exit_policy (a Call or an ExitPolicy), not both")
    return as_call(exit_policy if exit_policy is not None else exit_threshold)


def forward_early_exit(net, x, timesteps, *args, exit_threshold: Optional[float] = None, exit_policy=None,
                       reuse_cache=None, **kwargs) -> EarlyExitOutput:
    """``ExitBackbone.forward_early_exit``: the early-exit forward with per-sample accounting; with
    ``reuse_cache`` (the sampling run's) it stores and reuses the cache's spans."""
    cond = net._cond_from_args(args, kwargs)
    call = call_from_args(exit_threshold, exit_policy)
    cache = reuse_cache if reuse_cache is not None and reuse_cache.spans else None
    return EarlyExitOutput(*forward(net, x, timesteps, cond, call, cache))


def forward_truncated(net, x, timesteps, cond, last: int) -> torch.Tensor:
    """``ExitBackbone._forward_truncated``: blocks 0..last and the output head, for every row
    (no uncertainty head)."""
    h, carry = net.embed(x, timesteps, cond)
    for i in range(last + 1):
        h = net.run_block(i, h, carry)
    return net.output_head(h)


def forward(net, x: torch.Tensor, timesteps, cond, call, cache=None) -> tuple:
    """One call of ``net`` on ``x`` (module docstring): ``(sample, exit_block, uem_evals, reused)``."""
    last = call.last_block(net.num_blocks)
    if cache is None and call.reuse is not None:
        raise ValueError(f"exit policy {call.spec} reuses blocks: call forward_early_exit with reuse_cache= "
                         f"(a ReuseCache of the sampling run, libs/exits/reuse.py), as a SamplingRun does")
    if cache is None and call.rule is None:  # every row exits after a known block
        sample = net._forward_truncated(x, timesteps, cond, last)
        if x.shape[0] == 1:
            return sample, last, 0, None
        exit_block = torch.full((x.shape[0],), last, dtype=torch.long, device=x.device)
        return sample, exit_block, torch.zeros_like(exit_block), None
    if cache is not None:
        _check_cache(net, call, cache)
        cache.begin_call(x.shape[0], timesteps)  # a forecast needs the call's time
    h, carry = net.embed(x, timesteps, cond)
    return run(net, h, carry, call, cache)


def _check_cache(net, call, cache) -> None:
    """The cache's spans are checked against ``net`` once per run; the call's reused span must be one of them."""
    span = call.reuse_span(net.num_blocks)
    missing = span is not None and span not in cache.spans
    for sp in (() if cache.checked_for is net else cache.spans) + ((span,) if missing else ()):
        problem = net.reuse_problem(sp)
        if problem:
            raise ValueError(f"exit policy {call.spec}: {problem}")
    if missing:
        raise ValueError(f"exit policy {call.spec} reuses blocks {span[0]}..{span[1] - 1}, which the run's "
                         f"cache does not keep (it keeps {list(cache.spans)})")
    cache.checked_for = net


def run(net, h: torch.Tensor, carry, call, cache=None, one_row: Optional[bool] = None) -> tuple:
    """Blocks, exit tests, compaction and reuse of one call; ``h``, ``carry`` from ``net.embed``.
    ``one_row`` (default: a batch of one) picks the batch-of-one form."""
    N = net.num_blocks
    last, span = call.last_block(N), call.reuse_span(N)
    starts, ends = _stored_spans(cache, last, span)
    one = h.shape[0] == 1 if one_row is None else one_row
    rows = (_OneRow if one else _Rows)(net, h, carry, call.rule, cache)
    i = 0
    while True:
        if span is not None and i == span[0]:
            rows.through_span(span, call.gate)
            i = span[1] - 1
        else:
            rows.block(i, starts.get(i, ()), ends.get(i, ()))
            if i < last and call.rule is not None and rows.decide(i):
                break  # every row has exited
        if i >= last:
            break
        i += 1
    return rows.result(i)


def _stored_spans(cache, last: int, span) -> Tuple[Dict[int, list], Dict[int, list]]:
    """{block: the cached spans the call computes that start there}, {block: those that end there}."""
    starts: Dict[int, list] = {}
    ends: Dict[int, list] = {}
    for s, e in (cache.spans if cache is not None else ()):
        if e - 1 <= last and (span is None or e <= span[0] or span[1] <= s):
            starts.setdefault(s, []).append((s, e))
            ends.setdefault(e - 1, []).append((s, e))
    return starts, ends


def _compute_span(net, span, h, carry):
    for j in range(*span):
        h = net.run_block(j, h, carry)
    return h


class _Rows:
    """The active rows of one call: their tokens ``h``, carry, rule state, original rows
    (``active``; None: all, in order), the exit groups and the heads run."""

    def __init__(self, net, h, carry, rule, cache):
        self.net, self.h, self.carry, self.rule, self.cache = net, h, carry, rule, cache
        self.B, self.device = h.shape[0], h.device
        self.state = self._initial_state()
        self.active: Optional[torch.Tensor] = None
        self.groups: List[tuple] = []  # (exit block, original rows or None = all rows, output head)
        self.heads: List[int] = []  # blocks after which a certainty was computed
        self.entry: dict = {}  # span -> the tokens entering it (a cached span the call computes)
        self.reused = self._not_reused() if cache is not None else None
        self.i = 0

    def _initial_state(self):
        return self.rule.init_state(self.B, self.device) if self.rule is not None else None

    def _not_reused(self):
        return torch.zeros(self.B, dtype=torch.bool, device=self.device)

    def certainty(self) -> torch.Tensor:
        self.heads.append(self.i)
        return self.net.mean_certainty(self.i, self.h, self.carry)  # (b,)

    def block(self, i: int, starts, ends) -> None:
        """Block i for the active rows, with the cache entries of the spans that start or end there."""
        self.i, net = i, self.net
        for sp in starts:
            self.entry[sp] = self.h if net.reuse_reads_input else None
        self.h = net.run_block(i, self.h, self.carry)
        for sp in ends:
            self.cache.store(sp, self.active, net.cache_value(sp, self.entry.pop(sp), self.h))

    def decide(self, i: int) -> bool:
        """The rule's exits after block i: exited rows leave the batch; True when none is left."""
        passed, self.state = self.rule.decide(i, self.net.exit_patience(i), self.certainty, self.state)
        n = 0 if passed is None else int(passed.sum())  # the one host sync of a deciding block
        if n == 0:
            return False
        if n == passed.shape[0]:  # every active row exits here: nothing to compact
            self.groups.append((i, self.active, self.net.output_head(self.h)))
            self.h = None
            return True
        done, keep = passed.nonzero().squeeze(1), passed.logical_not().nonzero().squeeze(1)
        self.groups.append((i, done if self.active is None else self.active[done], self.net.output_head(self.h[done])))
        # Exited rows leave the batch: compact the activations, cache entries, rule state and carry.
        self.active = keep if self.active is None else self.active[keep]
        self.h = self.h[keep]
        self.entry = {sp: (v[keep] if v is not None else None) for sp, v in self.entry.items()}
        self.state = self.state[keep] if self.state is not None else None
        self.carry = self.net.select_rows(self.carry, keep)
        return False

    def through_span(self, span, gate: Optional[float] = None) -> None:
        """The reused span for the active rows: each row's cached value, or the span computed
        (and cached) for the rows with none or, with a ``gate``, whose certainty is below it."""
        net, h, active = self.net, self.h, self.active
        value, have = self.cache.fetch(span, active)
        if gate is not None and have is not False:
            have = self._gated(span, gate, have)
        if have is True:
            self.h = net.reuse_value(span, h, value)
        elif have is False:
            self.h = _compute_span(net, span, h, self.carry)
            self.cache.store(span, active, net.cache_value(span, h, self.h))
        else:
            lack, take = have.logical_not().nonzero().squeeze(1), have.nonzero().squeeze(1)
            sub = _compute_span(net, span, h[lack], net.select_rows(self.carry, lack))
            self.cache.store(span, lack if active is None else active[lack], net.cache_value(span, h[lack], sub))
            self.h = sub.new_empty((h.shape[0], *sub.shape[1:]))
            self.h.index_copy_(0, lack, sub)
            self.h.index_copy_(0, take, net.reuse_value(span, h[take], value[take]))
        self._took(have)

    def _gated(self, span, gate: float, have):
        """``have`` and (head span[0]-1's mean certainty >= gate), as True, False or a mask.
        The head counts for the rows that go through the span (block span[0] - 0.5 of ``heads``)."""
        self.heads.append(span[0] - 0.5)
        have = (self.net.mean_certainty(span[0] - 1, self.h, self.carry) >= gate) & have  # (b,); float32 compare
        n = int(have.sum())  # host sync
        return True if n == have.shape[0] else False if n == 0 else have

    def _took(self, have) -> None:
        if isinstance(have, bool):
            have = torch.full((self.h.shape[0],), have, dtype=torch.bool, device=self.device)
        self.reused = have if self.active is None else self.reused.index_copy(0, self.active, have)

    def result(self, i: int) -> tuple:
        if self.h is not None:
            self.groups.append((i, self.active, self.net.output_head(self.h)))
        return (*_assemble(self.groups, self.B, self.heads, self.device), self.reused)


class _OneRow(_Rows):
    """A batch of one (module docstring): decisions on Python values, results as Python values."""

    def __init__(self, *args):
        super().__init__(*args)
        self.window = {}  # tokens after the blocks with patience > 1, whose heads a rule may evaluate later

    def _initial_state(self):
        return None

    def _not_reused(self):
        return False

    def certainty(self, block: Optional[int] = None) -> float:
        j = self.i if block is None else block
        self.heads.append(j)
        return self.net.mean_certainty_one(j, self.h if j == self.i else self.window[j], self.carry)  # host read

    def decide(self, i: int) -> bool:
        patience = self.net.exit_patience(i)
        if patience > 1:
            self.window[i] = self.h
        exits, self.state = self.rule.decide_one(i, patience, self.certainty, self.state)
        return bool(exits)

    def _gated(self, span, gate: float, have) -> bool:
        self.heads.append(span[0] - 0.5)
        return self.net.mean_certainty_one(span[0] - 1, self.h, self.carry) >= float32(gate)

    def _took(self, have) -> None:
        self.reused = have

    def result(self, i: int) -> tuple:
        return self.net.output_head(self.h), i, len(self.heads), self.reused


def _assemble(groups, B: int, head_blocks: List[int], device) -> tuple:
    """Per-row sample, exit block and heads run from the exit groups, in the original row order.
    A row exiting after block k ran the head after every block of ``head_blocks`` up to k."""
    def evals(k):
        return sum(1 for b in head_blocks if b <= k)

    if len(groups) == 1:  # all rows exited together: the output is already in row order
        k, _, sample = groups[0]
        return (sample, torch.full((B,), k, dtype=torch.long, device=device),
                torch.full((B,), evals(k), dtype=torch.long, device=device))
    first = groups[0][2]
    sample = first.new_empty((B, *first.shape[1:]))
    exit_block = torch.empty(B, dtype=torch.long, device=device)
    uem_evals = torch.empty(B, dtype=torch.long, device=device)
    for k, rows, out in groups:
        sample.index_copy_(0, rows, out)
        exit_block.index_fill_(0, rows, k)
        uem_evals.index_fill_(0, rows, evals(k))
    return sample, exit_block, uem_evals
