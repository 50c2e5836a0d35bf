"""Rank-aware run output: a logger (console + <workdir>/log.txt on the main process only)
and a JSON-lines metrics file (<workdir>/stats.jsonl). Never patches ``print``."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from libs.run.atomic import atomic_write_text, open_own


def setup_logger(name: str, workdir: Optional[Path], is_main: bool) -> logging.Logger:
    """Logger for one run: INFO to the console and log.txt on the main process, WARNING elsewhere."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if is_main and workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        fh = RunFileHandler(Path(workdir) / "log.txt")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    # Library messages (e.g. libs.run.checkpoint's load report) go to the same place.
    libs = logging.getLogger("libs")
    libs.handlers = logger.handlers
    libs.setLevel(logger.level)
    libs.propagate = False
    return logger


class RunFileHandler(logging.FileHandler):
    """The run's ``log.txt``, opened with ``open_own``; the first failed write (a full disk) raises its
    ``OSError`` (one line on the command line) instead of logging's traceback per message."""

    failed = False

    def _open(self):
        return open_own(self.baseFilename, self.mode)

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self.failed = True
            raise exc
        super().handleError(record)


class MetricsWriter:
    """Appends one JSON object per call to a .jsonl file (main process only)."""

    def __init__(self, path: Optional[Path], enabled: bool = True):
        self.path = Path(path) if path is not None and enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def drop_after(self, step: int) -> int:
        """Remove the rows of steps after ``step`` (a resumed run redoes them), rewriting the
        file atomically; returns how many rows were dropped."""
        if self.path is None or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if _row_step(line) <= step]
        if len(keep) != len(lines):
            atomic_write_text(self.path, "".join(keep))
        return len(lines) - len(keep)

    def write(self, **row):
        if self.path is None:
            return
        row = {"time": round(time.time(), 3), **row}
        with open_own(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _row_step(line: str) -> float:
    """The step of a stats row; a torn or unreadable line (a killed write) counts as after any step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf") if line.strip() else float("-inf")
