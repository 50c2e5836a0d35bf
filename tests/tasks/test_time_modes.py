"""``config.time``: the training noise, sampling schedule and network-time scale of each mode."""
import pytest
import torch

from configs.digits_uvit_tiny import get_config
from libs.diffusion.noise import ContinuousNoise, DiscreteNoise
from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule
from libs.tasks.pixel import PixelTask
from libs.tasks.time_modes import TIMES, diffusion_time


def test_continuous_time_is_the_vp_sde_with_network_time_999t():
    config = get_config()
    config.time = "continuous"
    noise, schedule, scale = diffusion_time(config)
    assert isinstance(noise, ContinuousNoise) and isinstance(schedule, LinearVPSchedule)
    assert scale == 999.0
    t = torch.tensor([0.25, 0.5])
    assert torch.allclose(schedule.marginal_alpha(t) ** 2, torch.exp(-(0.1 * t + 9.95 * t ** 2)))


def test_discrete_time_is_the_sd_chain_with_network_time_n():
    config = get_config()
    config.time = "discrete"
    noise, schedule, scale = diffusion_time(config)
    assert isinstance(noise, DiscreteNoise) and isinstance(schedule, DiscreteVPSchedule)
    assert scale == 1000.0
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(noise.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)


def test_unknown_time_mode_names_the_choices():
    config = get_config()
    config.time = "sometimes"
    with pytest.raises(ValueError, match="config.time='sometimes'.*continuous"):
        diffusion_time(config)
    assert TIMES == ("continuous", "discrete")


def test_a_task_samples_with_the_configs_shape_and_seed():
    config = get_config()
    task = PixelTask(config, load_data=False)
    assert task.sample_shape == (config.nnet.in_chans, config.nnet.img_size, config.nnet.img_size)
    assert task.seed == config.seed and task.condition_mode == "balanced"
