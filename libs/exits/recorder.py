"""Compute accounting for early-exit sampling: per sampling step, how many rows exited after
each block and how many uncertainty heads ran (``record_call``, from the sampling run of
``libs/exits/sampling_run.py``; ``wrap`` makes such a run that records here).

The record is a (steps, num_blocks) count matrix and a head count kept on the network's
device (no host sync per call); from them come the mean blocks per network call, the layer
ratio, the mean exit block per sampling step and, with ``libs.models.flops``, GFLOPs per image.

Reuse (``libs/exits/reuse.py``): a second (steps, num_blocks) matrix counts the rows
whose block j was taken from the cache rather than computed. Blocks computed = blocks up to the
exit block minus those reused: ``mean_blocks``, ``layer_ratio`` and GFLOPs count what was
computed; ``blocks_reused`` is the mean reused per call, and ``cache_bytes_per_image`` the
largest cache a run held per image. A third counts, of the reused blocks, those whose value
was a forecast (``libs/exits/forecast.py``: extrapolated from two or more cached values)
rather than a copy of the last: ``blocks_forecast`` (mean per call, part of ``blocks_reused``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from libs.exits.sampling_run import SamplingRun
from libs.run.distributed import sum_rows


class ExitRecorder:
    """Counts exits per (network call index within a sampling run, exit block)."""

    def __init__(self, num_blocks: int, device=None):
        self.num_blocks = num_blocks
        self.device = device
        self._counts = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N)
        self._head_evals = torch.zeros((), dtype=torch.long, device=device)  # uncertainty heads run, all rows
        self._reused = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N) rows reusing
        self._forecast = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N) of them forecast
        # One-row calls are counted on the host (no tensor op per call: 0.4 us against 44 us a
        # call on one CPU thread) and added in on reading: (call, start, stop) -> rows.
        self._host_counts: Dict[Tuple[int, int, int], int] = {}  # exits after block k: (call, k, k + 1)
        self._host_reused: Dict[Tuple[int, int, int], int] = {}
        self._host_forecast: Dict[Tuple[int, int, int], int] = {}
        self._host_heads = 0
        self._call = 0
        self.cache_bytes_per_image = 0

    @property
    def reused(self) -> torch.Tensor:
        """(steps, num_blocks) rows whose block was taken from the cache, per network call index
        (as many steps as ``counts``)."""
        self._flush()
        self._reused = self._grown(self._reused, self._counts.shape[0], self._reused.device)
        return self._reused

    @property
    def forecast(self) -> torch.Tensor:
        """(steps, num_blocks) rows whose block's cached value was a forecast (of ``reused``)."""
        self._flush()
        self._forecast = self._grown(self._forecast, self._counts.shape[0], self._forecast.device)
        return self._forecast

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
               reused: Optional[torch.Tensor] = None, span: Optional[Tuple[int, int]] = None,
               forecast: Optional[torch.Tensor] = None) -> None:
        """One call's rows: exit blocks (B,), heads run (B,), which rows took ``span`` (blocks
        start .. stop-1) from the cache ((B,) bool) and which rows' cached values there were
        forecasts ((B,) bool; counted where ``reused`` too)."""
        self._counts = self._grown(self._counts, self._call + 1, exit_block.device)
        self._counts[self._call] += torch.bincount(exit_block, minlength=self.num_blocks)
        if uem_evals is not None:
            self._head_evals = self._head_evals.to(uem_evals.device) + uem_evals.sum()
        if reused is not None and span is not None:
            self._reused = self._grown(self._reused, self._call + 1, reused.device)
            self._reused[self._call, span[0]:span[1]] += reused.sum()
            if forecast is not None:
                self._forecast = self._grown(self._forecast, self._call + 1, reused.device)
                self._forecast[self._call, span[0]:span[1]] += (reused & forecast.to(reused.device)).sum()
        self._call += 1

    def record_one(self, exit_block: int, uem_evals: int = 0, reused: bool = False,
                   span: Optional[Tuple[int, int]] = None, forecast: bool = False) -> None:
        """``record`` for one row given as Python ints (and bools)."""
        key = (self._call, exit_block, exit_block + 1)
        self._host_counts[key] = self._host_counts.get(key, 0) + 1
        if reused and span is not None:
            key = (self._call, *span)
            self._host_reused[key] = self._host_reused.get(key, 0) + 1
            if forecast:
                self._host_forecast[key] = self._host_forecast.get(key, 0) + 1
        self._host_heads += uem_evals
        self._call += 1

    def _grown(self, counts: torch.Tensor, steps: int, device) -> torch.Tensor:
        """``counts`` with at least ``steps`` rows, on ``device``, writable in place here."""
        counts = counts.to(device)
        if counts.is_inference() and not torch.is_inference_mode_enabled():
            counts = counts.clone()  # made while sampling under inference mode
        if steps > counts.shape[0]:
            grow = torch.zeros(steps - counts.shape[0], self.num_blocks, dtype=torch.long, device=device)
            counts = torch.cat([counts, grow])
        return counts

    def _with_host(self, counts: torch.Tensor, host: Dict[Tuple[int, int, int], int]) -> torch.Tensor:
        """``counts`` plus the host-side rows ``host``."""
        steps = max(call for call, _, _ in host) + 1
        add = torch.zeros(steps, self.num_blocks, dtype=torch.long)
        for (call, s, e), n in host.items():
            add[call, s:e] += n
        counts = self._grown(counts, steps, counts.device)
        counts[:steps] += add.to(counts.device)
        return counts

    def _flush(self) -> None:
        if self._host_counts:
            self._counts, self._host_counts = self._with_host(self._counts, self._host_counts), {}
        if self._host_reused:
            self._reused, self._host_reused = self._with_host(self._reused, self._host_reused), {}
        if self._host_forecast:
            self._forecast, self._host_forecast = self._with_host(self._forecast, self._host_forecast), {}
        if self._host_heads:
            self._head_evals, self._host_heads = self._head_evals + self._host_heads, 0

    def record_call(self, out, span: Optional[Tuple[int, int]] = None, cache_bytes_per_row: int = 0,
                    forecast: Optional[torch.Tensor] = None) -> None:
        """One network call's ``EarlyExitOutput`` (``span``: the blocks its reusing rows took
        from the cache; ``cache_bytes_per_row``: the run's cache after the call; ``forecast``:
        (B,) bool, the rows whose cached value of ``span`` was a forecast, None: copies)."""
        one = out.one_row
        if one is not None:
            reused = bool(out.reused)
            self.record_one(*one, reused=reused, span=span, forecast=reused and forecast is not None and bool(forecast[0]))
        else:
            self.record(out.exit_block, out.uem_evals, out.reused, span, forecast)
        self.cache_bytes_per_image = max(self.cache_bytes_per_image, cache_bytes_per_row)

    def wrap(self, net, exit_policy) -> SamplingRun:
        """A sampling run of ``net`` under ``exit_policy`` that records here (a new one, with a
        new reuse cache, per run)."""
        return SamplingRun(net, exit_policy, self)

    def reduce(self, accelerator) -> None:
        """Sum the counts over processes (every process must call this)."""
        if accelerator.num_processes > 1:
            device = accelerator.device
            self._counts = sum_rows(self.counts.clone(), accelerator)  # processes may hold different step counts
            self._head_evals = accelerator.reduce(self.head_evals.to(device).reshape(1).clone(), reduction="sum")[0]
            self._reused = sum_rows(self.reused.clone(), accelerator)
            self._forecast = sum_rows(self.forecast.clone(), accelerator)

    # ------------------------------------------------------------------ summaries (host side)
    def summary(self, flops, num_images: int) -> dict:
        """Means over the recorded calls; with ``flops`` (a ``libs.models.flops.NetworkFlops``, or
        None) also GFLOPs per image from the blocks and heads that ran, per call without the
        heads (``gflops_per_step``) and the pieces of a call (``gflops_pieces``)."""
        counts = self.counts.cpu().double()  # (steps, N)
        reused = self.reused.cpu().double()  # (steps, N)
        forecast = self.forecast.cpu().double()  # (steps, N), part of reused
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
               "blocks_forecast": float(forecast.sum() / rows) if rows > 0 else 0.0,
               "blocks_forecast_per_step": (forecast.sum(1) / step_rows).tolist(),
               "cache_bytes_per_image": self.cache_bytes_per_image}
        if flops is not None:
            cum = torch.tensor([sum(flops.blocks[: k + 1]) for k in range(self.num_blocks)], dtype=torch.float64)
            per_row = flops.embed + flops.output_head + cum  # (N,) without heads
            block = torch.tensor(flops.blocks, dtype=torch.float64)
            step = (counts * per_row).sum(1) - (reused * block).sum(1)  # (steps,) FLOPs without heads
            total = float(step.sum()) + float(self.head_evals) * flops.uem_head
            out["gflops_per_image"] = total / max(num_images, 1) / 1e9
            out["gflops_per_step"] = (step / max(num_images, 1) / 1e9).tolist()
            out["gflops_pieces"] = {"embed_output": (flops.embed + flops.output_head) / 1e9,
                                    "blocks": [b / 1e9 for b in flops.blocks], "head": flops.uem_head / 1e9}
        return out
