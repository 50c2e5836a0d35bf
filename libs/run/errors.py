"""User errors on the command line: one line with the problem and the fix, and a non-zero exit.

A *user error* is something the person running the command can fix: a bad flag or config
value (``ValueError``), a missing or unreadable file, a folder that is not writable, a full
disk (``OSError``), a diverged run (``FloatingPointError``), a workdir in use
(``UserError``). ``guarded(main)`` prints it as

    train.py: error: <problem and fix>

on stderr and exits with ``EXIT_USER_ERROR``. Ctrl-C (``KeyboardInterrupt``) prints

    train.py: interrupted (Ctrl-C): stopped; ...

and exits with ``EXIT_INTERRUPTED`` (130, as a shell reports SIGINT); the code it interrupts
cleans up on the way out (staged outputs are removed, locks released by their ``with``).
Anything else is a bug and keeps its traceback. ``ADADIFF_DEBUG=1`` in the environment
shows the traceback of user errors and interruptions too.
"""
from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable, Optional

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
    """The one-line message of a user error, or None when ``exc`` is not one (a bug)."""
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


def report_interrupt(prog: str) -> None:
    """Print the one line of a Ctrl-C and exit with ``EXIT_INTERRUPTED``."""
    print(f"{prog}: interrupted (Ctrl-C): stopped; nothing half-written was kept and locks are released. "
          f"Run the command again to start over (a training run resumes from its last checkpoint)",
          file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def guarded(main: Callable, prog: Optional[str] = None) -> Callable:
    """Wrap a CLI body: user errors become one line on stderr and ``sys.exit(EXIT_USER_ERROR)``,
    Ctrl-C one line and ``sys.exit(EXIT_INTERRUPTED)``; bugs (and every error when
    ADADIFF_DEBUG=1) keep their traceback."""
    name = prog or os.path.basename(sys.argv[0] or "adadiff")

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as exc:
            if debug_enabled():
                raise
            report(name, exc)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            report_interrupt(name)

    return run
