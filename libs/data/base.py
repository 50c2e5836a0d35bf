"""The base classes of the datasets: ``ImageDataset``, (x, y) items with x float32 (C, H, W)
in [-1, 1], optional random flip, and ``image_uint8(i)`` (the image before augmentation, for
FID reference statistics); ``PixelDataset``, what ``get_dataset`` returns."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.data.value_range import uint8_to_model


class ImageDataset(Dataset):
    random_flip: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, index: int) -> torch.Tensor:
        """float32 (C, H, W) in [-1, 1], no augmentation."""
        return uint8_to_model(self.image_uint8(index))

    def image_uint8(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def label(self, index: int) -> int:
        return 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.image(index)
        # Same draw as torchvision's RandomHorizontalFlip(p=0.5): one torch.rand(1) from
        # the global generator, which DataLoader seeds per worker.
        if self.random_flip and torch.rand(1).item() < 0.5:
            x = x.flip(-1)
        return x, self.label(index)


class PixelDataset:
    """What ``get_dataset`` returns: ``name``, ``train`` (Dataset of (x, y)), ``data_shape`` (C, H, W),
    ``num_classes`` (0: unconditional), ``fid_stat`` (default reference statistics path)."""

    name: str
    train: ImageDataset
    data_shape: tuple[int, int, int]
    num_classes: int = 0
    fid_stat: str | None = None

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self.train)}, "
                f"data_shape={self.data_shape}, num_classes={self.num_classes})")
