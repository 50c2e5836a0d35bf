"""The search behind ``search:R`` (``libs/exits/search.py``): whole plans of a structured family,
scored on the calibration images with the compute budget's proxy.

Why a family and not per-call greed: ``plan:R`` (``greedy_plan``) measures each (call, action)
change alone and adds the changes up, but stale reuse compounds (a multistep solver feeds
every reused output into several later updates), so its plans reuse or truncate many calls in
a row and lose to hand rules (FID 15.37 against 12.31 at 18 steps). The strong hand rules
share one shape: exit on the early, noisy calls, reuse (or forecast) the deep span on the late
ones. The search scores whole plans of that shape, so compounding is in every score:

    phase:F:A+B, A in {full, threshold:0.9}, F in {0.2, 0.4}, and B alone (F = 0);
    B = forecast:N:k:O, N in {2, 3, 4}, k in {1, 2}, O in {0, 1, 2} (O = 0 is deepcache:N:k);
    the threshold rules alone (0.8, 0.85, 0.9);
    then the four best plans under the budget, and the four best under 0.85 of it (room for
    the compute a gate adds back), with B gated: gate:G:B, G in {0.6, 0.7, 0.8}.

Each plan runs once on the calibration images (their own indices and noise, not the evaluated
images'). Its score is the proxy: the mean squared distance of its images (decoded, clipped to
[0, 1]: what FID sees) to full depth's images at the same step count from the same noise; its
cost, the GFLOPs/img of that run over full depth's. The plan chosen has the smallest proxy
among those whose cost is at most R (ties: the cheaper, then the earlier). About 105 runs of
the calibration images per search. The gate's values: the digits model's head after block 0
reads 0.5 to 0.8 on most rows (at G <= 0.5 a gate never fires there).
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

from libs.exits.call import ExitPolicyError, fmt
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.policy import FULL, ThresholdExit
from libs.exits.registry import ExitPolicy
from libs.exits.reuse import PhaseSplit
from libs.exits.search import PlanSearch

FRACTIONS = (0.2, 0.4)
EVERY, DEPTHS, ORDERS = (2, 3, 4), (1, 2), (0, 1, 2)
THRESHOLDS = (0.8, 0.85, 0.9)
GATES, GATED_BEST, ROOM = (0.6, 0.7, 0.8), 4, 0.85


def family(num_blocks: int, calls: int) -> List[ExitPolicy]:
    """The plans scored first (module docstring), runnable as they are (the phases calibrated
    for ``calls`` network calls per run)."""
    plans: List[ExitPolicy] = [ThresholdExit(t) for t in THRESHOLDS]
    for n in EVERY:
        for k in (k for k in DEPTHS if 2 * k < num_blocks):
            for o in ORDERS:
                then = Forecast(n, k, o)
                plans.append(then)
                for f in FRACTIONS:
                    switch = int(math.floor(f * calls + 0.5))
                    plans += [PhaseSplit(f, a, then, switch, calls) for a in (FULL, ThresholdExit(0.9))]
    return plans


def gated(plan: ExitPolicy) -> List[ExitPolicy]:
    """``plan`` with its reuse rule gated at each of ``GATES`` ([] when it does not reuse)."""
    if isinstance(plan, PhaseSplit) and plan.then.reuses:
        return [PhaseSplit(plan.fraction, plan.first, GatedReuse(g, plan.then), plan.switch, plan.calls)
                for g in GATES]
    if isinstance(plan, Forecast):
        return [GatedReuse(g, plan) for g in GATES]
    return []


def search_plan(ratio: float, run: Callable[..., tuple], proxy: Callable) -> PlanSearch:
    """``search:ratio`` calibrated: the plan of the family with the smallest ``proxy`` whose
    compute ratio is at most ``ratio``. ``run(policy, keep=True, images=True) -> (summary,
    images in [0, 1])`` samples the calibration images; ``proxy(images, reference)``."""
    ref_summary, reference = run(FULL, keep=True, images=True)
    full_g, N = ref_summary["gflops_per_image"], ref_summary["num_blocks"]
    calls = len(ref_summary["exit_block_per_step"])
    scored: List[Tuple[float, float, int, ExitPolicy]] = []  # (proxy, compute ratio, order, plan)

    def score(plans: Sequence[ExitPolicy]) -> None:
        for p in plans:
            summary, images = run(p, keep=True, images=True)
            scored.append((proxy(images, reference), summary["gflops_per_image"] / full_g, len(scored), p))

    def fits(r=ratio) -> list:
        return sorted(s for s in scored if s[1] <= r + 1e-9)

    score(family(N, calls))
    for s in dict.fromkeys(s[2] for s in fits()[:GATED_BEST] + fits(ROOM * ratio)[:GATED_BEST]):
        score(gated(scored[s][3]))
    if not fits():
        raise ExitPolicyError(f"search:{fmt(ratio)} cannot be reached: the cheapest plan of the search runs "
                              f"{min(s[1] for s in scored):.3f} of full depth's GFLOPs/img; raise R")
    best, achieved, _, plan = min(fits(), key=lambda s: (s[0], s[1], s[2]))
    table = [(p.spec, cost, d) for d, cost, _, p in scored]
    return PlanSearch(ratio, plan, best, achieved, calls, len(scored), table)
