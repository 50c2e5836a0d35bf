"""Writers of the latent features (``scripts/extract_*.py``). ``autoencoder`` is a
FrozenAutoencoderKL (anything with ``encode_moments``), ``clip`` a FrozenCLIPEmbedder
(anything with ``encode(list[str]) -> (B, 77, D)``). File formats: ``libs/data/feature_files.py``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from libs.data.crops import center_crop_resize, open_rgb
from libs.data.feature_files import load_pair, save_npy, save_pair
from libs.data.paths import PathLike, not_found
from libs.data.value_range import uint8_to_model


def _tqdm(iterable, progress: bool, **kwargs):
    from tqdm import tqdm
    return tqdm(iterable, disable=not progress, dynamic_ncols=True, **kwargs)


def _existing(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def imagenet_feature_indices(start: int, length: int, n: int, layout: str = "global") -> tuple[list[int], list[int]]:
    """File indices of the originals and flips of images start..start+length-1 of n: 'global'
    (originals 0..n-1, flips n..2n-1) or 'per_batch' (the released order: image start+j ->
    2*start + j, its flip -> 2*start + length + j)."""
    if layout == "global":
        return list(range(start, start + length)), list(range(n + start, n + start + length))
    if layout == "per_batch":
        return (list(range(2 * start, 2 * start + length)), list(range(2 * start + length, 2 * start + 2 * length)))
    raise ValueError(f"unknown layout {layout!r}; use 'global' or 'per_batch'")


def extract_imagenet_features(autoencoder, dataset: Dataset, out_dir: PathLike, batch_size: int = 256,
                              num_workers: int = 8, layout: str = "global", progress: bool = True) -> int:
    """Write ``out_dir/{idx}.npy`` = pickled (moments float32 (8, R/8, R/8), label) for the images
    (x in [-1, 1], label) of ``dataset`` and their flips, skipping batches already written;
    returns the number of files written."""
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
            raise not_found("mscoco", "MS-COCO", [p], f"{what} {p} is missing", _COCO_LAYOUT, _COCO_HOWTO)
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
        raise not_found("mscoco", "MS-COCO", missing[:5], f"{len(missing)} of the {len(files)} images listed in "
                         f"{annotations.name} are not in {image_dir}", _COCO_LAYOUT, _COCO_HOWTO)
    return files, [captions[im["id"]] for im in images]


class _CocoImages(Dataset):
    def __init__(self, files: Sequence[Path], resolution: int):
        self.files, self.resolution = list(files), resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return uint8_to_model(center_crop_resize(open_rgb(self.files[index]), self.resolution))  # (3, R, R)


def extract_mscoco_features(autoencoder, clip, files: Sequence[Path], captions: Sequence[Sequence[str]],
                            out_dir: PathLike, resolution: int = 256, batch_size: int = 64, num_workers: int = 4,
                            progress: bool = True) -> int:
    """Write ``out_dir/{i}.npy`` moments (8, R/8, R/8) of ``files[i]`` and ``out_dir/{i}_{k}.npy`` CLIP contexts
    (77, D) of ``captions[i][k]``, skipping finished images; returns the number processed."""
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
