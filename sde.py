"""Continuous-time VP-SDE training: noise sampling and the training objectives.

Forward process (the VP-SDE of Song et al. 2021, as U-ViT): beta(t) = 0.1 + 19.9 t, t ~ U(0, 1),
x_t = alpha_t x_0 + sigma_t eps with alpha_t^2 = exp(-(0.1 t + 9.95 t^2)); the network sees
the time input 999 t and predicts the noise eps. Samplers live in ``libs/samplers.py`` and
``dpm_solver_pp.py``; the schedule maths in ``libs/schedules.py``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from libs.losses import adadiff_loss, uvit_loss
from libs.model_fn import CONTINUOUS_TIME_SCALE
from libs.schedules import DiscreteVPSchedule, LinearVPSchedule, VPSchedule

OBJECTIVES = ("adadiff", "uvit")


class ContinuousNoise:
    """t ~ U(0, 1) on the continuous linear VP-SDE; network time input 999 t."""

    def __init__(self, schedule: Optional[VPSchedule] = None, time_scale: float = CONTINUOUS_TIME_SCALE):
        self.schedule = schedule or LinearVPSchedule()
        self.time_scale = time_scale

    def sample(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None):
        """Returns (x_t, network time input (B,), eps)."""
        t = torch.rand(x0.shape[0], device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha = self.schedule.marginal_alpha(t).view(shape)
        sigma = self.schedule.marginal_std(t).view(shape)
        return alpha * x0 + sigma * eps, self.time_scale * t, eps


class DiscreteNoise:
    """n ~ U{1..N} on a discrete DDPM chain; network time input n."""

    def __init__(self, schedule: Optional[DiscreteVPSchedule] = None):
        self.schedule = schedule or DiscreteVPSchedule.stable_diffusion()
        self.alphas_cumprod = self.schedule.alphas_cumprod.float()

    def sample(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None):
        N = self.alphas_cumprod.shape[0]
        n = torch.randint(1, N + 1, (x0.shape[0],), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        ab = self.alphas_cumprod.to(x0.device)[n - 1].view((-1,) + (1,) * (x0.ndim - 1))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, n.to(x0.dtype), eps


def training_losses(model: Callable, noise, x0: torch.Tensor, cond=None, *, objective: str = "adadiff",
                    generator: Optional[torch.Generator] = None, **objective_kwargs) -> Dict[str, torch.Tensor]:
    """Per-sample loss terms (B,) for one batch.

    ``model(x_t, t_net, cond)`` returns the noise prediction for objective 'uvit' and the
    pair (preds (N, B, ...), certainties (N, B, ...)) of every block for 'adadiff'.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    x_t, t_net, eps = noise.sample(x0, generator)
    if objective == "uvit":
        return uvit_loss(eps, model(x_t, t_net, cond))
    preds, certainties = model(x_t, t_net, cond)
    return adadiff_loss(eps, preds.float(), certainties.float(), **objective_kwargs)
