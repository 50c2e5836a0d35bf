"""Tiny U-ViTs (8x8 images, 5 blocks) for the model, exit-loop and exit-policy tests."""
import math

import torch

from libs.models import uvit, uvit_t2i

TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, qkv_bias=False)
TINY_T2I = dict(TINY, clip_dim=16, num_clip_token=5)


def sharpen_heads(net, scale=40.0):
    """Random heads give certainties ~0.5 for every sample; scale them so samples differ."""
    with torch.no_grad():
        for h in net.uem_heads:
            h.proj.weight.mul_(scale)
            h.proj.bias.normal_(0, 0.5)
    return net


def set_head_certainty(net, certainties):
    """Make head i output the constant certainty ``certainties[i]`` for every input."""
    with torch.no_grad():
        for h, c in zip(net.uem_heads, certainties):
            h.proj.weight.zero_()
            h.proj.bias.fill_(math.log(c / (1 - c)))
    return net


def tiny(num_classes=-1, sharp=False, **kw):
    """The class-conditional (``num_classes > 0``) or unconditional tiny U-ViT, seed 0, eval mode."""
    torch.manual_seed(0)
    net = uvit.UViT(**{**TINY, "num_classes": num_classes, **kw}).eval()
    return sharpen_heads(net) if sharp else net


def tiny_t2i(sharp=False, **kw):
    """The text-to-image tiny U-ViT (5 context tokens of width 16), seed 0, eval mode."""
    torch.manual_seed(0)
    net = uvit_t2i.UViT(**{**TINY_T2I, **kw}).eval()
    return sharpen_heads(net) if sharp else net
