"""U-ViT for unconditional and class-conditional generation (pixel or latent space).

Token order [label, time, patches] (label only when ``num_classes > 0``). See
``libs.models.uvit_core`` for the forward variants (full depth, early exit, all exits).
"""
import torch
import torch.nn as nn

from libs.models.uvit_core import UViTBackbone


class UViT(UViTBackbone):
    cond_name = "y"

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, mlp_time_embed=False, num_classes=-1,
                 use_checkpoint=False, conv=True, skip=True, uem_time_aware=False):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         qk_scale=qk_scale, mlp_time_embed=mlp_time_embed, use_checkpoint=use_checkpoint,
                         conv=conv, skip=skip, uem_time_aware=uem_time_aware)
        self.num_classes = num_classes
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
            self.num_extras = 2
        else:
            self.num_extras = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extras + self.num_patches, embed_dim))
        self._init_weights()

    def _extra_tokens(self, time_token, y):
        """(B, 1, D) time token [+ labels (B,)] -> (B, extras, D) in order [label, time]."""
        if self.num_classes > 0:
            if y is None:
                raise ValueError(f"this model is class-conditional ({self.num_classes} classes): pass y=labels")
            return torch.cat([self.label_emb(y)[:, None, :].to(time_token.dtype), time_token], dim=1)
        if y is not None:
            raise ValueError("this model is unconditional (num_classes <= 0) but labels y were given")
        return time_token
