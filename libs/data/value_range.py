"""The model's pixel range: images are float32 in [-1, 1] inside the project, uint8 on disk
and [0, 1] floats when sampled images leave the network (U-ViT's preprocessing)."""
from __future__ import annotations

import numpy as np
import torch


def uint8_to_model(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1] (ToTensor() then Normalize(0.5, 0.5))."""
    img = np.ascontiguousarray(img)
    if not img.flags.writeable:  # e.g. np.asarray of a PIL image
        img = img.copy()
    x = torch.from_numpy(img).permute(2, 0, 1)  # (C, H, W)
    return x.float().div(255).sub(0.5).div(0.5)


def unpreprocess(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> image range [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def model_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C), rounding as the PNG writer does (x*255+0.5)."""
    x = unpreprocess(x).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy()
