"""Loading and saving network weights. ``load_weights(net, source)`` takes a path (``.pth`` /
``.pt`` via ``torch.load(weights_only=True)``, or ``.safetensors``) or a state dict: a released
U-ViT file (heads keep their fresh init), a released AdaDiff file (``lte_classifer.{i}.lte.*``
(sic) -> ``uem_heads.{i}.proj.*``) or this project's own (also from DDP / compiled models).
Anything else fails listing missing, unexpected and mis-shaped keys; NaN/inf weights are
refused; a file in a checkpoint directory is checked against its ``manifest.json`` first.
``save_weights`` writes atomically."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from libs.run.atomic import atomic_write
from libs.run.manifest import MANIFEST, CorruptCheckpointError, verify_files, write_manifest
from libs.run.safe_load import read_bytes_stable
from libs.run.weight_guard import describe_bad_weight, first_bad_weight

log = logging.getLogger(__name__)

_RELEASED_HEAD = re.compile(r"^lte_classifer\.(\d+)\.lte\.(weight|bias)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_PREFIX = "uem_heads."


@dataclass
class LoadReport:
    """What ``load_weights`` found. ``kind`` is 'uvit' (released U-ViT, heads fresh),
    'adadiff' (released AdaDiff key names) or 'project' (this project's names)."""

    kind: str
    source: str
    fresh_heads: list = field(default_factory=list)

    def __str__(self):
        if self.kind == "uvit":
            return (f"loaded backbone weights without uncertainty heads (a released U-ViT or DiT file) from "
                    f"{self.source}; {len(self.fresh_heads)} uncertainty-head tensors are not in the file and keep "
                    f"their fresh initialisation")
        return f"loaded {self.kind} weights from {self.source}"


class WeightsMismatchError(ValueError):
    """The state dict does not fit the network (lists the offending keys)."""


class NonFiniteWeightsError(ValueError):
    """The weights hold NaN/inf (a diverged run)."""


def read_state_dict(path: Union[str, os.PathLike], verify: bool = True) -> dict:
    """A state dict from ``.pth``/``.pt``/``.bin`` (safe unpickling) or ``.safetensors``, verified against its
    folder's manifest.json (``verify``), read in one go and refused if it changes meanwhile."""
    path = Path(os.path.realpath(path))
    if path.is_dir():
        hint = f" (a checkpoint folder: pass {path / 'nnet_ema.pth'})" if (path / "nnet_ema.pth").is_file() else ""
        raise IsADirectoryError(f"weights file {path} is a folder, expected a .pth or .safetensors file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if verify:
        verify_files(path.parent, [path.name])
    data = read_bytes_stable(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load
        try:
            return load(data)
        except Exception as e:  # garbage header, truncated file, ...
            raise ValueError(f"cannot read {path} as a .safetensors file ({type(e).__name__}: {e}); the file is "
                             f"corrupt or not safetensors: re-export or re-download it") from e
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with objects, corrupt file, ...
        raise ValueError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {e}). "
                         f"Expected a plain state dict saved with torch.save(net.state_dict(), path) "
                         f"or a .safetensors file.") from e
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        kind = type(sd).__name__
        hint = ""
        if isinstance(sd, Mapping):
            nested = [k for k, v in sd.items() if isinstance(v, Mapping)]
            hint = f" It holds nested dicts {nested[:5]}: pass the one with the network weights." if nested else ""
        raise ValueError(f"{path} is not a plain state dict of tensors (got {kind}).{hint}")
    return dict(sd)


def convert_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict, str]:
    """Strip wrapper prefixes and map released AdaDiff head names to ours.
    Returns (state dict, kind) with kind in {'uvit', 'adadiff', 'project'}."""
    out, kind = {}, None
    for key, value in sd.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        m = _RELEASED_HEAD.match(key)
        if m:
            key, kind = f"{HEAD_PREFIX}{m.group(1)}.proj.{m.group(2)}", "adadiff"
        elif key.startswith(HEAD_PREFIX) and kind is None:
            kind = "project"
        out[key] = value
    return out, kind or "uvit"


def load_weights(net: nn.Module, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                 name: Optional[str] = None) -> LoadReport:
    """Load weights into ``net`` (see module docstring); ``name`` says where an in-memory state
    dict came from. Raises ``WeightsMismatchError``."""
    name = name or (str(source) if not isinstance(source, Mapping) else "<state dict>")
    sd = read_state_dict(source) if not isinstance(source, Mapping) else dict(source)
    bad = first_bad_weight(sd.items())
    if bad is not None:
        raise NonFiniteWeightsError(f"weights from {name} are unusable: {describe_bad_weight(bad)} (the run that "
                                    f"saved them diverged); use an earlier checkpoint")
    sd, kind = convert_state_dict(sd)
    own = net.state_dict()
    missing, unexpected, mismatched = state_dict_diff(sd, own)
    # A plain U-ViT file may lack exactly the heads, all of them; nothing else may be missing.
    own_heads = [k for k in own if k.startswith(HEAD_PREFIX)]
    fresh = missing if kind == "uvit" and own_heads and sorted(missing) == sorted(own_heads) else []
    problems = [k for k in missing if k not in fresh]
    if problems or unexpected or mismatched:
        raise WeightsMismatchError(mismatch_message(
            f"weights from {name} do not fit {type(net).__module__}.{type(net).__name__} (file looks like: {kind}):",
            problems, unexpected, mismatched,
            "Check that the config (config.nnet: img_size, patch_size, embed_dim, depth, num_classes, "
            "uem_time_aware, ...) matches the one the weights were trained with."))
    net.load_state_dict(sd, strict=not fresh)
    report = LoadReport(kind, name, fresh)
    log.info("%s", report)
    return report


def state_dict_diff(given: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    """(missing, unexpected, mismatched) of ``given`` against a model's ``own``: keys only in own, keys only
    in given, (key, given shape, own shape) for shared keys whose shapes differ."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatched = [(k, tuple(given[k].shape), tuple(own[k].shape)) for k in own
                  if k in given and given[k].shape != own[k].shape]
    return missing, unexpected, mismatched


def mismatch_message(header: str, missing, unexpected, mismatched, hint: str, limit: int = 20) -> str:
    """A readable 'these weights do not fit' message: missing and unexpected keys (as given,
    e.g. with alternative names), (key, file shape, model shape) mismatches, then a hint."""
    def short(keys, n=8):
        keys = list(keys)
        return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")

    lines = [header]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {short(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {short(unexpected)}")
    for k, got, want in mismatched[:limit]:
        lines.append(f"  shape mismatch {k}: file {got}, model {want}")
    if len(mismatched) > limit:
        lines.append(f"  ... and {len(mismatched) - limit} more shape mismatches")
    lines.append(f"  {hint}")
    return "\n".join(lines)


def atomic_save(obj, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` (or safetensors for ``.safetensors``), written atomically."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save
        data = save({k: v.detach().contiguous().cpu() for k, v in obj.items()})
        atomic_write(path, lambda f: f.write(data))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def save_weights(net_or_state: Union[nn.Module, Mapping[str, torch.Tensor]], path) -> None:
    """Save a network's (or a state dict's) weights atomically; format from the suffix."""
    sd = net_or_state.state_dict() if isinstance(net_or_state, nn.Module) else net_or_state
    atomic_save({k: v.detach().cpu() for k, v in sd.items()}, path)


# ----------------------------------------------------------------------------- training checkpoints
# Layout (released): <root>/<step>.ckpt/{nnet.pth, nnet_ema.pth, optimizer.pth, lr_scheduler.pth,
# step.pth} plus this project's config.json. A checkpoint directory is written under a
# temporary name and renamed into place when complete, so '<step>.ckpt' always means complete;
# its manifest.json (checksums of every file) is written last, just before the rename.
_CKPT_DIR = re.compile(r"^(\d+)\.ckpt$")
_CKPT_TEMP = re.compile(r"^\.(\d+)\.ckpt\..+\.(tmp|old)$")
CHECKPOINT_FILES = ("nnet.pth", "nnet_ema.pth", "optimizer.pth", "lr_scheduler.pth", "step.pth")


def save_checkpoint(root: Union[str, os.PathLike], step: int, objects: Mapping[str, object],
                    texts: Mapping[str, str] = ()) -> Path:
    """Write ``objects`` (file name -> object for torch.save) and ``texts`` (file name -> str)
    into ``<root>/<step>.ckpt/`` atomically; returns the directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step}.ckpt"
    tmp = Path(tempfile.mkdtemp(prefix=f".{step}.ckpt.", suffix=".tmp", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    old = None
    name = None
    try:
        for name, obj in objects.items():
            atomic_save(obj, tmp / name)
        for name, text in dict(texts).items():
            (tmp / name).write_text(text)
        write_manifest(tmp, [*objects, *dict(texts)])
        if final.exists():  # re-saving a step: move the old one aside first, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{step}.ckpt.", suffix=".old", dir=root))
            os.replace(final, old / "ckpt")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        if old is not None and (old / "ckpt").is_dir() and not final.exists():
            os.replace(old / "ckpt", final)  # put the previous checkpoint of this step back
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(sys.exc_info()[1], OSError) and sys.exc_info()[1].errno and name:
            e = sys.exc_info()[1]
            raise OSError(e.errno, e.strerror, f"{final / name} (not saved; the previous checkpoints are intact)") from e
        raise
    return final


def list_checkpoints(root: Union[str, os.PathLike]) -> list:
    """Complete checkpoint directories under ``root``, sorted by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Union[str, os.PathLike]):
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_stale_temporaries(root: Union[str, os.PathLike]) -> list:
    """Remove the ``.<step>.ckpt.*.tmp`` / ``.old`` directories a killed save left in ``root`` (an orphaned ``.old``
    is renamed back first); returns one line per action. Only while holding the run's lock."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = []
    for p in sorted(p for p in root.iterdir() if _CKPT_TEMP.match(p.name)):
        final = root / f"{_CKPT_TEMP.match(p.name).group(1)}.ckpt"
        if p.name.endswith(".old") and (p / "ckpt").is_dir() and not final.exists():
            os.replace(p / "ckpt", final)
            done.append(f"restored {final} from {p.name}, left by a save that was interrupted")
        else:
            done.append(f"removed {root / p.name}, left by a save that was interrupted")
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return done


def read_checkpoint(ckpt_dir: Union[str, os.PathLike]) -> dict:
    """Every file of a training checkpoint (name -> object), verified against its manifest (which
    must list every file), readable, consistent and with finite network and EMA weights; else
    ``CorruptCheckpointError`` naming the file."""
    ckpt_dir = Path(ckpt_dir)
    present = [n for n in (*CHECKPOINT_FILES, "config.json") if (ckpt_dir / n).exists()]
    verified = verify_files(ckpt_dir, present)
    out = {}
    for name in CHECKPOINT_FILES:
        path = ckpt_dir / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing: the checkpoint is incomplete")
        try:
            out[name] = read_state_dict(path, verify=False) if name.startswith("nnet") else \
                torch.load(io.BytesIO(read_bytes_stable(path)), map_location="cpu", weights_only=True)
        except Exception as e:  # OSError, UnpicklingError, ValueError, RuntimeError, EOFError, ...
            raise CorruptCheckpointError(f"{path} is unreadable ({type(e).__name__})") from e
        if name.startswith("nnet"):
            bad = first_bad_weight(out[name].items())
            if bad is not None:
                raise CorruptCheckpointError(f"{path}: {describe_bad_weight(bad)}")
    if (ckpt_dir / "config.json").exists():
        try:
            out["config.json"] = json.loads((ckpt_dir / "config.json").read_text())
            assert isinstance(out["config.json"], dict)
        except (OSError, ValueError, AssertionError) as e:
            raise CorruptCheckpointError(f"{ckpt_dir / 'config.json'} is unreadable ({type(e).__name__})") from None
    check_checkpoint_contents(ckpt_dir, out)
    out["verified"] = verified
    return out


def check_checkpoint_contents(ckpt_dir: Path, out: Mapping) -> None:
    """The files of a checkpoint fit together: ``step.pth`` the folder's step, ``optimizer.pth`` an optimizer
    state, ``lr_scheduler.pth`` a dict, network and EMA with the same tensor names and shapes."""
    def bad(name, why):
        return CorruptCheckpointError(f"{ckpt_dir / name} is inconsistent: {why}")

    step, m = out["step.pth"], _CKPT_DIR.match(ckpt_dir.name)
    if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step.pth", f"holds {type(step).__name__}, expected the step as an int >= 0")
    if m and int(m.group(1)) != step:
        raise bad("step.pth", f"holds step {step} in the folder of step {m.group(1)}")
    opt = out["optimizer.pth"]
    if not (isinstance(opt, Mapping) and isinstance(opt.get("state"), Mapping)
            and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        raise bad("optimizer.pth", "not an optimizer state (a dict with 'state' and 'param_groups')")
    if not isinstance(out["lr_scheduler.pth"], Mapping):
        raise bad("lr_scheduler.pth", f"holds {type(out['lr_scheduler.pth']).__name__}, expected a scheduler state")
    net, ema = out["nnet.pth"], out["nnet_ema.pth"]
    if {k: tuple(v.shape) for k, v in net.items()} != {k: tuple(v.shape) for k, v in ema.items()}:
        raise bad("nnet_ema.pth", "its tensor names or shapes differ from nnet.pth")


def newest_intact_checkpoint(root: Union[str, os.PathLike]):
    """(directory, contents) of the newest checkpoint ``read_checkpoint`` accepts (warning for each newer one
    skipped); (None, None) without checkpoints; ``CorruptCheckpointError`` when none is intact."""
    found = list_checkpoints(root)
    skipped = []
    for ckpt in reversed(found):
        try:
            contents = read_checkpoint(ckpt)
        except CorruptCheckpointError as e:
            skipped.append(ckpt.name)
            log.warning("skipping checkpoint %s: %s", ckpt, e)
            continue
        if skipped:
            log.warning("resuming from %s, the newest intact checkpoint (skipped %s)", ckpt, ", ".join(skipped))
        if not contents["verified"]:
            log.info("checkpoint %s has no %s (saved before checksums): loaded unverified", ckpt, MANIFEST)
        return ckpt, contents
    if found:
        raise CorruptCheckpointError(f"no intact checkpoint in {root} (all of {', '.join(skipped)} are corrupt or "
                                     f"non-finite, see the warnings above): move them away to start afresh, or "
                                     f"choose another --workdir")
    return None, None


def _fsync_dir(path: Path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
