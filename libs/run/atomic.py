"""Atomic file writes: a temporary file in the target's folder, fsync, rename (readers see the
old file or the new, never a truncated one; a link in the target's place is replaced, not
written through). Files written in place (log, stats, lock) are opened with ``open_own``,
which refuses a link. A disk failure raises its ``OSError`` naming the target, also when the
writer reported it otherwise; a wrapped Ctrl-C or stop signal stays what it was."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional, Union


def _open_temp(fd: int) -> BinaryIO:
    return os.fdopen(fd, "wb")


def _os_error_behind(exc: BaseException, kind=OSError) -> Optional[BaseException]:
    """The ``kind`` exception an exception was raised while handling (its cause/context chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def own_fd(path: Union[str, os.PathLike], flags: int) -> int:
    """``os.open(path, flags)`` that refuses a symbolic link in ``path``'s place (``OSError``
    ELOOP naming it), where a plain open would write into the link's target."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise OSError(errno.ELOOP, f"{path} is a symbolic link (to {os.path.realpath(path)}) where this run "
                          f"writes its own file", str(path)) from None
        raise


def open_own(path: Union[str, os.PathLike], mode: str = "a"):
    """``open(path, mode)`` (text, "a" or "w") through ``own_fd``."""
    return open(path, mode, opener=own_fd)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Call ``write(f)`` on a temporary binary file, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _open_temp(fd) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except Exception as e:
        _unlink_quietly(tmp)
        interrupt = _os_error_behind(e, KeyboardInterrupt)
        if interrupt is not None:  # Ctrl-C (or a stop signal) inside a writer that wrapped it: the same kind,
            raise type(interrupt)(*interrupt.args) from e  # so a SIGTERM stays a SIGTERM (errors.Stopped)
        cause = _os_error_behind(e)
        if cause is not None and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def publish_folder(staging: Union[str, os.PathLike], out: Union[str, os.PathLike], last_name: str,
                   last_text: str, keep: Iterable[str] = ()) -> None:
    """Move every file of ``staging`` into ``out``, remove the other top-level files of ``out``
    not in ``keep``, then write ``out/last_name`` (removed first, written last: while it exists,
    the files beside it are the ones published with it)."""
    import shutil

    staging, out = Path(staging), Path(out)
    (out / last_name).unlink(missing_ok=True)
    new = {last_name, *keep}
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            new.add(dst.relative_to(out).parts[0])
    shutil.rmtree(staging, ignore_errors=True)
    for old in out.iterdir():
        if old.name not in new and not old.is_dir():
            old.unlink(missing_ok=True)
    atomic_write_text(out / last_name, last_text)
