"""Pixel-space datasets read straight from their released files: CIFAR-10 (python pickles),
CelebA 64 (aligned JPEGs, DDIM / U-ViT face crop) and scikit-learn's 8x8 digits (shipped
inside scikit-learn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from libs.data.base import ImageDataset, PixelDataset
from libs.data.paths import candidate_paths, not_found
from libs.data.value_range import model_to_uint8
from libs.run.safe_load import restricted_unpickle


class CIFAR10Train(ImageDataset):
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


class CelebAImages(ImageDataset):
    """Aligned CelebA JPEGs, cropped to the face and resized (DDIM / U-ViT preprocessing)."""

    def __init__(self, files: list[Path], crop_box: tuple[int, int, int, int], resolution: int, random_flip: bool):
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


class DigitsImages(ImageDataset):
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
        return model_to_uint8(self.images[index])

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.class_cond else 0


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


class CIFAR10(PixelDataset):
    """CIFAR-10 train split, 50,000 images 3x32x32; unconditional by default (as U-ViT's
    CIFAR-10 model)."""

    batch_folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]

    def __init__(self, path: str = "assets/datasets/cifar10", random_flip: bool = True, class_cond: bool = False):
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
        for root in candidate_paths(path):
            # torchvision layout, or the path given is the batch folder itself.
            for folder in (root / self.batch_folder, root):
                if all((folder / f).is_file() for f in self.train_files):
                    return folder
            looked.append(root / self.batch_folder)
        missing = f"no {self.batch_folder}/ folder with {', '.join(self.train_files)}"
        if looked[0].is_dir():
            absent = [f for f in self.train_files if not (looked[0] / f).is_file()]
            missing = f"{looked[0]} lacks {', '.join(absent)}"
        raise not_found(self.name, "CIFAR-10", looked, missing, _CIFAR10_LAYOUT, _CIFAR10_HOWTO)


def _load_pickle(path: Path) -> dict:
    """A CIFAR-10 batch file (a Python 2 pickle of a dict of arrays and lists), read by the
    restricted unpickler: a file that asks to run code is refused, naming itself."""
    with open(path, "rb") as f:
        entry = restricted_unpickle(f, path, encoding="latin1")  # written by Python 2
    if not isinstance(entry, dict):
        raise ValueError(f"{path} holds a {type(entry).__name__}, not a CIFAR-10 batch (a dict): download the "
                         f"python version of CIFAR-10 again")
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
                raise not_found(self.name, "CelebA", [f], f"image {f.name} listed in the partition file is missing",
                                _CELEBA_LAYOUT, _CELEBA_HOWTO)
        # Crop centred at (x=89, y=121): rows 57..185, columns 25..153 (DDIM / U-ViT).
        top, left, size = 57, 25, 128
        self.train = CelebAImages(files, (left, top, left + size, top + size), resolution, random_flip)
        self.data_shape = (3, resolution, resolution)
        self.num_classes = 0
        self.fid_stat = "assets/fid_stats/fid_stats_celeba64_train_50000_ddim.npz"

    def _find(self, path) -> Path:
        looked = []
        for root in candidate_paths(path):
            # torchvision layout (<path>/celeba/...), or the path given is the celeba folder.
            for folder in (root / "celeba", root):
                if (folder / "img_align_celeba").is_dir() and self._partition_file(folder):
                    return folder
            looked.append(root / "celeba")
        raise not_found(self.name, "CelebA", looked,
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


class Digits(PixelDataset):
    """scikit-learn's digits: 1,797 gray 8x8 images, 10 classes; levels 0..16 map to [-1, 1];
    ``resolution`` != 8 resizes bilinearly."""

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
