"""U-ViT for text-to-image generation, conditioned on CLIP token embeddings.

Token order [time, context (num_clip_token), patches]. No exit patience: a sample may exit
after any block whose mean certainty passes the threshold (released semantics).
"""
import torch
import torch.nn as nn

from libs.models.uvit_core import UViTBackbone


class UViT(UViTBackbone):
    cond_name = "context"
    in_block_patience = 1

    def __init__(self, img_size=224, in_chans=3, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, mlp_time_embed=False, use_checkpoint=False,
                 clip_dim=768, num_clip_token=77, conv=True, skip=True, uem_time_aware=False):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         qk_scale=qk_scale, mlp_time_embed=mlp_time_embed, use_checkpoint=use_checkpoint,
                         conv=conv, skip=skip, uem_time_aware=uem_time_aware)
        self.clip_dim = clip_dim
        self.num_clip_token = num_clip_token
        self.context_embed = nn.Linear(clip_dim, embed_dim)
        self.num_extras = 1 + num_clip_token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extras + self.num_patches, embed_dim))
        self._init_weights()

    def _extra_tokens(self, time_token, context):
        """(B, 1, D) time token + context (B, num_clip_token, clip_dim) -> (B, 1 + num_clip_token, D)."""
        if context is None:
            raise ValueError("the text-to-image model needs context=(B, num_clip_token, clip_dim) embeddings")
        if context.shape[1:] != (self.num_clip_token, self.clip_dim):
            raise ValueError(f"context must have shape (B, {self.num_clip_token}, {self.clip_dim}), "
                             f"got {tuple(context.shape)}")
        return torch.cat([time_token, self.context_embed(context.to(time_token.dtype))], dim=1)

    def _extra_embed_flops(self) -> float:
        return 2.0 * self.num_clip_token * self.clip_dim * self.embed_dim  # context_embed
