"""Training objectives as pure functions of tensors (no model, no schedule).

Notation (as in the AdaDiff paper, arXiv 2309.17074): eps = true noise (B, C, H, W); preds[i] = eps_i, the shared
output head on block i (N = depth + 1 blocks, preds[-1] = eps_hat); certainties[i] = c_i,
the certainty map of block i in (0, 1); mos(a) = mean of a^2 over all non-batch dims.

Released AdaDiff objective (default), per sample, then mean over the batch:

    L = mos(eps - eps_hat)                                                  (denoising)
      + uem_coef   * (1/N) sum_i mos(c_i - sg(1 - tanh|eps_i - eps|))       (UEM regression)
      + layer_coef * sum_i w_i mos(eps - eps_i)                             (layer-wise)
    w_i = m_i / sum_j m_j,  m_i = mean of c_i over batch and pixels (not detached)

Self-distillation (``distill_loss``, no data set): the same objective with the frozen
full-depth model's output as the target in place of eps, every term divided by the target's
per-sample scale s = rms(target) (so the certainty target 1 - tanh(|eps_i - target| / s) is the
normalised error of exit i, whatever the model's output scale).

The paper's variant (``layer_weight='per_sample'``) weights each sample's layer-wise term
by its own certainty (1 - u_i) = mean of c_i over that sample's pixels, unnormalised.
"""
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
    """AdaDiff objective; returns per-sample terms (B,): 'loss' (their sum) and each term.

    eps (B, C, H, W); preds and certainties (N, B, C, H, W).
    """
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
