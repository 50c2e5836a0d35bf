"""DiT's pieces (Peebles & Xie, ICCV 2023), with the released parameter names:

    modulate(x, shift, scale) = x (1 + scale) + shift          (per row, broadcast over tokens)
    block:  s1, a1, g1, s2, a2, g2 = Linear(SiLU(c)).chunk(6)
            x <- x + g1 * Attn(modulate(LN(x), s1, a1))
            x <- x + g2 * MLP(modulate(LN(x), s2, a2))        LN: no affine, eps 1e-6; MLP: tanh GELU
    final:  s, a = Linear(SiLU(c)).chunk(2);  out = Linear(modulate(LN(x), s, a))"""
from __future__ import annotations

import torch
import torch.nn as nn

from libs.models.uvit_core import Attention, Mlp, timestep_embedding, timestep_frequencies

FREQUENCY_DIM = 256  # width of the sinusoidal time embedding the time MLP reads


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """The fixed positional embedding of a grid x grid token map, (grid*grid, dim) float32, tokens
    row-major: [sin, cos] of positions x 10000^(-k / (dim/4)), the first dim/2 features for the
    column, the last dim/2 for the row (diffusers' ``get_2d_sincos_pos_embed``, bitwise DiT's)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}: "
                         f"choose config.nnet.embed_dim as a multiple of 4")
    return get_2d_sincos_pos_embed(dim, grid, base_size=grid, output_type="pt").float()  # base_size: no rescaling


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, D), (B, D) -> x (1 + scale) + shift."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t (B,) -> Linear-SiLU-Linear of its 256-d sinusoidal embedding (cos first), (B, D)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        # Not part of the checkpoint: the embedding's frequencies, computed once.
        self.register_buffer("freqs", timestep_frequencies(FREQUENCY_DIM), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = self.freqs if self.freqs.dtype == torch.float32 else None  # None: cast by .half()
        emb = timestep_embedding(t, FREQUENCY_DIM, freqs=freqs)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Labels (B,) -> (B, D); ``num_classes + 1`` rows when ``class_dropout_prob > 0``, the last
    one the null label of classifier-free guidance. The label dropout itself is the task's
    (``config.loss.p_uncond``, libs/tasks/conditions.py), so this module never draws randomness."""

    def __init__(self, num_classes: int, hidden_size: int, class_dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(class_dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (module docstring)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from c, then Linear to p*p*out_channels per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
