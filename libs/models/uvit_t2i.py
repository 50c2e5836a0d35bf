"""U-ViT for text-to-image generation on CLIP token embeddings; token order [time, context,
patches]; no exit patience (released semantics)."""
import torch
import torch.nn as nn

from libs.models.backbone import NetworkConfigError, constructor_defaults, integer_problem
from libs.models.uvit_core import UViTBackbone


class UViT(UViTBackbone):
    """``UViT(img_size=..., ..., clip_dim=768, num_clip_token=77)``: the released keyword
    arguments; the backbone's arguments are ``UViTBackbone``'s."""

    cond_name = "context"
    in_block_patience = 1

    @classmethod
    def check_args(cls, **kwargs):
        """The backbone's checks, and ``clip_dim``, ``num_clip_token`` integers >= 1."""
        problems = super().check_args(**kwargs)
        a = {**constructor_defaults(UViT), **kwargs}
        for field in ("clip_dim", "num_clip_token"):
            problem = integer_problem(field, a[field], 1)
            if problem:
                problems.append(problem)
        return problems

    def __init__(self, clip_dim=768, num_clip_token=77, **backbone_kw):
        NetworkConfigError.raise_for(UViT.check_args(clip_dim=clip_dim, num_clip_token=num_clip_token, **backbone_kw))
        super().__init__(**backbone_kw)
        self.clip_dim = clip_dim
        self.num_clip_token = num_clip_token
        self.context_embed = nn.Linear(clip_dim, self.embed_dim)
        self.num_extras = 1 + num_clip_token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extras + self.num_patches, self.embed_dim))
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
