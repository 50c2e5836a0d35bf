"""One run per workdir: ``<workdir>/run.lock`` (pid, host, command, start time as JSON) names
the run that holds it, under an exclusive ``flock`` for the holder's whole life. A second run
refuses, naming the holder; a lock whose process is gone is taken over
(``takeover_message()``); without ``flock``, a live pid on this host or any pid on another host
holds it. ``LauncherWatch`` stops a worker (without saving) once its launcher is gone."""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional, Union

from libs.run.atomic import own_fd
from libs.run.errors import UserError

LOCK_NAME = "run.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


class WorkdirBusyError(UserError):
    """Another live run holds the workdir."""


def make_writable_dir(path: Union[str, os.PathLike], flag: str) -> Path:
    """Create ``path`` (and parents) as a folder; a file in the way is a one-line error."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag}={path}: {p} is a file, not a folder; choose another {flag} or move the file")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _holder_text(info: dict) -> str:
    if not info:
        return "an unknown process (the lock file is empty)"
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}, "
            f"command {info.get('command')!r}")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True
    except (TypeError, ValueError, OSError):  # ProcessLookupError among them
        return False
    return True


class RunLock:
    """``with RunLock(workdir): ...`` holds ``<workdir>/run.lock``; ``enabled=False`` (worker
    processes) does nothing."""

    def __init__(self, workdir: Union[str, os.PathLike], enabled: bool = True, flag: str = "--workdir"):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self.enabled = enabled
        self.flag = flag
        self.fd: Optional[int] = None
        self.taken_over: Optional[dict] = None  # the stale holder replaced, if any

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "RunLock":
        if not self.enabled:
            return self
        make_writable_dir(self.workdir, self.flag)
        for _ in range(10):  # the file may be unlinked by its releasing holder between open and flock
            fd = self._open()
            try:
                locked = self._flock(fd)
                same_file = os.path.lexists(self.path) and os.lstat(self.path).st_ino == os.fstat(fd).st_ino
                if locked is not False and not same_file:
                    os.close(fd)
                    continue
                previous = self._read(fd)
                if locked is False or (locked is None and self._held_without_flock(previous)):
                    raise WorkdirBusyError(
                        f"workdir {self.workdir} is in use by another run: {_holder_text(previous)}. Wait for it "
                        f"to finish or stop it, or choose another {self.flag} (if that run is really gone, delete "
                        f"{self.path})")
                if previous:
                    self.taken_over = previous
                self._write(fd)
                self.fd = fd
                return self
            except BaseException:
                if self.fd != fd:
                    os.close(fd)
                raise
        raise WorkdirBusyError(f"cannot lock {self.path}: it keeps being replaced; is another run starting?")

    def takeover_message(self) -> Optional[str]:
        """The warning to log when a stale lock was taken over (None otherwise)."""
        if not self.taken_over:
            return None
        return f"took over the stale lock {self.path} of {_holder_text(self.taken_over)}: that process is gone"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.path.lexists(self.path) and os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    # ------------------------------------------------------------------ helpers
    def _open(self) -> int:
        """The lock file, never through a link (a link's target would get the lock's JSON)."""
        try:
            return own_fd(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise UserError(f"{self.path} is a symbolic link (to {os.path.realpath(self.path)}), not a lock this "
                            f"run made: a run never writes through a link; remove the link or choose another "
                            f"{self.flag}") from None

    def _flock(self, fd) -> Optional[bool]:
        """True: locked; False: held by someone else; None: no flock here (pid decides)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _NO_FLOCK:
                return None
            raise

    @staticmethod
    def _held_without_flock(info: dict) -> bool:
        """No flock on this file system: a live pid on this host, or a pid on another host
        (which cannot be checked from here), holds the lock."""
        if not info:
            return False
        if info.get("host") != socket.gethostname():
            return True
        return _pid_alive(info.get("pid")) and info.get("pid") != os.getpid()

    @staticmethod
    def _read(fd) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        try:
            info = json.loads(data.decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {"pid": None, "host": None, "started": None, "command": data[:80].decode(errors="replace")}
        return info if isinstance(info, dict) else {}

    @staticmethod
    def _write(fd) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)


class LauncherGoneError(UserError):
    """This worker's launcher (accelerate launch / torchrun) has exited."""


class LauncherWatch:
    """In a worker started by a distributed launcher, ``check()`` raises once the launcher
    (this process's parent) is gone: the worker then stops without writing anything more.
    Outside such a launcher (plain ``python train.py``, even under nohup) it never fires."""

    def __init__(self):
        launched = bool(os.environ.get("TORCHELASTIC_RUN_ID")) and "LOCAL_RANK" in os.environ
        self.parent = os.getppid() if launched else None

    def check(self, step: int) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            raise LauncherGoneError(f"the launcher of this worker (pid {self.parent}) is gone; stopping at step "
                                    f"{step} without saving. Resume by launching the run again")
