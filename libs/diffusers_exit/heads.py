"""The uncertainty heads of an adapted diffusers model as their own safetensors file, with the
model they were made for (class, depth, width, patch size, channels) in its metadata;
``load_heads`` refuses a file made for another model in one line naming both."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch.nn as nn

from libs.models.uvit_core import UncertaintyHead
from libs.run.atomic import atomic_write
from libs.run.errors import UserError

SIGNATURE_KEYS = ("model", "depth", "width", "patch_size", "in_channels")


def make_heads(depth: int, width: int, out_dim: int, dtype, device) -> nn.ModuleList:
    """``depth`` fresh heads (PyTorch's default Linear initialisation) in the model's dtype."""
    return nn.ModuleList([UncertaintyHead(width, out_dim) for _ in range(depth)]).to(device=device, dtype=dtype)


def describe(signature: Dict[str, str]) -> str:
    s = signature
    return (f"{s.get('model', '?')} (depth {s.get('depth', '?')}, width {s.get('width', '?')}, patch "
            f"{s.get('patch_size', '?')}, {s.get('in_channels', '?')} input channels)")


def save_heads(heads: nn.ModuleList, signature: Dict[str, str], path) -> None:
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, metadata=dict(signature))
    atomic_write(path, lambda f: f.write(data))  # a reader sees the old file or the whole new one


def load_heads(heads: nn.ModuleList, signature: Dict[str, str], path) -> None:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"head file {path} does not exist: give the file net.save_heads wrote")
    with safe_open(str(path), framework="pt") as f:
        made_for = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if any(made_for.get(k) != signature[k] for k in SIGNATURE_KEYS):
        raise UserError(f"head file {path} was made for {describe(made_for)}, not for this model, "
                        f"{describe(signature)}: train heads for this model (config.loss.objective='distill', "
                        f"libs/diffusers_exit/task.py)")
    p = next(heads.parameters())
    heads.load_state_dict({k: v.to(device=p.device, dtype=p.dtype) for k, v in tensors.items()})
