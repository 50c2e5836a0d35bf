"""Contracts of libs/diffusion/euler_maruyama.py: the time grid, the call count, the noise
stream, and the recovery of Gaussian data (reverse SDE in distribution, probability-flow
ODE pathwise).

The analytic model: data x_0 ~ N(mu, diag(s^2)), so x_t ~ N(alpha_t mu, alpha_t^2 s^2 +
sigma_t^2) and the exact noise prediction is E[eps | x_t] = sigma_t (x_t - alpha_t mu) /
(alpha_t^2 s^2 + sigma_t^2). Its probability-flow ODE is affine, x_t = alpha_t mu +
sqrt(v_t / v_T) (x_T - alpha_T mu), so deterministic samplers can be checked pathwise.
"""
import pytest
import torch

from libs.diffusion.euler_maruyama import euler_maruyama_grid, euler_maruyama_ode, euler_maruyama_sde
from tests.helpers.gaussian_model import F64, MU, S, SCHEDULES, CallLog, gaussian_eps_fn


def marginal_sample(schedule, t, n, generator):
    """n draws of x_t for the Gaussian data, (n, 2) float64."""
    t = torch.tensor(t, dtype=F64)
    a, sg = schedule.marginal_alpha(t), schedule.marginal_std(t)
    return a * MU + torch.sqrt(a**2 * S**2 + sg**2) * torch.randn(n, 2, dtype=F64, generator=generator)


def test_euler_maruyama_grid_and_calls():
    grid = euler_maruyama_grid(10)
    assert grid[0] == 0 and grid[1] == 1e-3 and grid[-1] == 1 and grid.numel() == 11
    sch = SCHEDULES["continuous"]
    for sampler in (euler_maruyama_sde, euler_maruyama_ode):
        log = CallLog(gaussian_eps_fn(sch))
        x = sampler(log, torch.randn(4, 2, dtype=F64), sch, 10)
        assert x.shape == (4, 2)
        # N calls, from t = 1 down to t = 1e-3.
        assert log.times == pytest.approx(torch.linspace(1e-3, 1, 10, dtype=F64).flip(0).tolist())


def test_euler_maruyama_sde_noise_and_last_step():
    sch = SCHEDULES["continuous"]
    fn, x_T = gaussian_eps_fn(sch), torch.randn(8, 2, dtype=F64)
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a = euler_maruyama_sde(fn, x_T, sch, 5, generator=gen(0))
    torch.testing.assert_close(a, euler_maruyama_sde(fn, x_T, sch, 5, generator=gen(0)), rtol=0, atol=0)
    assert not torch.allclose(a, euler_maruyama_sde(fn, x_T, sch, 5, generator=gen(1)))
    # One step is the last step (1e-3 -> 0): no noise, whatever the generator.
    torch.testing.assert_close(euler_maruyama_sde(fn, x_T, sch, 1, generator=gen(0)),
                               euler_maruyama_sde(fn, x_T, sch, 1, generator=gen(1)), rtol=0, atol=0)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_euler_maruyama_recovers_gaussian(name, kind):
    # 16000 x 2 elements stay under PyTorch's parallel grain size (32768): single-threaded ops
    # keep the test fast on a busy 2-core machine.
    sch, n = SCHEDULES[name], 16000
    gen = torch.Generator().manual_seed(0)
    x_T = marginal_sample(sch, 1.0, n, gen)
    fn = gaussian_eps_fn(sch)
    if kind == "sde":
        x = euler_maruyama_sde(fn, x_T, sch, 500, generator=gen)
    else:
        x = euler_maruyama_ode(fn, x_T, sch, 500)
        # Pathwise: the exact PF-ODE map from T = 1 to 0 (alpha_0 = 1, sigma_0 = 0).
        a, sg = sch.marginal_alpha(torch.tensor(1.0, dtype=F64)), sch.marginal_std(torch.tensor(1.0, dtype=F64))
        exact = MU + S * (x_T - a * MU) / torch.sqrt(a**2 * S**2 + sg**2)
        assert (x - exact).abs().max() < 0.02 * S.max()
    # Sampling error of the moments ~ 1/sqrt(n) = 0.008 (relative to S).
    assert torch.all((x.mean(0) - MU).abs() < 0.04 * S), x.mean(0)
    assert torch.all((x.std(0) / S - 1).abs() < 0.03), x.std(0)


def test_euler_maruyama_uses_x_dtype():
    sch = SCHEDULES["continuous"]
    log = CallLog(lambda x, t: torch.zeros_like(x))
    x = euler_maruyama_ode(log, torch.randn(2, 3, 4, 4), sch, 3)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4, 4)
