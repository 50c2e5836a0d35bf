"""Contracts of libs/diffusion/schedules.py: closed forms of the linear VP-SDE, the discrete
DDPM chain against diffusers' tables, and the identities every VP schedule keeps
(alpha^2 + sigma^2 = 1, lambda decreasing, inverse_lambda inverting it)."""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule
from tests.helpers.gaussian_model import F64, SCHEDULES

# A second pair of schedules with other parameters, so nothing holds only for the defaults.
OTHER = {"linear_0.5_10": LinearVPSchedule(beta_0=0.5, beta_1=10.0),
         "discrete_linear_100": DiscreteVPSchedule(torch.linspace(1e-4, 0.05, 100, dtype=F64))}
ALL = {**SCHEDULES, **OTHER}


def _times(schedule, n=2001, seed=0):
    """Knots-and-between times over [default_t_end, T], float64."""
    lo = schedule.default_t_end
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.linspace(lo, schedule.T, n, dtype=F64), lo + (schedule.T - lo) * torch.rand(500, dtype=F64, generator=g)])


# ----------------------------------------------------------------------------- identities of every schedule


@pytest.mark.parametrize("name", ALL)
def test_alpha_sigma_are_a_unit_vector(name):
    sch = ALL[name]
    t = _times(sch)
    alpha, sigma = sch.marginal_alpha(t), sch.marginal_std(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)
    assert torch.all((alpha > 0) & (alpha < 1) & (sigma > 0) & (sigma < 1))
    torch.testing.assert_close(sch.marginal_lambda(t), torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_lambda_decreases_strictly(name):
    sch = ALL[name]
    t = torch.linspace(sch.default_t_end, sch.T, 5001, dtype=F64)
    lam = sch.marginal_lambda(t)
    assert torch.all(lam[1:] < lam[:-1])
    assert torch.all(sch.marginal_log_mean_coeff(t)[1:] < sch.marginal_log_mean_coeff(t)[:-1])


@pytest.mark.parametrize("name", ALL)
def test_inverse_lambda_inverts_lambda(name):
    sch = ALL[name]
    t = _times(sch)
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-9, atol=1e-12)
    # ... and the other way round, on a uniform lambda grid (what logSNR skipping asks for).
    lam_T, lam_0 = sch.marginal_lambda(torch.tensor([sch.T, sch.default_t_end], dtype=F64))
    lam = torch.linspace(lam_T.item(), lam_0.item(), 301, dtype=F64)
    torch.testing.assert_close(sch.marginal_lambda(sch.inverse_lambda(lam)), lam, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_schedule_keeps_dtype_shape_and_derivative(name):
    sch = ALL[name]
    t = torch.rand(3, 4) * 0.99 + 0.005  # float32, 2-D
    for fn in (sch.marginal_log_mean_coeff, sch.marginal_alpha, sch.marginal_std, sch.marginal_lambda, sch.beta):
        out = fn(t)
        assert out.shape == t.shape and out.dtype == torch.float32
    assert sch.inverse_lambda(sch.marginal_lambda(t)).shape == t.shape
    # beta(t) = -2 d log(alpha)/dt (central differences away from knots).
    t = torch.tensor([0.1234, 0.5678, 0.9012], dtype=F64)
    d = 1e-6
    dlog = (sch.marginal_log_mean_coeff(t + d) - sch.marginal_log_mean_coeff(t - d)) / (2 * d)
    torch.testing.assert_close(sch.beta(t), -2 * dlog, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_marginals_are_the_single_marginals_bitwise(name):
    """The samplers' one-pass (alpha, sigma, lambda) equals the three functions exactly."""
    schedule = ALL[name]
    t = _times(schedule, n=997)
    for ts in (t, t[:1], t[5:6]):  # vectorised and one-point calls (what the solver makes)
        alpha, sigma, lam = schedule.marginals(ts)
        assert torch.equal(alpha, schedule.marginal_alpha(ts))
        assert torch.equal(sigma, schedule.marginal_std(ts))
        assert torch.equal(lam, schedule.marginal_lambda(ts))


# ----------------------------------------------------------------------------- the continuous linear VP-SDE


def test_linear_vp_closed_forms():
    sch = SCHEDULES["continuous"]
    t = torch.linspace(1e-4, 1, 101, dtype=F64)
    a, sg = sch.marginal_alpha(t), sch.marginal_std(t)
    torch.testing.assert_close(a**2, torch.exp(-(0.1 * t + 9.95 * t**2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(a**2 + sg**2, torch.ones_like(t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sch.beta(t), 0.1 + 19.9 * t)
    torch.testing.assert_close(sch.marginal_lambda(t), torch.log(a / sg))
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-10, atol=1e-12)
    assert sch.T == 1.0 and sch.default_t_end == 1e-4


def test_sigma_is_accurate_at_small_times():
    """sigma_t^2 = 1 - alpha_t^2 = -expm1(-(0.1 t + 9.95 t^2)) in full relative precision where
    1 - alpha^2 would cancel (t = 1e-10: 1 - exp(-1e-11) keeps about 5 digits)."""
    sch = SCHEDULES["continuous"]
    t = torch.tensor([1e-12, 1e-10, 1e-8, 1e-6], dtype=F64)
    exact = -torch.expm1(-(0.1 * t + 9.95 * t**2))
    torch.testing.assert_close(sch.marginal_std(t) ** 2, exact, rtol=1e-13, atol=0)
    torch.testing.assert_close(sch.inverse_lambda(sch.marginal_lambda(t)), t, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- the discrete DDPM chain


def test_discrete_alphas_cumprod_match_diffusers_ddpm_scheduler():
    """diffusers' DDPMScheduler(beta_schedule='scaled_linear', 0.00085, 0.012) as the oracle:
    the same betas and alpha-bar table (diffusers builds them in float32, hence rtol 2e-6;
    from diffusers' own betas in float64 the tables agree to 1e-12)."""
    sch = SCHEDULES["discrete"]
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert sch.num_steps == 1000 and sch.alphas_cumprod.dtype == F64
    torch.testing.assert_close(sch.betas, ref.betas.to(F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(sch.alphas_cumprod, ref.alphas_cumprod.to(F64), rtol=2e-6, atol=0)
    same_betas = DiscreteVPSchedule(ref.betas)
    torch.testing.assert_close(same_betas.alphas_cumprod, torch.cumprod(1 - ref.betas.to(F64), 0), rtol=1e-12, atol=0)


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


def test_discrete_schedule_extrapolates_with_the_end_segments():
    """Outside the knots [1/N, 1] log alpha continues the first / last segment linearly."""
    sch = OTHER["discrete_linear_100"]
    la = sch.log_alpha_array
    N = sch.num_steps
    below = torch.tensor([0.0, 0.5 / N], dtype=F64)
    want = la[0] + (la[1] - la[0]) * (below - 1 / N) * N
    torch.testing.assert_close(sch.marginal_log_mean_coeff(below), want, rtol=1e-12, atol=1e-15)
    above = torch.tensor([1.0 + 0.5 / N], dtype=F64)
    torch.testing.assert_close(sch.marginal_log_mean_coeff(above), (la[-1] + (la[-1] - la[-2]) * 0.5)[None], rtol=1e-12,
                               atol=0)
    assert math.isclose(sch.beta(below)[0].item(), -2 * N * (la[1] - la[0]).item(), rel_tol=1e-12)
    assert repr(sch) == "DiscreteVPSchedule(num_steps=100)" and sch.default_t_end == 1 / N
