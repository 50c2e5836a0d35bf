"""Latent-feature datasets (SPEC section 6), ImageNet 64 pixels, and the writers of the features.

Registered in the same registry as ``libs/datasets.py``, once this module is imported::

    import libs.latent_datasets  # registers the names below
    dataset = get_dataset(name="imagenet256_features", path="assets/datasets/imagenet256_features")
    moments, y = dataset.train[0]     # float32 (8, 32, 32) = [mean, logvar] of the VAE; int label

=====================  ==========================================  ===========================
name                   items of ``.train``                          ``data_shape`` (model input)
=====================  ==========================================  ===========================
imagenet256_features   (moments (8, 32, 32), label)                 (4, 32, 32)
imagenet512_features   (moments (8, 64, 64), label)                 (4, 64, 64)
mscoco256_features     (moments (8, 32, 32), context (77, 768))     (4, 32, 32)
imagenet64             (x (3, 64, 64) in [-1, 1], label)            (3, 64, 64)
=====================  ==========================================  ===========================

The feature datasets return *moments*; the training task draws the latent with
``FrozenAutoencoderKL.sample`` (libs/autoencoder.py). Features are written by the
``extract_*`` functions at the end of this file (driven by ``scripts/extract_*.py``). File
formats (those of the released U-ViT / AdaDiff features):

* ``{i}.npy`` pickled pair: a 1-D object array ``[moments float32, label int]`` (ImageNet)
  or ``[prompt str, context float32 (77, 768)]`` (``run_vis/``); read with ``load_pair``;
* ``{i}.npy`` / ``{i}_{k}.npy`` plain float32 arrays (MS-COCO moments / caption contexts).

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted extraction never leaves a truncated file, and a rerun skips what exists.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from libs.atomic import atomic_write
from libs.datasets import (
    DatasetNotFoundError,
    PixelDataset,
    _candidate_paths,
    _ImageDataset,
    _not_found,
    get_dataset,
    register_dataset,
    uint8_to_model,
)

__all__ = [
    "DatasetNotFoundError",
    "get_dataset",
    "save_npy",
    "save_pair",
    "load_pair",
    "center_crop_arr",
    "center_crop_resize",
    "list_image_folder",
    "ImageFolderDataset",
    "ImageNet64",
    "FeatureFolder",
    "ImageNet256Features",
    "ImageNet512Features",
    "MSCOCOFeatureFolder",
    "MSCOCO256Features",
    "imagenet_feature_indices",
    "imagenet_train_images",
    "read_coco_captions",
    "extract_imagenet_features",
    "extract_mscoco_features",
    "extract_prompt_features",
    "extract_empty_context",
]

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------------------
# File formats.


def save_npy(path: PathLike, array) -> None:
    """``np.save``, written atomically (temporary file in the same folder, then rename)."""
    arr = np.asanyarray(array)
    atomic_write(path, lambda f: np.save(f, arr, allow_pickle=arr.dtype == object))


def save_pair(path: PathLike, first, second) -> None:
    """Store a pair as a pickled 1-D object array, the format of the released feature files."""
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = first, second
    save_npy(path, pair)


def load_pair(path: PathLike) -> tuple:
    """Read a pair written by ``save_pair`` (or a pickled tuple)."""
    obj = np.load(path, allow_pickle=True)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if isinstance(obj, (np.ndarray, tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise ValueError(f"{path}: expected a pickled pair, got {type(obj).__name__} "
                     f"{getattr(obj, 'shape', '')}")


# ----------------------------------------------------------------------------
# Image preprocessing.


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM / guided-diffusion center crop: uint8 (image_size, image_size, 3).

    Halve with BOX filtering while the short side is >= 2 * image_size, resize BICUBIC so the
    short side is image_size (rounding the long side), then crop the centre.
    """
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


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


# ----------------------------------------------------------------------------
# ImageNet pixels (ImageFolder tree).

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
    """Images under ``root/<class>/`` (searched recursively), sorted by class then path.

    Returns (files, labels, class names); label = index of the class folder in sorted order.
    """
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
    for root in _candidate_paths(path):
        # <path>/train/<class>/..., or <path> is the train folder itself.
        folder = root / "train" if (root / "train").is_dir() or not root.is_dir() else root
        looked.append(folder)
        if folder.is_dir():
            files, labels, classes = list_image_folder(folder)
            if files:
                return folder, files, labels, classes
    raise _not_found(name, "ImageNet", looked, "no class folders holding .JPEG/.png images",
                     _IMAGENET_LAYOUT, _IMAGENET_HOWTO)


class ImageFolderDataset(_ImageDataset):
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
        return self.crop(_open_rgb(self.files[index]), self.resolution)  # (R, R, 3)

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.class_cond else 0


@register_dataset("imagenet64")
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


# ----------------------------------------------------------------------------
# Numbered .npy folders.

_NUMBERED = re.compile(r"^(\d+)\.npy$")
_CAPTION = re.compile(r"^(\d+)_(\d+)\.npy$")


def _missing_indices(indices: set, n: int, limit: int = 5) -> list[int]:
    out = []
    for i in range(n):
        if i not in indices:
            out.append(i)
            if len(out) == limit:
                break
    return out


def _scan_numbered(folder: Path) -> tuple[int, dict[int, int]]:
    """Count ``{i}.npy`` (must be 0..n-1) and the contexts ``{i}_{k}.npy`` of each i."""
    items, captions = set(), {}
    with os.scandir(folder) as it:
        for entry in it:
            if m := _NUMBERED.match(entry.name):
                items.add(int(m.group(1)))
            elif m := _CAPTION.match(entry.name):
                captions.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    n = len(items)
    if items and max(items) != n - 1:
        raise ValueError(f"{folder}: {n} numbered files but the largest index is {max(items)}; missing e.g. "
                         f"{_missing_indices(items, max(items) + 1)} (an interrupted extraction? rerun it)")
    counts = {}
    for i, ks in captions.items():
        if max(ks) != len(ks) - 1:
            raise ValueError(f"{folder}: contexts of item {i} are not numbered 0..{len(ks) - 1}: {sorted(ks)}")
        counts[i] = len(ks)
    return n, counts


class FeatureFolder(Dataset):
    """``{idx}.npy`` files holding (moments float32 (8, h, w), int label); items (moments, label)."""

    def __init__(self, root: Path, n: int, class_cond: bool = True):
        self.root = Path(root)
        self.n = n
        self.class_cond = class_cond

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        moments, label = load_pair(self.root / f"{index}.npy")
        return torch.from_numpy(np.asarray(moments, dtype=np.float32)), int(label) if self.class_cond else 0


def _imagenet_features_layout(res: int) -> str:
    h = res // 8
    return f"""\
  <path>/                      (default assets/datasets/imagenet{res}_features)
    0.npy ... {{2N-1}}.npy        pickled pair (moments float32 (8, {h}, {h}), int label);
                               N training images and their horizontal flips (2 x 1,281,167)"""


def _imagenet_features_howto(res: int) -> str:
    flag = "" if res == 256 else f" --resolution {res}"
    return f"""\
  extract them from the ImageNet train images (see the imagenet64 dataset for that layout):
    python scripts/extract_imagenet_feature.py --path assets/datasets/imagenet{flag}
  (needs the autoencoder assets/stable-diffusion/autoencoder_kl.pth)"""


class _LatentDataset(PixelDataset):
    """Feature datasets: ``data_shape`` is the latent the network sees (4, h, w); the files
    hold ``moments_shape`` (8, h, w)."""

    moments_shape: tuple[int, int, int]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, len={len(self.train)}, "
                f"moments_shape={self.moments_shape}, data_shape={self.data_shape}, num_classes={self.num_classes})")


class _ImageNetFeatures(_LatentDataset):
    resolution: int

    def __init__(self, path: Optional[PathLike] = None, num_classes: int = 1000, class_cond: bool = True):
        res = self.resolution
        self.name = f"imagenet{res}_features"
        path = path if path is not None else f"assets/datasets/imagenet{res}_features"
        h = res // 8
        self.moments_shape = (8, h, h)
        self.data_shape = (4, h, h)
        self.num_classes = num_classes if class_cond else 0
        self.fid_stat = f"assets/fid_stats/fid_stats_imagenet{res}_guided_diffusion.npz"
        looked = []
        for root in _candidate_paths(path):
            looked.append(root)
            if root.is_dir():
                n, _ = _scan_numbered(root)
                if n:
                    self.root = root
                    self.train = FeatureFolder(root, n, class_cond)
                    break
        else:
            raise _not_found(self.name, f"ImageNet {res} latent features", looked, "no 0.npy, 1.npy, ... files",
                             _imagenet_features_layout(res), _imagenet_features_howto(res))
        moments, label = self.train[0]
        if tuple(moments.shape) != self.moments_shape:
            raise ValueError(f"{self.root}/0.npy holds moments of shape {tuple(moments.shape)}, expected "
                             f"{self.moments_shape} for {self.name} (features of another resolution?)")


@register_dataset("imagenet256_features")
class ImageNet256Features(_ImageNetFeatures):
    """ImageNet 256 latents: moments (8, 32, 32) of images and their flips, 1000 classes."""
    resolution = 256


@register_dataset("imagenet512_features")
class ImageNet512Features(_ImageNetFeatures):
    """ImageNet 512 latents: moments (8, 64, 64) of images and their flips, 1000 classes."""
    resolution = 512


class MSCOCOFeatureFolder(Dataset):
    """``{i}.npy`` moments and ``{i}_{k}.npy`` caption contexts; items (moments, context).

    The caption k of each item is drawn with torch's global generator (seeded per
    DataLoader worker), uniformly among the item's captions.
    """

    def __init__(self, root: Path, n: int, num_captions: Sequence[int]):
        self.root = Path(root)
        self.n = n
        self.num_captions = list(num_captions)

    def __len__(self) -> int:
        return self.n

    def moments(self, index: int) -> torch.Tensor:
        """float32 (8, h, w)."""
        return torch.from_numpy(np.load(self.root / f"{index}.npy").astype(np.float32, copy=False))

    def context(self, index: int, k: int) -> torch.Tensor:
        """float32 (77, 768): CLIP context of caption k of item index."""
        return torch.from_numpy(np.load(self.root / f"{index}_{k}.npy").astype(np.float32, copy=False))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        k = int(torch.randint(self.num_captions[index], ()).item())
        return self.moments(index), self.context(index, k)

    def moments_only(self) -> Dataset:
        """A view whose items are the moments alone (e.g. FID reference images by decoding)."""
        return _MomentsView(self)


class _MomentsView(Dataset):
    def __init__(self, base: MSCOCOFeatureFolder):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.base):
            raise IndexError(index)
        return self.base.moments(index)


_MSCOCO_LAYOUT = """\
  <path>/                      (default assets/datasets/coco256_features)
    train/                     82,783 images
      0.npy                    moments float32 (8, 32, 32)
      0_0.npy ... 0_4.npy      CLIP context float32 (77, 768) of each caption
      ...
    val/                       40,504 images, same files
    empty_context.npy          float32 (77, 768): CLIP context of the empty prompt
    run_vis/                   prompts for sample grids
      0.npy ...                pickled pair (prompt str, context float32 (77, 768))"""

_MSCOCO_HOWTO = """\
  get train2014/, val2014/ and annotations/captions_{train,val}2014.json from
  https://cocodataset.org into assets/datasets/coco, then run
    python scripts/extract_mscoco_feature.py --split train
    python scripts/extract_mscoco_feature.py --split val
    python scripts/extract_empty_feature.py
    python scripts/extract_test_prompt_feature.py
  (needs assets/stable-diffusion/autoencoder_kl.pth and a local CLIP ViT-L/14, see libs/clip.py)"""


def _mscoco_folder(root: Path, split: str, name: str, looked_root: list[Path]) -> MSCOCOFeatureFolder:
    folder = root / split
    if not folder.is_dir():
        raise _not_found(name, "MS-COCO latent features", looked_root, f"{folder} is missing",
                         _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
    n, counts = _scan_numbered(folder)
    if n == 0:
        raise _not_found(name, "MS-COCO latent features", [folder], f"{folder} holds no 0.npy, 1.npy, ... files",
                         _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
    num_captions = [counts.get(i, 0) for i in range(n)]
    without = [i for i, c in enumerate(num_captions) if c == 0]
    if without:
        raise ValueError(f"{folder}: items without any caption context {{i}}_0.npy: {without[:5]}"
                         f"{' ...' if len(without) > 5 else ''} (an interrupted extraction? rerun it)")
    return MSCOCOFeatureFolder(folder, n, num_captions)


@register_dataset("mscoco256_features")
class MSCOCO256Features(_LatentDataset):
    """MS-COCO 256 latents with CLIP contexts (text-to-image).

    ``train`` items: (moments (8, 32, 32), context (77, 768) of a random caption).
    ``val``: the same for the validation images (contexts drive FID sampling; FID reference
    statistics come from the val images). ``empty_context`` (77, 768) is the unconditional
    context for classifier-free guidance; ``vis_prompts`` / ``vis_contexts`` (N, 77, 768) are
    the prompts of sample grids (``run_vis/``). ``val`` and ``run_vis`` are read on first use.
    """

    def __init__(self, path: PathLike = "assets/datasets/coco256_features", resolution: int = 256):
        self.name = "mscoco256_features"
        h = resolution // 8
        self.moments_shape = (8, h, h)
        self.data_shape = (4, h, h)
        self.num_classes = 0
        self.fid_stat = f"assets/fid_stats/fid_stats_mscoco{resolution}_val.npz"
        candidates = _candidate_paths(path)
        roots = [c for c in candidates if (c / "train").is_dir()]
        if not roots:
            raise _not_found(self.name, "MS-COCO latent features", [c / "train" for c in candidates],
                             "no train/ folder", _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
        self.root = roots[0]
        self.train = _mscoco_folder(self.root, "train", self.name, [self.root])
        empty = self.root / "empty_context.npy"
        if not empty.is_file():
            raise _not_found(self.name, "MS-COCO latent features", [empty], "empty_context.npy is missing",
                             _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
        self.empty_context = torch.from_numpy(np.load(empty).astype(np.float32, copy=False))  # (77, 768)
        self.context_shape = tuple(self.empty_context.shape)
        moments, context = self.train[0]
        if tuple(moments.shape) != self.moments_shape:
            raise ValueError(f"{self.train.root}/0.npy holds moments of shape {tuple(moments.shape)}, expected "
                             f"{self.moments_shape}")
        if tuple(context.shape) != self.context_shape:
            raise ValueError(f"{self.train.root}/0_*.npy holds contexts of shape {tuple(context.shape)} but "
                             f"empty_context.npy has {self.context_shape}")
        self._val = None
        self._vis = None

    @property
    def has_context(self) -> bool:
        return True

    @property
    def val(self) -> MSCOCOFeatureFolder:
        if self._val is None:
            self._val = _mscoco_folder(self.root, "val", self.name, [self.root])
        return self._val

    def _load_vis(self) -> tuple[list[str], torch.Tensor]:
        if self._vis is None:
            folder = self.root / "run_vis"
            n = _scan_numbered(folder)[0] if folder.is_dir() else 0
            if n == 0:
                raise _not_found(self.name, "MS-COCO visualisation prompts", [folder],
                                 "no run_vis/0.npy, 1.npy, ... files", _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
            prompts, contexts = [], []
            for i in range(n):
                prompt, context = load_pair(folder / f"{i}.npy")
                prompts.append(str(prompt))
                contexts.append(np.asarray(context, dtype=np.float32))
            self._vis = prompts, torch.from_numpy(np.stack(contexts))
        return self._vis

    @property
    def vis_prompts(self) -> list[str]:
        return self._load_vis()[0]

    @property
    def vis_contexts(self) -> torch.Tensor:
        """(N, 77, 768)."""
        return self._load_vis()[1]


# ----------------------------------------------------------------------------
# Extraction (scripts/extract_*.py). `autoencoder` is a FrozenAutoencoderKL (anything with
# encode_moments), `clip` a FrozenCLIPEmbedder (anything with encode(list[str]) -> (B, 77, D)).


def _tqdm(iterable, progress: bool, **kwargs):
    from tqdm import tqdm
    return tqdm(iterable, disable=not progress, dynamic_ncols=True, **kwargs)


def _existing(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def imagenet_feature_indices(start: int, length: int, n: int, layout: str = "global") -> tuple[list[int], list[int]]:
    """File indices of the originals and of the flips of images start..start+length-1 of n.

    'global': originals are 0..n-1 and flips n..2n-1 (independent of the batch size).
    'per_batch': the released script's order: each batch writes its originals then its flips,
    so image start+j -> 2*start + j and its flip -> 2*start + length + j (depends on the batch size).
    """
    if layout == "global":
        return list(range(start, start + length)), list(range(n + start, n + start + length))
    if layout == "per_batch":
        return (list(range(2 * start, 2 * start + length)),
                list(range(2 * start + length, 2 * start + 2 * length)))
    raise ValueError(f"unknown layout {layout!r}; use 'global' or 'per_batch'")


def imagenet_train_images(path: PathLike = "assets/datasets/imagenet", resolution: int = 256) -> ImageFolderDataset:
    """The ImageNet train images, ADM center-cropped to ``resolution``, no flips; items (x, label)."""
    _, files, labels, _ = _find_image_folder(path, f"imagenet (train images at {resolution})")
    return ImageFolderDataset(files, labels, resolution, random_flip=False)


def extract_imagenet_features(autoencoder, dataset: Dataset, out_dir: PathLike, batch_size: int = 256,
                              num_workers: int = 8, layout: str = "global", progress: bool = True) -> int:
    """Moments of the images of ``dataset`` (items (x in [-1, 1], label)) and of their flips.

    Writes ``out_dir/{idx}.npy`` = pickled (moments float32 (8, R/8, R/8), label), indices by
    ``imagenet_feature_indices``. Batches whose files all exist are skipped. Returns the
    number of files written.
    """
    n = len(dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing(out_dir)
    jobs = []  # (image indices, file indices of the originals then the flips)
    for start in range(0, n, batch_size):
        length = min(batch_size, n - start)
        orig, flip = imagenet_feature_indices(start, length, n, layout)
        if not all(f"{i}.npy" in existing for i in orig + flip):
            jobs.append((list(range(start, start + length)), orig + flip))
    device = next(autoencoder.parameters()).device
    loader = DataLoader(dataset, batch_sampler=[images for images, _ in jobs], num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    written = 0
    for (x, y), (_, targets) in _tqdm(zip(loader, jobs), progress, total=len(jobs), desc="imagenet features"):
        x = x.to(device, non_blocking=True)
        x = torch.cat([x, x.flip(dims=[-1])])  # (2B, 3, R, R): originals, then flips
        moments = autoencoder.encode_moments(x).float().cpu().numpy()  # (2B, 8, R/8, R/8)
        for idx, m, label in zip(targets, moments, y.tolist() * 2):
            save_pair(out_dir / f"{idx}.npy", m, int(label))
            written += 1
    return written


_COCO_LAYOUT = """\
  <coco root>/                 (default assets/datasets/coco)
    train2014/COCO_train2014_000000000009.jpg ...
    val2014/COCO_val2014_000000000042.jpg ...
    annotations/captions_train2014.json
    annotations/captions_val2014.json"""

_COCO_HOWTO = """\
  download train2014.zip, val2014.zip and annotations_trainval2014.zip from
  https://cocodataset.org/#download and unpack them into the coco root"""


def read_coco_captions(image_dir: PathLike, annotations: PathLike) -> tuple[list[Path], list[list[str]]]:
    """Images sorted by COCO image id and their captions in annotation-file order (as pycocotools)."""
    image_dir, annotations = Path(image_dir), Path(annotations)
    for p, what in ((image_dir, "image folder"), (annotations, "captions annotation file")):
        if not p.exists():
            raise _not_found("mscoco", "MS-COCO", [p], f"{what} {p} is missing", _COCO_LAYOUT, _COCO_HOWTO)
    data = json.loads(annotations.read_text())
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{annotations} is not a COCO annotation file (needs 'images' and 'annotations' lists)")
    if data["annotations"] and "caption" not in data["annotations"][0]:
        raise ValueError(f"{annotations} holds no captions: use annotations/captions_<split>2014.json")
    images = sorted(data["images"], key=lambda im: im["id"])
    captions = {im["id"]: [] for im in images}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    files = [image_dir / im["file_name"] for im in images]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise _not_found("mscoco", "MS-COCO", missing[:5], f"{len(missing)} of the {len(files)} images listed in "
                         f"{annotations.name} are not in {image_dir}", _COCO_LAYOUT, _COCO_HOWTO)
    return files, [captions[im["id"]] for im in images]


class _CocoImages(Dataset):
    def __init__(self, files: Sequence[Path], resolution: int):
        self.files, self.resolution = list(files), resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return uint8_to_model(center_crop_resize(_open_rgb(self.files[index]), self.resolution))  # (3, R, R)


def extract_mscoco_features(autoencoder, clip, files: Sequence[Path], captions: Sequence[Sequence[str]],
                            out_dir: PathLike, resolution: int = 256, batch_size: int = 64, num_workers: int = 4,
                            progress: bool = True) -> int:
    """``out_dir/{i}.npy`` moments (8, R/8, R/8) of image ``files[i]`` and ``out_dir/{i}_{k}.npy`` the
    CLIP context (77, D) of ``captions[i][k]`` (inputs as given by ``read_coco_captions``). Images
    whose files all exist are skipped. Returns the number of images processed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing(out_dir)
    pending = [i for i in range(len(files))
               if f"{i}.npy" not in existing or any(f"{i}_{k}.npy" not in existing for k in range(len(captions[i])))]
    batches = [pending[s: s + batch_size] for s in range(0, len(pending), batch_size)]
    device = next(autoencoder.parameters()).device
    loader = DataLoader(_CocoImages(files, resolution), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    for x, indices in _tqdm(zip(loader, batches), progress, total=len(batches), desc=f"mscoco{resolution} features"):
        texts = [c for i in indices for c in captions[i]]
        contexts = clip.encode(texts).float().cpu().numpy() if texts else None  # (captions in batch, 77, D)
        moments = autoencoder.encode_moments(x.to(device)).float().cpu().numpy()  # (B, 8, R/8, R/8)
        pos = 0
        for i, m in zip(indices, moments):
            for k in range(len(captions[i])):
                save_npy(out_dir / f"{i}_{k}.npy", contexts[pos])
                pos += 1
            save_npy(out_dir / f"{i}.npy", m)  # last: marks the item complete
    return len(pending)


def extract_prompt_features(clip, prompts: Sequence[str], out_dir: PathLike, batch_size: int = 64) -> int:
    """``out_dir/{i}.npy`` = pickled (prompt, context float32 (77, D)). Existing files are kept when
    they hold the same prompt; a different prompt raises. Returns the number written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = []
    for i, prompt in enumerate(prompts):
        path = out_dir / f"{i}.npy"
        if path.is_file():
            stored = str(load_pair(path)[0])
            if stored != prompt:
                raise ValueError(f"{path} holds the prompt {stored!r}, not {prompt!r}: write into an empty "
                                 f"folder (or delete the old run_vis files)")
        else:
            pending.append(i)
    for s in range(0, len(pending), batch_size):
        chunk = pending[s: s + batch_size]
        contexts = clip.encode([prompts[i] for i in chunk]).float().cpu().numpy()
        for i, c in zip(chunk, contexts):
            save_pair(out_dir / f"{i}.npy", prompts[i], c)
    return len(pending)


def extract_empty_context(clip, out_path: PathLike) -> bool:
    """``out_path`` = CLIP context (77, D) of the empty prompt; False if it already exists."""
    out_path = Path(out_path)
    if out_path.is_file():
        return False
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_npy(out_path, clip.encode([""])[0].float().cpu().numpy())
    return True
