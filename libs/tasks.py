"""What differs between setups (pixel / latent / text-to-image, continuous / discrete time):
the training data, the forward-noise process, how a loaded batch becomes the network's
``(x0, cond)``, and for sampling the shape of x_T, the conditioning of image i, the
schedule with its network-time scale, and the decoding of x_0 to images in [0, 1]. The
training and evaluation engines only talk to these small objects."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from libs.data.value_range import unpreprocess
from libs.data_order import mix_seed
from libs.model_fn import CONTINUOUS_TIME_SCALE, DISCRETE_TIME_SCALE
from libs.schedules import DiscreteVPSchedule, LinearVPSchedule
from sde import ContinuousNoise, DiscreteNoise

TIMES = ("continuous", "discrete")
CONDITIONS = ("balanced", "random")
# Seed streams of the 'random' conditions (x_T, the sampler and calibration use 11, 12 and 15: libs/eval_engine.py).
_RNG_CONDITION, _RNG_CAPTION_ORDER = 13, 14


def diffusion_time(config):
    """(training noise, sampling schedule, network-time scale) for ``config.time``."""
    time = config.get("time", "continuous")
    if time == "continuous":  # VP-SDE, t ~ U(0, 1), network time 999 t
        return ContinuousNoise(), LinearVPSchedule(), CONTINUOUS_TIME_SCALE
    if time == "discrete":  # SD betas, n ~ U{1..1000}, network time n (= 1000 t on the knots)
        schedule = DiscreteVPSchedule.stable_diffusion()
        return DiscreteNoise(schedule), schedule, DISCRETE_TIME_SCALE
    raise ValueError(f"config.time={time!r}: choose one of {TIMES}")


def _setup_sampling(task, config) -> None:
    """What every task needs to sample: x_T shape, noise process, schedule, time scale."""
    nnet = config.nnet
    task.sample_shape = (nnet.in_chans, nnet.img_size, nnet.img_size)
    task.noise, task.schedule, task.time_scale = diffusion_time(config)
    task.condition_mode = config.sample.get("conditions", "balanced")
    if task.condition_mode not in CONDITIONS:
        raise ValueError(f"config.sample.conditions={task.condition_mode!r}: choose one of {CONDITIONS} "
                         f"('balanced': label i mod K / caption 0 of val image i; 'random': as released)")
    task.seed = int(config.seed)


def _image_generator(seed: int, i: int) -> torch.Generator:
    """The generator of sampled image i's condition: the same for every threshold and process count."""
    return torch.Generator().manual_seed(mix_seed(seed, _RNG_CONDITION, i))


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
            g = torch.Generator().manual_seed(mix_seed(seed, _RNG_CAPTION_ORDER, epoch))
            perms[epoch] = torch.randperm(n, generator=g)
        j = int(perms[epoch][i % n])
        out.append((j, int(torch.randint(num_captions[j], (), generator=_image_generator(seed, i)))))
    return out


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: Optional[torch.Generator]):
    """Classifier-free guidance training: replace each label by the null label with prob. p_uncond."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


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
        _setup_sampling(self, config)
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
        y = drop_labels(y.to(device, non_blocking=True), self.p_uncond, self.num_classes - 1, generator)
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
            from libs.autoencoder import AutoencoderNotFoundError
            raise AutoencoderNotFoundError(
                f"autoencoder weights not found at {self.path} (config.autoencoder.pretrained_path); sampling "
                f"decodes latents with the Stable Diffusion v1 KL-f8 VAE: put the released "
                f"{Path(self.path).name} there (see README, 'Data and assets')")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]."""
        if self._model is None:
            from libs.autoencoder import load_autoencoder
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
        from libs.autoencoder import sample_latent
        moments, y = batch
        z = sample_latent(moments.to(device, non_blocking=True), self.scale_factor, generator)
        return super().make_batch((z, y), device, generator)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return self.decoder(z0)


class PromptTask:
    """Text-to-image sampling from given CLIP contexts (one per image index) with the empty
    prompt's context as the unconditional input of classifier-free guidance."""

    def __init__(self, config, contexts: torch.Tensor, empty_context: torch.Tensor, need_decoder: bool = True):
        _setup_sampling(self, config)
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
        from libs.autoencoder import sample_latent
        moments, context = batch
        z = sample_latent(moments.to(device, non_blocking=True), self.scale_factor, generator)
        context = context.to(device, non_blocking=True)
        if self.p_uncond > 0:
            drop = torch.rand(context.shape[0], device=device, generator=generator) < self.p_uncond
            context = torch.where(drop[:, None, None], self.empty_context.to(device, context.dtype), context)
        return z, context

    def conditions(self, indices: Sequence[int], device):
        val = self.dataset.val
        pairs = sample_captions(indices, val.num_captions, self.condition_mode, self.seed)
        return torch.stack([val.context(j, k) for j, k in pairs]).to(device)
