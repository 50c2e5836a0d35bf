"""Checksums of a checkpoint directory: ``manifest.json`` = {file name: sha256 and size},
written last before the directory is renamed into place, verified on load. A checkpoint
without one loads unverified; an unreadable manifest, or one not listing a file read, fails."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from libs.run.atomic import atomic_write

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class CorruptCheckpointError(ValueError):
    """A checkpoint file does not match its manifest (changed, truncated or missing)."""


def sha256_file(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Union[str, os.PathLike], names: Iterable[str]) -> Path:
    """Hash ``names`` (files in ``folder``, as they are on disk) into ``folder/manifest.json``."""
    folder = Path(folder)
    files = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
             for name in sorted(names)}
    text = json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True) + "\n"
    atomic_write(folder / MANIFEST, lambda f: f.write(text.encode()))
    return folder / MANIFEST


def read_manifest(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """{file name: {'sha256', 'bytes'}} of ``folder``, or None when it has no manifest."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise CorruptCheckpointError(f"{path} is not a file (a folder or a broken link); the checkpoint cannot be "
                                     f"verified: use another checkpoint")
    try:
        files = json.loads(path.read_text())["files"]
        assert isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path} is unreadable ({type(e).__name__}); the checkpoint cannot be "
                                     f"verified: use another checkpoint") from None
    return files


def verify_files(folder: Union[str, os.PathLike], names: Optional[Iterable[str]] = None) -> bool:
    """Check ``names`` (default: all listed) against the manifest; False when there is none. Raises
    ``CorruptCheckpointError`` on a missing, resized, changed or unlisted file or an unreadable manifest."""
    folder = Path(folder)
    files = read_manifest(folder)
    if files is None:
        return False
    for name in (files if names is None else names):
        if name not in files:
            raise CorruptCheckpointError(f"{folder / name} is not listed in {folder / MANIFEST}, so it cannot be "
                                         f"verified: the checkpoint was changed after it was saved; move the file "
                                         f"out of the checkpoint folder, or use another checkpoint")
        path, want = folder / name, files[name]
        if not isinstance(want, dict):
            raise CorruptCheckpointError(f"{folder / MANIFEST} is unreadable (its entry for {name} is not a "
                                         f"checksum); the checkpoint cannot be verified: use another checkpoint")
        if not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing (listed in {MANIFEST}): the checkpoint is incomplete; "
                                         f"use another checkpoint")
        if path.stat().st_size != want.get("bytes") or sha256_file(path) != want.get("sha256"):
            raise CorruptCheckpointError(f"{path} does not match its checksum in {folder / MANIFEST}: the file "
                                         f"changed or is corrupt since it was saved; use another checkpoint")
    return True
