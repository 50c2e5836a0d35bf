"""The data-free training set: the frozen model's own samples, made once by a cheap sampler and
cached. ``config.distill``: n_images (image i gets label i mod K), algorithm, steps, scale,
mini_batch_size, feature_file ('' = <workdir>/self_samples.safetensors). The file keeps
``x0`` (N, C, H, W) float32, ``y`` (N,) and what made it; a file made otherwise is remade."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from libs.diffusers_exit.adapter import attach_exits
from libs.evaluation.sampling import generate, index_batches
from libs.exits.policy import FULL
from libs.exits.recorder import ExitRecorder
from libs.run.atomic import atomic_write


def default_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``, as launchers set it) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _recipe(task, config) -> dict:
    dc = config.distill
    net_cfg = task.transformer.config
    return dict(model=type(task.transformer).__name__, layers=str(net_cfg.num_layers),
                width=str(task.transformer.inner_dim), pretrained=str(config.nnet.get("pretrained", "")),
                n_images=str(int(dc.n_images)), algorithm=str(dc.get("algorithm", "dpm_solver")),
                steps=str(int(dc.steps)), scale=str(float(dc.get("scale", 0.0))), seed=str(int(config.seed)))


class SelfSamples(Dataset):
    """(x0, label) items of the model's own samples (labels -1 for an unconditional model)."""

    def __init__(self, x0: torch.Tensor, y: torch.Tensor):
        self.x0, self.y = x0, y

    def __len__(self):
        return self.x0.shape[0]

    def __getitem__(self, i):
        return self.x0[i], self.y[i]

    @classmethod
    def load_or_make(cls, task, config) -> "SelfSamples":
        from safetensors import safe_open
        from safetensors.torch import save

        path = Path(config.distill.get("feature_file") or Path(config.workdir) / "self_samples.safetensors")
        recipe = _recipe(task, config)
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}) == recipe:
                    return cls(f.get_tensor("x0"), f.get_tensor("y"))
        x0, y = make_samples(task, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save({"x0": x0.contiguous(), "y": y.contiguous()}, metadata=recipe)
        atomic_write(path, lambda f: f.write(data))  # every process writes the same numbers
        return cls(x0, y)


@torch.no_grad()
def make_samples(task, config):
    """(x0 (N, C, H, W) float32, labels (N,)) sampled from the frozen model at full depth, on
    the model's device, with the evaluation's per-image noise and conditions."""
    import ml_collections

    dc = config.distill
    device = default_device()
    task.transformer.to(device)  # the engine moves it there too
    net = attach_exits(task.transformer, time_shift=config.nnet.get("time_shift", 0.0)).eval()
    steps = int(dc.steps)
    sample_cfg = ml_collections.ConfigDict(dict(algorithm=dc.get("algorithm", "dpm_solver"), sample_steps=steps,
                                                scale=float(dc.get("scale", 0.0))))
    n, bs = int(dc.n_images), int(dc.get("mini_batch_size", 250))
    xs, ys = [], []
    recorder = ExitRecorder(net.num_blocks, device)
    for b, idx in enumerate(index_batches(n, bs)):
        xs.append(generate(net, task, sample_cfg, idx, FULL, recorder, config.seed, b, device, decode=False,
                           steps=steps).float().cpu())
        y = task.labels(idx, device)  # the labels (PixArt: prompt rows) the evaluation gives these images
        ys.append(y.cpu() if y is not None else torch.full((len(idx),), -1))
    return torch.cat(xs), torch.cat(ys)
