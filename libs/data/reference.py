"""The images FID reference statistics are computed from."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset

from libs.data.base import ImageDataset, PixelDataset


class _ReferenceView(Dataset):
    def __init__(self, base: ImageDataset, n: int):
        self.base, self.n = base, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        return self.base.image_uint8(index)


def reference_images(dataset: PixelDataset | ImageDataset, limit: int | None = None,
                     batch_size: int = 250, num_workers: int = 0) -> Iterator[np.ndarray]:
    """The training images in index order, unflipped, as uint8 (B, H, W, C) (C of the dataset), the first
    ``limit`` only when given; ``num_workers`` decode in parallel."""
    base = dataset.train if isinstance(dataset, PixelDataset) else dataset
    n = len(base) if limit is None else min(limit, len(base))
    yield from DataLoader(_ReferenceView(base, n), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=np.stack)
