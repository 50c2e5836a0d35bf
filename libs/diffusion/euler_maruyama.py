"""Euler-Maruyama samplers for the reverse VP-SDE and its probability-flow ODE; pure
functions of ``model_fn(x, t) -> eps_hat`` (``libs/diffusion/wrappers.py``).

Time grid (as the released U-ViT / AdaDiff scripts): ``[0] + linspace(eps, T, N)``, walked
from T to 0 in N steps; step i calls the model once at t_i; the last step (eps -> 0) adds no
noise. With f = -beta(t)/2 x, g^2 = beta(t), score = -eps_hat / sigma_t:

    reverse SDE:  dx = [f - g^2 score] dt + g dw_bar     (Song et al. 2021, eq. (6))
    PF ODE:       dx = [f - g^2/2 score] dt              (Song et al. 2021, eq. (13))
    x_s = x_t - drift(x_t, t) dt [+ sqrt(beta(t) dt) z, SDE only, s > 0],   dt = t - s > 0."""
from __future__ import annotations

import math
from typing import Optional

import torch

from libs.diffusion.schedules import VPSchedule
from libs.diffusion.wrappers import ModelFn, batch_time


def euler_maruyama_grid(steps: int, eps: float = 1e-3, T: float = 1.0) -> torch.Tensor:
    """(steps + 1,) float64 increasing grid [0] + linspace(eps, T, steps)."""
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.linspace(eps, T, steps, dtype=torch.float64)])


def _euler_maruyama(model_fn: ModelFn, x_T: torch.Tensor, schedule: VPSchedule, steps: int, eps: float,
                    T: float, stochastic: bool, generator: Optional[torch.Generator]) -> torch.Tensor:
    grid = euler_maruyama_grid(steps, eps, T)
    # Coefficients at the N calling times grid[1:], as python floats (no host-device syncs).
    beta = [math.nan] + schedule.beta(grid[1:]).tolist()
    sigma = [math.nan] + schedule.marginal_std(grid[1:]).tolist()
    grid = grid.tolist()
    # Reverse SDE: drift = f - g^2 score; PF ODE: f - g^2/2 score (score = -eps_hat/sigma).
    score_weight = 1.0 if stochastic else 0.5
    x = x_T
    for i in range(steps, 0, -1):
        t, s = grid[i], grid[i - 1]
        dt = t - s
        eps_hat = model_fn(x, batch_time(t, x))
        drift = -0.5 * beta[i] * x + (score_weight * beta[i] / sigma[i]) * eps_hat
        x = x - drift * dt
        if stochastic and i > 1:  # no noise on the last step (to t = 0)
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + math.sqrt(beta[i] * dt) * z
    return x


@torch.no_grad()
def euler_maruyama_sde(model_fn: ModelFn, x_T: torch.Tensor, schedule: VPSchedule, steps: int,
                       eps: float = 1e-3, T: float = 1.0,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Euler-Maruyama on the reverse VP-SDE from t = T to 0: x_T (B, ...) -> sample at 0, exactly
    ``steps`` model calls on the grid [0] + linspace(eps, T, steps); ``generator`` draws the
    injected noise (on x_T's device)."""
    return _euler_maruyama(model_fn, x_T, schedule, steps, eps, T, stochastic=True, generator=generator)


@torch.no_grad()
def euler_maruyama_ode(model_fn: ModelFn, x_T: torch.Tensor, schedule: VPSchedule, steps: int,
                       eps: float = 1e-3, T: float = 1.0) -> torch.Tensor:
    """Euler on the probability-flow ODE from T to 0; arguments, grid and calls as
    ``euler_maruyama_sde``."""
    return _euler_maruyama(model_fn, x_T, schedule, steps, eps, T, stochastic=False, generator=None)
