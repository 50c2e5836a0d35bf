"""UniPC, multistep predictor-corrector (Zhao et al., NeurIPS 2023, arXiv 2302.04867), B(h)
variants bh1 / bh2; ``unipc_sample`` has ``dpm_solver_sample``'s conventions and grids
(``libs/diffusion/solver_toolkit.py``) and makes exactly ``steps`` model calls.

A step from s to t (h = lambda_t - lambda_s > 0) with earlier outputs m_k at lambda_k,
r_k = (lambda_k - lambda_s)/h, D_k = (m_k - m_s)/r_k:

    data:   x_t = sigma_t/sigma_s x_s - alpha_t (e^hh - 1) m_s - alpha_t B(h) sum_k a_k D_k,   hh = -h
    noise:  x_t = alpha_t/alpha_s x_s - sigma_t (e^hh - 1) m_s - sigma_t B(h) sum_k a_k D_k,   hh = h

B(h) = hh (bh1) or e^hh - 1 (bh2); the a_k solve (paper, Theorem 3.1 / eq. (10))

    sum_k a_k r_k^(i-1) = g_i / B(h),   g_i = hh phi_{i+1}(hh) i!,   i = 1..p,
    phi_1(z) = (e^z - 1)/z,   phi_{k+1}(z) = (phi_k(z) - 1/k!)/z.

* Predictor UniP-p: the p - 1 latest earlier outputs, i = 1..p-1; for p = 2, a_1 = 1/2 (with
  bh2, exactly DPM-Solver++(2M)).
* Corrector UniC-p: after the call at the predicted x_t (which the next step needs anyway), the
  step is redone with m_t as one more point (r = 1), i = 1..p (p = 1: a = 1/2); later steps
  reuse the output at the predicted x_t. The last step is not corrected.

The predictor of step i has order min(order, i + 1) and, with ``lower_order_final``, at most
steps - i; the corrector of x_i has the order of the predictor that made it."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from libs.diffusion.schedules import VPSchedule
from libs.diffusion.solver_toolkit import PREDICTIONS, Step, check_arguments, model_output, points, time_grid
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
    """Multistep UniPC: x (B, ...) at t_start -> (B, ...) at t_end, ``steps`` model calls.
    ``order``: predictor order 1..3; ``predict``: 'data' (default) or 'noise'; ``variant``: 'bh2'
    (default) or 'bh1'; the grid as in ``dpm_solver_sample``; ``lower_order_final``: first order
    on the final step."""
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
