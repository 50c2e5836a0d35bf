"""Generation in the latent space of the Stable Diffusion autoencoder: stored posterior
moments for training, the frozen decoder for sampling."""
from __future__ import annotations

import torch

from libs.data.value_range import unpreprocess
from libs.tasks.pixel import PixelTask


class LatentDecoder:
    """Decodes latents with the frozen SD autoencoder, loaded on first use (training reads
    stored moments and never needs it; sampling does)."""

    def __init__(self, config):
        ac = config.autoencoder
        self.path, self.scale_factor = ac.pretrained_path, ac.scale_factor
        self.arch = ac.get("config") or None  # optional JSON/dict of a non-SD architecture
        self.chunk = int(config.sample.get("decode_chunk", 0) or 0)
        self._model = None

    def check(self):
        """Fail early (before training or sampling) when the weights are missing."""
        from pathlib import Path
        if not Path(self.path).exists():
            from libs.models.autoencoder import AutoencoderNotFoundError
            raise AutoencoderNotFoundError(
                f"autoencoder weights not found at {self.path} (config.autoencoder.pretrained_path); sampling "
                f"decodes latents with the Stable Diffusion v1 KL-f8 VAE: put the released "
                f"{Path(self.path).name} there (see docs/training.md, 'Data, weights and statistics')")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]."""
        if self._model is None:
            from libs.models.autoencoder import load_autoencoder
            self._model = load_autoencoder(self.path, self.scale_factor, device=z.device, config=self.arch)
        x = self._model.decode_chunked(z, self.chunk) if self.chunk > 0 else self._model.decode(z)
        return unpreprocess(x.float())


class LatentTask(PixelTask):
    """Class-conditional (or unconditional) generation in SD latent space: items are stored
    posterior moments (8, h, w) and labels; x0 is a posterior sample scaled by
    ``config.autoencoder.scale_factor``; samples are decoded by the autoencoder."""

    def __init__(self, config, load_data: bool = True, need_decoder: bool = True):
        super().__init__(config, load_data=load_data)
        self.decoder = LatentDecoder(config)
        self.scale_factor = config.autoencoder.scale_factor
        if need_decoder:
            self.decoder.check()

    def make_batch(self, batch, device, generator=None):
        from libs.models.autoencoder import sample_latent
        moments, y = batch
        z = sample_latent(moments.to(device, non_blocking=True), self.scale_factor, generator)
        return super().make_batch((z, y), device, generator)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.decoder(z0)


