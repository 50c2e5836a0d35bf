"""Analytic compute accounting, per image and per network call. A multiply-add is 2 FLOPs;
matrix products and convolutions count, norms, softmax, activations and additions do not
(< 1% here).

    cost of a call exiting after block k = embed + sum_{j<=k} block_j + uem_evals * uem_head + output_head

``uem_evals``: heads the call ran (k + 1 under the threshold rule; 0 at full depth and for
static exits). A block taken from the reuse cache costs nothing. Each network describes its
pieces with ``flops()`` and the helpers below."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class NetworkFlops:
    """Per-image FLOPs of the pieces of one network call."""

    embed: float  # input embedding (e.g. patch embedding as a matmul, context embedding)
    blocks: tuple  # FLOPs of each block, in execution order
    uem_head: float  # one uncertainty head
    output_head: float  # the shared output head

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def full(self) -> float:
        """A plain full-depth call (no uncertainty head evaluated)."""
        return self.embed + sum(self.blocks) + self.output_head

    def mean_call(self, exit_blocks: Sequence[int], uem_evals: Sequence[int]) -> float:
        """Mean FLOPs over calls (e.g. every sample at every sampling step) that exited after
        ``exit_blocks[j]`` having run ``uem_evals[j]`` uncertainty heads."""
        cum = [0.0]
        for b in self.blocks:
            cum.append(cum[-1] + b)
        n = len(exit_blocks)
        total = sum(cum[int(k) + 1] for k in exit_blocks) + self.uem_head * float(sum(int(u) for u in uem_evals))
        return self.embed + self.output_head + total / max(n, 1)

    def call(self, exit_block: int, uem_evals: int = 0, reused: Sequence[int] = ()) -> float:
        """One call exiting after ``exit_block``, ``uem_evals`` heads run, the blocks ``reused``
        taken from the cache."""
        computed = sum(b for j, b in enumerate(self.blocks[: exit_block + 1]) if j not in set(reused))
        return self.embed + computed + self.uem_head * uem_evals + self.output_head


# ----------------------------------------------------------------------------- building blocks
def linear(tokens: int, d_in: int, d_out: int) -> float:
    """A Linear(d_in, d_out) applied to ``tokens`` tokens."""
    return 2.0 * tokens * d_in * d_out


def attention(tokens: int, dim: int) -> float:
    """Multi-head self-attention of width ``dim``: qkv, QK^T and AV, output projection."""
    return linear(tokens, dim, 3 * dim) + 2.0 * 2 * tokens * tokens * dim + linear(tokens, dim, dim)


def mlp(tokens: int, dim: int, hidden: int) -> float:
    """Linear(dim, hidden) -> activation -> Linear(hidden, dim)."""
    return linear(tokens, dim, hidden) + linear(tokens, hidden, dim)


def conv2d(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int) -> float:
    return 2.0 * c_in * c_out * kernel * kernel * out_h * out_w


def modulation(dim: int, chunks: int) -> float:
    """An adaLN modulation, Linear(dim, chunks * dim) on one conditioning vector (DiT: 6 per
    block, 2 in the final layer)."""
    return linear(1, dim, chunks * dim)
