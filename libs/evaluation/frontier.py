"""The compute-quality frontier of a sweep, and the compute budget that picks from it.

* ``pareto_flags``: on the frontier when no other row beats it (GFLOPs/img <= and FID <=, one
  strictly); rows without an FID are never on it and beat nobody.
* ``--compute_budget=R`` (a fraction of the reference run's GFLOPs/img, full depth at the
  largest step count): among candidates costing at most R x the reference on the calibration
  images, the smallest quality proxy (``choose_under_budget``).
* The proxy (``proxy_distance``) is the mean squared distance per pixel between a candidate's
  decoded images (clipped to [0, 1]) and the reference run's from the same noise: every
  candidate approximates the reference's ODE solution map, so the distance measures its
  integration and exit error without Inception. Images, not raw x_0: an exited block's x_0
  can leave the data range, where decoding clips it, and the raw distance then ranks rows by
  error nobody sees. A ranking proxy, not FID (``benchmarks/bench_proxy.py`` measures its
  Spearman with FID)."""
from __future__ import annotations

import math
from numbers import Real
from typing import List, Optional, Sequence


class BudgetError(ValueError):
    """A compute budget outside (0, 1], or one no candidate meets."""


def parse_compute_budget(value) -> Optional[float]:
    """None (no budget: a plain sweep) for None / '' / 0-free absence; else a float in (0, 1]."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    fix = "give --compute_budget=R with R in (0, 1], the fraction of the reference run's GFLOPs/img, e.g. 0.3"
    try:
        r = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise BudgetError(f"compute budget {value!r} is not a number: {fix}") from None
    if not (math.isfinite(r) and 0 < r <= 1):
        raise BudgetError(f"compute budget {value!r} is outside (0, 1]: {fix}")
    return r


def _finite(x) -> bool:
    return isinstance(x, Real) and math.isfinite(x)


def pareto_flags(gflops: Sequence[float], fid: Sequence[Optional[float]]) -> List[bool]:
    """True exactly for the rows no other row beats (module docstring)."""
    pts = [(g, f) if _finite(g) and _finite(f) else None for g, f in zip(gflops, fid)]

    def beats(a, b):
        return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])

    return [p is not None and not any(q is not None and beats(q, p) for q in pts) for p in pts]


def choose_under_budget(candidates: Sequence[dict], budget: float) -> int:
    """The index of the candidate with the smallest ``proxy`` among those with ``compute_ratio``
    <= budget (ties: the cheaper, then the earlier). Raises ``BudgetError`` if none qualifies."""
    eligible = [i for i, c in enumerate(candidates) if c["compute_ratio"] <= budget + 1e-12]
    if not eligible:
        cheapest = min(candidates, key=lambda c: c["compute_ratio"])
        raise BudgetError(f"no candidate of the sweep fits --compute_budget={budget:g}: the cheapest, "
                          f"{cheapest['policy']} at {cheapest['sample_steps']} steps, needs "
                          f"{cheapest['compute_ratio']:.3f} of the reference's GFLOPs/img; raise the budget or add "
                          f"smaller step counts to --config.sample.sample_steps")
    return min(eligible, key=lambda i: (candidates[i]["proxy"], candidates[i]["compute_ratio"], i))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties), ``scipy.stats.spearmanr``'s."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
