"""Text-to-image generation from CLIP contexts, in latent space."""
from __future__ import annotations

from typing import Sequence

import torch

from libs.tasks.conditions import drop_condition, sample_captions
from libs.tasks.latent import LatentDecoder
from libs.tasks.time_modes import setup_sampling


class PromptTask:
    """Text-to-image sampling from given CLIP contexts (one per image index) with the empty
    prompt's context as the unconditional input of classifier-free guidance."""

    def __init__(self, config, contexts: torch.Tensor, empty_context: torch.Tensor, need_decoder: bool = True):
        setup_sampling(self, config)
        self.decoder = LatentDecoder(config)
        if need_decoder:
            self.decoder.check()
        self.contexts, self.empty_context = contexts, empty_context  # (N, 77, D), (77, D)

    def conditions(self, indices: Sequence[int], device):
        return self.contexts[list(indices)].to(device)

    def null_condition(self, batch: int, device):
        return self.empty_context.to(device)[None].expand(batch, -1, -1)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.decoder(z0)


class TextTask(PromptTask):
    """Text-to-image in SD latent space: items are (moments, CLIP context of one caption).
    Classifier-free guidance replaces a context by the empty prompt's with prob. p_uncond.
    Sampled image i uses the first caption of validation image i (mod the val set size), or
    with ``config.sample.conditions='random'`` a random caption of a shuffled validation
    image, as the released evaluation (``sample_captions``)."""

    def __init__(self, config, load_data: bool = True, need_decoder: bool = True):
        from libs.data.registry import get_dataset

        # The features folder holds the empty context and the validation captions, which
        # sampling needs too; training additionally reads train/.
        self.dataset = get_dataset(**config.dataset)
        super().__init__(config, None, self.dataset.empty_context, need_decoder)
        nnet = config.nnet
        self.p_uncond = config.loss.get("p_uncond", 0.0)
        self.scale_factor = config.autoencoder.scale_factor
        if tuple(self.dataset.data_shape) != self.sample_shape:
            raise ValueError(f"dataset {config.dataset.name!r} gives latents of shape {tuple(self.dataset.data_shape)} "
                             f"but config.nnet expects (in_chans, img_size, img_size) = {self.sample_shape}")
        want = (nnet.num_clip_token, nnet.clip_dim)
        if tuple(self.dataset.context_shape) != want:
            raise ValueError(f"dataset contexts have shape {tuple(self.dataset.context_shape)} but config.nnet expects "
                             f"(num_clip_token, clip_dim) = {want}")
        if load_data:
            self.train_dataset = self.dataset.train

    def make_batch(self, batch, device, generator=None):
        from libs.models.autoencoder import sample_latent
        moments, context = batch
        z = sample_latent(moments.to(device, non_blocking=True), self.scale_factor, generator)
        context = context.to(device, non_blocking=True)
        context = drop_condition(context, self.empty_context, self.p_uncond, generator)
        return z, context

    def conditions(self, indices: Sequence[int], device):
        val = self.dataset.val
        pairs = sample_captions(indices, val.num_captions, self.condition_mode, self.seed)
        return torch.stack([val.context(j, k) for j, k in pairs]).to(device)
