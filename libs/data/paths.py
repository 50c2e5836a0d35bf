"""Where a dataset's files are looked for, and the error that says where they should be."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, os.PathLike]
REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where the config says they are."""


def candidate_paths(path: PathLike) -> list[Path]:
    """Where a config path may point: absolute as given; relative to the working
    directory first, then to the repository root (configs use repo-relative defaults)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    candidates = [Path.cwd() / p, REPO_ROOT / p]
    unique = []
    for c in candidates:
        if c.resolve() not in [u.resolve() for u in unique]:
            unique.append(c)
    return unique


def not_found(name: str, title: str, looked_at: list[Path], missing: str,
              layout: str, how_to_get: str) -> DatasetNotFoundError:
    looked = "\n".join(f"  {p}" for p in looked_at)
    return DatasetNotFoundError(
        f"{title} (dataset '{name}') not found: {missing}.\n"
        f"Looked at:\n{looked}\n"
        f"Expected layout:\n{layout}\n"
        f"To get it:\n{how_to_get}\n"
        f"Or point the config at another folder: --config.dataset.path=<folder>"
    )
