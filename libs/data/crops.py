"""Image preprocessing of the released feature extraction: the ADM / guided-diffusion center
crop (ImageNet) and U-ViT's MS-COCO center crop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM center crop -> uint8 (image_size, image_size, 3): BOX-halve while the short side >= 2 *
    image_size, BICUBIC-resize the short side to image_size, crop the centre."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top: top + image_size, left: left + image_size]


def center_crop_resize(pil_image: Image.Image, size: int) -> np.ndarray:
    """MS-COCO preprocessing of U-ViT: central square crop, LANCZOS resize; uint8 (size, size, 3)."""
    arr = np.asarray(pil_image)
    crop = min(arr.shape[:2])
    top, left = (arr.shape[0] - crop) // 2, (arr.shape[1] - crop) // 2
    arr = np.ascontiguousarray(arr[top: top + crop, left: left + crop])
    return np.array(Image.fromarray(arr).resize((size, size), Image.LANCZOS), dtype=np.uint8)


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")
