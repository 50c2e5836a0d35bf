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
