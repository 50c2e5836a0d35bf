"""Compute accounting for early-exit sampling: a ``net_fn -> net_fn`` wrapper that runs the
network under an exit policy and records, per sampling step, how many rows exited after each
block and how many uncertainty heads ran.

The record is a (steps, num_blocks) count matrix and a head count kept on the network's
device (no host sync per call); from them come the mean blocks per network call, the layer
ratio, the mean exit block per sampling step and, with ``libs.models.flops``, GFLOPs per image.

Reuse (``libs/exits/reuse.py``): ``wrap`` makes a new ``ReuseCache`` for every sampling run it
wraps (one batch), when the policy reuses; a second (steps, num_blocks) matrix counts the rows
whose block j was taken from the cache rather than computed. Blocks computed = blocks up to the
exit block minus those reused: ``mean_blocks``, ``layer_ratio`` and GFLOPs count what was
computed; ``blocks_reused`` is the mean reused per call, and ``cache_bytes_per_image`` the
largest cache a run held per image.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from libs.exits.policy import as_policy
from libs.exits.reuse import ReuseCache
from libs.run.distributed import sum_rows


class ExitRecorder:
    """Counts exits per (network call index within a sampling run, exit block)."""

    def __init__(self, num_blocks: int, device=None):
        self.num_blocks = num_blocks
        self.device = device
        self._counts = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N)
        self._head_evals = torch.zeros((), dtype=torch.long, device=device)  # uncertainty heads run, all rows
        # One-row calls are counted on the host (no tensor op per call) and added in on reading.
        self._host_counts: Dict[Tuple[int, int], int] = {}  # (call, exit block) -> rows
        self._host_heads = 0
        self._call = 0
        self._reused = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N) rows reusing
        self._host_reused: Dict[Tuple[int, int, int], int] = {}  # (call, start, stop) -> rows
        self.cache_bytes_per_image = 0

    @property
    def reused(self) -> torch.Tensor:
        """(steps, num_blocks) rows whose block was taken from the cache, per network call index
        (as many steps as ``counts``)."""
        self._flush()
        self._reused = self._grown_matrix(self._reused, self._counts.shape[0], self._reused.device)
        return self._reused

    @property
    def counts(self) -> torch.Tensor:
        """(steps, num_blocks) rows that exited after each block, per network call index."""
        self._flush()
        return self._counts

    @property
    def head_evals(self) -> torch.Tensor:
        """Uncertainty heads run, summed over rows and calls (a 0-d tensor)."""
        self._flush()
        return self._head_evals

    def start_run(self) -> None:
        """A new sampling run (batch) starts: call indices restart at 0."""
        self._call = 0

    def record(self, exit_block: torch.Tensor, uem_evals: Optional[torch.Tensor] = None,
               reused: Optional[torch.Tensor] = None, span: Optional[Tuple[int, int]] = None) -> None:
        """One call's rows: exit blocks (B,), heads run (B,), and which rows took ``span``
        (blocks start .. stop-1) from the cache ((B,) bool)."""
        counts = self._grown(self._call + 1, exit_block.device)
        counts[self._call] += torch.bincount(exit_block, minlength=self.num_blocks)
        if uem_evals is not None:
            self._head_evals = self._head_evals.to(uem_evals.device) + uem_evals.sum()
        if reused is not None and span is not None:
            self._reused = self._grown_matrix(self._reused, self._call + 1, reused.device)
            self._reused[self._call, span[0]:span[1]] += reused.sum()
        self._call += 1

    def record_one(self, exit_block: int, uem_evals: int = 0, reused: bool = False,
                   span: Optional[Tuple[int, int]] = None) -> None:
        """``record`` for one row given as Python ints (and a bool)."""
        key = (self._call, exit_block)
        self._host_counts[key] = self._host_counts.get(key, 0) + 1
        self._host_heads += uem_evals
        if reused and span is not None:
            key = (self._call, *span)
            self._host_reused[key] = self._host_reused.get(key, 0) + 1
        self._call += 1

    def _grown(self, steps: int, device) -> torch.Tensor:
        """The count matrix with at least ``steps`` rows, on ``device``, writable in place here."""
        self._counts = self._grown_matrix(self._counts, steps, device)
        return self._counts

    def _grown_matrix(self, counts: torch.Tensor, steps: int, device) -> torch.Tensor:
        counts = counts.to(device)
        if counts.is_inference() and not torch.is_inference_mode_enabled():
            counts = counts.clone()  # made while sampling under inference mode
        if steps > counts.shape[0]:
            grow = torch.zeros(steps - counts.shape[0], self.num_blocks, dtype=torch.long, device=device)
            counts = torch.cat([counts, grow])
        return counts

    def _flush(self) -> None:
        if self._host_counts:
            steps = max(call for call, _ in self._host_counts) + 1
            add = torch.zeros(steps, self.num_blocks, dtype=torch.long)
            for (call, block), n in self._host_counts.items():
                add[call, block] += n
            counts = self._grown(steps, self._counts.device)
            counts[:steps] += add.to(counts.device)
            self._host_counts = {}
        if self._host_heads:
            self._head_evals = self._head_evals + self._host_heads
            self._host_heads = 0
        if self._host_reused:
            steps = max(call for call, _, _ in self._host_reused) + 1
            add = torch.zeros(steps, self.num_blocks, dtype=torch.long)
            for (call, s, e), n in self._host_reused.items():
                add[call, s:e] += n
            self._reused = self._grown_matrix(self._reused, steps, self._reused.device)
            self._reused[:steps] += add.to(self._reused.device)
            self._host_reused = {}

    def wrap(self, net, exit_policy):
        """``net_fn(x, t_net, cond) -> eps`` that exits per ``exit_policy`` and records where.

        The policy is asked for the rule of each network call of the run (``for_call``), so
        per-step policies (``profile:``) apply their step's exit. A policy that reuses gets a
        new reuse cache here: one per wrapped sampling run (one batch), never shared."""
        policy = as_policy(exit_policy)
        eps = getattr(net, "eps_channels", None)  # noise channels of a wider output (DiT's learned sigma)
        N = self.num_blocks
        cache = ReuseCache(policy.cache_spans(N)) if policy.reuses else None

        def net_fn(x, t_net, cond=None):
            call = policy.for_call(self._call)
            out = net.forward_early_exit(x, t_net, cond, exit_policy=call, reuse_cache=cache)
            span = call.reuse_span(N) if out.reused is not None else None
            one = out.one_row
            if one is not None:
                self.record_one(*one, reused=bool(out.reused), span=span)
            else:
                self.record(out.exit_block, out.uem_evals, out.reused, span)
            if cache is not None:
                self.cache_bytes_per_image = max(self.cache_bytes_per_image, cache.bytes_per_row())
            return out.sample if eps is None else out.sample[:, :eps]

        return net_fn

    def reduce(self, accelerator) -> None:
        """Sum the counts over processes (every process must call this)."""
        if accelerator.num_processes > 1:
            device = accelerator.device
            self._counts = sum_rows(self.counts.clone(), accelerator)  # processes may hold different step counts
            self._head_evals = accelerator.reduce(self.head_evals.to(device).reshape(1).clone(), reduction="sum")[0]
            self._reused = sum_rows(self.reused.clone(), accelerator)

    # ------------------------------------------------------------------ summaries (host side)
    def summary(self, flops, num_images: int) -> dict:
        """Means over the recorded calls; with ``flops`` (a ``libs.models.flops.NetworkFlops``, or
        None) also GFLOPs per image from the blocks and heads that ran."""
        counts = self.counts.cpu().double()  # (steps, N)
        reused = self.reused.cpu().double()  # (steps, N)
        blocks = torch.arange(1, self.num_blocks + 1, dtype=torch.float64)  # blocks run if exiting at k
        rows, step_rows = counts.sum(), counts.sum(1).clamp(min=1)
        reused_mean = float(reused.sum() / rows) if rows > 0 else 0.0
        mean_blocks = float((counts.sum(0) * blocks).sum() / rows) - reused_mean if rows > 0 else float("nan")
        per_step = ((counts * (blocks - 1)).sum(1) / step_rows).tolist()  # mean exit block
        reused_per_step = reused.sum(1) / step_rows
        out = {"calls_rows": int(rows), "mean_blocks": mean_blocks, "layer_ratio": mean_blocks / self.num_blocks,
               "exit_block_per_step": per_step, "num_blocks": self.num_blocks, "blocks_reused": reused_mean,
               "blocks_computed_per_step": ((counts * blocks).sum(1) / step_rows - reused_per_step).tolist(),
               "blocks_reused_per_step": reused_per_step.tolist(),
               "cache_bytes_per_image": self.cache_bytes_per_image}
        if flops is not None:
            cum = torch.tensor([sum(flops.blocks[: k + 1]) for k in range(self.num_blocks)], dtype=torch.float64)
            per_row = flops.embed + flops.output_head + cum  # (N,) without heads
            total = float((counts.sum(0) * per_row).sum()) + float(self.head_evals) * flops.uem_head
            total -= float((reused.sum(0) * torch.tensor(flops.blocks, dtype=torch.float64)).sum())
            out["gflops_per_image"] = total / max(num_images, 1) / 1e9
        return out
