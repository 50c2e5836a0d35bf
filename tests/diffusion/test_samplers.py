"""Noise schedules, Euler-Maruyama samplers and model_fn wrappers on CPU.

The analytic model: data x_0 ~ N(mu, diag(s^2)), so x_t ~ N(alpha_t mu, alpha_t^2 s^2 +
sigma_t^2) and the exact noise prediction is E[eps | x_t] = sigma_t (x_t - alpha_t mu) /
(alpha_t^2 s^2 + sigma_t^2). Its probability-flow ODE is affine, x_t = alpha_t mu +
sqrt(v_t / v_T) (x_T - alpha_T mu), so deterministic samplers can be checked pathwise.
"""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from libs.diffusion.wrappers import (CONTINUOUS_TIME_SCALE, DISCRETE_TIME_SCALE, cfg_model_fn, conditional_model_fn,
                           with_time_scale)
from libs.diffusion.euler_maruyama import euler_maruyama_grid, euler_maruyama_ode, euler_maruyama_sde
from tests.helpers.gaussian_model import F64, MU, S, SCHEDULES, CallLog, gaussian_eps_fn



def marginal_sample(schedule, t, n, generator):
    """n draws of x_t for the Gaussian data, (n, 2) float64."""
    t = torch.tensor(t, dtype=F64)
    a, sg = schedule.marginal_alpha(t), schedule.marginal_std(t)
    return a * MU + torch.sqrt(a**2 * S**2 + sg**2) * torch.randn(n, 2, dtype=F64, generator=generator)


# ----------------------------------------------------------------------------- schedules


def test_linear_vp_closed_forms():
    sch = SCHEDULES["continuous"]
    t = torch.linspace(1e-4, 1, 101, dtype=F64)
    a, sg = sch.marginal_alpha(t), sch.marginal_std(t)
    torch.testing.assert_close(a**2, torch.exp(-(0.1 * t + 9.95 * t**2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(a**2 + sg**2, torch.ones_like(t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sch.beta(t), 0.1 + 19.9 * t)
    torch.testing.assert_close(sch.marginal_lambda(t), torch.log(a / sg))
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-10, atol=1e-12)


def test_discrete_schedule_matches_ddpm_tables():
    sch = SCHEDULES["discrete"]
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    # Knot n = 1..1000 sits at t = n/1000 and carries alpha-bar_n = diffusers' alphas_cumprod[n - 1].
    t = torch.arange(1, 1001, dtype=F64) / 1000
    torch.testing.assert_close(sch.marginal_alpha(t) ** 2, ref.alphas_cumprod.to(F64), rtol=2e-6, atol=0)
    assert sch.T == 1.0 and sch.default_t_end == 1e-3
    # Piecewise linear in t between knots; beta(t) = -2 d log(alpha)/dt is the segment slope.
    lo, hi = sch.marginal_log_mean_coeff(t[[411, 412]])
    mid = sch.marginal_log_mean_coeff(torch.tensor([0.41275], dtype=F64))
    torch.testing.assert_close(mid, lo + 0.75 * (hi - lo)[None])
    torch.testing.assert_close(sch.beta(torch.tensor([0.41275], dtype=F64)), -2 * (hi - lo)[None] * 1000)
    # The SDE-side beta is close to the discrete beta_n.
    torch.testing.assert_close(sch.beta(t[1:] - 5e-4) / 1000, sch.betas[1:], rtol=1e-2, atol=0)
    # inverse_lambda inverts marginal_lambda on and between knots, and at the ends.
    tt = torch.cat([t, torch.rand(200, dtype=F64) * 0.999 + 0.001])
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(tt)), tt, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_keeps_dtype_shape_and_derivative(name):
    sch = SCHEDULES[name]
    t = torch.rand(3, 4) * 0.99 + 0.005  # float32, 2-D
    for fn in (sch.marginal_log_mean_coeff, sch.marginal_alpha, sch.marginal_std, sch.marginal_lambda, sch.beta):
        out = fn(t)
        assert out.shape == t.shape and out.dtype == torch.float32
    # beta(t) = -2 d log(alpha)/dt (central differences away from knots).
    t = torch.tensor([0.1234, 0.5678, 0.9012], dtype=F64)
    d = 1e-6
    dlog = (sch.marginal_log_mean_coeff(t + d) - sch.marginal_log_mean_coeff(t - d)) / (2 * d)
    torch.testing.assert_close(sch.beta(t), -2 * dlog, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- Euler-Maruyama


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


# ----------------------------------------------------------------------------- model_fn wrappers


class DummyNet:
    """net_fn(x, t, y) -> eps depending on all inputs; counts calls and batch sizes."""

    def __init__(self):
        self.batches, self.times = [], []

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        self.times.append(t.clone())
        return torch.sin(x) * (1 + t[:, None, None, None] / 1000) + y.float()[:, None, None, None]


def test_cfg_scale_zero_is_conditional_output():
    net, x, t = DummyNet(), torch.randn(3, 2, 4, 4), torch.full((3,), 0.3)
    y, y_null = torch.tensor([0, 4, 7]), torch.tensor(10)
    out = cfg_model_fn(net, y, y_null, 0.0)(x, t)
    torch.testing.assert_close(out, net(x, t, y), rtol=0, atol=0)
    torch.testing.assert_close(out, conditional_model_fn(net, y)(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("null_shape", ["scalar", "one", "batch"])
def test_cfg_one_batched_call(null_shape):
    net, x, t = DummyNet(), torch.randn(3, 2, 4, 4), torch.full((3,), 0.3)
    y = torch.tensor([0, 4, 7])
    y_null = {"scalar": torch.tensor(10), "one": torch.tensor([10]), "batch": torch.full((3,), 10)}[null_shape]
    s = 0.4
    model_fn = cfg_model_fn(net, y, y_null, s)
    out = model_fn(x, t)
    assert net.batches == [6]  # conditional and unconditional rows in one (2B) call
    eps_c, eps_u = net(x, t, y), net(x, t, torch.full((3,), 10))
    torch.testing.assert_close(out, eps_c + s * (eps_c - eps_u))
    model_fn(x, t)
    assert net.batches[-1] == 6 and len(net.batches) == 4  # one net call per model call


def test_time_conversions():
    net = DummyNet()
    x, t, y = torch.randn(2, 1, 2, 2), torch.tensor([0.25, 1.0]), torch.tensor([1, 2])
    with_time_scale(net, CONTINUOUS_TIME_SCALE)(x, t, y)
    with_time_scale(net, DISCRETE_TIME_SCALE)(x, t, y)
    torch.testing.assert_close(net.times[0], t * CONTINUOUS_TIME_SCALE)  # 999 t
    torch.testing.assert_close(net.times[1], t * DISCRETE_TIME_SCALE)  # 1000 t
    assert CONTINUOUS_TIME_SCALE == 999 and DISCRETE_TIME_SCALE == 1000
    # Composed with guidance and a sampler: the net sees 999 t for t = 1 .. 1e-3.
    net = DummyNet()
    model_fn = cfg_model_fn(with_time_scale(net, CONTINUOUS_TIME_SCALE), torch.tensor([1, 2]), torch.tensor(10), 1.0)
    euler_maruyama_ode(model_fn, torch.randn(2, 1, 2, 2), SCHEDULES["continuous"], 4)
    assert net.batches == [4] * 4
    expected = (999 * torch.linspace(1e-3, 1, 4, dtype=F64)).flip(0).tolist()
    assert [tt[0].item() for tt in net.times] == pytest.approx(expected)
    assert math.isclose(net.times[0][-1].item(), 999.0, rel_tol=1e-6)
