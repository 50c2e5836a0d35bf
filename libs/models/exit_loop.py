"""The per-sample early-exit loop of an ``ExitBackbone``: blocks, exit tests, batch compaction.

It uses only the backbone contract (``libs/models/backbone.py``): ``run_block``, ``select_rows``,
``mean_certainty(_one)``, ``exit_patience``, ``output_head``.

After each block but the last, the exit policy decides from the block's mean certainty which
rows stop there (``ExitPolicy.decide``); a row that stops takes the shared output head on
that block's tokens and leaves the batch, so later blocks run only on the rows still active.
Two forms, with the same result per sample (bitwise on CPU in fp32):

* ``run_one``: a batch of one. The decision is taken on Python values
  (``ExitPolicy.decide_one``): the row either exits (output head, return) or continues, so
  there is no index, compaction or scatter at all; one host read of the certainty per test.
  A rule may also ask for the certainty of an earlier block of the patience window
  (``certainty(block)``): the threshold rule evaluates a patience block's head only once a
  later block passes, since before that it cannot change the decision.
* ``run_batch``: one host read per deciding block (how many rows pass); no compaction work
  when none does, no index work when all do; the outputs are scattered back to their rows
  only when rows exited at different blocks.

Both return ``(sample, exit_block, uem_evals)`` as ``EarlyExitOutput`` describes them
(``run_one``: Python ints).

With a reuse cache (``libs/exits/reuse.py``), ``run_one_cached`` and ``run_batch_cached`` do the
same and also: run only up to the policy's static exit; store, after the last block of each
cached span the call computes (spans disjoint from the one it reuses), the backbone's
``cache_value`` for the rows there (their original rows: the active index); at the first block
of the span the call reuses (``policy.reuse_span``), take each row's own cached value
(``reuse_value``) and skip the span's blocks, or compute them for the rows with nothing cached
(a sub-batch with its carry: a reusable span leaves the carry as it found it); no exit test
after a block of that span. They return a fourth item, which rows reused (a (B,) bool tensor;
``run_one_cached``: a bool).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch

Result = Tuple[torch.Tensor, Union[torch.Tensor, int], Union[torch.Tensor, int]]


def run_one(net, h: torch.Tensor, carry, policy) -> Result:
    """Blocks and exit tests for a batch of one row; ``h``, ``carry`` from ``net.embed``.
    Returns the exit block and the heads evaluated as Python ints (``EarlyExitOutput`` takes
    them so)."""
    last = net.num_blocks - 1
    state, evals, i = None, 0, 0
    window = {}  # outputs of the blocks with patience > 1, whose heads a rule may evaluate later

    def certainty(block: Optional[int] = None) -> float:
        nonlocal evals
        evals += 1
        if block is None or block == i:
            return net.mean_certainty_one(i, h, carry)  # the host read
        return net.mean_certainty_one(block, window[block], carry)

    for i in range(net.num_blocks):
        h = net.run_block(i, h, carry)
        if i == last:
            break  # the last block needs no exit test
        patience = net.exit_patience(i)
        if patience > 1:
            window[i] = h
        exits, state = policy.decide_one(i, patience, certainty, state)
        if exits:
            break
    return net.output_head(h), i, evals


def run_batch(net, h: torch.Tensor, carry, policy) -> Result:
    """Blocks, exit tests and compaction for a batch of rows; ``h``, ``carry`` from ``net.embed``."""
    B, device = h.shape[0], h.device
    last = net.num_blocks - 1
    state = policy.init_state(B, device)  # per-row decision state, compacted with the rows
    active: Optional[torch.Tensor] = None  # original row of each active row (None: all, in order)
    groups: List[tuple] = []  # (exit block, original rows or None = all rows, output head)
    head_blocks: List[int] = []  # blocks after which the active rows' certainty was computed
    i = 0

    def certainty() -> torch.Tensor:
        head_blocks.append(i)
        return net.mean_certainty(i, h, carry)  # (b,)

    for i in range(net.num_blocks):
        h = net.run_block(i, h, carry)
        if i == last:
            break
        passed, state = policy.decide(i, net.exit_patience(i), certainty, state)
        if passed is None:
            continue  # no row can exit here: no host sync
        n = int(passed.sum())  # the one host sync of a deciding block
        if n == 0:
            continue
        if n == passed.shape[0]:  # every active row exits here: nothing to compact
            groups.append((i, active, net.output_head(h)))
            h = None
            break
        done, keep = passed.nonzero().squeeze(1), passed.logical_not().nonzero().squeeze(1)
        groups.append((i, done if active is None else active[done], net.output_head(h[done])))
        # Exited rows leave the batch: compact the activations, the decision state and the carry.
        active = keep if active is None else active[keep]
        h = h[keep]
        state = state[keep] if state is not None else None
        carry = net.select_rows(carry, keep)
    if h is not None:
        groups.append((last, active, net.output_head(h)))
    return _assemble(groups, B, head_blocks, device)


def _assemble(groups, B: int, head_blocks: List[int], device) -> Result:
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


# ----------------------------------------------------------------------------- with a reuse cache
def _plan(net, policy, cache):
    """(last block run, the reused span or None, {block: the cached spans the call computes that
    start there}, {block: those that end there})."""
    N = net.num_blocks
    static = policy.static_exit(N)
    last = N - 1 if static is None else static
    span = policy.reuse_span(N)
    starts, ends = {}, {}
    for s, e in cache.spans:
        if e - 1 <= last and (span is None or e <= span[0] or span[1] <= s):
            starts.setdefault(s, []).append((s, e))
            ends.setdefault(e - 1, []).append((s, e))
    return last, span, starts, ends


def _compute_span(net, span, h, carry):
    for j in range(*span):
        h = net.run_block(j, h, carry)
    return h


def run_one_cached(net, h: torch.Tensor, carry, policy, cache):
    """``run_one`` with a reuse cache (module docstring); returns (sample, exit, evals, reused)."""
    last, span, starts, ends = _plan(net, policy, cache)
    reads = net.reuse_reads_input
    entry, state, evals, reused, i = {}, None, 0, False, 0
    window = {}

    def certainty(block: Optional[int] = None) -> float:
        nonlocal evals
        evals += 1
        if block is None or block == i:
            return net.mean_certainty_one(i, h, carry)
        return net.mean_certainty_one(block, window[block], carry)

    while True:
        if span is not None and i == span[0]:
            value, have = cache.fetch(span, None)
            if have:
                h, reused = net.reuse_value(span, h, value), True
            else:
                h_in = h
                h = _compute_span(net, span, h, carry)
                cache.store(span, None, net.cache_value(span, h_in, h))
            i = span[1] - 1
        else:
            for sp in starts.get(i, ()):
                entry[sp] = h if reads else None
            h = net.run_block(i, h, carry)
            for sp in ends.get(i, ()):
                cache.store(sp, None, net.cache_value(sp, entry.pop(sp), h))
            if i < last:
                patience = net.exit_patience(i)
                if patience > 1:
                    window[i] = h
                exits, state = policy.decide_one(i, patience, certainty, state)
                if exits:
                    break
        if i >= last:
            break
        i += 1
    return net.output_head(h), i, evals, reused


def _through_span(net, span, h, carry, cache, active):
    """The reused span for the active rows: (h after the span, which active rows reused: a bool
    or a (b,) bool mask)."""
    value, have = cache.fetch(span, active)
    if have is True:
        return net.reuse_value(span, h, value), True
    if have is False:
        out = _compute_span(net, span, h, carry)
        cache.store(span, active, net.cache_value(span, h, out))
        return out, False
    lack, take = have.logical_not().nonzero().squeeze(1), have.nonzero().squeeze(1)
    sub = _compute_span(net, span, h[lack], net.select_rows(carry, lack))
    cache.store(span, lack if active is None else active[lack], net.cache_value(span, h[lack], sub))
    out = sub.new_empty((h.shape[0], *sub.shape[1:]))
    out.index_copy_(0, lack, sub)
    out.index_copy_(0, take, net.reuse_value(span, h[take], value[take]))
    return out, have


def run_batch_cached(net, h: torch.Tensor, carry, policy, cache):
    """``run_batch`` with a reuse cache (module docstring); returns (sample, exit, evals, reused)."""
    B, device = h.shape[0], h.device
    last, span, starts, ends = _plan(net, policy, cache)
    reads = net.reuse_reads_input
    state = policy.init_state(B, device)
    active: Optional[torch.Tensor] = None
    groups: List[tuple] = []
    head_blocks: List[int] = []
    entry, reused, i = {}, torch.zeros(B, dtype=torch.bool, device=device), 0

    def certainty() -> torch.Tensor:
        head_blocks.append(i)
        return net.mean_certainty(i, h, carry)

    while True:
        if span is not None and i == span[0]:
            h, took = _through_span(net, span, h, carry, cache, active)
            took = torch.full((h.shape[0],), took, dtype=torch.bool, device=device) if isinstance(took, bool) else took
            reused = took if active is None else reused.index_copy(0, active, took)
            i = span[1] - 1
            passed = None
        else:
            for sp in starts.get(i, ()):
                entry[sp] = h if reads else None
            h = net.run_block(i, h, carry)
            for sp in ends.get(i, ()):
                cache.store(sp, active, net.cache_value(sp, entry.pop(sp), h))
            passed = None
            if i < last:
                passed, state = policy.decide(i, net.exit_patience(i), certainty, state)
        if i >= last:
            break
        n = 0 if passed is None else int(passed.sum())  # the one host sync of a deciding block
        if n and n == passed.shape[0]:  # every active row exits here
            groups.append((i, active, net.output_head(h)))
            h = None
            break
        if n:
            done, keep = passed.nonzero().squeeze(1), passed.logical_not().nonzero().squeeze(1)
            groups.append((i, done if active is None else active[done], net.output_head(h[done])))
            active = keep if active is None else active[keep]
            h, entry = h[keep], {sp: (v[keep] if v is not None else None) for sp, v in entry.items()}
            state = state[keep] if state is not None else None
            carry = net.select_rows(carry, keep)
        i += 1
    if h is not None:
        groups.append((i, active, net.output_head(h)))
    return (*_assemble(groups, B, head_blocks, device), reused)
