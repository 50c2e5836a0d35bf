"""Analytic compute accounting for U-ViT with early exit.

FLOPs count a multiply-add as 2 FLOPs and include matrix products (linear layers,
attention scores and weighted sums) and convolutions; LayerNorm, softmax, activations and
additions are ignored (they are < 1% here). Everything is per image and per network call.

    cost of a call exiting after block k (0-based) =
        embed + sum_{j<=k} block_j + uem_evals * uem_head + output_head

where ``uem_evals`` is k + 1 heads under early exit (the last block has no exit test) and
0 at full depth without a threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class UViTFlops:
    """Per-image FLOPs of the pieces of one network call."""

    embed: float  # patch embedding (conv as a matmul) + context embedding for text models
    blocks: tuple  # FLOPs of each of the depth + 1 blocks, in execution order
    uem_head: float  # one uncertainty head
    output_head: float  # shared head: decoder_pred + final conv

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def full(self) -> float:
        """A plain full-depth call (no uncertainty head evaluated)."""
        return self.embed + sum(self.blocks) + self.output_head

    def call(self, exit_block: int, uem_evals: int) -> float:
        """A call that exited after ``exit_block`` having evaluated ``uem_evals`` heads."""
        return self.embed + sum(self.blocks[: exit_block + 1]) + uem_evals * self.uem_head + self.output_head

    def mean_call(self, exit_blocks: Sequence[int], uem_evals: Sequence[int]) -> float:
        """Mean FLOPs over many calls (e.g. every sample at every sampling step)."""
        cum = [0.0]
        for b in self.blocks:
            cum.append(cum[-1] + b)
        n = len(exit_blocks)
        total = sum(cum[int(k) + 1] for k in exit_blocks) + self.uem_head * float(sum(int(u) for u in uem_evals))
        return self.embed + self.output_head + total / max(n, 1)


def uvit_flops(nnet: Mapping) -> UViTFlops:
    """FLOPs per image of the pieces of a U-ViT built from ``config.nnet`` arguments."""
    img, p, C = nnet["img_size"], nnet["patch_size"], nnet.get("in_chans", 3)
    D, depth = nnet["embed_dim"], nnet["depth"]
    hidden = int(D * nnet.get("mlp_ratio", 4.0))
    L = (img // p) ** 2
    if "clip_dim" in nnet:  # text-to-image: [time, context tokens, patches]
        extras = 1 + nnet.get("num_clip_token", 77)
        embed_extra = 2.0 * nnet.get("num_clip_token", 77) * nnet["clip_dim"] * D
    else:
        extras = 2 if nnet.get("num_classes", -1) > 0 else 1
        embed_extra = 0.0
    T = extras + L  # tokens through every block

    attn = 2.0 * T * D * 3 * D + 2.0 * 2 * T * T * D + 2.0 * T * D * D  # qkv, QK^T and AV, proj
    mlp = 2.0 * 2 * T * D * hidden
    skip = 2.0 * T * 2 * D * D if nnet.get("skip", True) else 0.0
    half = depth // 2
    blocks = tuple([attn + mlp] * half + [attn + mlp] + [attn + mlp + skip] * half)

    patch_dim = p * p * C
    embed = 2.0 * L * patch_dim * D + embed_extra
    uem_in = 2 * D if nnet.get("uem_time_aware", False) else D
    # The per-token heads run on all T tokens and the extras are dropped from their narrow
    # output (cheaper than copying the wide patch-token slice), so they are counted on T.
    uem_head = 2.0 * T * uem_in * patch_dim
    conv = 2.0 * C * C * 9 * img * img if nnet.get("conv", True) else 0.0
    output_head = 2.0 * T * D * patch_dim + conv
    return UViTFlops(embed=embed, blocks=blocks, uem_head=uem_head, output_head=output_head)
