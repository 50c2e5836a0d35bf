"""File formats of the latent features (the released U-ViT / AdaDiff ones): ``{i}.npy`` pickled
pairs ``[moments float32, label int]`` or ``[prompt str, context float32 (77, 768)]``
(``load_pair``, through the restricted unpickler of ``libs/run/safe_load.py``), or plain
float32 arrays (``load_array``, ``allow_pickle=False``). Files are written atomically."""
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
