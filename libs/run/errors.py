"""User errors on the command line: one line with the problem and the fix, and a non-zero exit.

``guarded(main)`` prints a user error (``ValueError``, ``OSError``, ``FloatingPointError``,
``UserError``, a lost peer of a multi-process run) as ``train.py: error: <problem and fix>`` on
stderr and exits with ``EXIT_USER_ERROR``. Ctrl-C prints ``train.py: interrupted (Ctrl-C):
...`` and exits with ``EXIT_INTERRUPTED`` (130); inside ``stop_signals()`` SIGTERM and SIGHUP
become the same interruption (``Stopped``, status 128 + signal; a repeat during clean-up is
ignored). Anything else keeps its traceback; ``ADADIFF_DEBUG=1`` shows it for user errors too."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from typing import Callable, Iterator, Optional

from libs.run.distributed import collective_failure

DEBUG_ENV = "ADADIFF_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem the user can fix; its message says what and how."""


USER_ERRORS = (UserError, ValueError, OSError, FloatingPointError)

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere (--workdir / --output_path)",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere (--workdir / --output_path)",
    errno.EACCES: "permission denied: make the folder writable or choose another --workdir / --output_path",
    errno.EPERM: "operation not permitted: make the folder writable or choose another --workdir / --output_path",
    errno.EROFS: "the file system is read-only: choose another --workdir / --output_path",
    errno.EEXIST: "a file is in the way of a folder: move it or choose another --workdir / --output_path",
    errno.ENOTDIR: "a file is in the way of a folder: move it or choose another --workdir / --output_path",
    errno.EISDIR: "this is a folder, a file was expected: check the path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ELOOP: "a run never writes through a link it did not make: remove the link or choose another "
                 "--workdir / --output_path",
}


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(text: str) -> str:
    """Join a multi-line message into one line (a line ending in ':' runs on into the next)."""
    out = ""
    for line in (s.strip() for s in str(text).splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def describe(exc: BaseException) -> Optional[str]:
    """The one-line message of a user error or of a lost process (another process of the
    run died or stalled, ``libs/run/distributed.py``), or None when ``exc`` is neither (a bug)."""
    lost = collective_failure(exc)
    if lost is not None:
        return lost
    if not isinstance(exc, USER_ERRORS):
        return None
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        hint = _OS_HINTS.get(exc.errno, "check the path and the disk")
        return f"{exc.strerror}{where} ({hint})"
    text = one_line(str(exc)) or type(exc).__name__
    return text


def report(prog: str, exc: BaseException) -> Optional[str]:
    """Print a user error as one line on stderr; returns the line (None for a bug)."""
    message = describe(exc)
    if message is None:
        return None
    line = f"{prog}: error: {message}"
    print(line, file=sys.stderr, flush=True)
    return line


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program was when the signal came (like Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Stopped`` (once: a repeat while the
    program cleans up is ignored); the previous handlers come back on the way out. Outside
    the main thread (where Python cannot set handlers) it does nothing."""
    stopping = []  # the signals already received (this block's own)

    def handler(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        raise Stopped(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def report_interrupt(prog: str, exc: Optional[BaseException] = None) -> None:
    """Print the one line of a Ctrl-C (or of a ``Stopped`` signal) and exit with status 128 +
    the signal number (``EXIT_INTERRUPTED`` for Ctrl-C)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if signum == signal.SIGTERM and os.environ.get("TORCHELASTIC_RUN_ID"):  # a worker of accelerate launch / torchrun
        what += " (from the launcher: another process of this run ended first; its message says why)"
    print(f"{prog}: {what}: stopped; nothing half-written was kept and locks are released. "
          f"Run the command again to start over (a training run resumes from its last checkpoint)",
          file=sys.stderr, flush=True)
    sys.exit(128 + int(signum))


def guarded(main: Callable, prog: Optional[str] = None) -> Callable:
    """Wrap a CLI body: user errors become one line on stderr and ``sys.exit(EXIT_USER_ERROR)``,
    Ctrl-C one line and ``sys.exit(EXIT_INTERRUPTED)``; bugs (and every error when
    ADADIFF_DEBUG=1) keep their traceback."""
    name = prog or os.path.basename(sys.argv[0] or "adadiff")

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            with stop_signals():
                return main(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - user errors and lost processes in one line, bugs re-raised
            if debug_enabled() or describe(exc) is None:
                raise
            report(name, exc)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP under stop_signals()
            if debug_enabled():
                raise
            report_interrupt(name, exc)

    return run
