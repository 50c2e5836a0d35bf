"""Paired FID differences between the rows of one evaluation, and the verdict they support.

All rows sample the same images from the same noise, so their FIDs err together. The paired
standard error of FID(A) - FID(B) is the standard deviation over shared bootstrap resamples
(``bootstrap_indices``, ``resampled_fids``) of FID_b(A) - FID_b(B); independent resampling
is about three times wider on this project's sweeps. Each row is compared with full depth at
the same step count (``vs_full``) and with step reduction at equal compute (``vs_steps``,
``step_reduction_match``; NaN where no full-depth row costs as much): the cheapest full-depth row
costing at least as much, or the best full-depth row costing no more than that one where more
steps give a worse FID (a user with that compute would run the better, cheaper count).
``beats_steps``: FID below the match's by more than 2 paired standard errors. ``verdict_lines``:
one sentence per rule."""
from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from libs.evaluation.fid import frechet_distance, statistics_from_features
from libs.evaluation.fid_uncertainty import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_indices, resampled_fids

COST_RTOL = 1e-9  # GFLOPs/img equal to this relative tolerance count as equal cost
NAN = float("nan")


def paired_difference(features_a: np.ndarray, features_b: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Tuple[float, float]:
    """FID(A) - FID(B) of two (N, D) feature sets of the same N images (row i of each from the
    same noise), and its paired bootstrap standard error (the images resampled jointly)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired features must have the same shape (one row per image, in image order), got "
                         f"{a.shape} and {b.shape}")
    diff = (frechet_distance(*statistics_from_features(a), mu_ref, sigma_ref)
            - frechet_distance(*statistics_from_features(b), mu_ref, sigma_ref))
    idx = bootstrap_indices(len(a), resamples, seed)
    return diff, paired_se(resampled_fids(a, mu_ref, sigma_ref, idx), resampled_fids(b, mu_ref, sigma_ref, idx))


def paired_se(boot_a: Optional[np.ndarray], boot_b: Optional[np.ndarray]) -> float:
    """Standard error of FID(A) - FID(B) from their FIDs on the same resamples; NaN without them."""
    if boot_a is None or boot_b is None or len(boot_a) < 2:
        return NAN
    return float(np.std(np.asarray(boot_a) - np.asarray(boot_b), ddof=1))


def step_reduction_match(cost: float, full_costs: Sequence[float],
                         full_fids: Optional[Sequence[float]] = None) -> Optional[int]:
    """Index into ``full_costs`` of the cheapest full-depth row costing at least ``cost`` (equal
    within COST_RTOL counts; among equal costs the first); None when every one costs less. With
    ``full_fids``: of the full-depth rows costing no more than that row, the one with the lowest
    FID (the cheaper on ties), so a model that gets worse with more steps is matched with the
    fewer steps it is better at."""
    eligible = [j for j, c in enumerate(full_costs) if c >= cost * (1 - COST_RTOL)]
    if not eligible:
        return None
    k = min(eligible, key=lambda j: (full_costs[j], j))
    affordable = [j for j, c in enumerate(full_costs) if c <= full_costs[k] * (1 + COST_RTOL)]
    if full_fids is None or not all(math.isfinite(full_fids[j]) for j in affordable):  # no FID: cost alone
        return k
    return min(affordable, key=lambda j: (full_fids[j], full_costs[j], j))


def add_paired_columns(results: Sequence, boots: Sequence[Optional[np.ndarray]]) -> None:
    """Set ``vs_full``, ``vs_full_se``, ``step_match``, ``vs_steps``, ``vs_steps_se`` and
    ``beats_steps`` on every non-full row of ``results`` (``PolicyResult``s; ``boots[i]``: row
    i's FIDs on the shared resamples, or None). Full-depth rows are the baselines: NaN. Earlier
    values are cleared first, so rows read back from a report get the columns of this version."""
    full = [i for i, r in enumerate(results) if r.family == "full"]
    for i, r in enumerate(results):
        r.vs_full = r.vs_full_se = r.vs_steps = r.vs_steps_se = math.nan
        r.step_match, r.beats_steps = "", False
        if r.family == "full":
            continue
        same = next((j for j in full if results[j].sample_steps == r.sample_steps), None)
        if same is not None:
            r.vs_full, r.vs_full_se = r.fid - results[same].fid, paired_se(boots[i], boots[same])
        k = step_reduction_match(r.gflops_per_image, [results[j].gflops_per_image for j in full],
                                 [results[j].fid for j in full])
        if k is not None:
            m = results[full[k]]
            r.step_match = m.label
            r.vs_steps, r.vs_steps_se = r.fid - m.fid, paired_se(boots[i], boots[full[k]])
            r.beats_steps = bool(r.vs_steps < -2 * r.vs_steps_se)


def _outcome(diff: float, se: float) -> str:
    if not math.isfinite(se):
        return "no error bar (no bootstrap): untested against step reduction"
    if diff < -2 * se:
        return "beats step reduction"
    return "loses to step reduction" if diff > 2 * se else "ties with step reduction (within 2 paired s.e.)"


def _verdict_row(rows: Sequence):
    """The row of one exit rule whose gain over its step-reduction match is the most certain."""
    matched = [r for r in rows if r.step_match and math.isfinite(r.vs_steps)]
    if not matched:
        return max(rows, key=lambda r: r.sample_steps)

    def z(r):  # an exact tie (the same images: a rule that never exits) is 0, not +inf
        if r.vs_steps_se > 0:
            return r.vs_steps / r.vs_steps_se
        return 0.0 if r.vs_steps == 0 else math.copysign(math.inf, r.vs_steps)
    return min(matched, key=lambda r: (z(r), -r.sample_steps))


def verdict_lines(results: Sequence) -> List[str]:
    """One sentence per exit rule of the sweep (``VERDICT_PATTERN`` parses it), at the step
    count where its paired gain over step reduction at equal compute is the most certain."""
    full = {r.sample_steps: r for r in results if r.family == "full"}
    lines = []
    for spec in dict.fromkeys(r.policy for r in results if r.family != "full"):
        r = _verdict_row([q for q in results if q.policy == spec])
        parts = [f"verdict {spec}: at {r.sample_steps} steps"]
        if r.sample_steps in full and math.isfinite(r.vs_full):
            share = r.gflops_per_image / full[r.sample_steps].gflops_per_image
            parts.append(f"FID {r.vs_full:+.2f} +- {2 * r.vs_full_se:.2f} against full depth at {r.sample_steps} "
                         f"steps with {share:.2f} of its compute")
        if r.step_match and math.isfinite(r.vs_steps):
            m = next(q for q in results if q.label == r.step_match)
            more = (m.gflops_per_image / r.gflops_per_image - 1) * 100
            costs = f"{more:.0f}% more" if more >= 0 else f"{-more:.0f}% less"
            word = "better" if r.vs_steps < 0 else "worse"
            parts.append(f"{abs(r.vs_steps):.2f} +- {2 * r.vs_steps_se:.2f} FID {word} than full depth at "
                         f"{m.sample_steps} steps, which costs {costs} -> {_outcome(r.vs_steps, r.vs_steps_se)}")
        else:
            parts.append("no full-depth row costs as much -> no step-reduction comparison")
        lines.append(f"{parts[0]}: {'; '.join(parts[1:])}")
    return lines


VERDICT_PATTERN = re.compile(r"^verdict (?P<policy>\S+): at (?P<steps>\d+) steps: .* -> (?P<outcome>beats|ties with|"
                             r"loses to|no error bar|no step-reduction)")
