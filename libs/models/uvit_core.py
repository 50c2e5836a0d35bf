"""U-ViT backbone with per-block uncertainty heads (UEM) and per-sample early exit: what the
class-conditional (``libs.models.uvit``) and text-conditional (``libs.models.uvit_t2i``)
models share. With a reuse cache, DeepCache on the long skips: span (k, num_blocks - k) is
reused as the tokens that left it; the k in-blocks and their out-blocks run with fresh skips.

Parameter names and shapes follow the released U-ViT (Bao et al., CVPR 2023) exactly, so
official checkpoints load; the uncertainty heads are ``uem_heads.{i}.proj``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from libs.models import flops as fl
from libs.models.backbone import AllExitsOutput, EarlyExitOutput, ExitBackbone  # noqa: F401 (re-exported)
from libs.models.backbone import NetworkConfigError, constructor_defaults, integer_problem, positive_problem
from libs.exits.policy import float32
from libs.models.flops import NetworkFlops


def timestep_frequencies(dim: int, max_period: float = 10000.0, device=None) -> torch.Tensor:
    """The sinusoidal embedding's frequencies, (dim // 2,) float32."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0,
                       freqs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sinusoidal embedding of the network time input, cos first. (B,) -> (B, dim):

        emb[:, j] = cos(t * f_j),  emb[:, half + j] = sin(t * f_j),  f_j = max_period^(-j / half)

    (a zero column appended for odd ``dim``). ``freqs``: ``timestep_frequencies(dim,
    max_period)``, when the caller keeps them (the same numbers)."""
    if freqs is None:
        freqs = timestep_frequencies(dim, max_period, timesteps.device)
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def unpatchify(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W), patch vector order (p1, p2, C)."""
    patch_dim = x.shape[2] // channels
    p = int(patch_dim ** 0.5)
    h = w = int(x.shape[1] ** 0.5)
    assert p * p * channels == x.shape[2] and h * w == x.shape[1], f"cannot unpatchify shape {tuple(x.shape)}"
    # "B (h w) (p1 p2 C) -> B C (h p1) (w p2)"
    B = x.shape[0]
    return x.reshape(B, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4).reshape(B, channels, h * p, w * p)


class PatchEmbed(nn.Module):
    """Image to patch tokens: (B, C, H, W) -> (B, L, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def heads_problem(dim: int, num_heads: int) -> Optional[str]:
    """Why ``num_heads`` heads cannot split width ``dim`` (None: they can, ``dim % num_heads == 0``)."""
    if num_heads >= 1 and dim % num_heads == 0:
        return None
    near = min((d for d in range(1, dim + 1) if dim % d == 0), key=lambda d: (abs(d - num_heads), d))
    return (f"config.nnet.embed_dim={dim} is not divisible by config.nnet.num_heads={num_heads}: choose "
            f"num_heads dividing embed_dim (e.g. {near})")


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: Optional[float] = None):
        super().__init__()
        NetworkConfigError.raise_for([p for p in [heads_problem(dim, num_heads)] if p])
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # softmax(q k^T * scale) v per head: "B L (K H D) -> K B H L D", and back to (B, L, H*D)
        B, L, _ = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)  # (B, H, L, D)
        return self.proj(x.transpose(1, 2).reshape(B, L, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)  # exact GELU as U-ViT; DiT's is "tanh"
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; out-blocks first fuse the long skip: Linear(cat[x, skip])."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, skip=False, use_checkpoint=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UncertaintyHead(nn.Module):
    """UEM: per-token Linear + sigmoid, a certainty in (0, 1) per pixel and channel, on the
    block's patch tokens (extras dropped, detached by the caller); ``time_aware`` concatenates
    the time embedding to every token first."""

    def __init__(self, dim: int, out_dim: int, time_aware: bool = False):
        super().__init__()
        self.time_aware = time_aware
        self.proj = nn.Linear(2 * dim if time_aware else dim, out_dim)

    def forward(self, tokens: torch.Tensor, time_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L, D) [, (B, D)] -> certainty logits' sigmoid (B, L, p*p*C)."""
        if self.time_aware:
            tokens = torch.cat([tokens, time_emb[:, None, :].expand(-1, tokens.shape[1], -1).to(tokens.dtype)], dim=-1)
        # Logits in float32 before the sigmoid (and the caller's mean), also under autocast:
        # half-precision certainties could flip exits that sit near the threshold.
        return torch.sigmoid(self.proj(tokens).float())

    def mean_certainty(self, tokens: torch.Tensor, num_extras: int,
                       time_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The exit test's statistic: each row's mean certainty over its patch tokens, (B,)
        float32, on detached features; bitwise ``forward(tokens)[:, num_extras:].mean(dim=(1, 2))``."""
        return self._patch_certainty(tokens, num_extras, time_emb).mean(dim=(1, 2))

    def mean_certainty_one(self, tokens: torch.Tensor, num_extras: int,
                           time_emb: Optional[torch.Tensor] = None) -> float:
        """``mean_certainty`` of a batch of one as a Python float: the float32 sum / count, as torch's mean,
        rounded to float32 on the host (exact)."""
        c = self._patch_certainty(tokens, num_extras, time_emb)
        return float32(c.sum().item() / c.numel())

    def _patch_certainty(self, tokens, num_extras, time_emb):
        """Certainty of the patch tokens, (B, L, p*p*C) float32: sigmoid(W h + b) of every token,
        the extras' rows dropped (the numbers of the head on the patch tokens alone)."""
        if tokens.requires_grad:
            tokens = tokens.detach()
        if self.time_aware:
            return self(tokens, time_emb.detach())[:, num_extras:]
        logits = F.linear(tokens, self.proj.weight, self.proj.bias)
        if logits.dtype != torch.float32:
            logits = logits.float()
        return logits.sigmoid_()[:, num_extras:]


@dataclass
class UViTCarry:
    """What a U-ViT carries between blocks besides the tokens: the long-skip stack (LIFO:
    in-blocks push, out-blocks pop) and the time embedding (read by time-aware heads)."""

    skips: list
    time_emb: torch.Tensor


class UViTBackbone(ExitBackbone):
    """Shared U-ViT body. Subclasses add the conditioning embedding, ``num_extras`` and
    ``_extra_tokens(time_token, cond) -> (B, extras, D)``, and pass the backbone's arguments through."""

    #: number of in-block passes a sample needs before it may exit in the in-blocks
    in_block_patience: int = 2

    @classmethod
    def check_args(cls, **kwargs) -> List[str]:
        """Sizes are integers >= 1 with ``img_size % patch_size == 0``, ``embed_dim % num_heads
        == 0`` and an even ``depth`` (in- and out-blocks pair up through the long skips);
        ``mlp_ratio`` and ``qk_scale`` (unless None) are finite numbers > 0."""
        problems = super().check_args(**kwargs)
        a = {**constructor_defaults(UViTBackbone), **kwargs}
        sizes = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
        bad = {f: integer_problem(f, a[f], 1) for f in sizes}
        bad["mlp_ratio"] = positive_problem("mlp_ratio", a["mlp_ratio"])
        bad["qk_scale"] = None if a["qk_scale"] is None else positive_problem("qk_scale", a["qk_scale"])
        if not (bad["img_size"] or bad["patch_size"]) and a["img_size"] % a["patch_size"]:
            bad["img_size"] = (f"config.nnet.img_size={a['img_size']} is not divisible by "
                               f"config.nnet.patch_size={a['patch_size']}: choose a patch size dividing it")
        if not (bad["embed_dim"] or bad["num_heads"]):
            bad["num_heads"] = heads_problem(a["embed_dim"], a["num_heads"])
        if not bad["depth"] and a["depth"] % 2:
            bad["depth"] = (f"config.nnet.depth={a['depth']}: must be even (in- and out-blocks pair up "
                            f"through the long skips)")
        return problems + [p for p in bad.values() if p]

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, mlp_time_embed=False, use_checkpoint=False,
                 conv=True, skip=True, uem_time_aware=False):
        super().__init__()
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_blocks = depth + 1
        self.num_patches = (img_size // patch_size) ** 2
        patch_dim = patch_size ** 2 * in_chans

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.time_embed = (nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(),
                                         nn.Linear(4 * embed_dim, embed_dim)) if mlp_time_embed else nn.Identity())
        block = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                     qk_scale=qk_scale, use_checkpoint=use_checkpoint)
        self.in_blocks = nn.ModuleList([Block(**block) for _ in range(depth // 2)])
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList([Block(**block, skip=skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_dim)
        self.final_layer = nn.Conv2d(in_chans, in_chans, 3, padding=1) if conv else nn.Identity()
        self.uem_heads = nn.ModuleList(
            [UncertaintyHead(embed_dim, patch_dim, time_aware=uem_time_aware) for _ in range(self.num_blocks)])
        self.use_skip = skip
        # Not part of the checkpoint: the time embedding's frequencies, computed once.
        self.register_buffer("time_freqs", timestep_frequencies(embed_dim), persistent=False)

    def _init_weights(self):
        # Called by subclasses once pos_embed exists: trunc-normal(.02) Linear weights and
        # pos_embed, zero Linear bias, LayerNorm (1, 0); convs and embeddings keep defaults.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list:
        """All depth + 1 blocks in execution order (head index i belongs to blocks[i])."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    # ----------------------------------------------------------------------------- pieces
    def output_head(self, x: torch.Tensor) -> torch.Tensor:
        """Shared head: (B, extras + L, D) -> (B, C, H, W)."""
        # Per-token maps: run them on all tokens and drop the extras from the narrow output,
        # which avoids copying the wide (B, L, D) slice.
        x = self.decoder_pred(self.norm(x))[:, self.num_extras:]  # (B, L, p*p*C)
        return self.final_layer(unpatchify(x, self.in_chans))

    def certainty(self, i: int, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """Certainty of head i on block i's (detached) patch tokens: (B, L, p*p*C)."""
        return self.uem_heads[i](x.detach(), time_emb.detach())[:, self.num_extras:]

    # ----------------------------------------------------------------------------- backbone contract
    def embed(self, x, timesteps, cond):
        """Tokens after embedding and positional encoding, (B, extras + L, D), and the carry (an
        empty skip stack, the time embedding (B, D))."""
        if x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"expected input of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        tokens = self.patch_embed(x)  # (B, L, D)
        freqs = self.time_freqs if self.time_freqs.dtype == torch.float32 else None  # None: cast by .half()
        time_emb = self.time_embed(timestep_embedding(timesteps, self.embed_dim, freqs=freqs).to(tokens.dtype))
        extras = self._extra_tokens(time_emb[:, None, :], cond)  # (B, extras, D)
        tokens = torch.cat([extras.to(tokens.dtype), tokens], dim=1) + self.pos_embed
        return tokens, UViTCarry([], time_emb)

    def run_block(self, i, h, carry: UViTCarry):
        """Block i; in-blocks push their output to the LIFO skip stack, out-blocks pop it."""
        half = self.depth // 2
        if i < half:
            h = self.in_blocks[i](h)
            carry.skips.append(h)
        elif i == half:
            h = self.mid_block(h)
        else:
            h = self.out_blocks[i - half - 1](h, carry.skips.pop() if self.use_skip else None)
        return h

    def select_rows(self, carry: UViTCarry, rows):
        # The time embedding is only read by time-aware heads: others skip its compaction.
        time_emb = carry.time_emb[rows] if self.uem_heads[0].time_aware else carry.time_emb
        return UViTCarry([s[rows] for s in carry.skips], time_emb)

    def certainty_map(self, i, h, carry: UViTCarry):
        return unpatchify(self.certainty(i, h, carry.time_emb), self.in_chans)

    def mean_certainty(self, i, h, carry: UViTCarry):
        return self.uem_heads[i].mean_certainty(h, self.num_extras, carry.time_emb)

    def mean_certainty_one(self, i, h, carry: UViTCarry):
        return self.uem_heads[i].mean_certainty_one(h, self.num_extras, carry.time_emb)

    def exit_patience(self, i):
        return self.in_block_patience if i < self.depth // 2 else 1

    # Reuse (DeepCache on the long skips): a span must pair its in-blocks with its out-blocks,
    # (k, num_blocks - k), so that the skips it pushes are the ones it pops; the cache keeps the
    # tokens leaving it (those entering the out-block paired with in-block k-1, which then takes
    # its fresh skip).
    reuse_reads_input = False

    def reuse_problem(self, span):
        s, e = span
        if 0 <= s <= self.depth // 2 and e == self.num_blocks - s:
            return None
        return (f"U-ViT reuses only spans that pair in-blocks with their out-blocks through the long skips, "
                f"blocks k..{self.num_blocks - 1}-k; got {s}..{e - 1}")

    def cache_value(self, span, h_in, h_out):
        return h_out

    def reuse_value(self, span, h_in, cached):
        return cached

    def flops(self) -> NetworkFlops:
        """Per-image FLOPs of the pieces (counted on the modules themselves)."""
        D, C, img, p = self.embed_dim, self.in_chans, self.img_size, self.patch_size
        L, T, patch_dim = self.num_patches, self.num_extras + self.num_patches, p * p * C
        hidden = self.mid_block.mlp.fc1.out_features
        block = fl.attention(T, D) + fl.mlp(T, D, hidden)
        skip = fl.linear(T, 2 * D, D) if self.use_skip else 0.0
        half = self.depth // 2
        embed = fl.linear(L, patch_dim, D) + self._extra_embed_flops()
        # The per-token heads run on all T tokens (the extras' rows dropped from their output),
        # so they are counted on T.
        uem = fl.linear(T, self.uem_heads[0].proj.in_features, patch_dim)
        conv = fl.conv2d(C, C, 3, img, img) if isinstance(self.final_layer, nn.Conv2d) else 0.0
        return NetworkFlops(embed=embed, blocks=tuple([block] * (half + 1) + [block + skip] * half),
                            uem_head=uem, output_head=fl.linear(T, D, patch_dim) + conv)

    def _extra_embed_flops(self) -> float:
        """FLOPs of embedding the conditioning tokens (text models: the context projection)."""
        return 0.0

    # Subclass hooks ----------------------------------------------------------------------
    num_extras: int
    cond_name: str

    def _extra_tokens(self, time_token, cond):  # pragma: no cover - abstract
        raise NotImplementedError

