"""DiT (Peebles & Xie, ICCV 2023) as an early-exit backbone: adaLN-Zero blocks, no long skips.
Released constructor arguments and parameter names, so a released state dict loads with only
``uem_heads.{i}.proj`` missing, and ``net(x, t, y)`` (eval mode) is the released forward (all
``out_channels``). Pieces: ``libs/models/dit_blocks.py``.

* tokens between blocks: ``h = [c, x_1..x_L]`` (B, 1 + L, D), row 0 the conditioning
  c = t_emb + y_emb, so compaction of ``h`` compacts c too; no other carry;
* ``output_head(h)``: the final layer (adaLN from c) on the patch tokens;
* head i: Linear(D, p*p*in_channels) + sigmoid on block i's detached tokens; patience 1;
* reuse: any span, cached as its residual on the patch tokens;
* ``eps_channels = in_channels`` with ``learn_sigma``: the variance channels get no gradient
  from the AdaDiff objective.

By design, unlike the released module: label dropout is the task's (``config.loss.p_uncond``),
never inside the network; ``num_classes <= 0`` builds an unconditional DiT; ``time_shift`` is
added to the network time (released weights: ``time_shift=-1``, trained on 0-based indices)."""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint

from libs.models import flops as fl
from libs.models.backbone import ExitBackbone
from libs.models.dit_blocks import DiTBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, FREQUENCY_DIM, sincos_2d
from libs.models.flops import NetworkFlops
from libs.models.uvit_core import PatchEmbed, UncertaintyHead, unpatchify

#: released sizes: name -> (depth, hidden_size, num_heads); a preset adds the patch, 'DiT-XL/2'
PRESETS = {"DiT-S": (12, 384, 6), "DiT-B": (12, 768, 12), "DiT-L": (24, 1024, 16), "DiT-XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)


def preset_sizes(name: str) -> dict:
    """'DiT-XL/2' -> dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)."""
    m = re.fullmatch(r"(DiT-(?:S|B|L|XL))/(\d+)", str(name))
    if not m or m.group(1) not in PRESETS or int(m.group(2)) not in PATCHES:
        names = ", ".join(f"{k}/{p}" for k in PRESETS for p in PATCHES)
        raise ValueError(f"unknown DiT preset {name!r} in config.nnet.preset; choose one of {names}")
    depth, hidden, heads = PRESETS[m.group(1)]
    return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(m.group(2)))


class DiT(ExitBackbone):
    """DiT with one uncertainty head per block (module docstring)."""

    cond_name = "y"

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True,
                 uem_time_aware=False, time_shift=0.0, use_checkpoint=False):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.depth, self.num_blocks = hidden_size, depth, depth
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.eps_channels: Optional[int] = in_channels if learn_sigma else None
        self.num_classes = num_classes
        self.time_shift = float(time_shift)
        self.use_checkpoint = use_checkpoint
        self.num_patches = (input_size // patch_size) ** 2

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # Fixed 2-D sin-cos embedding, stored in the state dict as the released model does.
        self.pos_embed = nn.Parameter(sincos_2d(hidden_size, input_size // patch_size)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.uem_heads = nn.ModuleList([UncertaintyHead(hidden_size, patch_size ** 2 * in_channels, uem_time_aware)
                                        for _ in range(depth)])
        self._init_weights()

    def _init_weights(self):
        """Released scheme: Xavier-uniform Linear weights (and the patch conv as a matrix), zero
        biases, N(0, 0.02) label table and time MLP, zero adaLN modulations and final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                self.final_layer.linear]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------- backbone contract
    def embed(self, x, timesteps, y):
        """(B, C, H, W), (B,) network time, (B,) labels -> h = [c, patch tokens] (B, 1 + L, D), no carry."""
        size = self.input_size
        if x.shape[1:] != (self.in_channels, size, size):
            raise ValueError(f"expected input of shape (B, {self.in_channels}, {size}, {size}), got {tuple(x.shape)}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if self.time_shift:
            timesteps = timesteps + self.time_shift
        tokens = self.x_embedder(x) + self.pos_embed  # (B, L, D)
        c = self.t_embedder(timesteps)  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                raise ValueError(f"this DiT is class-conditional ({self.num_classes} classes): pass y=labels")
            c = c + self.y_embedder(y)
        elif y is not None:
            raise ValueError("this DiT is unconditional (num_classes <= 0) but labels y were given")
        return torch.cat([c[:, None, :].to(tokens.dtype), tokens], dim=1), None

    def run_block(self, i, h, carry):
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._run_block, i, h, use_reentrant=False)
        return self._run_block(i, h)

    def _run_block(self, i, h):
        return torch.cat([h[:, :1], self.blocks[i](h[:, 1:], h[:, 0])], dim=1)

    def select_rows(self, carry, rows):
        return carry

    def output_head(self, h):
        """The final layer on h's patch tokens, adaLN from its row 0: (B, out_channels, H, W)."""
        return unpatchify(self.final_layer(h[:, 1:], h[:, 0]), self.out_channels)

    def certainty_map(self, i, h, carry):
        head = self.uem_heads[i]
        return unpatchify(head(h.detach(), h[:, 0].detach())[:, 1:], self.in_channels)

    def mean_certainty(self, i, h, carry):
        return self.uem_heads[i].mean_certainty(h, 1, h[:, 0])

    def mean_certainty_one(self, i, h, carry):
        return self.uem_heads[i].mean_certainty_one(h, 1, h[:, 0])

    # Reuse: any run of blocks (no skips, no carry); the cache keeps the span's residual on the
    # patch tokens, added to the reusing call's fresh input (row 0, c, stays the call's own).
    def cache_value(self, span, h_in, h_out):
        return h_out[:, 1:] - h_in[:, 1:]

    def reuse_value(self, span, h_in, cached):
        return torch.cat([h_in[:, :1], h_in[:, 1:] + cached], dim=1)

    def flops(self) -> NetworkFlops:
        """Per-image FLOPs of the pieces, counted on the modules themselves."""
        D, L, p, C = self.hidden_size, self.num_patches, self.patch_size, self.in_channels
        hidden = self.blocks[0].mlp.fc1.out_features
        embed = fl.linear(L, p * p * C, D) + fl.linear(1, FREQUENCY_DIM, D) + fl.linear(1, D, D)  # patches, time MLP
        block = fl.attention(L, D) + fl.mlp(L, D, hidden) + fl.modulation(D, 6)
        # The heads run on all 1 + L rows (row 0, c, is dropped from their narrow output).
        uem = fl.linear(L + 1, self.uem_heads[0].proj.in_features, p * p * C)
        head = fl.modulation(D, 2) + fl.linear(L, D, p * p * self.out_channels)
        return NetworkFlops(embed=embed, blocks=(block,) * self.depth, uem_head=uem, output_head=head)


_SIZE_FIELDS = {"patch_size": "patch_size", "embed_dim": "hidden_size", "depth": "depth", "num_heads": "num_heads"}


def _dit_arguments(img_size, in_chans, num_classes=-1, preset=None, patch_size=None, embed_dim=None, depth=None,
                   num_heads=None, mlp_ratio=4.0, learn_sigma=True, uem_time_aware=False, time_shift=0.0,
                   use_checkpoint=False) -> dict:
    """The ``DiT`` constructor arguments of ``config.nnet`` (see ``dit_from_config``)."""
    given = {k: v for k, v in dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                   num_heads=num_heads).items() if v is not None}
    if preset is not None:
        sizes = preset_sizes(preset)
        clash = [f"{k}={v} (preset: {sizes[_SIZE_FIELDS[k]]})" for k, v in given.items() if sizes[_SIZE_FIELDS[k]] != v]
        if clash:
            raise ValueError(f"config.nnet.preset={preset!r} disagrees with config.nnet {', '.join(clash)}: "
                             f"drop those fields or the preset")
    else:
        missing = [k for k in _SIZE_FIELDS if k not in given]
        if missing:
            raise ValueError(f"config.nnet for 'dit' needs a preset (e.g. 'DiT-XL/2') or all of "
                             f"{', '.join(_SIZE_FIELDS)}; missing {', '.join(missing)}")
        sizes = {_SIZE_FIELDS[k]: v for k, v in given.items()}
    if sizes["hidden_size"] % sizes["num_heads"]:
        raise ValueError(f"DiT width {sizes['hidden_size']} is not divisible by num_heads={sizes['num_heads']}")
    # The table has num_classes rows: num_classes - 1 labels and the null row (the dropout
    # probability only sizes the table; the task drops labels, see LabelEmbedder).
    classes = dict(num_classes=num_classes - 1, class_dropout_prob=0.1) if num_classes > 0 else \
        dict(num_classes=0, class_dropout_prob=0.0)
    return dict(input_size=img_size, in_channels=in_chans, mlp_ratio=mlp_ratio, learn_sigma=learn_sigma,
                uem_time_aware=uem_time_aware, time_shift=time_shift, use_checkpoint=use_checkpoint,
                **classes, **sizes)


def dit_from_config(**nnet) -> DiT:
    """``DiT`` from ``config.nnet`` (``name='dit'``): img_size, in_chans, num_classes (with
    ``config.loss.p_uncond > 0`` the last row is the null label), and sizes from ``preset``
    ('DiT-XL/2', ...) or patch_size, embed_dim, depth, num_heads (which must agree with a preset)."""
    return DiT(**_dit_arguments(**nnet))


def check_dit_config(**nnet) -> list:
    """Every problem of ``config.nnet`` for ``dit_from_config`` (one line each), building nothing."""
    try:
        return DiT.check_args(**_dit_arguments(**nnet))
    except (TypeError, ValueError) as e:
        return [str(e)]


dit_from_config.check_args = check_dit_config  # what libs.models.registry.check_nnet asks a network for
