"""U-ViT for unconditional and class-conditional generation (pixel or latent space); token order
[label, time, patches] (label only when ``num_classes > 0``)."""
import torch
import torch.nn as nn

from libs.models.backbone import NetworkConfigError, constructor_defaults
from libs.models.uvit_core import UViTBackbone


class UViT(UViTBackbone):
    """``UViT(img_size=..., patch_size=..., ..., num_classes=...)``: the released keyword
    arguments; ``num_classes > 0`` adds the label embedding, otherwise unconditional. The
    backbone's arguments are ``UViTBackbone``'s."""

    cond_name = "y"

    @classmethod
    def check_args(cls, **kwargs):
        """The backbone's checks, and ``num_classes`` an integer (<= 0: unconditional)."""
        problems = super().check_args(**kwargs)
        num_classes = {**constructor_defaults(UViT), **kwargs}["num_classes"]
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            problems.append(f"config.nnet.num_classes={num_classes!r}: must be an integer (the number of "
                            f"labels; <= 0 for an unconditional model)")
        return problems

    def __init__(self, num_classes=-1, **backbone_kw):
        NetworkConfigError.raise_for(UViT.check_args(num_classes=num_classes, **backbone_kw))
        super().__init__(**backbone_kw)
        embed_dim = self.embed_dim
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
