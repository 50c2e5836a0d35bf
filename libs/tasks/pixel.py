"""Pixel-space generation with optional class labels."""
from __future__ import annotations

from typing import Sequence

import torch

from libs.data.value_range import unpreprocess
from libs.tasks.conditions import drop_condition, sample_labels
from libs.tasks.time_modes import setup_sampling


class PixelTask:
    """Pixel-space images with optional class labels (continuous or discrete time).

    Class labels: with ``config.loss.p_uncond > 0`` the network has K + 1 label embeddings and
    index K is the null label of classifier-free guidance; otherwise K = num_classes. Sampled
    image i gets label i mod K (``config.sample.conditions='balanced'``, the default) or a
    uniformly random label drawn from its own seed (``'random'``, as the released evaluation).
    """

    def __init__(self, config, load_data: bool = True):
        nnet = config.nnet
        self.num_classes = nnet.get("num_classes", -1)
        self.p_uncond = config.loss.get("p_uncond", 0.0)
        setup_sampling(self, config)
        if self.p_uncond > 0 and self.num_classes <= 1:
            raise ValueError("config.loss.p_uncond > 0 needs a class-conditional network (config.nnet.num_classes > 0)")
        self.real_classes = self.num_classes - 1 if self.p_uncond > 0 else self.num_classes
        if load_data:
            from libs.data.registry import get_dataset
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
        y = y.to(device, non_blocking=True)
        y = drop_condition(y, torch.tensor(self.num_classes - 1), self.p_uncond, generator)
        return x, y

    # ------------------------------------------------------------------ sampling
    def conditions(self, indices: Sequence[int], device):
        if self.num_classes <= 0:
            return None
        return torch.tensor(sample_labels(indices, self.real_classes, self.condition_mode, self.seed), device=device)

    def null_condition(self, batch: int, device):
        if self.p_uncond <= 0:
            raise ValueError("classifier-free guidance (config.sample.scale > 0) needs a network trained with "
                             "label dropout (config.loss.p_uncond > 0) and its null label")
        return torch.full((batch,), self.num_classes - 1, device=device)

    @staticmethod
    def decode(x0: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1]."""
        return unpreprocess(x0.float())


