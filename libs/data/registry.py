"""Every dataset a config can name, built by name::

    dataset = get_dataset(**config.dataset)      # e.g. name='cifar10', path='assets/datasets/cifar10'
    x, y = dataset.train[0]                      # x float32 (C, H, W) in [-1, 1]; y int class label

Unconditional datasets return y = 0 (``has_labels == False``, ``num_classes == 0``). Files are
read directly (nothing downloads); a missing dataset raises ``DatasetNotFoundError`` showing
the expected tree and how to get the data."""
from __future__ import annotations

from types import MappingProxyType

from libs.data.base import PixelDataset
from libs.data.imagenet import ImageNet64
from libs.data.latents import ImageNet256Features, ImageNet512Features, MSCOCO256Features
from libs.data.mnist5k import MNIST5k
from libs.data.pixel import CIFAR10, CelebA64, Digits

DATASETS = MappingProxyType({
    "cifar10": CIFAR10,
    "celeba64": CelebA64,
    "celeba": CelebA64,
    "digits": Digits,
    "mnist5k": MNIST5k,
    "imagenet64": ImageNet64,
    "imagenet256_features": ImageNet256Features,
    "imagenet512_features": ImageNet512Features,
    "mscoco256_features": MSCOCO256Features,
})


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def get_dataset(name: str, **kwargs) -> PixelDataset:
    """Build a dataset by registered name; kwargs go to its constructor."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return DATASETS[name](**kwargs)
