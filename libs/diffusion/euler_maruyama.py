"""Euler-Maruyama samplers for the reverse VP-SDE and its probability-flow ODE.

Samplers are pure functions of a model function: they know nothing of U-ViT,
early exit, guidance or accelerate. The sampler-side model function
(``libs/diffusion/wrappers.py:ModelFn``) is

    model_fn(x, t) -> eps_hat,   x: (B, ...),  t: (B,) float tensor of schedule time in (0, 1],

returning the noise prediction with the shape of x. Conditioning, guidance and the
conversion to the network's own time input are bound by wrappers (``libs/diffusion/wrappers.py``).

Time grid (as the released U-ViT / AdaDiff scripts): ``[0] +
linspace(eps, T, N)``, N+1 points, walked from t = T down to 0 in N steps. Step i goes
from t_i to s = t_{i-1} < t_i and calls the model once at t_i, so the model is called N
times at t = T, ..., eps; the last step (eps -> 0) adds no noise.

With f(x, t) = -beta(t)/2 x, g(t)^2 = beta(t) and score(x, t) = -eps_hat / sigma_t:

    reverse SDE:  dx = [f - g^2 score] dt + g dw_bar     (Song et al. 2021, eq. (6))
    PF ODE:       dx = [f - g^2/2 score] dt              (Song et al. 2021, eq. (13))

discretised backwards with dt = t - s > 0:

    x_s = x_t - drift(x_t, t) dt [+ sqrt(beta(t) dt) z,  z ~ N(0, I), SDE only, s > 0].
"""
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
    """Euler-Maruyama on the reverse-time VP-SDE from t = T to 0.

    Args:
        model_fn: ``model_fn(x, t) -> eps_hat`` in schedule time (see module docstring).
        x_T: (B, ...) initial sample at t = T, usually N(0, I), drawn by the caller.
        schedule: a ``VPSchedule`` (provides beta(t) and sigma_t).
        steps: N; the model is called exactly N times.
        eps, T: the grid is [0] + linspace(eps, T, N).
        generator: torch.Generator for the injected noise (on x_T's device).

    Returns:
        (B, ...) sample at t = 0.
    """
    return _euler_maruyama(model_fn, x_T, schedule, steps, eps, T, stochastic=True, generator=generator)


@torch.no_grad()
def euler_maruyama_ode(model_fn: ModelFn, x_T: torch.Tensor, schedule: VPSchedule, steps: int,
                       eps: float = 1e-3, T: float = 1.0) -> torch.Tensor:
    """Euler on the probability-flow ODE from t = T to 0 (deterministic given x_T).

    Same arguments, grid and call count (exactly ``steps``) as ``euler_maruyama_sde``.
    """
    return _euler_maruyama(model_fn, x_T, schedule, steps, eps, T, stochastic=False, generator=None)
