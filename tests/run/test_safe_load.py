"""Data files are read without running code: crafted pickles are refused before their payload
runs, the released pickled formats (feature pairs, CIFAR-10 batches) still load, object arrays
in place of plain ones are refused naming the file, and a file that changes while it is read
is refused."""
import io
import os
import pickle
import struct

import numpy as np
import pytest

from libs.data.feature_files import load_array, load_pair, save_pair
from libs.data.pixel import _load_pickle
from libs.run.safe_load import FileChangedError, UnsafeDataError, load_npy, read_bytes_stable, restricted_unpickle


class Payload:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def npy_with_pickle(obj) -> bytes:
    """A .npy file whose object-array body is ``pickle.dumps(obj)`` (what np.save writes for objects)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    return buf.getvalue() + pickle.dumps(obj, protocol=3)


CRAFTED = [  # (name, file bytes given the marker path, reader)
    ("npy pair with os.system", lambda m: npy_with_pickle([Payload(m), 1]), load_pair),
    ("plain pickle with os.system", lambda m: pickle.dumps((Payload(m), 1)), load_pair),
    ("cifar batch with os.system", lambda m: pickle.dumps({b"data": Payload(m)}, protocol=2), _load_pickle),
    ("npy pair calling builtins.eval", lambda m: npy_with_pickle(
        type("E", (), {"__reduce__": lambda self: (eval, (f"open({str(m)!r}, 'w')",))})()), load_pair),
]


@pytest.mark.parametrize("name,make,reader", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_pickle_is_refused_without_running(tmp_path, name, make, reader):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "0.npy"
    path.write_bytes(make(marker))
    with pytest.raises(UnsafeDataError, match=rf"{path}.*refused without running it"):
        reader(path)
    assert not marker.exists()


RELEASED = [  # what the released features and CIFAR-10 hold, as numpy 1.x/2.x and protocols 2-5 write them
    ("imagenet pair", lambda p: save_pair(p, np.ones((8, 4, 4), np.float32), np.int64(7)), (8, 4, 4), 7),
    ("mscoco vis pair", lambda p: save_pair(p, "a prompt", np.ones((77, 8), np.float32)), "a prompt", (77, 8)),
    ("np.save of a tuple", lambda p: np.save(p, np.array([np.zeros((8, 4, 4), np.float32), 3], dtype=object),
                                             allow_pickle=True), (8, 4, 4), 3),
    *[(f"pickled tuple protocol {k}", lambda p, k=k: p.write_bytes(pickle.dumps((np.zeros((8, 4, 4), np.float32), 5),
                                                                                 protocol=k)), (8, 4, 4), 5)
      for k in (2, 3, 4, 5)],
]


@pytest.mark.parametrize("name,write,first,second", RELEASED, ids=[r[0] for r in RELEASED])
def test_released_pickled_formats_still_load(tmp_path, name, write, first, second):
    path = tmp_path / "0.npy"
    write(path)
    a, b = load_pair(path)
    for got, want in ((a, first), (b, second)):
        assert (getattr(got, "shape", None) == want) if isinstance(want, tuple) else got == want


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_load(tmp_path, protocol):
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [1, 2],
             b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"filenames": [b"a.png", b"b.png"]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    entry = _load_pickle(tmp_path / "data_batch_1")
    assert entry["labels"] == [1, 2] and np.array_equal(entry["data"], batch[b"data"])


BAD_ARRAYS = [  # (name, file bytes, expected message)
    ("object array where numbers are expected", lambda: npy_with_pickle([1, 2]), "holds an object array"),
    ("random bytes", lambda: os.urandom(64), "is not a .npy file"),
    ("truncated array", lambda: _npy_bytes(np.ones((77, 8), np.float32))[:200], "truncated or corrupt"),
    ("garbled header", lambda: b"\x93NUMPY\x01\x00" + struct.pack("<H", 10) + b"{'x': 1}\n ", "unreadable .npy header"),
]


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("name,make,message", BAD_ARRAYS, ids=[b[0] for b in BAD_ARRAYS])
def test_plain_arrays_refuse_objects_and_garbage_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / "0_1.npy"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=message) as e:
        load_array(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_restricted_unpickle_allows_only_numpy_rebuilds(tmp_path):
    data = {"a": [1, 2.5, "x", b"y", (None, True)], "b": np.arange(3), "c": np.float32(2)}
    assert restricted_unpickle(io.BytesIO(pickle.dumps(data)), "mem")["a"] == data["a"]
    with pytest.raises(UnsafeDataError, match="collections.OrderedDict"):
        import collections
        restricted_unpickle(io.BytesIO(pickle.dumps(collections.OrderedDict())), "mem")
    with pytest.raises(ValueError, match="not a readable data file"):
        restricted_unpickle(io.BytesIO(b"\x80\x04garbage"), "mem")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_npy(tmp_path)


def test_a_file_that_changes_while_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x" * 1000)
    assert read_bytes_stable(path) == b"x" * 1000
    real_fstat, calls = os.fstat, []

    def growing(fd):  # the copy appends between the two looks at the file
        calls.append(fd)
        if len(calls) == 2:
            with open(path, "ab") as f:
                f.write(b"more")
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", growing)
    with pytest.raises(FileChangedError, match=rf"{path} changed while it was being read"):
        read_bytes_stable(path)
