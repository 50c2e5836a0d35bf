"""What differs between training setups: the data, the forward-noise process and how a
loaded batch becomes the network's ``(x0, cond)``. The engine (``libs/train_engine.py``)
and the entry scripts only talk to these small objects."""
from __future__ import annotations

from typing import Optional

import torch

from libs.datasets import get_dataset
from sde import ContinuousNoise


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: Optional[torch.Generator]):
    """Classifier-free guidance training: replace each label by the null label with prob. p_uncond."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


class PixelTask:
    """Pixel-space images with optional class labels, continuous-time VP-SDE."""

    def __init__(self, config):
        self.dataset = get_dataset(**config.dataset)
        self.train_dataset = self.dataset.train
        self.noise = ContinuousNoise()
        nnet = config.nnet
        self.num_classes = nnet.get("num_classes", -1)
        self.p_uncond = config.loss.get("p_uncond", 0.0)
        shape = (nnet.in_chans, nnet.img_size, nnet.img_size)
        if tuple(self.dataset.data_shape) != shape:
            raise ValueError(f"dataset {config.dataset.name!r} gives images of shape {tuple(self.dataset.data_shape)} "
                             f"but config.nnet expects (in_chans, img_size, img_size) = {shape}")
        if self.num_classes > 0:
            if not self.dataset.has_labels:
                raise ValueError(f"config.nnet.num_classes={self.num_classes} but dataset {config.dataset.name!r} "
                                 f"is unconditional; set config.nnet.num_classes=-1 (or enable its labels)")
            want = self.dataset.num_classes + (1 if self.p_uncond > 0 else 0)
            if self.num_classes not in (want, self.dataset.num_classes + 1):
                raise ValueError(f"config.nnet.num_classes={self.num_classes} does not fit {self.dataset.num_classes} "
                                 f"dataset classes (use {self.dataset.num_classes + 1}: the extra index is the "
                                 f"null label of classifier-free guidance)")
        elif self.p_uncond > 0:
            raise ValueError("config.loss.p_uncond > 0 needs a class-conditional network (config.nnet.num_classes > 0)")
        if self.p_uncond > 0 and self.num_classes != self.dataset.num_classes + 1:
            raise ValueError(f"config.loss.p_uncond > 0 needs config.nnet.num_classes = dataset classes + 1 "
                             f"= {self.dataset.num_classes + 1} (the null label)")

    @property
    def null_label(self) -> int:
        return self.num_classes - 1

    def make_batch(self, batch, device, generator=None):
        x, y = batch
        x = x.to(device, non_blocking=True)
        if self.num_classes <= 0:
            return x, None
        y = drop_labels(y.to(device, non_blocking=True), self.p_uncond, self.null_label, generator)
        return x, y
