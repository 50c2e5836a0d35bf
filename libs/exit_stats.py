"""Compute accounting for early-exit sampling: a ``net_fn -> net_fn`` wrapper that runs the
network at a threshold and records, per sampling step, how many rows exited after each block.

The record is a (steps, num_blocks) count matrix kept on the network's device (no host sync
per call); from it come the mean blocks per network call, the layer ratio, the mean exit
block per sampling step and, with ``libs.flops``, GFLOPs per image.
"""
from __future__ import annotations

from typing import Optional

import torch

from libs.flops import UViTFlops


class ExitRecorder:
    """Counts exits per (network call index within a sampling run, exit block)."""

    def __init__(self, num_blocks: int, device=None):
        self.num_blocks = num_blocks
        self.device = device
        self.counts = torch.zeros(0, num_blocks, dtype=torch.long, device=device)  # (steps, N)
        self.threshold_active = False
        self._call = 0

    def start_run(self) -> None:
        """A new sampling run (batch) starts: call indices restart at 0."""
        self._call = 0

    def record(self, exit_block: torch.Tensor) -> None:
        if self._call >= self.counts.shape[0]:
            grow = torch.zeros(self._call + 1 - self.counts.shape[0], self.num_blocks, dtype=torch.long,
                               device=exit_block.device)
            self.counts = torch.cat([self.counts.to(exit_block.device), grow])
        self.counts[self._call] += torch.bincount(exit_block, minlength=self.num_blocks)
        self._call += 1

    def wrap(self, net, exit_threshold: Optional[float]):
        """``net_fn(x, t_net, cond) -> eps`` that exits per sample and records where."""
        self.threshold_active = exit_threshold is not None and exit_threshold < 1.0

        def net_fn(x, t_net, cond=None):
            out = net.forward_early_exit(x, t_net, cond, exit_threshold=exit_threshold)
            self.record(out.exit_block)
            return out.sample

        return net_fn

    # ------------------------------------------------------------------ summaries (host side)
    def summary(self, flops: Optional[UViTFlops], num_images: int) -> dict:
        counts = self.counts.cpu().double()  # (steps, N)
        blocks = torch.arange(1, self.num_blocks + 1, dtype=torch.float64)  # blocks run if exiting at k
        rows = counts.sum()
        mean_blocks = float((counts.sum(0) * blocks).sum() / rows) if rows > 0 else float("nan")
        per_step = ((counts * (blocks - 1)).sum(1) / counts.sum(1).clamp(min=1)).tolist()  # mean exit block
        out = {"calls_rows": int(rows), "mean_blocks": mean_blocks, "layer_ratio": mean_blocks / self.num_blocks,
               "exit_block_per_step": per_step}
        if flops is not None:
            cum = torch.tensor([sum(flops.blocks[: k + 1]) for k in range(self.num_blocks)], dtype=torch.float64)
            uem = torch.tensor([min(k + 1, self.num_blocks - 1) for k in range(self.num_blocks)],
                               dtype=torch.float64) if self.threshold_active else torch.zeros(self.num_blocks)
            per_row = flops.embed + flops.output_head + cum + uem * flops.uem_head  # (N,)
            total = float((counts.sum(0) * per_row).sum())
            out["gflops_per_image"] = total / max(num_images, 1) / 1e9
            out["gflops_per_call"] = total / max(float(rows), 1.0) / 1e9
        return out
