"""Variance-preserving noise schedules in continuous time t in [0, T], T = 1:

    x_t = alpha_t x_0 + sigma_t eps,    alpha_t^2 + sigma_t^2 = 1,
    sigma_t  = sqrt(1 - alpha_t^2)
    lambda_t = log(alpha_t / sigma_t)           (half log-SNR, DPM-Solver eq. (3.2))
    beta(t)  = -2 d log(alpha_t) / dt           (VP-SDE: dx = -beta/2 x dt + sqrt(beta) dw)

all derived from ``marginal_log_mean_coeff`` = log alpha_t. ``LinearVPSchedule``: score_sde /
U-ViT's beta(t) = 0.1 + 19.9 t. ``DiscreteVPSchedule``: N DDPM betas on knots t_n = n/N, log
alpha piecewise linear between them (DPM-Solver's 'discrete'); ``.stable_diffusion()`` (betas =
linspace(sqrt(0.00085), sqrt(0.012), 1000)^2) and ``.linear()`` (linspace(1e-4, 0.02, 1000)).
Methods map a tensor of times to a tensor of the same shape, dtype and device."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class VPSchedule:
    """Subclasses define ``marginal_log_mean_coeff`` and ``inverse_lambda``. ``T``: largest
    time; ``default_t_end``: DPM-Solver's default smallest time."""

    T: float = 1.0
    default_t_end: float = 1e-4

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_t."""
        raise NotImplementedError

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = -2 d log(alpha_t)/dt, the VP-SDE diffusion rate (g(t)^2)."""
        raise NotImplementedError

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The time t with marginal_lambda(t) = lamb."""
        raise NotImplementedError

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t (the signal coefficient; alpha_t^2 is DDPM's alpha-bar)."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = sqrt(1 - alpha_t^2), written with expm1 for accuracy at small t."""
        return torch.sqrt(self._variance(self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log alpha_t - log sigma_t (half the log signal-to-noise ratio)."""
        log_alpha = self.marginal_log_mean_coeff(t)
        return log_alpha - 0.5 * torch.log(self._variance(log_alpha))

    def marginals(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t, lambda_t) from one evaluation of log alpha_t, bitwise the three marginals."""
        log_alpha = self.marginal_log_mean_coeff(t)
        variance = self._variance(log_alpha)
        return torch.exp(log_alpha), torch.sqrt(variance), log_alpha - 0.5 * torch.log(variance)

    @staticmethod
    def _variance(log_alpha: torch.Tensor) -> torch.Tensor:
        """sigma_t^2 = 1 - alpha_t^2 from log alpha_t."""
        return -torch.expm1(2.0 * log_alpha)

    @staticmethod
    def _log_alpha_from_lambda(lamb: torch.Tensor) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -1/2 log(1 + exp(-2 lambda))
        return -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)


@dataclass(frozen=True)
class LinearVPSchedule(VPSchedule):
    """Continuous linear VP-SDE, beta(t) = beta_0 + (beta_1 - beta_0) t:
    log alpha_t = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2 (score_sde's VP-SDE)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    T: float = 1.0
    default_t_end: float = 1e-4  # DPM-Solver "fast" on continuous models: T=1 -> eps=1e-4

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + (self.beta_1 - self.beta_0) * t

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        # Solve a t^2 + b t = c with a = (beta_1 - beta_0)/4, b = beta_0/2, c = -log alpha >= 0,
        # in the cancellation-free form t = 2c / (b + sqrt(b^2 + 4ac)).
        c = -self._log_alpha_from_lambda(lamb)
        b = 0.5 * self.beta_0
        return 2.0 * c / (b + torch.sqrt(b**2 + (self.beta_1 - self.beta_0) * c))


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-linear interpolation through (xp, fp), xp increasing, extrapolating with
    the first / last segment outside [xp[0], xp[-1]]. Returns (values, slopes)."""
    xp, fp = xp.to(x), fp.to(x)
    flat = x.reshape(-1).contiguous()
    # Segment k spans [xp[k-1], xp[k]], k in 1..K-1; points at a knot use the segment on its left.
    k = torch.searchsorted(xp, flat).clamp(1, xp.numel() - 1)
    x0, x1, y0, y1 = xp[k - 1], xp[k], fp[k - 1], fp[k]
    slope = (y1 - y0) / (x1 - x0)
    return (y0 + slope * (flat - x0)).reshape(x.shape), slope.reshape(x.shape)


class DiscreteVPSchedule(VPSchedule):
    """A discrete DDPM schedule: knot n = 1..N at t_n = n/N with log alpha_{t_n} = 1/2 sum_{i<=n}
    log(1 - beta_i), so a network trained on index n takes network time N t. ``betas``: beta_1..beta_N
    (kept in float64)."""

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64).reshape(-1)
        self.num_steps = betas.numel()
        self.betas = betas
        log_alpha_bar = torch.cumsum(torch.log1p(-betas), dim=0)  # (N,) log prod_{i<=n}(1 - beta_i)
        self.alphas_cumprod = torch.exp(log_alpha_bar)
        self.t_array = torch.arange(1, self.num_steps + 1, dtype=torch.float64) / self.num_steps  # (N,)
        self.log_alpha_array = 0.5 * log_alpha_bar  # (N,), decreasing in t
        self.T = 1.0
        self.default_t_end = 1.0 / self.num_steps

    @classmethod
    def stable_diffusion(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        """The 'scaled linear' schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2."""
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2
        return cls(betas)

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """DDPM's linear betas = linspace(beta_start, beta_end, N) (the DiT / ADM schedule)."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return _interp(t, self.t_array, self.log_alpha_array)[0]

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        # Piecewise constant: -2 x the slope of log alpha on the segment holding t.
        return -2.0 * _interp(t, self.t_array, self.log_alpha_array)[1]

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        log_alpha = self._log_alpha_from_lambda(lamb)
        # Interpolate t as a function of log alpha (flipped so that the abscissa increases).
        return _interp(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))[0]

    def __repr__(self) -> str:
        return f"DiscreteVPSchedule(num_steps={self.num_steps})"
