"""Contracts of libs/diffusion/wrappers.py: the sampler-side time tensor, classifier-free
guidance in one batched call, and the network-time conversions composed with a sampler."""
import math

import pytest
import torch

from libs.diffusion.euler_maruyama import euler_maruyama_ode
from libs.diffusion.wrappers import (CONTINUOUS_TIME_SCALE, DISCRETE_TIME_SCALE, batch_time, cfg_model_fn,
                                     conditional_model_fn, with_time_scale)
from tests.helpers.gaussian_model import F64, SCHEDULES


def test_batch_time_dtype_shape_and_device():
    for x_dtype, t_dtype in ((torch.float32, torch.float32), (torch.float16, torch.float32),
                             (torch.bfloat16, torch.float32), (F64, F64)):
        t = batch_time(0.25, torch.zeros(3, 2, 4, dtype=x_dtype))
        assert t.shape == (3,) and t.dtype == t_dtype and torch.all(t == 0.25)
    assert batch_time(1.0, torch.zeros(1, 2)).device == torch.zeros(1).device


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
