"""Training objectives as pure functions of tensors (AdaDiff paper, arXiv 2309.17074).

eps: true noise (B, C, H, W); preds[i] = eps_i, the shared head on block i (N blocks,
preds[-1] = eps_hat); certainties[i] = c_i in (0, 1); mos(a) = mean of a^2 over non-batch dims.
Released objective, per sample, then mean over the batch:

    L = mos(eps - eps_hat)                                                  (denoising)
      + uem_coef   * (1/N) sum_i mos(c_i - sg(1 - tanh|eps_i - eps|))       (UEM regression)
      + layer_coef * sum_i w_i mos(eps - eps_i)                             (layer-wise)
    w_i = m_i / sum_j m_j,  m_i = mean of c_i over batch and pixels (not detached)

``distill_loss``: the frozen full-depth output replaces eps and every term is divided by its
per-sample rms s (certainty target 1 - tanh(|eps_i - target| / s)). ``layer_weight='per_sample'``
(the paper's variant) weights each sample's layer-wise term by its own mean certainty."""
from __future__ import annotations

from typing import Dict

import torch

LAYER_WEIGHTS = ("batch_normalized", "per_sample")


def mos(a: torch.Tensor) -> torch.Tensor:
    """Mean of squares over all non-batch dims: (B, ...) -> (B,)."""
    return a.square().flatten(1).mean(dim=1)


def uvit_loss(eps: torch.Tensor, eps_hat: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Plain U-ViT noise-prediction loss; per-sample terms (B,)."""
    denoise = mos(eps - eps_hat)
    return {"loss": denoise, "denoise": denoise}


def uem_targets(preds: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Regression target of the certainty maps, 1 - tanh|eps_i - eps|, without gradient.
    (N, B, C, H, W), (B, C, H, W) -> (N, B, C, H, W)."""
    return (1.0 - torch.tanh((preds - eps[None]).abs())).detach()


def adadiff_loss(eps: torch.Tensor, preds: torch.Tensor, certainties: torch.Tensor, *,
                 uem_coef: float = 1.0, layer_coef: float = 1.0,
                 layer_weight: str = "batch_normalized") -> Dict[str, torch.Tensor]:
    """AdaDiff objective; eps (B, C, H, W), preds and certainties (N, B, C, H, W) -> per-sample
    terms (B,): 'loss' (their sum) and each term."""
    if layer_weight not in LAYER_WEIGHTS:
        raise ValueError(f"layer_weight must be one of {LAYER_WEIGHTS}, got {layer_weight!r}")
    if preds.shape != certainties.shape or preds.shape[1:] != eps.shape:
        raise ValueError(f"shape mismatch: eps {tuple(eps.shape)}, preds {tuple(preds.shape)}, "
                         f"certainties {tuple(certainties.shape)}")
    denoise = mos(eps - preds[-1])
    per_layer_err = torch.stack([mos(eps - p) for p in preds])  # (N, B)
    uem = torch.stack([mos(c - t) for c, t in zip(certainties, uem_targets(preds, eps))]).mean(dim=0)  # (1/N) sum
    if layer_weight == "batch_normalized":
        m = certainties.flatten(1).mean(dim=1)  # (N,) mean over batch and pixels, not detached
        w = (m / m.sum())[:, None]  # (N, 1)
    else:
        w = certainties.flatten(2).mean(dim=2)  # (N, B): per-sample (1 - u_i)
    layer = (w * per_layer_err).sum(dim=0)  # (B,)
    loss = denoise + uem_coef * uem + layer_coef * layer
    return {"loss": loss, "denoise": denoise, "uem": uem, "layerwise": layer}


def distill_loss(target: torch.Tensor, preds: torch.Tensor, certainties: torch.Tensor,
                 **kwargs) -> Dict[str, torch.Tensor]:
    """Self-distillation (module docstring): ``adadiff_loss`` against the frozen model's output
    ``target`` (B, C, H, W), all terms in units of its per-sample rms."""
    s = target.square().flatten(1).mean(dim=1).sqrt().clamp_min(1e-8)  # (B,), no gradient (target is frozen)
    s = s.view(-1, *([1] * (target.ndim - 1)))
    return adadiff_loss(target / s, preds / s[None], certainties, **kwargs)
