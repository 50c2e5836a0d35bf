"""UniPC: a unified predictor-corrector for diffusion ODEs (Zhao et al., "UniPC: A Unified
Predictor-Corrector Framework for Fast Sampling of Diffusion Models", NeurIPS 2023, arXiv
2302.04867), multistep, B(h) variants bh1 / bh2.

One pure entry point, ``unipc_sample(model_fn, x, schedule, ...)``, with the conventions of
``libs/diffusion/dpm_solver.py``: ``model_fn(x, t) -> eps_hat`` for a (B,) tensor of schedule
time t, integration from ``schedule.T`` to ``schedule.default_t_end`` on a ``skip_type`` grid
of ``steps + 1`` points (or explicit strictly decreasing ``timesteps``; both from
``libs/diffusion/solver_toolkit.py``, with the model output and step coefficients), and
exactly ``steps`` model calls.

With lambda = log(alpha/sigma), m the model output in the chosen parameterisation (data:
x0_hat = (x - sigma eps_hat)/alpha; noise: eps_hat), a step from s to t (h = lambda_t -
lambda_s > 0) with earlier outputs m_k at lambda_k, r_k = (lambda_k - lambda_s)/h and
D_k = (m_k - m_s)/r_k is

    data:   x_t = sigma_t/sigma_s x_s - alpha_t (e^hh - 1) m_s - alpha_t B(h) sum_k a_k D_k,   hh = -h
    noise:  x_t = alpha_t/alpha_s x_s - sigma_t (e^hh - 1) m_s - sigma_t B(h) sum_k a_k D_k,   hh = h

with B(h) = hh (bh1) or e^hh - 1 (bh2), and the a_k solving the order conditions
(paper, Theorem 3.1 / eq. (10))

    sum_k a_k r_k^(i-1) = g_i / B(h),   g_i = hh phi_{i+1}(hh) i!,   i = 1..p,
    phi_1(z) = (e^z - 1)/z,   phi_{k+1}(z) = (phi_k(z) - 1/k!)/z.

* Predictor UniP-p: the p - 1 latest earlier outputs, conditions i = 1..p-1. For p = 2 the
  single coefficient is a_1 = 1/2 (any 1/2 + O(h) keeps the order; with bh2 this makes
  UniP-2 exactly DPM-Solver++(2M), the paper's and diffusers' choice).
* Corrector UniC-p: after the model is called at the predicted x_t (the call the next step
  needs anyway, so the corrector is free), the same step is redone with the new output m_t
  as one more point (r = 1) and the p - 1 earlier ones, conditions i = 1..p; for p = 1,
  a = 1/2. The corrected x_t replaces the predicted one; the model output at the predicted
  x_t is what later steps reuse. The last step is not corrected (it would need one more call).

Orders: the predictor of step i (0-based) has order min(order, i + 1) (warm-up) and, with
``lower_order_final``, also at most steps - i (the final step is first order); the
corrector of x_i has the order of the predictor that made it.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from libs.diffusion.schedules import VPSchedule
from libs.diffusion.solver_toolkit import (PREDICTIONS, Step, check_arguments, model_output, points,
                                           time_grid)
from libs.diffusion.wrappers import ModelFn

VARIANTS = ("bh1", "bh2")


def order_conditions(r: Sequence[float], hh: float, variant: str) -> List[float]:
    """The a_k solving sum_k a_k r_k^(i-1) = g_i / B(h), i = 1..len(r) (module docstring)."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    g, phi, factorial = [], math.expm1(hh) / hh, 1.0  # phi = phi_1(hh)
    for i in range(1, len(r) + 1):
        factorial *= i
        phi = (phi - 1.0 / factorial) / hh  # phi_{i+1} = (phi_i - 1/i!)/hh
        g.append(hh * phi * factorial / b_h)
    R = torch.tensor([[rk ** (i - 1) for rk in r] for i in range(1, len(r) + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(g, dtype=torch.float64)).tolist()


class _UniPC:
    """The update of the module docstring for one (model_fn, grid, predict, variant)."""

    def __init__(self, model_fn: ModelFn, schedule: VPSchedule, predict: str, variant: str, ts: torch.Tensor):
        self.model_fn, self.predict, self.variant = model_fn, predict, variant
        self.pts = points(schedule, ts)

    def model(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return model_output(self.model_fn, x, self.pts[i], self.predict)

    def update(self, x, s: int, t: int, m_s, earlier: Sequence[tuple], m_t=None):
        """x at grid point t from x at s. ``earlier``: (grid index, output) pairs before s,
        latest first; ``m_t``: the output at t for the corrector (None = predictor).
        In the toolkit's ``Step`` (c = -sigma_t for noise), c phi1 = -C (e^hh - 1) and
        c B'(h) = -C B(h) with B' = h (bh1) or phi1 (bh2)."""
        k = Step.between(self.pts[s], self.pts[t], self.predict)
        x_t = k.lin * x + (k.c * k.phi1) * m_s
        r = [(self.pts[i].lam - self.pts[s].lam) / k.h for i, _ in earlier]
        d = [(m_k - m_s) / r_k for (_, m_k), r_k in zip(earlier, r)]
        if m_t is not None:
            r, d = r + [1.0], d + [m_t - m_s]
        if not d:
            return x_t
        hh = -k.h if self.predict == "data" else k.h
        a = [0.5] if len(d) == 1 else order_conditions(r, hh, self.variant)
        res = sum(a_k * d_k for a_k, d_k in zip(a, d))
        return x_t + (k.c * (k.h if self.variant == "bh1" else k.phi1)) * res
@torch.no_grad()
def unipc_sample(model_fn: ModelFn, x: torch.Tensor, schedule: VPSchedule, steps: int = 20, order: int = 2,
                 predict: str = "data", variant: str = "bh2", skip_type: str = "time_uniform",
                 t_start: Optional[float] = None, t_end: Optional[float] = None, lower_order_final: bool = True,
                 timesteps: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Sample with multistep UniPC (predictor UniP-order, corrector UniC).

    Args:
        model_fn: ``model_fn(x, t) -> eps_hat``, t a (B,) tensor of schedule time.
        x: (B, ...) sample at t_start, usually N(0, I), drawn by the caller.
        schedule: a ``VPSchedule``.
        steps: number of model calls (and of steps).
        order: predictor order, 1..3 (2 is diffusers' and the paper's default for guided sampling).
        predict: 'data' (x0 prediction, UniPC's default) or 'noise'.
        variant: 'bh2' (B(h) = e^hh - 1, default) or 'bh1' (B(h) = hh).
        skip_type, t_start, t_end, timesteps: the time grid, as in ``dpm_solver_sample``.
        lower_order_final: first order on the final step.

    Returns:
        (B, ...) sample at t_end.
    """
    check_arguments("UniPC", steps, order=(order, (1, 2, 3)), predict=(predict, PREDICTIONS),
                    variant=(variant, VARIANTS))
    ts = time_grid("UniPC", schedule, steps, skip_type, t_start, t_end, timesteps)
    solver = _UniPC(model_fn, schedule, predict, variant, ts)
    history = [(0, solver.model(x, 0))]  # (grid index, output), latest last
    x_prev, prev_order = None, 0
    for i in range(steps):
        if i > 0:  # corrector of x_i with the output at x_i (already in history), same order as its predictor
            (s, m_s), m_t = history[-2], history[-1][1]
            x = solver.update(x_prev, s, i, m_s, history[-2 - prev_order + 1:-2][::-1], m_t=m_t)
        p = min(order, i + 1, steps - i if lower_order_final else order)
        s, m_s = history[-1]
        x_prev, x = x, solver.update(x, s, i + 1, m_s, history[-p:-1][::-1])
        prev_order = p
        if i + 1 < steps:
            history = (history + [(i + 1, solver.model(x, i + 1))])[-(order + 1):]
    return x
