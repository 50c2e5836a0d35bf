"""What the exponential-integrator solvers (``dpm_solver``, ``unipc``) share: the time grid,
the schedule quantities at its points, the noise-to-data conversion and one step's coefficients.

With h = lambda_t - lambda_s > 0 (t < s), the probability-flow ODE's exact solution is

    noise:  x_t = alpha_t/alpha_s x_s - sigma_t int_0^h e^(h-u) eps(lambda_s + u) du   (DPM-Solver eq. (3.4))
    data:   x_t = sigma_t/sigma_s x_s + alpha_t int_0^h e^(u-h) x0(lambda_s + u) du   (DPM-Solver++ eq. (9))

with x0 = (x - sigma eps)/alpha (``model_output``). Every update starts from
``x_t = lin x_s + c phi1 m_s`` (``Step``):

    noise: (lin, c, phi1) = (alpha_t/alpha_s, -sigma_t, e^h - 1)
    data:  (lin, c, phi1) = (sigma_t/sigma_s,  alpha_t, 1 - e^-h)

Grids are float64, strictly decreasing from t_start (default ``schedule.T``) to t_end (default
``schedule.default_t_end``): ``'logSNR'``, ``'time_uniform'``, ``'time_quadratic'`` or explicit."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from libs.diffusion.schedules import VPSchedule
from libs.diffusion.wrappers import ModelFn, batch_time

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
PREDICTIONS = ("noise", "data")


def check_arguments(solver: str, steps: int, **choices) -> None:
    """``ValueError`` naming ``solver`` unless steps >= 1 and every ``name=(value, allowed)``
    of ``choices`` holds an allowed value."""
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{solver}: {name} must be one of {allowed}, got {value!r}")
    if steps < 1:
        raise ValueError(f"{solver}: steps must be >= 1, got {steps}")


def get_time_steps(schedule: VPSchedule, skip_type: str, t_start: float, t_end: float, n: int) -> torch.Tensor:
    """(n + 1,) float64 decreasing grid from t_start to t_end (end points exact)."""
    t_start64 = torch.tensor(t_start, dtype=torch.float64)
    t_end64 = torch.tensor(t_end, dtype=torch.float64)
    if skip_type == "logSNR":
        lam = torch.linspace(schedule.marginal_lambda(t_start64).item(), schedule.marginal_lambda(t_end64).item(),
                             n + 1, dtype=torch.float64)
        ts = schedule.inverse_lambda(lam)
    elif skip_type == "time_uniform":
        ts = torch.linspace(t_start, t_end, n + 1, dtype=torch.float64)
    elif skip_type == "time_quadratic":
        ts = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    ts[0], ts[-1] = t_start, t_end
    return ts


def time_grid(solver: str, schedule: VPSchedule, steps: int, skip_type: str, t_start: Optional[float] = None,
              t_end: Optional[float] = None, timesteps: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The (steps + 1,) grid of a run: ``timesteps`` if given (checked: steps + 1 times, strictly
    decreasing), else the ``skip_type`` grid from t_start to t_end."""
    if timesteps is None:
        return get_time_steps(schedule, skip_type, schedule.T if t_start is None else t_start,
                              schedule.default_t_end if t_end is None else t_end, steps)
    grid = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)
    if grid.numel() != steps + 1:
        raise ValueError(f"{solver}: timesteps must hold steps + 1 = {steps + 1} times, got {grid.numel()}")
    if not bool(torch.all(grid[1:] < grid[:-1])):
        raise ValueError(f"{solver}: timesteps must decrease strictly (from t_start down to t_end)")
    return grid


@dataclass(frozen=True)
class Point:
    """Schedule quantities at one time, as python floats (float64 maths, no device syncs)."""

    t: float
    alpha: float
    sigma: float
    lam: float


def points(schedule: VPSchedule, ts: torch.Tensor) -> List[Point]:
    """The ``Point`` of every time in ``ts``."""
    ts = ts.to(torch.float64)
    alpha, sigma, lam = (v.tolist() for v in schedule.marginals(ts))
    return [Point(*v) for v in zip(ts.tolist(), alpha, sigma, lam)]


def model_output(model_fn: ModelFn, x: torch.Tensor, p: Point, predict: str) -> torch.Tensor:
    """One model call at p: eps_hat (noise) or x0_hat = (x - sigma eps_hat)/alpha (data)."""
    eps = model_fn(x, batch_time(p.t, x))
    return eps if predict == "noise" else (x - p.sigma * eps) / p.alpha


@dataclass(frozen=True)
class Step:
    """The exponential step from s to t (module docstring): x_t = lin x_s + c phi1 m_s + ..."""

    h: float
    lin: float
    c: float
    phi1: float

    @classmethod
    def between(cls, s: Point, t: Point, predict: str) -> "Step":
        h = t.lam - s.lam
        if predict == "noise":
            return cls(h, t.alpha / s.alpha, -t.sigma, math.expm1(h))
        return cls(h, t.sigma / s.sigma, t.alpha, -math.expm1(-h))
