"""Latent-feature datasets: stored autoencoder moments (and CLIP contexts) of ImageNet 256 /
512 and MS-COCO 256 (file formats: ``libs/data/feature_files.py``).

=====================  ==========================================  ===========================
name                   items of ``.train``                          ``data_shape`` (model input)
=====================  ==========================================  ===========================
imagenet256_features   (moments (8, 32, 32), label)                 (4, 32, 32)
imagenet512_features   (moments (8, 64, 64), label)                 (4, 64, 64)
mscoco256_features     (moments (8, 32, 32), context (77, 768))     (4, 32, 32)
=====================  ==========================================  ===========================

The training task draws the latent from the moments (``FrozenAutoencoderKL.sample``)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.data.base import PixelDataset
from libs.data.feature_files import load_array, load_pair
from libs.data.paths import PathLike, candidate_paths, not_found


_NUMBERED = re.compile(r"^(\d+)\.npy$")
_CAPTION = re.compile(r"^(\d+)_(\d+)\.npy$")


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
                         f"{sorted(set(range(max(items))) - items)[:5]} (an interrupted extraction? rerun it)")
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
        for root in candidate_paths(path):
            looked.append(root)
            if root.is_dir():
                n, _ = _scan_numbered(root)
                if n:
                    self.root = root
                    self.train = FeatureFolder(root, n, class_cond)
                    break
        else:
            raise not_found(self.name, f"ImageNet {res} latent features", looked, "no 0.npy, 1.npy, ... files",
                            _imagenet_features_layout(res), _imagenet_features_howto(res))
        moments, label = self.train[0]
        if tuple(moments.shape) != self.moments_shape:
            raise ValueError(f"{self.root}/0.npy holds moments of shape {tuple(moments.shape)}, expected "
                             f"{self.moments_shape} for {self.name} (features of another resolution?)")


class ImageNet256Features(_ImageNetFeatures):
    """ImageNet 256 latents: moments (8, 32, 32) of images and their flips, 1000 classes."""
    resolution = 256


class ImageNet512Features(_ImageNetFeatures):
    """ImageNet 512 latents: moments (8, 64, 64) of images and their flips, 1000 classes."""
    resolution = 512


class MSCOCOFeatureFolder(Dataset):
    """``{i}.npy`` moments and ``{i}_{k}.npy`` caption contexts; items (moments, context), caption
    k drawn uniformly with torch's global generator."""

    def __init__(self, root: Path, n: int, num_captions: Sequence[int]):
        self.root = Path(root)
        self.n = n
        self.num_captions = list(num_captions)

    def __len__(self) -> int:
        return self.n

    def moments(self, index: int) -> torch.Tensor:
        """float32 (8, h, w)."""
        return torch.from_numpy(load_array(self.root / f"{index}.npy").astype(np.float32, copy=False))

    def context(self, index: int, k: int) -> torch.Tensor:
        """float32 (77, 768): CLIP context of caption k of item index."""
        return torch.from_numpy(load_array(self.root / f"{index}_{k}.npy").astype(np.float32, copy=False))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        k = int(torch.randint(self.num_captions[index], ()).item())
        return self.moments(index), self.context(index, k)


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
  (needs assets/stable-diffusion/autoencoder_kl.pth and a local CLIP ViT-L/14, see libs/models/clip.py)"""


def _mscoco_folder(root: Path, split: str, name: str, looked_root: list[Path]) -> MSCOCOFeatureFolder:
    folder = root / split
    if not folder.is_dir():
        raise not_found(name, "MS-COCO latent features", looked_root, f"{folder} is missing",
                        _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
    n, counts = _scan_numbered(folder)
    if n == 0:
        raise not_found(name, "MS-COCO latent features", [folder], f"{folder} holds no 0.npy, 1.npy, ... files",
                        _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
    num_captions = [counts.get(i, 0) for i in range(n)]
    without = [i for i, c in enumerate(num_captions) if c == 0]
    if without:
        raise ValueError(f"{folder}: items without any caption context {{i}}_0.npy: {without[:5]}"
                         f"{' ...' if len(without) > 5 else ''} (an interrupted extraction? rerun it)")
    return MSCOCOFeatureFolder(folder, n, num_captions)


class MSCOCO256Features(_LatentDataset):
    """MS-COCO 256 latents with CLIP contexts: ``train`` / ``val`` items (moments (8, 32, 32),
    context (77, 768) of a random caption); ``empty_context`` (77, 768) for guidance;
    ``vis_prompts`` / ``vis_contexts`` (N, 77, 768) for sample grids (read on first use)."""

    def __init__(self, path: PathLike = "assets/datasets/coco256_features", resolution: int = 256):
        self.name = "mscoco256_features"
        h = resolution // 8
        self.moments_shape = (8, h, h)
        self.data_shape = (4, h, h)
        self.num_classes = 0
        self.fid_stat = f"assets/fid_stats/fid_stats_mscoco{resolution}_val.npz"
        candidates = candidate_paths(path)
        roots = [c for c in candidates if (c / "train").is_dir()]
        if not roots:
            raise not_found(self.name, "MS-COCO latent features", [c / "train" for c in candidates],
                            "no train/ folder", _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
        self.root = roots[0]
        self.train = _mscoco_folder(self.root, "train", self.name, [self.root])
        empty = self.root / "empty_context.npy"
        if not empty.is_file():
            raise not_found(self.name, "MS-COCO latent features", [empty], "empty_context.npy is missing",
                            _MSCOCO_LAYOUT, _MSCOCO_HOWTO)
        self.empty_context = torch.from_numpy(load_array(empty).astype(np.float32, copy=False))  # (77, 768)
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
    def val(self) -> MSCOCOFeatureFolder:
        if self._val is None:
            self._val = _mscoco_folder(self.root, "val", self.name, [self.root])
        return self._val

    def _load_vis(self) -> tuple[list[str], torch.Tensor]:
        if self._vis is None:
            folder = self.root / "run_vis"
            n = _scan_numbered(folder)[0] if folder.is_dir() else 0
            if n == 0:
                raise not_found(self.name, "MS-COCO visualisation prompts", [folder],
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
