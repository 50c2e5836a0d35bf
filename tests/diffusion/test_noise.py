"""Contracts of libs/diffusion/noise.py: which time each forward-noise process draws, in which
order it reads the generator, what the network is told, and x_t = alpha x_0 + sigma eps."""
import pytest
import torch

from libs.diffusion.noise import ContinuousNoise, DiscreteNoise
from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule
from libs.diffusion.wrappers import CONTINUOUS_TIME_SCALE

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_continuous_noise_draws_t_then_eps_and_mixes_with_the_schedule():
    noise = ContinuousNoise()
    x0 = torch.randn(6, 3, 4, 4, generator=_gen(9))
    x_t, t_net, eps = noise.sample(x0, _gen(1))
    # The stream: t ~ U(0, 1) for the batch first, then eps with x0's shape.
    g = _gen(1)
    t = torch.rand(6, generator=g)
    assert torch.equal(eps, torch.randn(x0.shape, generator=g))
    assert torch.equal(t_net, CONTINUOUS_TIME_SCALE * t) and CONTINUOUS_TIME_SCALE == 999.0
    sch = LinearVPSchedule()
    want = sch.marginal_alpha(t).view(6, 1, 1, 1) * x0 + sch.marginal_std(t).view(6, 1, 1, 1) * eps
    assert torch.equal(x_t, want)
    assert x_t.shape == x0.shape and t_net.shape == (6,) and 0 <= t.min() and t.max() < 1


def test_continuous_noise_takes_its_schedule_and_time_scale():
    sch = LinearVPSchedule(beta_0=0.5, beta_1=5.0)
    x0 = torch.randn(4, 2, generator=_gen(3))
    x_t, t_net, eps = ContinuousNoise(sch, time_scale=1.0).sample(x0, _gen(2))
    t = torch.rand(4, generator=_gen(2))
    assert torch.equal(t_net, t)
    torch.testing.assert_close(x_t, sch.marginal_alpha(t)[:, None] * x0 + sch.marginal_std(t)[:, None] * eps)
    assert not torch.allclose(x_t, ContinuousNoise().sample(x0, _gen(2))[0])  # the schedule matters


def test_discrete_noise_draws_n_in_1_to_N_then_eps():
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    noise = DiscreteNoise(DiscreteVPSchedule(betas))
    x0 = torch.randn(4000, 2, generator=_gen(5))
    x_t, t_net, eps = noise.sample(x0, _gen(4))
    g = _gen(4)
    n = torch.randint(1, 5, (4000,), generator=g)
    assert torch.equal(eps, torch.randn(x0.shape, generator=g))
    assert torch.equal(t_net, n.float()) and t_net.dtype == x0.dtype
    # Every index 1..N is drawn (neither 0 nor N + 1), about equally often.
    counts = torch.bincount(n, minlength=6)
    assert counts[0] == 0 and counts[5] == 0 and counts[1:5].min() > 900
    abar = torch.cumprod(1 - betas, 0).float()[n - 1][:, None]
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, rtol=1e-6, atol=1e-6)


def test_discrete_noise_default_is_the_stable_diffusion_chain():
    noise = DiscreteNoise()
    ref = DiscreteVPSchedule.stable_diffusion().alphas_cumprod.float()
    assert torch.equal(noise.alphas_cumprod, ref) and noise.alphas_cumprod.shape == (1000,)
    x0 = torch.randn(2, 3, 4, 4, dtype=F64)
    x_t, t_net, _ = noise.sample(x0, _gen(0))
    assert x_t.dtype == F64 and t_net.dtype == F64 and x_t.shape == x0.shape


@pytest.mark.parametrize("noise", [ContinuousNoise(), DiscreteNoise()], ids=["continuous", "discrete"])
def test_noise_is_a_function_of_the_generator(noise):
    x0 = torch.randn(8, 3, 2, 2, generator=_gen(7))
    a, b, c = (noise.sample(x0, _gen(s)) for s in (11, 11, 12))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])


@pytest.mark.parametrize("noise", [ContinuousNoise(), DiscreteNoise()])
def test_noise_sampling_marginals(noise):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 2.0)
    xt, t_net, eps = noise.sample(x0, g)
    if isinstance(noise, ContinuousNoise):
        t = t_net / 999
        assert 0 <= t.min() and t.max() <= 1
        ab = torch.exp(-(0.1 * t + 9.95 * t ** 2))
    else:
        assert t_net.min() >= 1 and t_net.max() <= 1000 and torch.equal(t_net, t_net.round())
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        ab = torch.cumprod(1 - betas, 0)[t_net.long() - 1].float()
    torch.testing.assert_close(xt[:, 0], ab.sqrt() * 2.0 + (1 - ab).sqrt() * eps[:, 0], atol=1e-5, rtol=1e-5)
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03
