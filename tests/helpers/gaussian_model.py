"""The analytic model the sampler tests share: data x_0 ~ N(MU, diag(S^2)) in two dimensions,
so x_t ~ N(alpha_t MU, alpha_t^2 S^2 + sigma_t^2) and the exact noise prediction is
E[eps | x_t] = sigma_t (x_t - alpha_t MU) / (alpha_t^2 S^2 + sigma_t^2); and a model-call
recorder."""
import torch

from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
S = torch.tensor([0.5, 2.0], dtype=F64)
SCHEDULES = {"continuous": LinearVPSchedule(), "discrete": DiscreteVPSchedule.stable_diffusion()}


def gaussian_eps_fn(schedule):
    """Exact eps prediction for N(MU, diag(S^2)); samplers pass equal times to all rows."""

    def model_fn(x, t):
        t = t[:1].to(F64)
        a, sg = schedule.marginal_alpha(t), schedule.marginal_std(t)
        return sg * (x - a * MU) / (a**2 * S**2 + sg**2)

    return model_fn


class CallLog:
    """Wraps a model_fn and records the time of every call (one time per call: all rows equal)."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype in (torch.float32, F64)
        assert torch.all(t == t[0])
        self.times.append(t[0].item())
        return self.fn(x, t)
