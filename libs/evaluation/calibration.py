"""Calibrating exit rules once per run on calibration images of their own, and running a
rule on them: ``profile:T`` (threshold:T's mean exit block per call, rounded half up),
``budget:R`` (bisection on the threshold to a layer ratio within 0.01 of R), ``phase:F:A+B``
(counts the run's calls), ``plan:R`` (``greedy_plan``), ``search:R``
(``libs/evaluation/plan_search.py``). ``calibrate(policy, run)`` dispatches on the family
(``CALIBRATORS``); ``run(rule, keep=False)`` returns ``ExitRecorder.summary`` (``keep=True``:
also the samples x_0)."""
from __future__ import annotations

import contextlib
import logging
import time
import math
from typing import Callable, List, Optional

import torch

from libs.evaluation.plan_search import search_plan
from libs.evaluation.sampling import generate, index_batches
from libs.exits.call import Call, ExitPolicyError, fmt
from libs.exits.policy import FULL, BudgetExit, ExitPolicy, ProfileExit, StaticExit, ThresholdExit
from libs.exits.recorder import ExitRecorder
from libs.exits.reuse import ComputePlan, PhaseSplit
from libs.run.seeds import Stream, mix_seed

log = logging.getLogger(__name__)


def calibration_run(net, task, config, rule: ExitPolicy, device, autocast=contextlib.nullcontext,
                    steps: Optional[int] = None, keep: bool = False, images: bool = False):
    """Run ``rule`` on the first ``config.sample.calib_samples`` image indices (calibration seed
    stream) at ``steps`` sampler steps. Returns the recorder's summary, and with ``keep=True``
    also the (N, ...) samples x_0 (float32, CPU), or with ``images=True`` the decoded images
    clipped to [0, 1] (what FID sees)."""
    sc = config.sample
    n, bs = int(sc.get("calib_samples", 64)), int(sc.mini_batch_size)
    seed = mix_seed(config.seed, Stream.CALIBRATION)
    recorder = ExitRecorder(net.num_blocks, device)
    samples = []
    with torch.no_grad():
        for b, idx in enumerate(index_batches(n, bs)):
            with autocast():
                x0 = generate(net, task, sc, idx, rule, recorder, seed, b, device, decode=False, steps=steps)
            if keep:
                samples.append((task.decode(x0).clamp(0, 1) if images else x0).float().cpu())
    summary = recorder.summary(net.flops() if keep else None, n)
    return (summary, torch.cat(samples)) if keep else summary


def calibrate_policy(policy: ExitPolicy, net, task, config, device, autocast=contextlib.nullcontext,
                     logger=None, steps: Optional[int] = None) -> ExitPolicy:
    """A runnable copy of ``policy``: calibrated rules are calibrated on the calibration images at
    ``steps`` (default: the largest of ``sample_steps``); others are returned as they are."""
    if not policy.needs_calibration:
        return policy
    n = int(config.sample.get("calib_samples", 64))
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    calibrated = calibrate(policy, lambda rule, keep=False, images=False: calibration_run(
        net, task, config, rule, device, autocast, steps, keep, images))
    net.train(was_training)
    logger = logger or log
    at = f" at {steps} steps" if steps is not None else ""
    logger.info("calibrated %s%s on %d images in %.1fs: %s", policy.spec, at, n, time.perf_counter() - t0,
                calibrated.calibration())
    target = getattr(calibrated, "target", None)
    if target is not None and abs(calibrated.achieved - target) > 0.01:
        logger.warning("%s: the closest calibration layer ratio is %.3f (threshold %.4f); the rule's exits come "
                       "in steps too coarse for +-0.01 on %d images", policy.spec, calibrated.achieved,
                       calibrated.tau, n)
    return calibrated


def calibrate(policy: ExitPolicy, run: Callable[..., dict]) -> ExitPolicy:
    """A runnable copy of ``policy`` (which ``needs_calibration``), from ``run`` (module docstring)."""
    return CALIBRATORS[policy.family](policy, run)


def calibrate_profile(policy: ProfileExit, run) -> ProfileExit:
    """threshold:T's mean exit block per network call, rounded half up."""
    per_step = run(policy.source)["exit_block_per_step"]
    return ProfileExit(policy.tau, [int(math.floor(b + 0.5)) for b in per_step])


def calibrate_budget(policy: BudgetExit, run, tolerance: float = 0.01, max_iter: int = 20) -> BudgetExit:
    """Bisection on the threshold until the calibration layer ratio is within ``tolerance`` of the target
    (the ratio grows with the threshold); returns the closest threshold with its ratio."""
    floor = run(ThresholdExit(0.0))["layer_ratio"]  # every row exits as early as the rule allows
    if policy.target < floor - tolerance:
        raise ExitPolicyError(f"{policy.spec} cannot be reached: on this model the threshold rule runs a layer "
                              f"ratio in [{floor:.3f}, 1] (threshold 0 exits every sample at the earliest block "
                              f"the rule allows); choose R >= {math.ceil(floor * 100) / 100:.2f}, or static:K "
                              f"for fewer blocks")
    best = min((abs(floor - policy.target), 0.0, floor), (abs(1.0 - policy.target), 1.0, 1.0))
    lo, hi = 0.0, 1.0
    for _ in range(max_iter):
        if best[0] <= tolerance:
            break
        mid = (lo + hi) / 2
        ratio = run(ThresholdExit(mid))["layer_ratio"]
        best = min(best, (abs(ratio - policy.target), mid, ratio))
        if ratio > policy.target:
            hi = mid
        else:
            lo = mid
    return BudgetExit(policy.target, tau=best[1], achieved=best[2])


def calibrate_phase(policy: PhaseSplit, run) -> PhaseSplit:
    """Counts the network calls of a run (a static:0 run: one block a call)."""
    calls = len(run(StaticExit(0))["exit_block_per_step"])
    return PhaseSplit(policy.fraction, policy.first, policy.then, int(math.floor(policy.fraction * calls + 0.5)), calls)


def proxy_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """The quality proxy: the mean over images and elements of (x - x_ref)^2, the distance of
    the samples to the reference run's samples from the same noise."""
    return float(((samples.double() - reference.double()) ** 2).mean())


def plan_actions(num_blocks: int) -> List[Call]:
    """A plan's actions at a call besides full depth: reuse DeepCache depth k = 1 .. (num_blocks-1)//2,
    or stop after block K = num_blocks//2 .. num_blocks-2 (the deep half)."""
    return ([Call(reuse=k) for k in range(1, (num_blocks - 1) // 2 + 1)]
            + [Call(last=K) for K in range(num_blocks // 2, num_blocks - 1)])


def _computes(action: Call, span, num_blocks: int) -> bool:
    """Whether a call of ``action`` computes every block of ``span`` (and so caches it)."""
    if action.reuse is not None:
        s, e = action.reuse_span(num_blocks)
        return e <= span[0] or span[1] <= s  # disjoint from the span it reuses
    return action.blocks_computed(num_blocks) >= span[1]


def _fits(actions: List[Call], c: int, a: Call, num_blocks: int) -> bool:
    """Whether call c may take action ``a``: a reuse needs the call before to compute its span, and
    a reuse at the call after must still find its span computed at c."""
    if a.reuse is not None and not _computes(actions[c - 1], a.reuse_span(num_blocks), num_blocks):
        return False
    after = actions[c + 1] if c + 1 < len(actions) else None
    return after is None or after.reuse is None or _computes(a, after.reuse_span(num_blocks), num_blocks)


def _harms(ratio: float, run, calls: int, full_g: float, reference, N: int) -> list:
    """One calibration run per (call, action), every other call at full depth: (the action's
    harm per GFLOP saved, call, action, GFLOPs saved) for those that save compute."""
    changes = []
    for c in range(calls):
        for a in plan_actions(N):
            if a.reuse is not None and c == 0:
                continue  # nothing cached yet
            trial = [Call()] * calls
            trial[c] = a
            summary, x0 = run(ComputePlan(ratio, trial, 0.0, 0.0), keep=True)
            saved = full_g - summary["gflops_per_image"]
            if saved > 0:
                changes.append((proxy_distance(x0, reference) / saved, c, a, saved))
    return changes


def greedy_plan(ratio: float, run: Callable[..., tuple]) -> ComputePlan:
    """A training-free plan under the compute ratio ``ratio`` (after Learning-to-Cache's router):

    1. one calibration run per (call, action), every other call at full depth, gives the action's
       harm there (proxy distance to full depth, ``_harms``);
    2. greedy: take (call, action) changes by harm per GFLOP saved, smallest first, until the
       plan's GFLOPs/img is at most ``ratio`` x full depth's (a call's cost depends only on its
       action); a reuse is taken only where the call before computes its span;
    3. one run of the plan gives its proxy and compute ratio.

    ``run(policy, keep=True) -> (summary, samples x_0)`` samples the calibration images."""
    ref_summary, reference = run(FULL, keep=True)
    full_g, N = ref_summary["gflops_per_image"], ref_summary["num_blocks"]
    calls = len(ref_summary["exit_block_per_step"])
    actions, saved_at = [Call()] * calls, [0.0] * calls
    g = full_g
    for _, c, a, saved in sorted(_harms(ratio, run, calls, full_g, reference, N),
                                 key=lambda ch: (ch[0], ch[1], ch[2].spec)):
        if g <= ratio * full_g * (1 + 1e-9):
            break
        if saved <= saved_at[c] or not _fits(actions, c, a, N):
            continue
        g -= saved - saved_at[c]
        actions[c], saved_at[c] = a, saved
    if g > ratio * full_g * (1 + 1e-9):
        raise ExitPolicyError(f"plan:{fmt(ratio)} cannot be reached: the cheapest plan found runs "
                              f"{g / full_g:.3f} of full depth's GFLOPs/img; raise R")
    summary, x0 = run(ComputePlan(ratio, actions, 0.0, 0.0), keep=True)
    return ComputePlan(ratio, actions, proxy_distance(x0, reference), summary["gflops_per_image"] / full_g)


#: the calibration of each rule family that needs one
CALIBRATORS = {"profile": calibrate_profile, "budget": calibrate_budget, "phase": calibrate_phase,
               "plan": lambda policy, run: greedy_plan(policy.ratio, run),
               "search": lambda policy, run: search_plan(policy.ratio, run, proxy_distance)}
