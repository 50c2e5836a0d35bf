"""The training objectives by name (``config.loss.objective``): one batch's per-sample loss
terms from the network, the forward-noise process and x_0."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from libs.training.losses import adadiff_loss, distill_loss, uvit_loss

OBJECTIVES = ("adadiff", "uvit", "distill")


def training_losses(model: Callable, noise, x0: torch.Tensor, cond=None, *, objective: str = "adadiff",
                    generator: Optional[torch.Generator] = None, **objective_kwargs) -> Dict[str, torch.Tensor]:
    """Per-sample loss terms (B,) for one batch. ``model(x_t, t_net, cond)`` returns the noise prediction
    ('uvit') or (preds, certainties) (N, B, ...) of every block ('adadiff', 'distill'); 'distill' takes
    its target from ``teacher`` or, without one, the model's own detached full-depth output."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    teacher = objective_kwargs.pop("teacher", None)
    x_t, t_net, eps = noise.sample(x0, generator)
    if objective == "uvit":
        return uvit_loss(eps, model(x_t, t_net, cond))
    preds, certainties = model(x_t, t_net, cond)
    if objective == "distill":
        with torch.no_grad():
            target = preds[-1] if teacher is None else teacher(x_t, t_net, cond)
        return distill_loss(target.detach().float(), preds.float(), certainties.float(), **objective_kwargs)
    return adadiff_loss(eps, preds.float(), certainties.float(), **objective_kwargs)
