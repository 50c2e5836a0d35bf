"""The sampler-side model function and the ``model_fn -> model_fn`` wrappers between a
network and the samplers.

Samplers (``libs/diffusion/euler_maruyama.py``, ``libs/diffusion/dpm_solver.py``) call a
``ModelFn``, ``model_fn(x, t) -> eps_hat``, with x: (B, ...) and t: (B,) float tensor of
*schedule time* t in (0, 1] (``batch_time``), and get the noise prediction with the shape
of x. A network is called as ``net_fn(x, t_net, *cond) -> eps_hat`` with its own *network
time* t_net. The conversions live here, at the edge, and nowhere else:

* Continuous VP-SDE models (trained with t ~ U(0, 1)): t_net = 999 t
  (``CONTINUOUS_TIME_SCALE``), for Euler-Maruyama and DPM-Solver alike.
* Discrete-schedule models (text-to-image, ``*_discrete``; trained on n ~ U{1..1000} with
  alpha-bar_n = prod_{i<=n} (1 - beta_i)): t_net = 1000 t (``DISCRETE_TIME_SCALE``).
  ``DiscreteVPSchedule`` puts knot n at t = n/1000, so t_net = n exactly on the knots;
  DPM-Solver's inner points give fractional t_net, as in the released scripts. (DPM-Solver's
  own wrapper uses 1000 (t - 1/1000) for models trained on 0-based diffusers indices; that
  is not this project's convention.)

Typical composition (guidance outside, time conversion inside)::

    net_fn = with_time_scale(lambda x, t, y: nnet(x, t, y), CONTINUOUS_TIME_SCALE)
    model_fn = cfg_model_fn(net_fn, y, y_null, scale=0.4)
    x0 = dpm_solver_sample(model_fn, x_T, LinearVPSchedule(), steps=50)
"""
from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # sampler side: (x, t) -> eps_hat

CONTINUOUS_TIME_SCALE = 999.0
DISCRETE_TIME_SCALE = 1000.0


def batch_time(t: float, x: torch.Tensor) -> torch.Tensor:
    """The (B,) time tensor a sampler hands to model_fn: float32, or float64 when x is float64."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


def with_time_scale(net_fn: Callable[..., torch.Tensor], scale: float) -> Callable[..., torch.Tensor]:
    """Wrap ``net_fn(x, t_net, *args)`` as ``fn(x, t, *args)`` with t_net = scale * t."""

    def fn(x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return net_fn(x, scale * t, *args, **kwargs)

    return fn


def conditional_model_fn(net_fn: Callable[..., torch.Tensor], cond) -> ModelFn:
    """Bind conditioning without guidance: ``model_fn(x, t) = net_fn(x, t, cond)``."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net_fn(x, t, cond)

    return model_fn


def _expand_batch(u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # A null condition given once, (1, ...) or without a batch axis, is repeated to cond's batch.
    if u.dim() == like.dim() - 1:
        u = u.unsqueeze(0)
    return u.expand_as(like) if u.shape[0] == 1 and like.shape[0] != 1 else u


def cfg_model_fn(net_fn: Callable[..., torch.Tensor], cond: torch.Tensor, uncond, scale: float) -> ModelFn:
    """Classifier-free guidance with the conditional and unconditional rows in ONE call.

        eps = eps_c + scale (eps_c - eps_u)      (U-ViT / AdaDiff convention; scale 0 = conditional)

    Args:
        net_fn: ``net_fn(x, t, cond_batch) -> eps`` (time already converted, see above).
        cond: (B, ...) conditioning (labels (B,), contexts (B, 77, D), ...).
        uncond: the null conditioning, (B, ...), (1, ...) or one item without batch axis.
        scale: guidance scale s.

    Returns:
        ``model_fn(x, t)``: calls ``net_fn(cat([x, x]), cat([t, t]), cat([cond, uncond]))``
        once (a (2B, ...) batch) and combines the halves. With scale == 0 it calls
        ``net_fn(x, t, cond)`` on the B conditional rows only, so the result is exactly the
        conditional output.
    """
    uncond = _expand_batch(torch.as_tensor(uncond, device=cond.device), cond)
    both = torch.cat([cond, uncond.to(cond.dtype)], dim=0)  # (2B, ...), conditional rows first

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 0:
            return net_fn(x, t, cond)
        eps_c, eps_u = net_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both).chunk(2, dim=0)
        return eps_c + scale * (eps_c - eps_u)

    return model_fn
