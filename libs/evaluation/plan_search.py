"""The search behind ``search:R`` (``libs/exits/search.py``): whole plans of a structured family,
scored on the calibration images (the compute budget's proxy plus the images' loss of contrast).

Why a family and not per-call greed: ``plan:R`` (``greedy_plan``) measures each (call, action)
change alone and adds the changes up, but stale reuse compounds (a multistep solver feeds
every reused output into several later updates), so its plans reuse or truncate many calls in
a row and lose to hand rules (FID 15.37 against 12.31 at 18 steps). The strong hand rules
share one shape: exit on the early, noisy calls, reuse (or forecast) the deep span on the late
ones. The search scores whole plans of that shape, so compounding is in every score:

    phase:F:A+B, A in {full, threshold:0.9}, F in {0.2, 0.3, 0.4}, and B alone (F = 0);
    B = forecast:N:k:O, N in {2, 3, 4}, k in {1, 2}, O in {0, 1, 2} (O = 0 is deepcache:N:k);
    the threshold rules alone (0.8, 0.85, 0.9);
    then the four best plans under the budget, and the four best under 0.85 of it (room for
    the compute a gate adds back), with B gated: gate:G:B, G in {0.6, 0.7, 0.8}.

That covers every hand rule the forecast measurements used (``docs/reuse_forecast.md``: phase
fractions 0.2, 0.3, 0.4 before threshold:0.9, forecasts every 2 to 4 calls at orders 0 to 2,
a gate at 0.7; gates at 0.3 and 0.5 never fire on the digits model). Plans whose actions per
call are the same as an earlier plan's (two fractions rounding to one switch call) run once.

Each plan runs once on the calibration images (their own indices and noise, not the evaluated
images'). Its cost is the GFLOPs/img of that run over full depth's; its score, of its images
(decoded, clipped to [0, 1]: what FID sees) against full depth's at the same step count from
the same noise:

    score = mean (x - x_full)^2 + 64 (sd(x) - sd(x_full))^2

the compute budget's proxy (``proxy_distance``: per image, paired) plus the squared change of
the images' pixel standard deviation (``contrast_gap``: the whole set's contrast). Why the
second term: a copied span lowers every image's contrast a little, which FID (a distance
between distributions) weighs far more than the squared distance does, and which the squared
distance ranked below larger per-image errors that FID forgives (deepcache:2:1 against the
searched plans). On the digits model's 12 measured reuse rows (UniPC, 10, 12 and 15 steps,
500 images; ``docs/reuse_forecast.md``) Spearman with the paired FID difference to full depth
is +0.53 for the squared distance alone and +0.94 for the score; the weight 64 was chosen on
those rows, where every weight from 32 to 256 gives +0.90 to +0.95. The plan chosen has the
smallest score among those whose cost is at most R (ties: the cheaper, then the earlier).

A plan that cannot fit R is not run (``least_gflops``): its calls that repeat, from the first
call on, the actions of a run already made cost what they cost there (same images, noise and
actions: the same trajectory), every other call at least its embedding, output head and the
blocks it must compute (a reusing call: the blocks outside the span; a call with an exit rule:
block 0); heads are left out, so this never exceeds the plan's cost. The family holds 129
plans at 10 or more calls (93 at 8), and the gated round up to 24 more; ``search:0.5`` on the
digits model at 10, 12 and 15 UniPC steps ran 25, 27 and 30 of its 141 plans (about a minute
on one CPU thread for the three) and skipped the others.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import torch

from libs.exits.call import ExitPolicyError, fmt
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.policy import FULL, ThresholdExit
from libs.exits.registry import ExitPolicy
from libs.exits.reuse import PhaseSplit
from libs.exits.search import PlanSearch

FRACTIONS = (0.2, 0.3, 0.4)
EVERY, DEPTHS, ORDERS = (2, 3, 4), (1, 2), (0, 1, 2)
THRESHOLDS = (0.8, 0.85, 0.9)
GATES, GATED_BEST, ROOM = (0.6, 0.7, 0.8), 4, 0.85
CONTRAST_WEIGHT = 64.0  # the score's weight of contrast_gap (module docstring)


def family(num_blocks: int, calls: int) -> List[ExitPolicy]:
    """The plans scored first (module docstring), runnable as they are (the phases calibrated
    for ``calls`` network calls per run); one per distinct plan (``plan_key``)."""
    plans: List[ExitPolicy] = [ThresholdExit(t) for t in THRESHOLDS]
    for n in EVERY:
        for k in (k for k in DEPTHS if 2 * k < num_blocks):
            for o in ORDERS:
                then = Forecast(n, k, o)
                plans.append(then)
                for f in FRACTIONS:
                    switch = int(math.floor(f * calls + 0.5))
                    plans += [PhaseSplit(f, a, then, switch, calls) for a in (FULL, ThresholdExit(0.9))]
    unique: dict = {}
    for p in plans:
        unique.setdefault(plan_key(p, calls), p)
    return list(unique.values())


def plan_key(plan: ExitPolicy, calls: int) -> tuple:
    """What a run of ``plan`` does: its action per call, and its forecast order where it reuses
    (two plans with one key give the same images)."""
    *_, (_, key) = prefixes(plan, calls)
    return key


def gated(plan: ExitPolicy) -> List[ExitPolicy]:
    """``plan`` with its reuse rule gated at each of ``GATES`` ([] when it does not reuse)."""
    if isinstance(plan, PhaseSplit) and plan.then.reuses:
        return [PhaseSplit(plan.fraction, plan.first, GatedReuse(g, plan.then), plan.switch, plan.calls) for g in GATES]
    if isinstance(plan, Forecast):
        return [GatedReuse(g, plan) for g in GATES]
    return []


def prefixes(plan: ExitPolicy, calls: int):
    """Per call c: (c's ``Call``, the key of calls 0..c: their actions, and the forecast order
    once one of them reused). Runs with one key agree on calls 0..c."""
    prefix, order = (), None
    for c in range(calls):
        call = plan.for_call(c)
        prefix += (call.spec,)
        order = (plan.forecast_order or None) if call.reuse is not None or order is not None else None
        yield call, (prefix, order)


def least_gflops(plan: ExitPolicy, calls: int, seen: dict, pieces: dict) -> float:
    """A lower bound of ``plan``'s GFLOPs/img on the calibration images (module docstring).
    ``seen``: a ``prefixes`` key -> that call's GFLOPs/img without heads in a run made;
    ``pieces``: the summary's ``gflops_pieces``."""
    blocks, total = pieces["blocks"], 0.0
    for call, key in prefixes(plan, calls):
        known = seen.get(key)
        if known is not None:
            total += known
            continue
        last = len(blocks) - 1 if call.last is None else call.last
        span = range(call.reuse, len(blocks) - call.reuse) if call.reuse is not None else range(0)
        least = [blocks[0]] if call.rule is not None else [b for j, b in enumerate(blocks[:last + 1]) if j not in span]
        total += pieces["embed_output"] + sum(least)
    return total


def contrast_gap(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """(sd - sd_ref)^2: the squared change of the images' pixel standard deviation (their
    contrast) from the reference's, over all images and elements."""
    return (float(samples.double().std()) - float(reference.double().std())) ** 2


def search_plan(ratio: float, run: Callable[..., tuple], proxy: Callable) -> PlanSearch:
    """``search:ratio`` calibrated: the plan of the family with the smallest score (``proxy``
    plus ``CONTRAST_WEIGHT`` x ``contrast_gap``) whose compute ratio is at most ``ratio``.
    ``run(policy, keep=True, images=True) -> (summary, images in [0, 1])`` samples the
    calibration images; ``proxy(images, reference)``."""
    ref_summary, reference = run(FULL, keep=True, images=True)
    full_g, N = ref_summary["gflops_per_image"], ref_summary["num_blocks"]
    calls, pieces = len(ref_summary["exit_block_per_step"]), ref_summary["gflops_pieces"]
    scored: List[Tuple[float, float, int, ExitPolicy]] = []  # (score, compute ratio, order, plan)
    seen, skipped = {}, []  # seen: least_gflops's record of the runs made; skipped: plans over R unrun

    def score(plans: Sequence[ExitPolicy]) -> None:
        for p in plans:
            if least_gflops(p, calls, seen, pieces) > ratio * full_g * (1 + 1e-9):
                skipped.append(p.spec)
                continue
            summary, images = run(p, keep=True, images=True)
            value = proxy(images, reference) + CONTRAST_WEIGHT * contrast_gap(images, reference)
            scored.append((value, summary["gflops_per_image"] / full_g, len(scored), p))
            remember(p, summary["gflops_per_step"])

    def remember(p: ExitPolicy, per_step: Sequence[float]) -> None:
        seen.update((key, g) for (_, key), g in zip(prefixes(p, calls), per_step))

    def fits(r=ratio) -> list:
        return sorted(s for s in scored if s[1] <= r + 1e-9)

    remember(FULL, ref_summary["gflops_per_step"])
    score(family(N, calls))
    for s in dict.fromkeys(s[2] for s in fits()[:GATED_BEST] + fits(ROOM * ratio)[:GATED_BEST]):
        score(gated(scored[s][3]))
    if not fits():
        raise ExitPolicyError(f"search:{fmt(ratio)} cannot be reached: no plan of the search runs within "
                              f"{fmt(ratio)} of full depth's GFLOPs/img ({len(skipped)} cannot by their least compute, "
                              f"{len(scored)} ran above it); raise R")
    best, achieved, _, plan = min(fits(), key=lambda s: (s[0], s[1], s[2]))
    table = [(p.spec, cost, d) for d, cost, _, p in scored]
    return PlanSearch(ratio, plan, best, achieved, calls, len(scored), table, skipped=len(skipped))
