"""DPM-Solver++(2M) and UniPC (the registry's ``dpm_solver_pp_2m`` and ``unipc``) against
diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler as the oracle, on the
analytic Gaussian model (tests/helpers/gaussian_model.py).

The schedule is diffusers' 'scaled_linear' SD betas, betas = linspace(sqrt(0.00085),
sqrt(0.012), 1000)^2, which is our DiscreteVPSchedule (knot n at t = n/1000, built from
the same float32 betas): diffusers' integer timestep k is our t = (k + 1)/1000 and
final_sigmas_type='sigma_min' ends at t_end = 1/1000. diffusers' 'linspace' spacing is our
time-uniform grid when 999/N is an integer (N = 9, 27, 37, 111); for other N its rounded
grid is handed over as explicit timesteps, so both sides always run on the same grid.
diffusers keeps alphas_cumprod and its sigmas in float32; the test gives it the float64
sigmas of our schedule (the same betas) so that the comparison holds to 1e-6.
"""
import math

import ml_collections
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from libs.diffusion.dpm_solver import get_time_steps
from libs.diffusion.registry import make_sampler
from libs.diffusion.schedules import DiscreteVPSchedule
from libs.diffusion.unipc import order_conditions, unipc_sample
from tests.helpers.gaussian_model import F64, MU, S, SCHEDULES, CallLog, gaussian_eps_fn

CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              final_sigmas_type="sigma_min")


def _float64_sigmas(sched):
    ac = our_schedule().alphas_cumprod  # the float64 cumulative product of the same betas
    sig = ((1 - ac) / ac) ** 0.5
    ks = sched.timesteps.long()
    sched.sigmas = torch.cat([sig[ks], sig[:1]])  # the grid, then sigma_min (t = 1/1000)


def diffusers_sample(cls, steps, model_fn, x, **kwargs):
    sched = cls(**CONFIG, **kwargs)
    sched.set_timesteps(steps)
    _float64_sigmas(sched)
    for k in sched.timesteps:
        t = torch.full((x.shape[0],), (int(k) + 1) / 1000, dtype=F64)
        x = sched.step(model_fn(x, t), k, x).prev_sample
    return x, [(int(k) + 1) / 1000 for k in sched.timesteps] + [1 / 1000]


def our_schedule():
    return DiscreteVPSchedule(DPMSolverMultistepScheduler(**CONFIG).betas)  # the same float32 betas


def _x_T(seed=0):
    return torch.randn(256, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _cfg(algorithm, steps):
    return ml_collections.ConfigDict(dict(algorithm=algorithm, sample_steps=steps))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("steps", [9, 10, 20, 27, 50])
def test_dpm_solver_pp_2m_matches_diffusers(steps):
    sch = our_schedule()
    fn = gaussian_eps_fn(sch)
    # diffusers lowers the final order below 15 steps, this implementation below 10: compare where they agree.
    ref, grid = diffusers_sample(DPMSolverMultistepScheduler, steps, fn, _x_T(), solver_order=2,
                                 algorithm_type="dpmsolver++", solver_type="midpoint",
                                 lower_order_final=steps < 10 or steps >= 15)
    if 999 % steps == 0:
        torch.testing.assert_close(get_time_steps(sch, "time_uniform", 1.0, 1e-3, steps),
                                   torch.tensor(grid, dtype=F64), rtol=0, atol=1e-12)
        ours = make_sampler(_cfg("dpm_solver_pp_2m", steps), sch)(fn, _x_T())
    else:
        from libs.diffusion.dpm_solver import dpm_solver_sample
        ours = dpm_solver_sample(fn, _x_T(), sch, steps=steps, order=2, method="multistep", predict="data",
                                 timesteps=grid, lower_order_final=steps < 10)
    # DPMSolverMultistepScheduler.step rounds the sample to float32 on every step (an upcast
    # for half-precision pipelines), so agreement is to 1e-6 relative to the samples' scale.
    assert (ours - ref).abs().max() < 1e-6 * ref.abs().max()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("steps,order", [(5, 2), (15, 2), (27, 2), (50, 2), (9, 1), (15, 3), (27, 3)])
@pytest.mark.parametrize("variant", ["bh2", "bh1"])
@pytest.mark.parametrize("predict", ["data", "noise"])
def test_unipc_matches_diffusers(steps, order, variant, predict):
    sch = our_schedule()
    fn = gaussian_eps_fn(sch)
    ref, grid = diffusers_sample(UniPCMultistepScheduler, steps, fn, _x_T(1), solver_order=order,
                                 solver_type=variant, predict_x0=predict == "data", lower_order_final=True)
    log = CallLog(fn)
    ours = unipc_sample(log, _x_T(1), sch, steps=steps, order=order, predict=predict, variant=variant,
                        timesteps=None if 999 % steps == 0 else grid)
    assert len(log.times) == steps
    np.testing.assert_allclose(log.times, grid[:-1], rtol=0, atol=1e-12)
    assert (ours - ref).abs().max() < 1e-6


def test_registry_unipc_is_order_2_bh2_data():
    sch = our_schedule()
    fn = gaussian_eps_fn(sch)
    ref, _ = diffusers_sample(UniPCMultistepScheduler, 27, fn, _x_T(2))  # diffusers' defaults: order 2, bh2
    ours = make_sampler(_cfg("unipc", 27), sch)(fn, _x_T(2))
    assert (ours - ref).abs().max() < 1e-6


def gaussian_ode_solution(schedule, x_s, s, t):
    """The exact probability-flow ODE map of the Gaussian model from time s to time t."""
    (a_s, a_t), (g_s, g_t) = (schedule.marginal_alpha(torch.tensor([s, t], dtype=F64)),
                              schedule.marginal_std(torch.tensor([s, t], dtype=F64)))
    v_s, v_t = a_s**2 * S**2 + g_s**2, a_t**2 * S**2 + g_t**2
    return a_t * MU + torch.sqrt(v_t / v_s) * (x_s - a_s * MU)


def test_unipc_converges_to_the_exact_ode_solution():
    """Against the closed-form probability-flow ODE solution of the Gaussian model, on the
    continuous schedule too: the error falls with the step count at about second order."""
    for name, sch in SCHEDULES.items():
        x_T = _x_T(3)
        t_end = sch.default_t_end
        exact = gaussian_ode_solution(sch, x_T, 1.0, t_end)
        errs = [(unipc_sample(gaussian_eps_fn(sch), x_T, sch, steps=n, skip_type="logSNR") - exact).abs().max()
                for n in (10, 20, 40)]
        assert errs[2] < errs[1] < errs[0] and errs[2] < 2e-2, (name, errs)
        assert errs[1] / errs[2] > 3, (name, errs)  # >= 2nd order: 4x per halving of h


def test_order_conditions_solve_the_vandermonde_system():
    r, hh = [-0.7, 1.0], -0.3
    a = order_conditions(r, hh, "bh2")
    b_h = math.expm1(hh)
    phi2 = (math.expm1(hh) / hh - 1) / hh
    phi3 = (phi2 - 0.5) / hh
    assert a[0] + a[1] == pytest.approx(hh * phi2 / b_h, rel=1e-12)
    assert a[0] * r[0] + a[1] * r[1] == pytest.approx(hh * phi3 * 2 / b_h, rel=1e-12)


def test_unipc_bad_arguments():
    sch = SCHEDULES["continuous"]
    for kw in (dict(steps=0), dict(order=4), dict(predict="v"), dict(variant="bh3"), dict(timesteps=[1.0, 0.5])):
        with pytest.raises(ValueError):
            unipc_sample(gaussian_eps_fn(sch), _x_T(), sch, **{"steps": 5, **kw})
