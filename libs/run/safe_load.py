"""Reading data files without running code from them (a pickle can call any function):

* ``load_npy(path)``: ``allow_pickle=False``; an object array is refused unless
  ``allow_objects``, then read by ``restricted_unpickle``;
* ``restricted_unpickle(f, path)``: only the callables that rebuild numpy arrays, dtypes and
  scalars (``ALLOWED_GLOBALS``); any other global raises ``UnsafeDataError`` naming it;
* ``read_bytes_stable(path)``: a file's bytes in one go, refused if it changed meanwhile."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Union

from numpy.lib import format as npy_format

PathLike = Union[str, os.PathLike]

# numpy 1.x pickles name numpy.core.*, numpy 2.x numpy._core.*; both load under numpy 2.
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles: encode(str, 'latin1')
})


class UnsafeDataError(ValueError):
    """A data file asks to run code (a pickle global outside ``ALLOWED_GLOBALS``)."""


class FileChangedError(OSError):
    """A file changed (size or modification time) while it was being read."""


class _Restricted(pickle.Unpickler):
    def __init__(self, f, path, **kwargs):
        super().__init__(f, **kwargs)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeDataError(f"{self.path} asks to run {module}.{name} when loaded, which a data file never "
                              f"needs: refused without running it. Use files written by this project's scripts "
                              f"(or the released ones); do not load this file")


def restricted_unpickle(f, path: PathLike, encoding: str = "ASCII"):
    """``pickle.load`` that rebuilds only numpy arrays, dtypes, scalars and Python containers
    and literals; raises ``UnsafeDataError`` or ``ValueError`` naming ``path``."""
    try:
        return _Restricted(f, path, encoding=encoding).load()
    except UnsafeDataError:
        raise
    except Exception as e:  # truncated, not a pickle, bad numpy state, ...
        raise ValueError(f"{path} is not a readable data file ({type(e).__name__}: {e}); it is truncated or "
                         f"corrupt: write it again") from None


def _header(f, version):
    if hasattr(npy_format, "_read_array_header"):
        return npy_format._read_array_header(f, version)
    reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    return reader(f)


def load_npy(path: PathLike, allow_objects: bool = False):
    """A ``.npy`` array, never through ``pickle.load``. Object arrays are refused unless
    ``allow_objects`` (then read by ``restricted_unpickle``); a file without the ``.npy``
    magic is read as a restricted pickle when ``allow_objects`` (a pickled tuple)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a .npy file: check the path")
    with open(path, "rb") as f:
        magic = f.read(len(npy_format.MAGIC_PREFIX))
        f.seek(0)
        if magic != npy_format.MAGIC_PREFIX:
            if allow_objects:
                return restricted_unpickle(f, path, encoding="latin1")
            raise ValueError(f"{path} is not a .npy file (no .npy header): write it with np.save")
        try:
            version = npy_format.read_magic(f)
            _, _, dtype = _header(f, version)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path} has an unreadable .npy header ({e}): the file is corrupt, write it "
                             f"again") from None
        if dtype.hasobject:
            if not allow_objects:
                raise ValueError(f"{path} holds an object array (Python objects, stored as a pickle), expected "
                                 f"a numeric array: write it with np.save of a float/int array")
            return restricted_unpickle(f, path, encoding="latin1")
        f.seek(0)
        try:
            return npy_format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable .npy array ({e}): the file is truncated or corrupt, "
                             f"write it again") from None


def read_bytes_stable(path: PathLike) -> bytes:
    """The whole file, read without a memory map; ``FileChangedError`` when its size or
    modification time changed while it was read (another process is writing it)."""
    path = Path(path)
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        data = f.read()
        after = os.fstat(f.fileno())
    now = os.stat(path)
    sizes = {before.st_size, after.st_size, now.st_size, len(data)}
    if len(sizes) > 1 or len({before.st_mtime_ns, after.st_mtime_ns, now.st_mtime_ns}) > 1 \
            or now.st_ino != before.st_ino:
        raise FileChangedError(f"{path} changed while it was being read (is a copy or a save still writing it?): "
                               f"wait until it is complete, then run again")
    return data
