"""A diffusers transformer as an early-exit backbone (``libs/models/backbone.py``), its weights
used in place: ``attach_exits(transformer)``. ``net.transformer`` is the object given (its
state dict unchanged); the uncertainty heads are ``net.uem_heads``, saved apart
(``libs/diffusers_exit/heads.py``). Full depth is ``transformer(...).sample``; the exit at
block k is the model's own final layer on block k's tokens.

* tokens between blocks: ``h = [c, x_1..x_L]`` (B, 1 + L, D), row 0 holding what the final
  layer reads (DiT: block 0's ``norm1.emb(t, y)``; PixArt: ``adaln_single``'s embedded
  timestep), so compaction of ``h`` compacts it too;
* carry: what every block reads per row (DiT: timestep and labels; PixArt: the adaLN-single
  modulation, projected caption tokens and their attention bias);
* heads: Linear(D, p*p*in_channels) + sigmoid on block i's patch tokens;
* reuse: any span, cached as its residual on the patch tokens;
* ``eps_channels = in_channels`` with learned sigma."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from libs.diffusers_exit.heads import load_heads, make_heads, save_heads
from libs.exits.policy import parse_policies
from libs.models import flops as fl
from libs.models.backbone import ExitBackbone
from libs.models.dit import DiT
from libs.models.flops import NetworkFlops
from libs.models.uvit_core import unpatchify
from libs.run.errors import UserError


def _as_rule(exit_policy):
    """A spelling ('static:3', '0.9', 'full') parsed as the command line does; anything else (a
    rule object, one call's ``Call``, a number, None) as it is."""
    if not isinstance(exit_policy, str):
        return exit_policy
    rules = parse_policies(str(exit_policy))
    if len(rules) != 1:
        raise UserError(f"exit_policy={exit_policy!r}: give one rule, not {len(rules)}")
    return rules[0]


class DiffusersExitNet(ExitBackbone):
    """Shared part of the adapters: heads, reuse on patch tokens, exit rules by spelling."""

    def __init__(self, transformer: nn.Module, time_shift: float = 0.0):
        super().__init__()
        self.transformer = transformer  # the diffusers module itself, not a copy
        cfg = transformer.config
        self.in_channels, self.patch_size = int(cfg.in_channels), int(cfg.patch_size)
        self.out_channels = int(transformer.out_channels)
        self.num_blocks = len(transformer.transformer_blocks)
        self.hidden_size = int(transformer.inner_dim)
        self.eps_channels: Optional[int] = self.in_channels if self.out_channels == 2 * self.in_channels else None
        self.time_shift = float(time_shift)
        p = next(transformer.parameters())
        self.uem_heads = make_heads(self.num_blocks, self.hidden_size, self.patch_size ** 2 * self.in_channels,
                                    p.dtype, p.device)

    # ----------------------------------------------------------------------------- user side
    def forward(self, x, timesteps, *args, exit_threshold=None, exit_policy=None, **kwargs):
        return super().forward(x, timesteps, *args, exit_threshold=exit_threshold,
                               exit_policy=_as_rule(exit_policy), **kwargs)

    def forward_early_exit(self, x, timesteps, *args, exit_threshold=None, exit_policy=None, reuse_cache=None,
                           **kwargs):
        return super().forward_early_exit(x, timesteps, *args, exit_threshold=exit_threshold,
                                          exit_policy=_as_rule(exit_policy), reuse_cache=reuse_cache, **kwargs)

    def save_heads(self, path) -> None:
        """The uncertainty heads alone, as safetensors with what they were made for."""
        save_heads(self.uem_heads, self.head_signature(), path)

    def load_heads(self, path) -> None:
        load_heads(self.uem_heads, self.head_signature(), path)

    def head_signature(self) -> Dict[str, str]:
        """What a head file must match: the model class and its sizes."""
        return dict(model=type(self.transformer).__name__, depth=str(self.num_blocks), width=str(self.hidden_size),
                    patch_size=str(self.patch_size), in_channels=str(self.in_channels))

    # ----------------------------------------------------------------------------- shared contract pieces
    def _network_time(self, timesteps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        return timesteps + self.time_shift if self.time_shift else timesteps

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] != x.shape[3] or x.shape[2] % self.patch_size:
            raise ValueError(f"expected a square input (B, {self.in_channels}, H, H) with H divisible by "
                             f"{self.patch_size}, got {tuple(x.shape)}")

    def _final(self, tokens: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, proj: nn.Module) -> torch.Tensor:
        """norm_out, modulation, projection and unpatchify, as the model's output stage does:
        (B, L, D) -> (B, out_channels, H, W)."""
        out = proj(self.transformer.norm_out(tokens) * (1 + scale) + shift)  # (B, L, p*p*out)
        return unpatchify(out, self.out_channels)

    def _block_tokens(self, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[:, :1], out], dim=1)  # row 0 (what the final layer reads) stays

    def certainty_map(self, i, h, carry):
        return unpatchify(self.uem_heads[i](h[:, 1:].detach()), self.in_channels)

    def mean_certainty(self, i, h, carry):
        return self.uem_heads[i].mean_certainty(h, 1)

    def mean_certainty_one(self, i, h, carry):
        return self.uem_heads[i].mean_certainty_one(h, 1)

    # Reuse: the in-house DiT's, on the same layout (row 0 what the final layer reads, then the
    # patch tokens): the span's residual on the patch tokens; row 0 stays the call's own.
    cache_value = DiT.cache_value
    reuse_value = DiT.reuse_value

    def _tokens(self) -> int:
        grid = int(self.transformer.config.sample_size) // self.patch_size
        return grid * grid

    def _head_flops(self) -> float:
        L, D = self._tokens(), self.hidden_size
        return fl.linear(L + 1, D, self.patch_size ** 2 * self.in_channels)


def _index(v, rows):
    return None if v is None else v[rows]


@dataclass
class DiTCarry:
    timestep: torch.Tensor  # (B,) network time
    labels: Optional[torch.Tensor]  # (B,) class labels


class DiTExitNet(DiffusersExitNet):
    """``DiTTransformer2DModel`` (adaLN-Zero blocks, class labels): ``net(x, t, y)``."""

    cond_name = "y"

    def train(self, mode: bool = True):
        """The model's label embedders stay in eval mode (their label dropout is unseeded); dropout is the
        task's, so training steps match eval numerics and resume exactly."""
        from diffusers.models.embeddings import LabelEmbedding

        super().train(mode)
        for m in self.transformer.modules():
            if isinstance(m, LabelEmbedding):
                m.eval()
        return self

    def embed(self, x, timesteps, y):
        self._check_input(x)
        tf = self.transformer
        t = self._network_time(timesteps, x)
        tokens = tf.pos_embed(x)  # (B, L, D), patch embedding plus positions
        c = tf.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=tokens.dtype)  # (B, D), as the output stage
        return torch.cat([c[:, None].to(tokens.dtype), tokens], dim=1), DiTCarry(t, y)

    def run_block(self, i, h, carry):
        out = self.transformer.transformer_blocks[i](h[:, 1:], attention_mask=None, encoder_hidden_states=None,
                                                     encoder_attention_mask=None, timestep=carry.timestep,
                                                     cross_attention_kwargs=None, class_labels=carry.labels)
        return self._block_tokens(h, out)

    def select_rows(self, carry, rows):
        return DiTCarry(carry.timestep[rows], _index(carry.labels, rows))

    def output_head(self, h):
        tf = self.transformer
        shift, scale = tf.proj_out_1(F.silu(h[:, 0])).chunk(2, dim=1)  # (B, D) each
        return self._final(h[:, 1:], shift[:, None], scale[:, None], tf.proj_out_2)

    def block_pieces(self) -> Dict[str, float]:
        """Per-image FLOPs of one block by piece: attention, MLP, and the rest (the adaLN modulation with the
        time and label embedding every block recomputes)."""
        L, D = self._tokens(), self.hidden_size
        hidden = self.transformer.transformer_blocks[0].ff.net[-1].in_features
        emb = fl.linear(1, 256, D) + fl.linear(1, D, D)
        return dict(attn=fl.attention(L, D), mlp=fl.mlp(L, D, hidden), rest=fl.modulation(D, 6) + emb)

    def flops(self) -> NetworkFlops:
        L, D, p = self._tokens(), self.hidden_size, self.patch_size
        embed = fl.linear(L, p * p * self.in_channels, D) + fl.linear(1, 256, D) + fl.linear(1, D, D)
        head = fl.modulation(D, 2) + fl.linear(L, D, p * p * self.out_channels)
        return NetworkFlops(embed=embed, blocks=(sum(self.block_pieces().values()),) * self.num_blocks,
                            uem_head=self._head_flops(), output_head=head)


@dataclass
class PixArtCondition:
    """PixArt's conditioning beyond the caption tokens: the caption mask (B, S) (1 keep, 0 drop)
    and ``added_cond_kwargs`` (resolution, aspect ratio for PixArt-alpha's micro-conditions)."""

    context: torch.Tensor  # (B, S, caption_channels)
    encoder_attention_mask: Optional[torch.Tensor] = None
    added_cond_kwargs: Optional[Dict[str, Any]] = None


@dataclass
class PixArtCarry:
    timestep: torch.Tensor  # (B, 6 D) adaLN-single modulation
    context: Optional[torch.Tensor]  # (B, S, D) projected caption tokens
    mask: Optional[torch.Tensor]  # (B, 1, S) attention bias


class PixArtExitNet(DiffusersExitNet):
    """``PixArtTransformer2DModel`` (adaLN-single, cross-attention on caption tokens):
    ``net(x, t, context, encoder_attention_mask=..., added_cond_kwargs=...)``."""

    cond_name = "context"
    context_tokens: int = 120  # caption tokens the FLOP count assumes

    def forward(self, x, timesteps, context=None, *, encoder_attention_mask=None, added_cond_kwargs=None, **kw):
        return super().forward(x, timesteps, _pixart_cond(context, encoder_attention_mask, added_cond_kwargs), **kw)

    def forward_early_exit(self, x, timesteps, context=None, *, encoder_attention_mask=None, added_cond_kwargs=None,
                           **kw):
        cond = _pixart_cond(context, encoder_attention_mask, added_cond_kwargs)
        return super().forward_early_exit(x, timesteps, cond, **kw)

    def forward_all_exits(self, x, timesteps, context=None, *, encoder_attention_mask=None, added_cond_kwargs=None):
        return super().forward_all_exits(x, timesteps, _pixart_cond(context, encoder_attention_mask, added_cond_kwargs))

    def embed(self, x, timesteps, cond):
        self._check_input(x)
        tf, B = self.transformer, x.shape[0]
        cond = cond if isinstance(cond, PixArtCondition) else PixArtCondition(cond)
        if tf.use_additional_conditions and cond.added_cond_kwargs is None:
            raise ValueError("this PixArt model reads micro-conditions: pass added_cond_kwargs="
                             "{'resolution': (B, 2), 'aspect_ratio': (B, 1)}")
        mask = cond.encoder_attention_mask
        if mask is not None and mask.ndim == 2:  # (B, S) keep/drop -> (B, 1, S) additive bias, as diffusers
            mask = ((1 - mask.to(x.dtype)) * -10000.0).unsqueeze(1)
        tokens = tf.pos_embed(x)  # (B, L, D)
        t = self._network_time(timesteps, x)
        modulation, embedded = tf.adaln_single(t, cond.added_cond_kwargs, batch_size=B, hidden_dtype=tokens.dtype)
        context = cond.context
        if tf.caption_projection is not None and context is not None:
            context = tf.caption_projection(context).view(B, -1, tokens.shape[-1])
        h = torch.cat([embedded[:, None].to(tokens.dtype), tokens], dim=1)
        return h, PixArtCarry(modulation, context, mask)

    def run_block(self, i, h, carry):
        out = self.transformer.transformer_blocks[i](h[:, 1:], attention_mask=None,
                                                     encoder_hidden_states=carry.context,
                                                     encoder_attention_mask=carry.mask, timestep=carry.timestep,
                                                     cross_attention_kwargs=None, class_labels=None)
        return self._block_tokens(h, out)

    def select_rows(self, carry, rows):
        return PixArtCarry(carry.timestep[rows], _index(carry.context, rows), _index(carry.mask, rows))

    def output_head(self, h):
        tf = self.transformer
        table = tf.scale_shift_table  # (2, D)
        shift, scale = (table[None] + h[:, :1].to(table.device)).chunk(2, dim=1)  # (B, 1, D) each
        return self._final(h[:, 1:], shift, scale, tf.proj_out)

    def block_pieces(self) -> Dict[str, float]:
        """Per-image FLOPs of one block by piece: self-attention, cross-attention on ``self.context_tokens``
        caption tokens, MLP (the modulation is a table lookup)."""
        L, D, S = self._tokens(), self.hidden_size, self.context_tokens
        hidden = self.transformer.transformer_blocks[0].ff.net[-1].in_features
        cross = fl.linear(L, D, D) + fl.linear(S, D, 2 * D) + 2.0 * 2 * L * S * D + fl.linear(L, D, D)
        return dict(attn=fl.attention(L, D), cross=cross, mlp=fl.mlp(L, D, hidden), rest=0.0)

    def flops(self) -> NetworkFlops:
        """The embedding counts adaLN-single and the caption projection of S tokens."""
        tf, L, D, p, S = self.transformer, self._tokens(), self.hidden_size, self.patch_size, self.context_tokens
        caption = int(tf.config.caption_channels or D)
        embed = (fl.linear(L, p * p * self.in_channels, D) + fl.linear(1, 256, D) + fl.linear(1, D, D)
                 + fl.linear(1, D, 6 * D) + fl.linear(S, caption, D) + fl.linear(S, D, D))
        head = fl.linear(L, D, p * p * self.out_channels)
        return NetworkFlops(embed=embed, blocks=(sum(self.block_pieces().values()),) * self.num_blocks,
                            uem_head=self._head_flops(), output_head=head)


def _pixart_cond(context, encoder_attention_mask, added_cond_kwargs):
    if encoder_attention_mask is None and added_cond_kwargs is None:
        return context
    if isinstance(context, PixArtCondition):
        raise TypeError("give the mask and micro-conditions in the PixArtCondition or as keywords, not both")
    return PixArtCondition(context, encoder_attention_mask, added_cond_kwargs)


ADAPTERS = {"DiTTransformer2DModel": DiTExitNet, "PixArtTransformer2DModel": PixArtExitNet}


def attach_exits(transformer: nn.Module, heads=None, time_shift: float = 0.0) -> DiffusersExitNet:
    """The early-exit network of a diffusers transformer (module docstring); ``heads``: a head
    file of ``net.save_heads`` to load (refused in one line if made for another model)."""
    name = type(transformer).__name__
    cls = next((c for base in type(transformer).__mro__ for n, c in ADAPTERS.items() if base.__name__ == n), None)
    if cls is None:
        raise UserError(f"attach_exits: {name} is not supported; supported diffusers classes: "
                        f"{', '.join(ADAPTERS)}")
    net = cls(transformer, time_shift=time_shift)
    if heads is not None:
        net.load_heads(heads)
    return net
