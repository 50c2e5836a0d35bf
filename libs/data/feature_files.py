"""File formats of the latent features (those of the released U-ViT / AdaDiff features):

* ``{i}.npy`` pickled pair: a 1-D object array ``[moments float32, label int]`` (ImageNet)
  or ``[prompt str, context float32 (77, 768)]`` (``run_vis/``); read with ``load_pair``;
* ``{i}.npy`` / ``{i}_{k}.npy`` plain float32 arrays (MS-COCO moments / caption contexts),
  read with ``load_array``.

Nothing is unpickled with ``pickle.load``: a pair's pickle goes through the restricted
unpickler of ``libs/run/safe_load.py`` (numpy arrays, scalars, str, int only), so a crafted
file is refused, naming itself, before any of its code runs; a plain array is read with
``allow_pickle=False`` and an object array in its place is refused.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted extraction never leaves a truncated file, and a rerun skips what exists.
"""
from __future__ import annotations

import numpy as np

from libs.run.atomic import atomic_write
from libs.run.safe_load import load_npy
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
    """Read a pair written by ``save_pair`` (or a pickled tuple), without running code."""
    obj = load_npy(path, allow_objects=True)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if isinstance(obj, (np.ndarray, tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise ValueError(f"{path}: expected a pickled pair (moments, label) or (prompt, context), got "
                     f"{type(obj).__name__} {getattr(obj, 'shape', '')}: extract the features again")


def load_array(path: PathLike) -> np.ndarray:
    """A plain numeric ``.npy`` array (never a pickle); object arrays are refused naming the file."""
    return load_npy(path)
