"""Pixel-space training datasets (SPEC section 6) and their FID reference images.

Every dataset is built by name through a registry::

    dataset = get_dataset(**config.dataset)      # e.g. name='cifar10', path='assets/datasets/cifar10'
    x, y = dataset.train[0]                      # x float32 (C, H, W) in [-1, 1]; y int class label

`y` is always present so that one training loop serves conditional and unconditional
models: unconditional datasets return y = 0 and have `has_labels == False`,
`num_classes == 0`.

Datasets read the files directly (no torchvision download or md5 machinery), so nothing
here ever touches the network. A missing dataset raises `DatasetNotFoundError`, whose
message shows the expected directory tree, the paths looked at and how to get the data.

`reference_images(dataset)` yields the deterministic, un-flipped training images as
uint8 (B, H, W, C) arrays, which is what FID reference statistics are computed from.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "DatasetNotFoundError",
    "PixelDataset",
    "CIFAR10",
    "CelebA64",
    "Digits",
    "get_dataset",
    "register_dataset",
    "dataset_names",
    "reference_images",
    "unpreprocess",
]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where the config says they are."""


# ----------------------------------------------------------------------------
# Value ranges.


def uint8_to_model(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1].

    Same arithmetic as torchvision's ToTensor() followed by Normalize(0.5, 0.5).
    """
    img = np.ascontiguousarray(img)
    if not img.flags.writeable:  # e.g. np.asarray of a PIL image
        img = img.copy()
    x = torch.from_numpy(img).permute(2, 0, 1)  # (C, H, W)
    return x.float().div(255).sub(0.5).div(0.5)


def unpreprocess(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> image range [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def _model_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C), rounding as the PNG writer does (x*255+0.5)."""
    x = unpreprocess(x).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------
# Paths and errors.


def _candidate_paths(path: str | os.PathLike) -> list[Path]:
    """Where a config path may point: absolute as given; relative to the working
    directory first, then to the repository root (configs use repo-relative defaults)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    candidates = [Path.cwd() / p, REPO_ROOT / p]
    unique = []
    for c in candidates:
        if c.resolve() not in [u.resolve() for u in unique]:
            unique.append(c)
    return unique


def _not_found(name: str, title: str, looked_at: list[Path], missing: str,
               layout: str, how_to_get: str) -> DatasetNotFoundError:
    looked = "\n".join(f"  {p}" for p in looked_at)
    return DatasetNotFoundError(
        f"{title} (dataset '{name}') not found: {missing}.\n"
        f"Looked at:\n{looked}\n"
        f"Expected layout:\n{layout}\n"
        f"To get it:\n{how_to_get}\n"
        f"Or point the config at another folder: --config.dataset.path=<folder>"
    )


# ----------------------------------------------------------------------------
# Torch datasets. Each one exposes image_uint8(i) (the preprocessed image before any
# random augmentation, (H, W, C) uint8) so reference statistics use exactly the
# images training sees, minus the flips.


class _ImageDataset(Dataset):
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


class CIFAR10Train(_ImageDataset):
    """CIFAR-10 from the python pickles of the official archive (torchvision format)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_cond: bool, random_flip: bool):
        self.images = images  # (N, 32, 32, 3) uint8
        self.labels = labels  # (N,) int64
        self.class_cond = class_cond
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.images)

    def image_uint8(self, index: int) -> np.ndarray:
        return self.images[index]

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.class_cond else 0


class CelebAImages(_ImageDataset):
    """Aligned CelebA JPEGs, cropped to the face and resized (DDIM / U-ViT preprocessing)."""

    def __init__(self, files: list[Path], crop_box: tuple[int, int, int, int],
                 resolution: int, random_flip: bool):
        self.files = files
        self.crop_box = crop_box  # PIL box (left, upper, right, lower)
        self.resolution = resolution
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.files)

    def image_uint8(self, index: int) -> np.ndarray:
        with Image.open(self.files[index]) as img:
            img = img.convert("RGB").crop(self.crop_box)
            # PIL's bilinear resize filters over the whole footprint when shrinking
            # (antialiased), exactly what torchvision's Resize does on PIL images.
            img = img.resize((self.resolution, self.resolution), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)  # (H, W, 3)


class DigitsImages(_ImageDataset):
    """scikit-learn's 8x8 handwritten digits, held in memory in model range."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_cond: bool):
        self.images = images  # (N, 1, R, R) float32 in [-1, 1]
        self.labels = labels  # (N,) int64
        self.class_cond = class_cond
        self.random_flip = False  # digits are not mirror-symmetric

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def image_uint8(self, index: int) -> np.ndarray:
        return _model_to_uint8(self.images[index])

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.class_cond else 0


# ----------------------------------------------------------------------------
# Dataset objects: the training split plus what a config needs to know about it.


class PixelDataset:
    """Base of the dataset objects returned by `get_dataset`.

    Attributes: `name`, `train` (torch Dataset of (x, y)), `data_shape` (C, H, W),
    `num_classes` (0 when unconditional), `fid_stat` (repo-relative default path of the
    FID reference statistics).
    """

    name: str
    train: _ImageDataset
    data_shape: tuple[int, int, int]
    num_classes: int = 0
    fid_stat: str | None = None

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    @staticmethod
    def unpreprocess(x: torch.Tensor) -> torch.Tensor:
        return unpreprocess(x)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self.train)}, "
                f"data_shape={self.data_shape}, num_classes={self.num_classes})")


_REGISTRY: dict[str, Callable[..., PixelDataset]] = {}


def register_dataset(*names: str):
    """Class decorator: make the class constructible as get_dataset(name, **kwargs)."""
    def deco(cls):
        for n in names:
            if n in _REGISTRY:
                raise ValueError(f"dataset name {n!r} registered twice")
            _REGISTRY[n] = cls
        return cls
    return deco


def _register_all() -> None:
    # The latent-space and ImageNet datasets live in their own module, which registers
    # itself here on import (it imports this module, so it cannot be imported above).
    import libs.latent_datasets  # noqa: F401


def dataset_names() -> list[str]:
    _register_all()
    return sorted(_REGISTRY)


def get_dataset(name: str, **kwargs) -> PixelDataset:
    """Build a dataset by registered name; kwargs go to its constructor."""
    _register_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _REGISTRY[name](**kwargs)


_CIFAR10_LAYOUT = """\
  <path>/                      (default assets/datasets/cifar10)
    cifar-10-batches-py/
      data_batch_1 ... data_batch_5
      test_batch
      batches.meta"""

_CIFAR10_HOWTO = """\
  download the CIFAR-10 *python version*
  (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) and unpack it into <path>:
    tar -xzf cifar-10-python.tar.gz -C assets/datasets/cifar10
  or let torchvision download it (run this yourself; this project never downloads):
    python -c "import torchvision; torchvision.datasets.CIFAR10('assets/datasets/cifar10', download=True)\""""


@register_dataset("cifar10")
class CIFAR10(PixelDataset):
    """CIFAR-10 train split, 50,000 images 3x32x32; unconditional by default (SPEC 5)."""

    batch_folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]

    def __init__(self, path: str = "assets/datasets/cifar10", random_flip: bool = True,
                 class_cond: bool = False):
        self.name = "cifar10"
        folder = self._find(path)
        images, labels = [], []
        for fname in self.train_files:
            entry = _load_pickle(folder / fname)
            images.append(np.asarray(entry["data"], dtype=np.uint8))  # (n, 3072): R, G, B planes
            labels.extend(entry["labels"])
        data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        meta = folder / "batches.meta"
        self.class_names = list(_load_pickle(meta)["label_names"]) if meta.is_file() else None
        self.train = CIFAR10Train(np.ascontiguousarray(data), np.asarray(labels, dtype=np.int64),
                                  class_cond, random_flip)
        self.data_shape = (3, 32, 32)
        self.num_classes = 10 if class_cond else 0
        self.fid_stat = "assets/fid_stats/fid_stats_cifar10_train_pytorch.npz"

    def _find(self, path) -> Path:
        looked = []
        for root in _candidate_paths(path):
            # torchvision layout, or the path given is the batch folder itself.
            for folder in (root / self.batch_folder, root):
                if all((folder / f).is_file() for f in self.train_files):
                    return folder
            looked.append(root / self.batch_folder)
        missing = f"no {self.batch_folder}/ folder with {', '.join(self.train_files)}"
        if looked[0].is_dir():
            absent = [f for f in self.train_files if not (looked[0] / f).is_file()]
            missing = f"{looked[0]} lacks {', '.join(absent)}"
        raise _not_found(self.name, "CIFAR-10", looked, missing, _CIFAR10_LAYOUT, _CIFAR10_HOWTO)


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # written by Python 2
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


_CELEBA_LAYOUT = """\
  <path>/                      (default assets/datasets/celeba)
    celeba/
      img_align_celeba/
        000001.jpg ... 202599.jpg        (178x218 aligned faces)
      list_eval_partition.txt            ('000001.jpg 0' per line; 0 train, 1 valid, 2 test)"""

_CELEBA_HOWTO = """\
  download 'Align&Cropped Images' (img_align_celeba.zip) and list_eval_partition.txt
  from the CelebA page (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, Google Drive
  folder 'Img' and 'Eval') and unpack them into <path>/celeba/; or let torchvision
  download it (run this yourself; this project never downloads):
    python -c "import torchvision; torchvision.datasets.CelebA('assets/datasets/celeba', split='train', download=True)\""""


@register_dataset("celeba64", "celeba")
class CelebA64(PixelDataset):
    """CelebA train split (162,770 images), face crop 128 at top=57 left=25, resized to 64."""

    splits = {"train": 0, "valid": 1, "test": 2}

    def __init__(self, path: str = "assets/datasets/celeba", resolution: int = 64,
                 random_flip: bool = True, split: str = "train"):
        self.name = "celeba64"
        if split not in self.splits:
            raise ValueError(f"celeba64: unknown split {split!r}; use one of {list(self.splits)}")
        folder = self._find(path)
        files = self._read_partition(folder, self.splits[split])
        for f in (files[0], files[-1]) if files else ():
            if not f.is_file():
                raise _not_found(self.name, "CelebA", [f], f"image {f.name} listed in the partition file is missing",
                                 _CELEBA_LAYOUT, _CELEBA_HOWTO)
        # Crop centred at (x=89, y=121): rows 57..185, columns 25..153 (DDIM / U-ViT).
        top, left, size = 57, 25, 128
        self.train = CelebAImages(files, (left, top, left + size, top + size), resolution, random_flip)
        self.data_shape = (3, resolution, resolution)
        self.num_classes = 0
        self.fid_stat = "assets/fid_stats/fid_stats_celeba64_train_50000_ddim.npz"

    def _find(self, path) -> Path:
        looked = []
        for root in _candidate_paths(path):
            # torchvision layout (<path>/celeba/...), or the path given is the celeba folder.
            for folder in (root / "celeba", root):
                if (folder / "img_align_celeba").is_dir() and self._partition_file(folder):
                    return folder
            looked.append(root / "celeba")
        raise _not_found(self.name, "CelebA", looked,
                         "no celeba/ folder with img_align_celeba/ and list_eval_partition.txt",
                         _CELEBA_LAYOUT, _CELEBA_HOWTO)

    @staticmethod
    def _partition_file(folder: Path) -> Path | None:
        for fname in ("list_eval_partition.txt", "list_eval_partition.csv"):  # .csv: Kaggle copy
            if (folder / fname).is_file():
                return folder / fname
        return None

    def _read_partition(self, folder: Path, split_id: int) -> list[Path]:
        image_dir = folder / "img_align_celeba"
        files = []
        for line in self._partition_file(folder).read_text().splitlines():
            fields = line.replace(",", " ").split()
            if len(fields) != 2 or not fields[1].isdigit():
                continue  # blank line or csv header
            if int(fields[1]) == split_id:
                files.append(image_dir / fields[0])
        return sorted(files)


@register_dataset("digits")
class Digits(PixelDataset):
    """scikit-learn's handwritten digits: 1,797 gray 8x8 images, 10 classes, no download.

    The 17 gray levels 0..16 map linearly to [-1, 1]; `resolution` != 8 resizes bilinearly.
    """

    def __init__(self, resolution: int = 8, class_cond: bool = True):
        from sklearn.datasets import load_digits  # ships inside the package

        self.name = "digits"
        digits = load_digits()
        x = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1  # (N, 1, 8, 8), 0..16 -> [-1, 1]
        if resolution != 8:
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                              align_corners=False, antialias=resolution < 8).clamp(-1, 1)
        self.train = DigitsImages(x.contiguous(), torch.from_numpy(digits.target).long(), class_cond)
        self.data_shape = (1, resolution, resolution)
        self.num_classes = 10 if class_cond else 0
        self.fid_stat = f"assets/fid_stats/fid_stats_digits{resolution}_train.npz"


# ----------------------------------------------------------------------------
# Reference images for FID statistics.


class _ReferenceView(Dataset):
    def __init__(self, base: _ImageDataset, n: int):
        self.base, self.n = base, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        return self.base.image_uint8(index)


def _stack(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def reference_images(dataset: PixelDataset | _ImageDataset, limit: int | None = None,
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
