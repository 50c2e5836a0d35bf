"""ImageNet pixels from an ImageFolder tree: the ``imagenet64`` training set and the train
images whose latents the feature extraction writes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from libs.data.base import ImageDataset, PixelDataset
from libs.data.crops import center_crop_arr, open_rgb
from libs.data.paths import PathLike, candidate_paths, not_found

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}

_IMAGENET_LAYOUT = """\
  <path>/                      (default assets/datasets/imagenet)
    train/
      n01440764/               one folder per class; labels = index in sorted folder names
        n01440764_10026.JPEG
        ...
      n01443537/
      ..."""

_IMAGENET_HOWTO = """\
  download ILSVRC2012_img_train.tar from https://image-net.org (account needed), unpack it
  into <path>/train/ and unpack each class archive into its own folder:
    cd <path>/train && for f in *.tar; do d=${f%.tar}; mkdir -p $d && tar -xf $f -C $d && rm $f; done"""


def list_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of the images under ``root/<class>/``, sorted by class then path."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames.sort()
            found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        found.sort()
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _find_image_folder(path: PathLike, name: str) -> tuple[Path, list[Path], list[int], list[str]]:
    looked = []
    for root in candidate_paths(path):
        # <path>/train/<class>/..., or <path> is the train folder itself.
        folder = root / "train" if (root / "train").is_dir() or not root.is_dir() else root
        looked.append(folder)
        if folder.is_dir():
            files, labels, classes = list_image_folder(folder)
            if files:
                return folder, files, labels, classes
    raise not_found(name, "ImageNet", looked, "no class folders holding .JPEG/.png images",
                    _IMAGENET_LAYOUT, _IMAGENET_HOWTO)


class ImageFolderDataset(ImageDataset):
    """Images of an ImageFolder tree, ADM center-cropped to ``resolution``; items (x, label)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], resolution: int,
                 random_flip: bool = False, class_cond: bool = True,
                 crop: Callable[[Image.Image, int], np.ndarray] = center_crop_arr):
        self.files = list(files)
        self.labels = list(labels)
        self.resolution = resolution
        self.random_flip = random_flip
        self.class_cond = class_cond
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def image_uint8(self, index: int) -> np.ndarray:
        return self.crop(open_rgb(self.files[index]), self.resolution)  # (R, R, 3)

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.class_cond else 0


class ImageNet64(PixelDataset):
    """ImageNet train split as pixels, ADM center crop to 64 (U-ViT imagenet64 configs)."""

    def __init__(self, path: PathLike = "assets/datasets/imagenet", resolution: int = 64,
                 random_flip: bool = True, class_cond: bool = True):
        self.name = "imagenet64"
        self.root, files, labels, self.class_names = _find_image_folder(path, self.name)
        self.train = ImageFolderDataset(files, labels, resolution, random_flip=random_flip, class_cond=class_cond)
        self.data_shape = (3, resolution, resolution)
        self.num_classes = len(self.class_names) if class_cond else 0
        self.fid_stat = f"assets/fid_stats/fid_stats_imagenet{resolution}_guided_diffusion.npz"


def imagenet_train_images(path: PathLike = "assets/datasets/imagenet", resolution: int = 256) -> ImageFolderDataset:
    """The ImageNet train images, ADM center-cropped to ``resolution``, no flips; items (x, label)."""
    _, files, labels, _ = _find_image_folder(path, f"imagenet (train images at {resolution})")
    return ImageFolderDataset(files, labels, resolution, random_flip=False)
