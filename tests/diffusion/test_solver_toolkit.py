"""The solver toolkit (libs/diffusion/solver_toolkit.py): both solvers check an explicit grid
alike, the data prediction inverts the forward process, and one ``Step`` with the first-order
update is DDIM in either parameterisation."""
import math

import pytest
import torch

from libs.diffusion.dpm_solver import dpm_solver_sample
from libs.diffusion.solver_toolkit import Step, model_output, points, time_grid
from libs.diffusion.unipc import unipc_sample
from tests.helpers.gaussian_model import F64, SCHEDULES, gaussian_eps_fn


@pytest.mark.parametrize("timesteps", [[1.0, 0.5, 0.5, 1e-3], [1e-3, 0.3, 0.5, 1.0], [1.0, 0.5, 1e-3]])
def test_both_solvers_reject_a_grid_that_does_not_decrease_strictly(timesteps):
    sch = SCHEDULES["discrete"]
    fn, x = gaussian_eps_fn(sch), torch.randn(2, 2, dtype=F64)
    for name, run in (("DPM-Solver", lambda: dpm_solver_sample(fn, x, sch, steps=3, method="multistep",
                                                                timesteps=timesteps)),
                      ("UniPC", lambda: unipc_sample(fn, x, sch, steps=3, timesteps=timesteps))):
        with pytest.raises(ValueError, match=f"^{name}: timesteps must"):
            run()


def test_time_grid_defaults_to_the_schedules_interval():
    sch = SCHEDULES["continuous"]
    grid = time_grid("test", sch, 4, "time_uniform")
    assert grid.dtype == F64 and grid[0] == sch.T and grid[-1] == sch.default_t_end and grid.numel() == 5
    torch.testing.assert_close(time_grid("test", sch, 2, "logSNR", timesteps=[1.0, 0.5, 0.1]),
                               torch.tensor([1.0, 0.5, 0.1], dtype=F64), rtol=0, atol=0)


def test_data_prediction_inverts_the_forward_process():
    sch = SCHEDULES["continuous"]
    p = points(sch, torch.tensor([0.3], dtype=F64))[0]
    x0, eps = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    x = p.alpha * x0 + p.sigma * eps
    torch.testing.assert_close(model_output(lambda x_, t: eps, x, p, "data"), x0)
    assert model_output(lambda x_, t: eps, x, p, "noise") is eps


def test_first_order_step_is_ddim_in_both_parameterisations():
    """x_t = lin x_s + c phi1 m_s: DDIM, alpha_t x0_hat + sigma_t eps_hat, for either m."""
    sch = SCHEDULES["discrete"]
    s, t = points(sch, torch.tensor([0.8, 0.3], dtype=F64))
    x, eps = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    x0 = (x - s.sigma * eps) / s.alpha
    ddim = t.alpha * x0 + t.sigma * eps
    for predict, m in (("noise", eps), ("data", x0)):
        k = Step.between(s, t, predict)
        assert k.h == t.lam - s.lam > 0 and math.isfinite(k.phi1)
        torch.testing.assert_close(k.lin * x + (k.c * k.phi1) * m, ddim, rtol=1e-12, atol=1e-12)
