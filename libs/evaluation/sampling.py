"""Sampling one batch of an evaluation set: per-image initial noise, the sampler's own
randomness per batch, and ``generate`` (network -> sampling run of an exit policy ->
guidance -> sampler -> images). Every policy and step count of a sweep sees the same noise
and conditions for an image index, whatever the batch or process."""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import torch

from libs.diffusion.registry import make_sampler
from libs.diffusion.wrappers import cfg_model_fn
from libs.exits.recorder import ExitRecorder
from libs.exits.sampling_run import SamplingRun
from libs.run.seeds import Stream, mix_seed


def index_batches(n: int, batch_size: int) -> List[List[int]]:
    """Image indices 0..n-1 in batches of ``batch_size`` (the last may be shorter)."""
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


def initial_noise(task, indices: Sequence[int], seed: int, device) -> torch.Tensor:
    """x_T of the given image indices: one seed per image, whatever the batch or process."""
    return torch.stack([torch.randn(task.sample_shape, generator=torch.Generator().manual_seed(
        mix_seed(seed, Stream.X_T, i))) for i in indices]).to(device)


def sampler_generator(seed: int, batch_seed: int, device) -> torch.Generator:
    """The sampler's own randomness (SDE noise) for one batch."""
    return torch.Generator(device=device).manual_seed(mix_seed(seed, Stream.SAMPLER, batch_seed))


def sample_batch(net_fn, task, sample_cfg, indices: Sequence[int], seed: int, batch_seed: int, device,
                 decode: bool = True, steps: Optional[int] = None) -> torch.Tensor:
    """One batch of images in [0, 1] (or x_0 with ``decode=False``) for the given image indices,
    from ``net_fn(x, t, cond) -> eps`` on schedule time, with guidance and ``steps`` sampler steps
    (default: the largest of ``sample_cfg.sample_steps``). Runs under ``torch.inference_mode``:
    clone the result before using it in autograd."""
    with torch.inference_mode():
        x_T = initial_noise(task, indices, seed, device)
        cond = task.conditions(indices, device)
        scale = float(sample_cfg.get("scale", 0.0) or 0.0)
        if scale > 0:
            model_fn = cfg_model_fn(net_fn, cond, task.null_condition(len(indices), device), scale)
        else:  # model_fn(x, t) = net_fn(x, t, cond=cond), with no frame between the sampler and the net
            model_fn = functools.partial(net_fn, cond=cond)
        sample = make_sampler(sample_cfg, task.schedule, steps, sampler_generator(seed, batch_seed, device))
        x0 = sample(model_fn, x_T)
        return task.decode(x0) if decode else x0


@torch.inference_mode()
def generate(net, task, sample_cfg, indices: Sequence[int], exit_policy, recorder: ExitRecorder,
             seed: int, batch_seed: int, device, decode: bool = True, steps: Optional[int] = None) -> torch.Tensor:
    """``sample_batch`` of the network under one exit policy, counted by ``recorder``."""
    recorder.start_run()
    run = SamplingRun(net, exit_policy, recorder, task.time_scale)
    return sample_batch(run, task, sample_cfg, indices, seed, batch_seed, device, decode, steps)
