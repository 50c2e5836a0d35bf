"""The forward-noise process of training. Continuous (the VP-SDE of U-ViT): t ~ U(0, 1),
x_t = alpha_t x_0 + sigma_t eps, alpha_t^2 = exp(-(0.1 t + 9.95 t^2)), network time 999 t.
Discrete (Stable Diffusion's betas): n ~ U{1..N}, x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) eps,
network time n."""
from __future__ import annotations

from typing import Optional

import torch

from libs.diffusion.wrappers import CONTINUOUS_TIME_SCALE
from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule, VPSchedule


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
