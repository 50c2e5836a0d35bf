"""The time convention of a config (``config.time``): the training noise, the sampling
schedule and the network-time scale, and the sampling setup every task shares."""
from __future__ import annotations

from libs.diffusion.noise import ContinuousNoise, DiscreteNoise
from libs.diffusion.schedules import DiscreteVPSchedule, LinearVPSchedule
from libs.diffusion.wrappers import CONTINUOUS_TIME_SCALE, DISCRETE_TIME_SCALE
from libs.tasks.conditions import CONDITIONS

TIMES = ("continuous", "discrete")
DISCRETE_BETAS = ("scaled_linear", "linear")  # config.discrete_betas: Stable Diffusion's | DDPM's / DiT's


def diffusion_time(config):
    """(training noise, sampling schedule, network-time scale) for ``config.time``."""
    time = config.get("time", "continuous")
    if time == "continuous":  # VP-SDE, t ~ U(0, 1), network time 999 t
        return ContinuousNoise(), LinearVPSchedule(), CONTINUOUS_TIME_SCALE
    if time == "discrete":  # SD betas, n ~ U{1..1000}, network time n (= 1000 t on the knots)
        schedule = _discrete_schedule(config.get("discrete_betas", "scaled_linear"))
        return DiscreteNoise(schedule), schedule, DISCRETE_TIME_SCALE
    raise ValueError(f"config.time={time!r}: choose one of {TIMES}")


def _discrete_schedule(betas: str) -> DiscreteVPSchedule:
    if betas == "scaled_linear":
        return DiscreteVPSchedule.stable_diffusion()
    if betas == "linear":
        return DiscreteVPSchedule.linear()
    raise ValueError(f"config.discrete_betas={betas!r}: choose one of {DISCRETE_BETAS}")


def setup_sampling(task, config) -> None:
    """What every task needs to sample: x_T shape, noise process, schedule, time scale."""
    nnet = config.nnet
    task.sample_shape = (nnet.in_chans, nnet.img_size, nnet.img_size)
    task.noise, task.schedule, task.time_scale = diffusion_time(config)
    task.condition_mode = config.sample.get("conditions", "balanced")
    if task.condition_mode not in CONDITIONS:
        raise ValueError(f"config.sample.conditions={task.condition_mode!r}: choose one of {CONDITIONS} "
                         f"('balanced': label i mod K / caption 0 of val image i; 'random': as released)")
    task.seed = int(config.seed)


