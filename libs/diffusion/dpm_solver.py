"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction) for VP schedules (Lu et
al., arXiv 2206.00927 and 2211.01095). ``dpm_solver_sample(model_fn, x, schedule, ...)``
integrates the probability-flow ODE from ``t_start`` (default T) to ``t_end`` (default
``schedule.default_t_end``) with exactly ``steps`` model calls.

Expanding the model output m (eps_hat or x0_hat) in lambda about s, h = lambda_t - lambda_s,
d1 ~ h dm/dlambda, d2 ~ h^2 d^2m/dlambda^2, every update is ``_Integrator.step``:

    x_t = lin x_s + c (phi1 m + phi2 d1 + phi3 d2),   (lin, c, phi1) of the toolkit's ``Step``,
    noise: phi2 = phi1/h - 1,  phi3 = phi2/h - 1/2;     data: phi2 = 1 - phi1/h,  phi3 = 1/2 - phi2/h.

Order 1 is DDIM. ``solver_type='dpmsolver'``: the paper's algorithms (DPM-Solver-2 weights d1
by phi1/2); ``'taylor'``: full Taylor weights (diffusers' ``'heun'``). Methods:

* ``'singlestep_fast'`` (``algorithm='dpm_solver'``): outer steps of ``singlestep_orders`` on
  a ``skip_type`` grid, an order-k step's inner calls splitting its lambda interval equally;
* ``'singlestep'`` (``algorithm='dpm_solver_pp'``): the same orders, every call on one
  (steps + 1)-point grid (equal to 'singlestep_fast' only for 'logSNR' and equal orders);
* ``'multistep'`` (DPM-Solver(++)(2M), (3M)): each step from the last ``multistep_orders``
  outputs, one call per grid point but the last."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from libs.diffusion.schedules import VPSchedule
from libs.diffusion.solver_toolkit import (PREDICTIONS, SKIP_TYPES, Point, Step, check_arguments,  # noqa: F401
                                           get_time_steps, model_output, points, time_grid)
from libs.diffusion.wrappers import ModelFn

METHODS = ("singlestep_fast", "singlestep", "multistep")
SOLVER_TYPES = ("dpmsolver", "taylor")


# ----------------------------------------------------------------------------- orders


def singlestep_orders(steps: int, order: int) -> List[int]:
    """Orders of the singlestep outer steps, summing to ``steps``: order 3, K = steps//3 + 1:
    [3]*(K-2) + [2, 1] / [3]*(K-1) + [1] / [3]*(K-1) + [2] for steps % 3 = 0 / 1 / 2;
    order 2: [2]*(steps//2) (+ [1] if odd); order 1: [1]*steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if order == 3:
        K = steps // 3 + 1
        if steps % 3 == 0:
            orders = [3] * (K - 2) + [2, 1]
        elif steps % 3 == 1:
            orders = [3] * (K - 1) + [1]
        else:
            orders = [3] * (K - 1) + [2]
    elif order == 2:
        orders = [2] * (steps // 2) + [1] * (steps % 2)
    elif order == 1:
        orders = [1] * steps
    else:
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    assert sum(orders) == steps
    return orders


def multistep_orders(steps: int, order: int, lower_order_final: bool = True) -> List[int]:
    """Step i (1-based) uses min(order, i) outputs, and with ``lower_order_final`` and steps < 10 at
    most steps + 1 - i."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    final = lower_order_final and steps < 10
    return [min(order, i, steps + 1 - i) if final else min(order, i) for i in range(1, steps + 1)]


# ----------------------------------------------------------------------------- the integrator


class _Integrator:
    """The update rules for one (model_fn, schedule, predict, solver_type). A step s -> t,
    h = lambda_t - lambda_s, inner points s1, s2 at r_i = (lambda_si - lambda_s)/h."""

    def __init__(self, model_fn: ModelFn, schedule: VPSchedule, predict: str, solver_type: str):
        self.model_fn, self.schedule = model_fn, schedule
        self.predict, self.solver_type = predict, solver_type

    def point(self, t: float) -> Point:
        return points(self.schedule, torch.tensor([t], dtype=torch.float64))[0]

    def point_at_lambda(self, lam: float) -> Point:
        return self.point(self.schedule.inverse_lambda(torch.tensor([lam], dtype=torch.float64)).item())

    def model(self, x: torch.Tensor, p: Point) -> torch.Tensor:
        return model_output(self.model_fn, x, p, self.predict)

    def step(self, x, s: Point, t: Point, m, d1=None, d2=None, midpoint: bool = False):
        """x_t = lin x_s + c (phi1 m + phi2 d1 + phi3 d2); ``midpoint`` weights d1 by phi1/2."""
        k = Step.between(s, t, self.predict)
        c, p1, h = k.c, k.phi1, k.h
        noise = self.predict == "noise"
        p2 = p1 / h - 1.0 if noise else 1.0 - p1 / h
        p3 = p2 / h - 0.5 if noise else 0.5 - p2 / h
        p2 = 0.5 * p1 if midpoint else p2
        out = k.lin * x + (c * p1) * m
        if d1 is not None:
            out = out + (c * p2) * d1
        if d2 is not None:
            out = out + (c * p3) * d2
        return out

    # Singlestep updates (model calls inside the step).

    def singlestep(self, x, s: Point, t: Point, inner: Sequence[Point], m_s):
        """One singlestep update of order len(inner) + 1 from s to t (len(inner) more calls)."""
        if not inner:
            return self.step(x, s, t, m_s)  # DPM-Solver-1 = DDIM
        if len(inner) == 1:
            return self.second_order(x, s, inner[0], t, m_s)
        return self.third_order(x, s, inner[0], inner[1], t, m_s)

    def second_order(self, x, s: Point, s1: Point, t: Point, m_s):
        """DPM-Solver-2 (Alg. 1) / DPM-Solver++(2S), one call at s1:

            u1 = step(x_s, s -> s1, m_s),  m1 = model(u1, s1),  d1 = (m1 - m_s)/r1,
            x_t = lin x_s + c (phi1 m_s + w d1),  w = phi1/2 ('dpmsolver') or phi2 ('taylor').
        """
        r1 = (s1.lam - s.lam) / (t.lam - s.lam)
        m1 = self.model(self.step(x, s, s1, m_s), s1)
        return self.step(x, s, t, m_s, d1=(m1 - m_s) / r1, midpoint=self.solver_type == "dpmsolver")

    def third_order(self, x, s: Point, s1: Point, s2: Point, t: Point, m_s):
        """DPM-Solver-3 (Alg. 2) / DPM-Solver++(3S), calls at s1 and s2:

            u1 = step(x_s, s -> s1, m_s),                              m1 = model(u1, s1),
            u2 = step(x_s, s -> s2, m_s, d1 = (r2/r1)(m1 - m_s)),     m2 = model(u2, s2),
            'dpmsolver':  x_t = lin x_s + c (phi1 m_s + phi2 (m2 - m_s)/r2);
            'taylor':     D1_i = (m_i - m_s)/r_i,  d1 = (r2 D1_1 - r1 D1_2)/(r2 - r1),
                          d2 = 2 (D1_2 - D1_1)/(r2 - r1),  x_t = step(x_s, s -> t, m_s, d1, d2).

        (In u2, d1 ~ r2 h m' is the derivative term of the sub-step s -> s2 of size r2 h.)
        """
        h = t.lam - s.lam
        r1, r2 = (s1.lam - s.lam) / h, (s2.lam - s.lam) / h
        m1 = self.model(self.step(x, s, s1, m_s), s1)
        m2 = self.model(self.step(x, s, s2, m_s, d1=(r2 / r1) * (m1 - m_s)), s2)
        if self.solver_type == "dpmsolver":
            return self.step(x, s, t, m_s, d1=(m2 - m_s) / r2)
        d1_0, d1_1 = (m1 - m_s) / r1, (m2 - m_s) / r2
        d1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
        d2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
        return self.step(x, s, t, m_s, d1=d1, d2=d2)

    # Multistep updates (no call: the outputs of earlier steps).

    def multistep(self, x, prev: Sequence[Point], ms: Sequence[torch.Tensor], t: Point, order: int):
        """One multistep update from prev[-1] to t using the last ``order`` outputs ms (no call).

        With s0 = prev[-1], s1 = prev[-2], s2 = prev[-3] (and m0, m1, m2 alike):
        r0 = (lambda_s0 - lambda_s1)/h, r1 = (lambda_s1 - lambda_s2)/h, D1_0 = (m0 - m1)/r0,
        D1_1 = (m1 - m2)/r1;

            order 1:  x_t = step(x, s0 -> t, m0)                                   (DDIM)
            order 2:  x_t = step(x, s0 -> t, m0, d1 = D1_0), d1 weighted as in second_order
                      (DPM-Solver++(2M), DPM-Solver++ Alg. 2, and its noise counterpart)
            order 3:  d1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  d2 = (D1_0 - D1_1)/(r0 + r1).

        The order-3 d2 estimates h^2 m''/2, not h^2 m'' (as DPM-Solver's and diffusers' 3M),
        so its local error is O(h^3): second order in practice (tests/diffusion/test_dpm_solver.py).
        """
        s0, m0 = prev[-1], ms[-1]
        if order == 1:
            return self.step(x, s0, t, m0)
        h = t.lam - s0.lam
        s1, m1 = prev[-2], ms[-2]
        r0 = (s0.lam - s1.lam) / h
        d1_0 = (m0 - m1) / r0
        if order == 2:
            return self.step(x, s0, t, m0, d1=d1_0, midpoint=self.solver_type == "dpmsolver")
        s2, m2 = prev[-3], ms[-3]
        r1 = (s1.lam - s2.lam) / h
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return self.step(x, s0, t, m0, d1=d1, d2=d2)


# ----------------------------------------------------------------------------- the methods


def _singlestep_fast(solver: _Integrator, x: torch.Tensor, outer: Sequence[Point],
                     orders: Sequence[int]) -> torch.Tensor:
    """Outer step i from outer[i] to outer[i + 1] of order k = orders[i], inner points at
    lambda_s + j/k (lambda_t - lambda_s), j = 1..k-1."""
    for i, k in enumerate(orders):
        s, t = outer[i], outer[i + 1]
        inner = [solver.point_at_lambda(s.lam + j / k * (t.lam - s.lam)) for j in range(1, k)]
        x = solver.singlestep(x, s, t, inner, solver.model(x, s))
    return x


def _singlestep(solver: _Integrator, x: torch.Tensor, pts: Sequence[Point], orders: Sequence[int]) -> torch.Tensor:
    """Every call on the grid ``pts`` (sum(orders) + 1 points): an order-k step from pts[i]
    to pts[i + k] calls the model at pts[i], ..., pts[i + k - 1]."""
    start = 0
    for k in orders:
        s, t, inner = pts[start], pts[start + k], pts[start + 1:start + k]
        x = solver.singlestep(x, s, t, inner, solver.model(x, s))
        start += k
    return x


def _multistep(solver: _Integrator, x: torch.Tensor, pts: Sequence[Point], orders: Sequence[int]) -> torch.Tensor:
    """len(orders) steps from pts[i - 1] to pts[i]; the model is called at every point but
    the last, and the last max(orders) outputs are kept."""
    keep = max(orders)
    prev, ms = [pts[0]], [solver.model(x, pts[0])]
    for i, k in enumerate(orders, start=1):
        x = solver.multistep(x, prev, ms, pts[i], k)
        if i < len(orders):  # no call after the last step
            prev, ms = (prev + [pts[i]])[-keep:], (ms + [solver.model(x, pts[i])])[-keep:]
    return x


@torch.no_grad()
def dpm_solver_sample(model_fn: ModelFn, x: torch.Tensor, schedule: VPSchedule, steps: int = 50, order: int = 3,
                      method: str = "singlestep_fast", predict: str = "noise", skip_type: str = "logSNR",
                      t_start: Optional[float] = None, t_end: Optional[float] = None,
                      solver_type: str = "dpmsolver", lower_order_final: bool = True,
                      timesteps: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Sample with DPM-Solver (predict='noise') or DPM-Solver++ (predict='data'); ``model_fn``
    always returns noise. x: (B, ...) at t_start -> (B, ...) at t_end. ``steps`` model calls;
    ``order`` 1-3; ``method``, ``skip_type``, ``solver_type`` as in the module docstring;
    ``lower_order_final``: multistep, lower the last orders when steps < 10; ``timesteps``: an
    explicit strictly decreasing grid of steps + 1 times (not for 'singlestep_fast')."""
    check_arguments("DPM-Solver", steps, method=(method, METHODS), predict=(predict, PREDICTIONS),
                    solver_type=(solver_type, SOLVER_TYPES), order=(order, (1, 2, 3)))
    if timesteps is not None and method == "singlestep_fast":
        raise ValueError("DPM-Solver: explicit timesteps need method 'singlestep' or 'multistep'")
    solver = _Integrator(model_fn, schedule, predict, solver_type)
    if method == "singlestep_fast":
        orders = singlestep_orders(steps, order)
        outer = points(schedule, time_grid("DPM-Solver", schedule, len(orders), skip_type, t_start, t_end))
        return _singlestep_fast(solver, x, outer, orders)
    pts = points(schedule, time_grid("DPM-Solver", schedule, steps, skip_type, t_start, t_end, timesteps))
    if method == "multistep":
        return _multistep(solver, x, pts, multistep_orders(steps, order, lower_order_final))
    return _singlestep(solver, x, pts, singlestep_orders(steps, order))
