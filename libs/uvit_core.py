"""U-ViT backbone with per-block uncertainty heads and per-sample early exit.

This module holds what the class-conditional (`libs.uvit`) and text-conditional
(`libs.uvit_t2i`) models share: the transformer blocks, the shared output head, the
uncertainty-estimation heads (UEM) and the three ways to run the network:

* ``forward(x, t, cond)``: full depth, no uncertainty head is computed (cost of plain U-ViT);
* ``forward(x, t, cond, exit_threshold=tau)`` / ``forward_early_exit``: each sample stops at
  the first block whose mean certainty exceeds ``tau`` (released rule, decided per sample);
  samples that exit leave the batch, so later blocks run only on the remaining rows (the loop,
  with its batch-of-one fast path, is ``libs.exit_loop``);
* ``forward_all_exits``: every block's prediction through the shared head and every block's
  certainty map, for the AdaDiff training objective.

Parameter names and shapes follow the released U-ViT exactly (SPEC section 1) so that
official checkpoints load; the uncertainty heads are named ``uem_heads.{i}.proj``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange

from libs import exit_loop
from libs.exit_policy import ExitPolicy, as_policy, float32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the network time input, cos first. (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
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
    return rearrange(x, "B (h w) (p1 p2 C) -> B C (h p1) (w p2)", h=h, p1=p, p2=p)


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


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: Optional[float] = None):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}: choose num_heads "
                             f"dividing embed_dim (config.nnet.num_heads)")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(self.qkv(x), "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)  # (B, H, L, D)
        return self.proj(rearrange(x, "B H L D -> B L (H D)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact GELU, as U-ViT
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
    """UEM: per-token Linear + sigmoid giving a certainty in (0, 1) per pixel and channel.

    Released semantics: input is the block's patch tokens (extras dropped), detached from the
    backbone by the caller. With ``time_aware`` (the paper's variant) the time embedding is
    concatenated to every token's features first.
    """

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
        """``mean_certainty`` of a batch of one, as a Python float (the one host read). The mean
        is the float32 sum divided by the count, as torch's mean computes it, with the quotient
        rounded to float32 on the host (exact: double rounding is innocuous for a division)."""
        c = self._patch_certainty(tokens, num_extras, time_emb)
        return float32(c.sum().item() / c.numel())

    def _patch_certainty(self, tokens, num_extras, time_emb):
        """Certainty of the patch tokens, (B, L, p*p*C) float32. The head runs on all tokens and
        the extras are dropped from its narrow output (cheaper than copying the wide (B, L, D)
        patch slice, and the same numbers); the sigmoid is taken in place on the fresh logits."""
        if tokens.requires_grad:
            tokens = tokens.detach()
        if self.time_aware:
            return self(tokens, time_emb.detach())[:, num_extras:]
        logits = F.linear(tokens, self.proj.weight, self.proj.bias)
        if logits.dtype != torch.float32:
            logits = logits.float()
        return logits.sigmoid_()[:, num_extras:]


@dataclass
class EarlyExitOutput:
    """Result of an early-exit forward.

    sample: (B, C, H, W) noise prediction of each sample at its exit block.
    exit_block: (B,) int64 index of the block each sample exited after (0-based over the
        depth + 1 blocks; ``num_blocks - 1`` = full depth). Blocks run = exit_block + 1.
    uem_evals: (B,) int64 number of uncertainty heads evaluated for each sample.
    """

    sample: torch.Tensor
    exit_block: torch.Tensor
    uem_evals: torch.Tensor

    @property
    def blocks_run(self) -> torch.Tensor:
        return self.exit_block + 1


@dataclass
class AllExitsOutput:
    """Training output: every block's prediction and certainty, each computed once.

    preds: (N, B, C, H, W) shared output head applied to each of the N = depth + 1 blocks;
        ``preds[-1]`` is the full-depth prediction.
    certainties: (N, B, C, H, W) certainty maps in (0, 1), computed on detached features.
    """

    preds: torch.Tensor
    certainties: torch.Tensor

    @property
    def sample(self) -> torch.Tensor:
        return self.preds[-1]


class UViTBackbone(nn.Module):
    """Shared U-ViT body. Subclasses add the conditioning embedding and define
    ``num_extras`` and ``_extra_tokens(time_token, cond) -> (B, extras, D)`` in token order."""

    #: number of in-block passes a sample needs before it may exit in the in-blocks
    in_block_patience: int = 2

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, mlp_time_embed=False, use_checkpoint=False,
                 conv=True, skip=True, uem_time_aware=False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if depth % 2:
            raise ValueError(f"depth must be even (in/out blocks pair up with long skips), got {depth}")
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
    def _embed(self, x, timesteps, cond):
        """Tokens after embedding and positional encoding, and the time embedding.
        Returns (B, extras + L, D), (B, D)."""
        if x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"expected input of shape (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        tokens = self.patch_embed(x)  # (B, L, D)
        time_emb = self.time_embed(timestep_embedding(timesteps, self.embed_dim).to(tokens.dtype))  # (B, D)
        extras = self._extra_tokens(time_emb[:, None, :], cond)  # (B, extras, D)
        tokens = torch.cat([extras.to(tokens.dtype), tokens], dim=1) + self.pos_embed
        return tokens, time_emb

    def _run_block(self, i, x, skips):
        """Run block i; in-blocks push their output to the LIFO skip stack, out-blocks pop it."""
        half = self.depth // 2
        if i < half:
            x = self.in_blocks[i](x)
            skips.append(x)
        elif i == half:
            x = self.mid_block(x)
        else:
            x = self.out_blocks[i - half - 1](x, skips.pop() if self.use_skip else None)
        return x

    def output_head(self, x: torch.Tensor) -> torch.Tensor:
        """Shared head: (B, extras + L, D) -> (B, C, H, W)."""
        # Per-token maps: run them on all tokens and drop the extras from the narrow output,
        # which avoids copying the wide (B, L, D) slice.
        x = self.decoder_pred(self.norm(x))[:, self.num_extras:]  # (B, L, p*p*C)
        return self.final_layer(unpatchify(x, self.in_chans))

    def certainty(self, i: int, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """Certainty of head i on block i's (detached) patch tokens: (B, L, p*p*C)."""
        return self.uem_heads[i](x.detach(), time_emb.detach())[:, self.num_extras:]

    # ----------------------------------------------------------------------------- forwards
    def forward(self, x, timesteps, *args, exit_threshold: Optional[float] = None,
                exit_policy: Optional[ExitPolicy] = None, **kwargs) -> torch.Tensor:
        """Noise prediction (B, C, H, W). ``exit_threshold`` (a float, < 1 = the released rule
        per sample) or ``exit_policy`` (an ``ExitPolicy``) make samples exit early."""
        cond = self._cond_from_args(args, kwargs)
        policy = _policy_from_args(exit_threshold, exit_policy)
        if policy.is_full:
            return self._forward_full(x, timesteps, cond)
        return self._forward_early_exit(x, timesteps, cond, policy).sample

    def forward_early_exit(self, x, timesteps, *args, exit_threshold: Optional[float] = None,
                           exit_policy: Optional[ExitPolicy] = None, **kwargs) -> EarlyExitOutput:
        """Early-exit forward with per-sample compute accounting (see EarlyExitOutput)."""
        cond = self._cond_from_args(args, kwargs)
        policy = _policy_from_args(exit_threshold, exit_policy)
        if policy.is_full:
            # No sample can exit, so no head is evaluated.
            return self._forward_static(x, timesteps, cond, self.num_blocks - 1)
        return self._forward_early_exit(x, timesteps, cond, policy)

    def forward_all_exits(self, x, timesteps, *args, **kwargs) -> AllExitsOutput:
        """Every block's prediction (shared head) and certainty map, for training."""
        cond = self._cond_from_args(args, kwargs)
        h, time_emb = self._embed(x, timesteps, cond)
        skips, preds, certs = [], [], []
        for i in range(self.num_blocks):
            h = self._run_block(i, h, skips)
            preds.append(self.output_head(h))  # (B, C, H, W)
            certs.append(unpatchify(self.certainty(i, h, time_emb), self.in_chans))
        return AllExitsOutput(torch.stack(preds), torch.stack(certs))  # (N, B, C, H, W) each

    def _forward_full(self, x, timesteps, cond):
        return self._forward_truncated(x, timesteps, cond, self.num_blocks - 1)

    def _forward_truncated(self, x, timesteps, cond, last: int) -> torch.Tensor:
        """Blocks 0..last and the output head, for every row (no uncertainty head)."""
        h, _ = self._embed(x, timesteps, cond)
        skips = []
        for i in range(last + 1):
            h = self._run_block(i, h, skips)
        return self.output_head(h)

    def _forward_static(self, x, timesteps, cond, last: int) -> EarlyExitOutput:
        sample = self._forward_truncated(x, timesteps, cond, last)
        exit_block = torch.full((x.shape[0],), last, dtype=torch.long, device=x.device)
        return EarlyExitOutput(sample, exit_block, torch.zeros_like(exit_block))

    def _forward_early_exit(self, x, timesteps, cond, policy: ExitPolicy) -> EarlyExitOutput:
        static = policy.static_exit(self.num_blocks)
        if static is not None:  # every row exits after a known block: a truncated forward
            if not 0 <= static < self.num_blocks:
                raise ValueError(f"exit policy {policy.spec} exits after block {static}, but the network has "
                                 f"{self.num_blocks} blocks (0..{self.num_blocks - 1})")
            return self._forward_static(x, timesteps, cond, static)
        h, time_emb = self._embed(x, timesteps, cond)
        run = exit_loop.run_one if x.shape[0] == 1 else exit_loop.run_batch
        return EarlyExitOutput(*run(self, h, time_emb, policy))

    def _cond_from_args(self, args, kwargs):
        """The conditioning, given positionally or as the keyword ``cond_name`` (y / context)."""
        if len(args) > 1:
            raise TypeError(f"expected at most one conditioning argument, got {len(args)}")
        cond = args[0] if args else kwargs.pop(self.cond_name, None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} (conditioning is '{self.cond_name}=')")
        return cond

    # Subclass hooks ----------------------------------------------------------------------
    num_extras: int
    cond_name: str

    def _extra_tokens(self, time_token, cond):  # pragma: no cover - abstract
        raise NotImplementedError


def _policy_from_args(exit_threshold, exit_policy) -> ExitPolicy:
    if exit_threshold is not None and exit_policy is not None:
        raise TypeError("pass exit_threshold (a float) or exit_policy (an ExitPolicy), not both")
    return as_policy(exit_policy if exit_policy is not None else exit_threshold)
