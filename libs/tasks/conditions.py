"""Conditions of sampled images (a class label, a caption) drawn per image index, and the
condition dropout of classifier-free guidance training."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from libs.run.seeds import Stream, mix_seed

CONDITIONS = ("balanced", "random")


def _image_generator(seed: int, i: int) -> torch.Generator:
    """The generator of sampled image i's condition: the same for every threshold and process count."""
    return torch.Generator().manual_seed(mix_seed(seed, Stream.CONDITION, i))


def sample_labels(indices: Sequence[int], num_classes: int, mode: str, seed: int) -> list:
    """Class label of each sampled image: i mod K ('balanced') or uniform in [0, K) ('random')."""
    if mode == "balanced":
        return [i % num_classes for i in indices]
    return [int(torch.randint(num_classes, (), generator=_image_generator(seed, i))) for i in indices]


def sample_captions(indices: Sequence[int], num_captions: Sequence[int], mode: str, seed: int) -> list:
    """(validation image, caption) of each sampled image. 'balanced': caption 0 of val image
    i mod N. 'random': val images in a shuffled order (a fresh permutation for each pass over
    the N images, so images repeat only after all N are used) and a random caption of each."""
    n = len(num_captions)
    if mode == "balanced":
        return [(i % n, 0) for i in indices]
    perms = {}
    out = []
    for i in indices:
        epoch = i // n
        if epoch not in perms:
            g = torch.Generator().manual_seed(mix_seed(seed, Stream.CAPTION_ORDER, epoch))
            perms[epoch] = torch.randperm(n, generator=g)
        j = int(perms[epoch][i % n])
        out.append((j, int(torch.randint(num_captions[j], (), generator=_image_generator(seed, i)))))
    return out


def drop_condition(cond: torch.Tensor, null: torch.Tensor, p_uncond: float,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """Classifier-free guidance training: replace each row's condition (a label, a context) by
    the null condition (the null label, the empty prompt's context) with probability p_uncond.
    One uniform draw per row, (B,), from ``generator``."""
    if p_uncond <= 0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p_uncond
    drop = drop.view((-1,) + (1,) * (cond.ndim - 1))
    return torch.where(drop, null.to(cond.device, cond.dtype), cond)
