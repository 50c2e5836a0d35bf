"""Weights are usable when every value is finite and, optionally, within a bound (training
checks before saving; loading refuses non-finite weights)."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import torch


def first_bad_weight(named: Iterable[Tuple[str, torch.Tensor]], max_abs: float = 0.0) -> Optional[Tuple[str, float]]:
    """(name, largest |value|) of the first floating-point tensor holding a NaN/inf or, when
    ``max_abs > 0``, a value larger than ``max_abs`` in magnitude; None when all are fine.
    One device sync for all tensors."""
    names, peaks = [], []
    for name, t in named:
        if t.is_floating_point() and t.numel():
            names.append(name)
            peaks.append(t.detach().abs().amax().float())  # NaN propagates
    if not peaks:
        return None
    values = torch.stack([p.to(peaks[0].device) for p in peaks]).cpu().tolist()
    for name, v in zip(names, values):
        if not math.isfinite(v) or (max_abs > 0 and v > max_abs):
            return name, v
    return None


def describe_bad_weight(bad: Tuple[str, float], max_abs: float = 0.0) -> str:
    name, value = bad
    if not math.isfinite(value):
        return f"tensor {name!r} holds non-finite values (NaN or inf)"
    return f"tensor {name!r} holds |value| = {value:.3g} > {max_abs:g}"
