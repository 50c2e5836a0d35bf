"""Frozen Stable Diffusion v1 KL-f8 autoencoder (the latent space of U-ViT's ImageNet and
MS-COCO models), built on diffusers' ``AutoencoderKL``::

    vae = load_autoencoder("assets/stable-diffusion/autoencoder_kl.pth", scale_factor=0.18215)
    moments = vae.encode_moments(x)      # x (B, 3, H, W) in [-1, 1] -> (B, 8, H/8, W/8)
    z = vae.sample(moments)              # scale * (mean + std * noise), (B, 4, H/8, W/8)
    x = vae.decode(z)                    # decoder(post_quant_conv(z / scale)), about [-1, 1]

Weights in CompVis / ldm naming (the released ``autoencoder_kl.pth``, or a full SD checkpoint
with ``first_stage_model.*``) or diffusers naming (a state dict, a model folder or a pipeline
folder with ``vae/``). Loading is strict (``AutoencoderWeightsError`` lists the bad keys); only
``loss.*`` (ldm's LPIPS/discriminator) is dropped on purpose."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from libs.data.paths import REPO_ROOT
from libs.run.checkpoint import mismatch_message, state_dict_diff

log = logging.getLogger(__name__)

DEFAULT_AUTOENCODER_PATH = "assets/stable-diffusion/autoencoder_kl.pth"

__all__ = ["SD_VAE_CONFIG", "DEFAULT_AUTOENCODER_PATH", "AutoencoderNotFoundError", "AutoencoderWeightsError",
           "FrozenAutoencoderKL", "vae_config", "load_autoencoder", "load_autoencoder_weights",
           "read_autoencoder_state_dict", "compvis_to_diffusers", "diffusers_to_compvis", "detect_key_format"]

# Stable Diffusion v1 KL-f8 (ldm ddconfig: ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2,
# z_channels 4, attention only in the mid blocks, embed_dim 4).
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
)

# Keys of a diffusers config.json that do not change the weights (the scale factor is an
# argument of this module); sample_size is kept: it only matters for diffusers' tiling.
_IGNORED_CONFIG_KEYS = {"scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast"}
_REQUIRED_CONFIG = {"use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}


class AutoencoderNotFoundError(FileNotFoundError):
    """The autoencoder weights are not where the config says they are."""


class AutoencoderWeightsError(ValueError):
    """A state dict does not fit the autoencoder (lists the offending keys)."""


# ----------------------------------------------------------------------------
# Configuration.


def vae_config(config: Optional[Mapping] = None, **overrides) -> dict:
    """The SD v1 VAE config with ``config`` / ``overrides`` applied; block type lists follow
    ``block_out_channels``; config.json keys that do not affect the weights are dropped."""
    given = {k: v for k, v in {**dict(config or {}), **overrides}.items() if not k.startswith("_")}
    for key, needed in _REQUIRED_CONFIG.items():
        if key in given and given.pop(key) != needed:
            raise ValueError(f"autoencoder config: {key}={not needed} is not supported (the SD KL-f8 VAE has it {needed})")
    for key in _IGNORED_CONFIG_KEYS & set(given):
        given.pop(key)
    cfg = dict(SD_VAE_CONFIG)
    n = len(given.get("block_out_channels", cfg["block_out_channels"]))
    if "block_out_channels" in given:
        cfg["down_block_types"] = ["DownEncoderBlock2D"] * n
        cfg["up_block_types"] = ["UpDecoderBlock2D"] * n
    unknown = set(given) - set(cfg)
    if unknown:
        raise ValueError(f"autoencoder config: unknown keys {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(given)
    cfg["block_out_channels"] = [int(c) for c in cfg["block_out_channels"]]
    cfg["down_block_types"] = list(cfg["down_block_types"])
    cfg["up_block_types"] = list(cfg["up_block_types"])
    if len(cfg["down_block_types"]) != n or len(cfg["up_block_types"]) != n:
        raise ValueError(f"autoencoder config: {n} block_out_channels but {len(cfg['down_block_types'])} down and "
                         f"{len(cfg['up_block_types'])} up block types")
    if set(cfg["down_block_types"]) != {"DownEncoderBlock2D"} or set(cfg["up_block_types"]) != {"UpDecoderBlock2D"}:
        raise ValueError("autoencoder config: only DownEncoderBlock2D / UpDecoderBlock2D blocks (the KL-f8 VAE) "
                         f"are supported, got {cfg['down_block_types']} / {cfg['up_block_types']}")
    return cfg


# ----------------------------------------------------------------------------
# The module.


@torch.no_grad()
def sample_latent(moments: torch.Tensor, scale_factor: float, generator: Optional[torch.Generator] = None):
    """Posterior sample of stored moments, without the autoencoder (training reads moments):
    z = scale * (mean + exp(0.5 * clamp(logvar, -30, 20)) * noise); (B, 2C, h, w) -> (B, C, h, w)."""
    mean, logvar = torch.chunk(moments, 2, dim=1)  # (B, latent, h, w) each
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scale_factor * (mean + std * noise)


class FrozenAutoencoderKL(nn.Module):
    """KL autoencoder with frozen weights, always in eval mode, every method under no_grad;
    diffusers' submodule names. ``scale_factor`` multiplies latents (0.18215 ImageNet, 0.23010
    MS-COCO)."""

    def __init__(self, config: Optional[Mapping] = None, scale_factor: float = 0.18215):
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = vae_config(config)
        vae = AutoencoderKL(**self.config)
        self.encoder = vae.encoder
        self.decoder = vae.decoder
        self.quant_conv = vae.quant_conv  # (2 latent, 2 latent) 1x1 conv: moments
        self.post_quant_conv = vae.post_quant_conv  # (latent, latent) 1x1 conv
        self.scale_factor = float(scale_factor)
        self.requires_grad_(False)
        self.eval()

    @property
    def latent_channels(self) -> int:
        return self.config["latent_channels"]

    def train(self, mode: bool = True):
        """Stays in eval mode whatever the parent module does."""
        return super().train(False)

    @torch.no_grad()
    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> moments (B, 2 * latent, H/f, W/f): [mean, logvar]."""
        p = self.quant_conv.weight
        return self.quant_conv(self.encoder(x.to(device=p.device, dtype=p.dtype)))

    @torch.no_grad()
    def sample(self, moments: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Moments -> scaled latent z = scale * (mean + exp(0.5 * clamp(logvar, -30, 20)) * noise)."""
        return sample_latent(moments, self.scale_factor, generator)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images in [-1, 1] -> a sampled, scaled latent."""
        return self.sample(self.encode_moments(x), generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, latent, h, w) -> images (B, 3, h*f, w*f), about [-1, 1] (not clamped)."""
        p = self.quant_conv.weight
        z = z.to(device=p.device, dtype=p.dtype) / self.scale_factor
        return self.decoder(self.post_quant_conv(z))

    @torch.no_grad()
    def decode_chunked(self, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """``decode`` over batch chunks of at most ``chunk_size`` (bounded activation memory)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return torch.cat([self.decode(c) for c in torch.split(z, chunk_size, dim=0)], dim=0)

    def extra_repr(self) -> str:
        return (f"block_out_channels={self.config['block_out_channels']}, latent_channels={self.latent_channels}, "
                f"scale_factor={self.scale_factor}")


# ----------------------------------------------------------------------------
# CompVis (ldm) <-> diffusers key names.
#
# ldm Encoder: down[i].block[j], down[i].downsample (not on the last level), mid.block_1,
# mid.attn_1 (norm, q, k, v, proj_out as 1x1 convs), mid.block_2, norm_out, conv_out.
# ldm Decoder: up[i] is indexed by resolution level like the encoder (up[0] = full
# resolution, run last), so diffusers' up_blocks[k] is ldm's up[n - 1 - k]; each level has
# num_res_blocks + 1 resnets and an upsample except level 0. Resnet 1x1 shortcut:
# nin_shortcut (ldm) / conv_shortcut (diffusers).

_ATTN_C2D = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_D2C = {v: k for k, v in _ATTN_C2D.items()}
# Names of older diffusers releases (before the Attention refactor).
_OLD_DIFFUSERS_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_ATTN_WEIGHT = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")

# The one rename table: (CompVis key prefix, diffusers key prefix). A key whose start matches
# one side's prefix gets the other side's prefix; the rest of the key is kept, but for the
# leaf renames of _LEAVES. Both directions are read from this table (``_rename``).
_PREFIXES = (
    ("{part}.mid.block_{mid}.", "{part}.mid_block.resnets.{mid}."),
    ("{part}.mid.attn_1.{attn}.", "{part}.mid_block.attentions.0.{attn}."),
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.", "encoder.down_blocks.{i}.downsamplers.0."),
    ("decoder.up.{up}.block.{j}.", "decoder.up_blocks.{up}.resnets.{j}."),
    ("decoder.up.{up}.upsample.", "decoder.up_blocks.{up}.upsamplers.0."),
    ("{part}.norm_out.", "{part}.conv_norm_out."),
)
_LEAVES = (("nin_shortcut.", "conv_shortcut."),)  # (CompVis, diffusers) start of the rest of a key


# A prefix field's regex on the CompVis and the diffusers side.
_FIELDS = {"part": ("encoder|decoder",) * 2, "i": (r"\d+",) * 2, "j": (r"\d+",) * 2, "up": (r"\d+",) * 2,
           "mid": ("[12]", "[01]"), "attn": tuple("|".join(map(re.escape, t)) for t in (_ATTN_C2D, _ATTN_D2C))}


def _across(name: str, value: str, n_levels: int, src: int) -> str:
    """A field's value on side ``src`` (0 CompVis, 1 diffusers) as the other side spells it."""
    if name == "up":
        return str(n_levels - 1 - int(value))  # decoder levels run the other way: an involution
    if name == "mid":
        return str(int(value) - 1 if src == 0 else int(value) + 1)  # mid.block_1, _2 <-> resnets.0, .1
    if name == "attn":
        return (_ATTN_C2D if src == 0 else _ATTN_D2C)[value]
    return value


def _prefix_regex(template: str, side: int) -> re.Pattern:
    """``template``'s fields as named groups of side 0 (CompVis) or 1 (diffusers), anchored at the start."""
    pieces = re.split(r"\{(\w+)\}", template)  # literal, field, literal, ...
    return re.compile("^" + "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{_FIELDS[p][side]})"
                                    for n, p in enumerate(pieces)))


_PREFIX_REGEXES = tuple((_prefix_regex(c, 0), _prefix_regex(d, 1)) for c, d in _PREFIXES)


def _rename(key: str, n_levels: int, src: int) -> str:
    """``key`` from naming ``src`` (0 CompVis, 1 diffusers) to the other; keys matching no
    prefix stay as they are."""
    dst = 1 - src
    for templates, regexes in zip(_PREFIXES, _PREFIX_REGEXES):
        m = regexes[src].match(key)
        if m:
            values = {name: _across(name, v, n_levels, src) for name, v in m.groupdict().items()}
            rest = key[m.end():]
            for leaf in _LEAVES:
                if rest.startswith(leaf[src]):
                    rest = leaf[dst] + rest[len(leaf[src]):]
            return templates[dst].format(**values) + rest
    return key


def _infer_levels(keys, pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    if not found:
        raise AutoencoderWeightsError(f"cannot infer the number of resolution levels: no key matches {pattern!r}")
    return max(found) + 1


def compvis_to_diffusers(sd: Mapping[str, torch.Tensor], n_levels: Optional[int] = None) -> dict:
    """Rename a CompVis/ldm VAE state dict to diffusers names; attention 1x1 conv weights
    (C, C, 1, 1) become Linear (C, C); unmatched keys are kept (a strict load reports them)."""
    if n_levels is None:
        n_levels = _infer_levels(sd, r"^(?:encoder\.down|decoder\.up)\.(\d+)\.")
    out = {}
    for key, value in sd.items():
        new = _rename(key, n_levels, 0)
        if _ATTN_WEIGHT.search(new) and value.ndim == 4:
            value = value[:, :, 0, 0]  # (C, C, 1, 1) conv -> (C, C) linear
        out[new] = value
    return out


def diffusers_to_compvis(sd: Mapping[str, torch.Tensor], n_levels: Optional[int] = None) -> dict:
    """Inverse of ``compvis_to_diffusers`` (e.g. to write weights in the released format)."""
    if n_levels is None:
        n_levels = _infer_levels(sd, r"^(?:encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.")
    out = {}
    for key, value in sd.items():
        if _ATTN_WEIGHT.search(key) and value.ndim == 2:
            value = value[:, :, None, None]  # (C, C) linear -> (C, C, 1, 1) conv
        out[_rename(key, n_levels, 1)] = value
    return out


def detect_key_format(sd: Mapping[str, torch.Tensor]) -> str:
    """'compvis', 'diffusers' or 'unknown', from the key names."""
    keys = list(sd)
    if any(re.match(r"^(encoder\.down\.|decoder\.up\.|(encoder|decoder)\.mid\.)", k) for k in keys):
        return "compvis"
    if any(re.match(r"^(encoder\.down_blocks\.|decoder\.up_blocks\.|(encoder|decoder)\.mid_block\.)", k) for k in keys):
        return "diffusers"
    return "unknown"


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict:
    """Select the VAE of a full SD checkpoint, strip wrapper prefixes, drop ldm's loss.* keys."""
    sd = dict(sd)
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):  # a whole pipeline checkpoint: keep the VAE part
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    for prefix in ("module.", "_orig_mod."):
        sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    dropped = [k for k in sd if k.startswith("loss.")]
    if dropped:
        log.info("autoencoder weights: ignoring %d training-loss tensors (loss.*)", len(dropped))
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def _to_diffusers_names(sd: Mapping[str, torch.Tensor], n_levels: int) -> tuple[dict, str]:
    sd = _strip_wrappers(sd)
    kind = detect_key_format(sd)
    if kind == "compvis":
        return compvis_to_diffusers(sd, n_levels), kind
    out = {}
    for key, value in sd.items():  # older diffusers attention names
        m = re.match(r"^(.*\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)$", key)
        if m:
            key = f"{m[1]}{_OLD_DIFFUSERS_ATTN[m[2]]}.{m[3]}"
            if value.ndim == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out, kind


# ----------------------------------------------------------------------------
# Reading and loading.


def load_autoencoder_weights(model: FrozenAutoencoderKL, sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> str:
    """Load a CompVis- or diffusers-named state dict into ``model`` strictly; returns the naming
    ('compvis' or 'diffusers')."""
    n_levels = len(model.config["block_out_channels"])
    converted, kind = _to_diffusers_names(sd, n_levels)
    missing, unexpected, mismatched = state_dict_diff(converted, model.state_dict())
    if missing or unexpected or mismatched:
        back = {v: k for k, v in ((k, _rename(k, n_levels, 0)) for k in _strip_wrappers(sd))} if kind == "compvis" else {}
        raise AutoencoderWeightsError(mismatch_message(
            f"autoencoder weights from {source} (key names look like: {kind}) do not fit the autoencoder with "
            f"block_out_channels={model.config['block_out_channels']}, "
            f"layers_per_block={model.config['layers_per_block']}:",
            [f"{k} (CompVis: {_rename(k, n_levels, 1)})" for k in missing], [back.get(k, k) for k in unexpected],
            mismatched, "Expected the Stable Diffusion v1 KL-f8 VAE (assets/stable-diffusion/autoencoder_kl.pth) "
                        "or weights matching the given autoencoder config.", limit=10))
    model.load_state_dict(converted, strict=True)
    return kind


def _resolve(path: Union[str, os.PathLike]) -> Optional[Path]:
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c
    return None


_HOWTO = """\
The released weights: download the 'stable-diffusion' folder linked from the U-ViT README
(github.com/baofff/U-ViT, section 'Preparation Before Training and Evaluation') and put it at
assets/stable-diffusion/ (files autoencoder_kl.pth, autoencoder_kl_ema.pth).
Or use the same SD v1 VAE in diffusers format (run this yourself; this project never downloads):
  hf download CompVis/stable-diffusion-v1-4 --include "vae/*" --local-dir assets/sd-v1-4
and pass the folder assets/sd-v1-4/vae as the autoencoder path."""


def _diffusers_folder_files(folder: Path) -> tuple[Path, Optional[Path]]:
    if (folder / "vae" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "vae"
    config = folder / "config.json"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return config, folder / name
    return config, None


def read_autoencoder_state_dict(path: Union[str, os.PathLike]) -> tuple[dict, Optional[dict]]:
    """(state dict, the folder's config.json dict or None) from a .pth/.pt/.ckpt/.bin/.safetensors
    file or a diffusers folder."""
    resolved = _resolve(path)
    if resolved is None:
        raise AutoencoderNotFoundError(f"autoencoder weights not found: {path} (looked relative to the working "
                                       f"directory and to {REPO_ROOT}).\n{_HOWTO}")
    config = None
    if resolved.is_dir():
        config_file, weights = _diffusers_folder_files(resolved)
        if weights is None:
            raise AutoencoderNotFoundError(
                f"{resolved} is a folder but holds no diffusers VAE weights: expected config.json and "
                f"diffusion_pytorch_model.safetensors (or .bin), or a vae/ subfolder with them.\n{_HOWTO}")
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        resolved = weights
    if resolved.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(resolved), device="cpu"), config
    try:
        sd = torch.load(resolved, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AutoencoderWeightsError(f"cannot read {resolved} as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]  # ldm / Lightning training checkpoint
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AutoencoderWeightsError(f"{resolved} is not a state dict of tensors (got {type(sd).__name__})")
    return dict(sd), config


def load_autoencoder(path: Union[str, os.PathLike] = DEFAULT_AUTOENCODER_PATH, scale_factor: float = 0.18215,
                     device: Union[str, torch.device] = "cpu",
                     config: Union[None, Mapping, str, os.PathLike] = None) -> FrozenAutoencoderKL:
    """Build the frozen autoencoder and load ``path`` strictly. ``config``: None (SD v1, or a
    diffusers folder's config.json), a dict, or a JSON file path."""
    sd, folder_config = read_autoencoder_state_dict(path)
    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text())
    model = FrozenAutoencoderKL(config if config is not None else folder_config, scale_factor=scale_factor)
    kind = load_autoencoder_weights(model, sd, source=str(path))
    log.info("loaded autoencoder weights (%s names) from %s", kind, path)
    return model.to(device)
