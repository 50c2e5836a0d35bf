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


def _stack(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def reference_images(dataset: PixelDataset | ImageDataset, limit: int | None = None,
                     batch_size: int = 250, num_workers: int = 0) -> Iterator[np.ndarray]:
    """Yield the training images in index order, without flips, as uint8 (B, H, W, C).

    `limit` takes the first `limit` images (e.g. 50,000 for CelebA's reference set).
    C is the dataset's channel count (1 for digits); converting gray to RGB for
    Inception is the consumer's business. `num_workers` parallelises JPEG decoding.
    """
    base = dataset.train if isinstance(dataset, PixelDataset) else dataset
    n = len(base) if limit is None else min(limit, len(base))
    loader = DataLoader(_ReferenceView(base, n), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_stack)
    yield from loader
