"""Config helpers: command-line flags that mirror config fields, and config files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

import ml_collections


def set_from_flags(config: ml_collections.ConfigDict, fields: Mapping[str, Optional[object]]) -> None:
    """Set dotted config fields from the flags given (None = absent); a flag sets its field and
    nothing else, so the config stays the one source of truth."""
    for dotted, value in fields.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        with node.unlocked():
            node[leaf] = value


INPUT_FIELDS = ("nnet_path", "train.pretrained_weight", "sample.fid_stat", "inception_path")  # files a run reads


def resolve_input_links(config: ml_collections.ConfigDict) -> None:
    """Replace each input file of ``config`` (``INPUT_FIELDS``) reached through a symbolic link by its
    real path, before any guard or checksum looks at it."""
    for dotted in INPUT_FIELDS:
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p) if hasattr(node, "get") else None
        value = node.get(leaf) if hasattr(node, "get") else None
        if isinstance(value, str) and value and os.path.realpath(value) != os.path.abspath(value):
            set_from_flags(config, {dotted: os.path.realpath(value)})


def default_workdir(config_path: str) -> str:
    """workdir/<config name>, relative to the current directory."""
    return str(Path("workdir") / Path(config_path).stem)


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def load_config_json(path) -> ml_collections.ConfigDict:
    """A config saved as JSON; an unreadable file is a ``ValueError`` naming it and its line."""
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (a saved config is JSON): restore it, or delete it (a run "
                         f"writes it again)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): restore it, or "
                         f"delete it (a run writes it again)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a config (a JSON object): restore it, or "
                         f"delete it (a run writes it again)")
    return ml_collections.ConfigDict(data)


def config_diff(a: Mapping, b: Mapping, prefix: str = "") -> list:
    """Dotted keys whose values differ between two nested mappings."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, tuple) else va) != (list(vb) if isinstance(vb, tuple) else vb):
            out.append(f"{prefix}{k}")
    return out


IGNORED_NNET_FIELDS = ("use_checkpoint",)  # activation checkpointing: memory, not the function


def nnet_differences(saved: Mapping, current: Mapping) -> list:
    """'nnet.<field>: checkpoint <value>, config <value>' for every field of two ``config.nnet``
    dicts that differ (but ``IGNORED_NNET_FIELDS``), sorted by field."""
    def get(d, dotted):
        for part in dotted.split("."):
            d = d.get(part, "<absent>") if isinstance(d, Mapping) else "<absent>"
        return d

    return [f"nnet.{k}: checkpoint {get(saved, k)!r}, config {get(current, k)!r}"
            for k in config_diff(saved, current) if k.split(".")[0] not in IGNORED_NNET_FIELDS]
