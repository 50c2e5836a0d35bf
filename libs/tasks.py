"""What differs between setups (pixel / latent / text-to-image, continuous / discrete time):
the training data, the forward-noise process, how a loaded batch becomes the network's
``(x0, cond)``, and for sampling the shape of x_T, the conditioning of image i, the
schedule with its network-time scale, and the decoding of x_0 to images in [0, 1]. The
training and evaluation engines only talk to these small objects."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from libs.flops import uvit_flops
from libs.model_fn import CONTINUOUS_TIME_SCALE
from libs.schedules import LinearVPSchedule
from sde import ContinuousNoise


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: Optional[torch.Generator]):
    """Classifier-free guidance training: replace each label by the null label with prob. p_uncond."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


class PixelTask:
    """Pixel-space images with optional class labels, continuous-time VP-SDE.

    Class labels: with ``config.loss.p_uncond > 0`` the network has K + 1 label embeddings and
    index K is the null label of classifier-free guidance; otherwise K = num_classes. Sampled
    image i gets label i mod K (balanced classes).
    """

    def __init__(self, config, load_data: bool = True):
        nnet = config.nnet
        self.num_classes = nnet.get("num_classes", -1)
        self.p_uncond = config.loss.get("p_uncond", 0.0)
        self.sample_shape = (nnet.in_chans, nnet.img_size, nnet.img_size)
        self.noise = ContinuousNoise()
        self.schedule = LinearVPSchedule()
        self.time_scale = CONTINUOUS_TIME_SCALE
        self.flops = uvit_flops(nnet)
        if self.p_uncond > 0 and self.num_classes <= 1:
            raise ValueError("config.loss.p_uncond > 0 needs a class-conditional network (config.nnet.num_classes > 0)")
        self.real_classes = self.num_classes - 1 if self.p_uncond > 0 else self.num_classes
        if load_data:
            from libs.datasets import get_dataset
            self.dataset = get_dataset(**config.dataset)
            self.train_dataset = self.dataset.train
            self._check_dataset(config)

    def _check_dataset(self, config):
        ds = self.dataset
        if tuple(ds.data_shape) != self.sample_shape:
            raise ValueError(f"dataset {config.dataset.name!r} gives images of shape {tuple(ds.data_shape)} "
                             f"but config.nnet expects (in_chans, img_size, img_size) = {self.sample_shape}")
        if self.num_classes > 0 and not ds.has_labels:
            raise ValueError(f"config.nnet.num_classes={self.num_classes} but dataset {config.dataset.name!r} "
                             f"is unconditional; set config.nnet.num_classes=-1 (or enable its labels)")
        if self.num_classes > 0 and self.real_classes != ds.num_classes:
            raise ValueError(f"config.nnet.num_classes={self.num_classes} does not fit the dataset's "
                             f"{ds.num_classes} classes: use {ds.num_classes + 1} with config.loss.p_uncond > 0 "
                             f"(the extra index is the null label of classifier-free guidance) or "
                             f"{ds.num_classes} without")

    # ------------------------------------------------------------------ training
    def make_batch(self, batch, device, generator=None):
        x, y = batch
        x = x.to(device, non_blocking=True)
        if self.num_classes <= 0:
            return x, None
        y = drop_labels(y.to(device, non_blocking=True), self.p_uncond, self.num_classes - 1, generator)
        return x, y

    # ------------------------------------------------------------------ sampling
    def conditions(self, indices: Sequence[int], device):
        if self.num_classes <= 0:
            return None
        return torch.tensor([i % self.real_classes for i in indices], device=device)

    def null_condition(self, batch: int, device):
        if self.p_uncond <= 0:
            raise ValueError("classifier-free guidance (config.sample.scale > 0) needs a network trained with "
                             "label dropout (config.loss.p_uncond > 0) and its null label")
        return torch.full((batch,), self.num_classes - 1, device=device)

    @staticmethod
    def decode(x0: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1]."""
        return ((x0.float() + 1) / 2).clamp(0, 1)
