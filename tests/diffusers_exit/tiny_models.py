"""Tiny random diffusers transformers of the classes the adapter supports (no weights downloaded)."""
import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-initialises the adaLN-Zero gates: give every weight a value
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def tiny_dit(learn_sigma=True, layers=3, classes=10, seed=0, dtype=torch.float32):
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=8 if learn_sigma else 4, num_layers=layers, sample_size=8, patch_size=2,
                                  num_embeds_ada_norm=classes)
    return _randomise(model, seed).to(dtype)


def tiny_pixart(learn_sigma=True, layers=2, micro=False, seed=0, dtype=torch.float32):
    # width 24: the micro-conditions' embedding splits the width in 3
    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                     out_channels=8 if learn_sigma else 4, num_layers=layers, sample_size=8,
                                     patch_size=2, cross_attention_dim=24, caption_channels=12,
                                     use_additional_conditions=micro)
    return _randomise(model, seed).to(dtype)


def inputs(batch=3, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g).to(dtype)
    t = torch.linspace(5.0, 990.0, batch).to(dtype)
    y = torch.arange(batch) % 10
    ctx = torch.randn(batch, 5, 12, generator=g).to(dtype)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[:, 3:] = 0
    return x, t, y, ctx, mask
