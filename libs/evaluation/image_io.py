"""Images as the evaluation writes them: [0, 1] floats -> uint8 (as PNG writing quantises),
single PNGs (at their own size: FID reads them) and sample grids (small images enlarged, so
a person can see them)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch


def images_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 as the PNG writer does (x * 255 + 0.5, clamped)."""
    return (x.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def save_png(img: torch.Tensor, path: Path) -> None:
    """(C, H, W) uint8 -> PNG."""
    from PIL import Image
    arr = img.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


def upscale(img: torch.Tensor, min_size: int) -> torch.Tensor:
    """(C, H, W) enlarged by the smallest integer factor that makes min(H, W) >= min_size,
    nearest neighbour (every pixel becomes a factor x factor block); unchanged if already so large."""
    factor = max(1, math.ceil(min_size / min(img.shape[-2:])))
    return img if factor == 1 else img.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def save_grid(images: Sequence[torch.Tensor], path: Path, nrow: Optional[int] = None, min_size: int = 32) -> None:
    """Tile (C, H, W) uint8 images into one PNG, each enlarged to at least ``min_size`` pixels
    a side (``upscale``), with 1-pixel white separators."""
    from torchvision.utils import make_grid
    if not images:
        return
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    grid = make_grid(torch.stack([upscale(im, min_size).float() / 255 for im in images]), nrow=nrow, padding=1,
                     pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(images_to_uint8(grid), path)
