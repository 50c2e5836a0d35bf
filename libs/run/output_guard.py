"""Where evaluations, exports and statistics may write without hurting a training run.

A **checkpoint** is a folder named ``<step>.ckpt`` or holding ``manifest.json`` or any of
``nnet.pth, nnet_ema.pth, optimizer.pth, lr_scheduler.pth, step.pth``; a **training workdir**
holds ``ckpts/`` or ``stats.jsonl``, or a ``run.lock`` of a training command. Writing into
them could break a checksum or replace ``config.json``. ``check_output_folder`` refuses a
destination that is or lies inside a checkpoint, is a training workdir, or lies in a
workdir's ``ckpts/`` / ``samples/`` (a new folder inside a workdir is fine);
``check_output_file`` does the same for a file's folder and refuses to overwrite the command's
input; ``check_report_folder`` / ``check_sample_tree`` also require that the folder holds only
files a run of that kind publishes, so replacing them deletes nothing else."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from libs.run.errors import UserError

PathLike = Union[str, os.PathLike]
CHECKPOINT_MARKERS = ("manifest.json", "nnet.pth", "nnet_ema.pth", "optimizer.pth", "lr_scheduler.pth", "step.pth")
WORKDIR_MARKERS = ("ckpts", "stats.jsonl")
RUN_FOLDERS = ("ckpts", "samples")  # folders of a workdir that the training writes into
REPORT_FILES = ("config.json", "report.txt", "report.csv", "report.json", "exit_block_per_step.csv", "tradeoff.png",
                "grid_*.png", "log.txt", "run.lock", "blocks_per_step.csv")
_CKPT_NAME = re.compile(r"^\d+\.ckpt$")
_SAMPLE_PNG = re.compile(r"^\d+\.png$")


class UnsafeDestinationError(UserError):
    """A destination that is, or lies inside, a checkpoint or a training workdir, or an input."""


def folder_kind(folder: Path) -> Optional[str]:
    """'checkpoint', 'training workdir' or None (by the marker files above)."""
    if not folder.is_dir():
        return None
    if _CKPT_NAME.match(folder.name) or any((folder / m).exists() for m in CHECKPOINT_MARKERS):
        return "checkpoint"
    if any((folder / m).exists() for m in WORKDIR_MARKERS) or _training_lock(folder / "run.lock"):
        return "training workdir"
    return None


def _training_lock(path: Path) -> bool:
    """A ``run.lock`` whose command runs a train*.py script."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    words = str(info.get("command", "")).split()[:3] if isinstance(info, dict) else []
    return any(os.path.basename(w).startswith("train") and w.endswith(".py") for w in words)


def check_output_folder(dest: PathLike, flag: str, workdir: bool = False) -> Path:
    """Refuse ``dest`` when it is or lies inside a checkpoint, is a training workdir, or lies in
    a workdir's ``ckpts/`` / ``samples/``; returns it resolved. With ``workdir`` it may be a
    training workdir (the run resumes there)."""
    dest = Path(os.path.abspath(dest))
    real = Path(os.path.realpath(dest))
    for path in dict.fromkeys((real, *real.parents, dest, *dest.parents)):
        kind = folder_kind(path)
        if kind == "checkpoint":
            where = "is" if path in (dest, real) else f"lies inside {path}, which is"
            raise UnsafeDestinationError(
                f"{flag}={dest} {where} a checkpoint: writing there would change files its manifest covers "
                f"(resume would then skip it); choose a folder outside the checkpoint")
        if kind == "training workdir":
            inside = real.relative_to(path).parts if real.is_relative_to(path) else dest.relative_to(path).parts
            if (not inside and not workdir) or (inside and inside[0] in RUN_FOLDERS):
                where = "is" if not inside else f"lies in {path / inside[0]} of"
                raise UnsafeDestinationError(
                    f"{flag}={dest} {where} the training workdir {path}: writing there could replace the run's "
                    f"files; choose a new folder (e.g. {path / 'eval'}) or one outside the workdir")
    return dest


def check_output_file(dest: PathLike, flag: str, inputs: Iterable[PathLike] = ()) -> Path:
    """Refuse a file destination whose folder ``check_output_folder`` refuses, that is a
    folder, or that is one of ``inputs`` (the same file, also through a link)."""
    dest = Path(os.path.abspath(dest))
    if dest.is_dir():
        raise UnsafeDestinationError(f"{flag}={dest} is a folder: give a file name in it")
    for src in inputs:
        if _same_file(dest, Path(src)):
            raise UnsafeDestinationError(f"{flag}={dest} is the input {src}: writing would overwrite the file it is "
                                         f"read from; choose another destination")
    check_output_folder(dest.parent, flag)
    return dest


def check_report_folder(dest: PathLike, flag: str, inputs: Iterable[PathLike] = (),
                        owned: Optional[Callable[[str], bool]] = None, kind: str = "evaluation") -> Path:
    """``check_output_folder``, plus: no input is a file of ``dest``, and ``dest`` holds only
    files a run of this kind publishes (``owned(name)``; default ``REPORT_FILES``) and folders."""
    owned = owned or is_report_file
    dest = check_output_folder(dest, flag)
    for src in inputs:  # publishing replaces and removes the folder's top-level files
        src = Path(os.path.realpath(src))
        if src.is_file() and src.parent == Path(os.path.realpath(dest)):
            raise UnsafeDestinationError(f"{flag}={dest} holds the input {src}: a new run replaces the folder's "
                                         f"files; choose another {flag}")
    if dest.is_dir():
        _refuse_foreign(dest, flag, kind,
                        sorted(p.name for p in dest.iterdir() if not p.is_dir() and not owned(p.name)))
    return dest


def check_sample_tree(dest: PathLike, flag: str) -> Path:
    """A folder of sample PNGs (``config.sample.path``: ``<policy>/<index>.png``): refused when
    ``check_output_folder`` refuses it or when any file under it is not such a PNG; returns it.
    The caller may then empty it: it holds one run's images only."""
    dest = check_output_folder(dest, flag)
    if dest.is_dir():
        _refuse_foreign(dest, flag, "sampling run", sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                                                           if not p.is_dir() and not _SAMPLE_PNG.match(p.name)))
    return dest


def fresh_sample_tree(dest: PathLike, flag: str) -> Path:
    """``check_sample_tree``, then empty it: the images of an earlier run never sit beside this
    one's. Links in it are removed, never followed."""
    dest = check_sample_tree(dest, flag)
    if dest.is_dir():
        for p in dest.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    return dest


def _refuse_foreign(dest: Path, flag: str, kind: str, foreign: list) -> None:
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise UnsafeDestinationError(f"{flag}={dest} holds files no {kind} wrote ({shown}); a new run "
                                     f"replaces the files of the folder: choose a new or empty {flag}")


def is_sample_file(name: str) -> bool:
    """What ``sample_t2i_discrete.py`` publishes: ``<index>.png``, ``prompts.txt`` (and its lock, log)."""
    return bool(_SAMPLE_PNG.match(name)) or name in ("prompts.txt", "run.lock", "log.txt")


def is_report_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in REPORT_FILES)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
