"""File formats of the latent features (those of the released U-ViT / AdaDiff features):

* ``{i}.npy`` pickled pair: a 1-D object array ``[moments float32, label int]`` (ImageNet)
  or ``[prompt str, context float32 (77, 768)]`` (``run_vis/``); read with ``load_pair``;
* ``{i}.npy`` / ``{i}_{k}.npy`` plain float32 arrays (MS-COCO moments / caption contexts).

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted extraction never leaves a truncated file, and a rerun skips what exists.
"""
from __future__ import annotations

import numpy as np

from libs.run.atomic import atomic_write
from libs.data.paths import PathLike


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
