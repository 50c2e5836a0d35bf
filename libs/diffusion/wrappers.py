"""The sampler-side model function and the ``model_fn -> model_fn`` wrappers between a
network and the samplers.

Samplers call ``model_fn(x, t) -> eps_hat`` (``ModelFn``) with x: (B, ...) and t: (B,) float
*schedule time* in (0, 1] (``batch_time``). A network is called as ``net_fn(x, t_net, *cond)``
with its own *network time*; the conversion lives here only: t_net = 999 t for continuous
VP-SDE models (``CONTINUOUS_TIME_SCALE``), 1000 t for discrete-schedule models
(``DISCRETE_TIME_SCALE``: knot n at t = n/1000 gives t_net = n; not DPM-Solver's own
1000 (t - 1/1000) for 0-based indices, which DiT's weights take as ``time_shift=-1``).
Typical composition::

    net_fn = with_time_scale(lambda x, t, y: nnet(x, t, y), CONTINUOUS_TIME_SCALE)
    model_fn = cfg_model_fn(net_fn, y, y_null, scale=0.4)
    x0 = dpm_solver_sample(model_fn, x_T, LinearVPSchedule(), steps=50)"""
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
    """Classifier-free guidance, conditional and unconditional rows in ONE (2B, ...) call of
    ``net_fn(x, t, cond_batch)``:

        eps = eps_c + scale (eps_c - eps_u)      (U-ViT / AdaDiff convention)

    ``uncond``: (B, ...), (1, ...) or one item without batch axis. With scale == 0 only the B
    conditional rows are run, so the result is exactly the conditional output."""
    uncond = _expand_batch(torch.as_tensor(uncond, device=cond.device), cond)
    both = torch.cat([cond, uncond.to(cond.dtype)], dim=0)  # (2B, ...), conditional rows first

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 0:
            return net_fn(x, t, cond)
        eps_c, eps_u = net_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both).chunk(2, dim=0)
        return eps_c + scale * (eps_c - eps_u)

    return model_fn
