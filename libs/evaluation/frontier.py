"""The compute-quality frontier of a sweep, and the compute budget that picks from it.

* ``pareto_flags``: a row is on the frontier (``pareto``) when no other row *beats* it, where
  A beats B when A's GFLOPs/img <= B's and A's FID <= B's with at least one strict (<). Rows
  with equal GFLOPs/img and equal FID therefore do not beat each other: both are on the
  frontier or both are off. Rows without an FID (None/NaN) are never on it and beat nobody.
* ``--compute_budget=R`` (``config.sample.compute_budget``, a fraction in (0, 1] of the
  reference run's GFLOPs/img; the reference run is full depth at the sweep's largest step
  count) picks, among the sweep's candidates (step counts x policies) whose GFLOPs/img on the
  calibration images is at most R x the reference's, the one with the smallest quality proxy
  (``choose_under_budget``).
* The proxy is the mean squared distance, per pixel, between a candidate's images (decoded,
  clipped to [0, 1]: what FID sees) and the reference run's images from the same noise, on the
  ``config.sample.calib_samples`` calibration images (``libs/evaluation/calibration.py``
  ``proxy_distance``, also the plan search's). Why: every
  candidate approximates the same ODE solution map x_T -> x_0 that the reference run
  approximates best (most steps, every block), so its distance to the reference is its
  integration-plus-exit error, measured without Inception features or reference statistics,
  on a few dozen images. Images rather than raw x_0: an exited block's x_0 can leave the data
  range where decoding clips it, and the raw distance then ranks rows by error nobody sees
  (measured on the digits model: ``benchmarks/bench_proxy.py``, Spearman with FID in
  benchmarks/README.md). It is a ranking proxy, not FID: it cannot see a candidate that is far
  from the reference yet as good in distribution.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import List, Optional, Sequence

import numpy as np


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
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average ranks of ties
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
