"""The evaluation engine shared by every ``eval*.py`` and by training's periodic evaluation.

A sweep is every pair of a step count (``config.sample.sample_steps``) and an exit policy
(full depth always included), each on the same ``n_samples`` images from the same noise.
Each pair gets FID with a bootstrap standard error, blocks per call, layer ratio, GFLOPs/img,
compute ratio and speedup against the reference (full depth, most steps), time, exit block
per step and frontier flag (``libs/evaluation/report.py``), and its Inception features
(``config.sample.save_features``: ``features/<pair>.npy``) for paired differences.
Calibrated policies are calibrated at each step count; with ``config.sample.compute_budget``
only the reference and the budget's pick are evaluated."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from libs.diffusion.registry import make_sampler, parse_step_counts  # noqa: F401 (released import path)
from libs.evaluation.calibration import calibrate_policy, calibration_run, proxy_distance
from libs.evaluation.frontier import choose_under_budget, parse_compute_budget, pareto_flags
from libs.evaluation.paired import add_paired_columns
from libs.evaluation.image_io import images_to_uint8, save_grid, save_png
from libs.evaluation.report import PolicyResult, write_report
from libs.evaluation.sampling import (generate, index_batches, initial_noise,  # noqa: F401 (released paths)
                                     sampler_generator)
from libs.exits.policy import FULL, ExitPolicy, parse_policies
from libs.exits.recorder import ExitRecorder
from libs.models.compile import compile_network, compile_seconds
from libs.run.distributed import run_record
from libs.run.output_guard import fresh_sample_tree

log = logging.getLogger(__name__)


@torch.no_grad()
def sample_grid(net, task, config, path, exit_policy="full", device=None) -> None:
    """The first ``config.sample.grid_size`` images of the evaluation set, as one PNG (at the
    largest of ``config.sample.sample_steps``)."""
    sc = config.sample
    device = device or next(net.parameters()).device
    net = compile_network(net, sc.get("compile", "none"))  # config.sample.compile
    policy = calibrate_policy(parse_policies(exit_policy)[0], net, task, config, device)
    n, bs = int(sc.get("grid_size", 64)), int(sc.mini_batch_size)
    recorder = ExitRecorder(net.num_blocks, device)
    images = []
    for b, idx in enumerate(index_batches(n, bs)):
        images += list(images_to_uint8(generate(net, task, sc, idx, policy, recorder, config.seed, b, device)).cpu())
    save_grid(images, Path(path))


def check_finite_images(images: torch.Tensor, where: str, sample_cfg) -> None:
    """Refuse a batch holding NaN/inf where it was sampled: such images would be scored as
    black or white pictures and give an FID that looks like a number."""
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)  # (B,)
    if bad.any():
        raise FloatingPointError(
            f"sampling under {where} gave non-finite images ({int(bad.sum())} of {len(bad)}): nothing was scored. "
            f"The network's outputs overflow: lower config.sample.scale (now {sample_cfg.get('scale', 0)}) or check "
            f"the weights for huge values")


def sweep_policies(value) -> List[ExitPolicy]:
    """The policies of a sweep: full depth first (the speedup baseline), then as given."""
    policies = parse_policies(value)
    return [FULL] + [p for p in policies if not p.is_full]


@dataclass
class _Context:
    """What every (step count, policy) run of one sweep shares."""

    net: object
    task: object
    config: object
    accelerator: object
    output_dir: Path
    logger: Optional[logging.Logger]
    progress: bool
    mine: list  # (batch number, image indices) of this process
    ref: Optional[tuple] = None  # reference FID statistics
    inception: object = None
    cache: object = None
    multi_step: bool = False  # more than one step count: slugs and labels carry it
    results: list = field(default_factory=list)
    gathered: list = field(default_factory=list)  # image index of each row of the gathered features
    boots: list = field(default_factory=list)  # per result: its FIDs on the shared bootstrap resamples


def evaluate(net, task, config, policies, accelerator, output_dir, logger=None,
             progress: bool = True) -> List[PolicyResult]:
    """Run the sweep; every process must call this. Writes the report on the main process."""
    ctx = _setup(net, task, config, accelerator, output_dir, logger, progress)
    steps = sorted(parse_step_counts(config.sample.sample_steps), reverse=True)  # reference first
    policies = sweep_policies(policies)
    for p in policies:
        p.check(net.num_blocks)
    budget = parse_compute_budget(config.sample.get("compute_budget"))
    runs, choice = [(s, p) for s in steps for p in policies], None
    if budget is not None:
        runs, choice = _choose(ctx, runs, budget)
    for s, policy in runs:
        ctx.results.append(_run(ctx, s, policy))
    _finish(ctx.results)
    add_paired_columns(ctx.results, ctx.boots)
    if accelerator.is_main_process:
        write_report(ctx.results, ctx.output_dir, choice)
    accelerator.wait_for_everyone()
    return ctx.results


def _setup(net, task, config, accelerator, output_dir, logger, progress) -> _Context:
    """Fail fast on bad sizes, missing reference statistics and Inception weights, before sampling."""
    from libs.evaluation.fid import FeatureCache, load_statistics

    sc = config.sample
    n, bs = int(sc.n_samples), int(sc.mini_batch_size)
    if n < 1 or bs < 1:
        raise ValueError(f"config.sample.n_samples ({n}) and mini_batch_size ({bs}) must be positive")
    world, rank = accelerator.num_processes, accelerator.process_index
    batches = index_batches(n, bs)
    ctx = _Context(net, task, config, accelerator, Path(output_dir), logger, progress,
                   mine=[(b, idx) for b, idx in enumerate(batches) if b % world == rank],
                   multi_step=len(parse_step_counts(sc.sample_steps)) > 1, cache=FeatureCache(),
                   gathered=[i for r in range(world) for b, idx in enumerate(batches) if b % world == r for i in idx])
    if sc.get("path"):  # this run's PNGs only (libs/run/output_guard.py), emptied before any process writes
        if accelerator.is_main_process:
            fresh_sample_tree(sc.path, "--config.sample.path")
        accelerator.wait_for_everyone()
    ctx.ref = load_statistics(sc.fid_stat) if sc.get("fid_stat") else None
    if ctx.ref is not None:
        from libs.evaluation.inception import load_inception
        ctx.inception = load_inception(config.get("inception_path") or None, device=accelerator.device)
    elif logger:
        logger.warning("config.sample.fid_stat is empty: no FID, only compute and time")
    net.eval()
    ctx.net = compile_network(net, sc.get("compile", "none"), logger=logger)  # config.sample.compile
    return ctx


def _calibrated(ctx: _Context, steps: int, policy: ExitPolicy) -> ExitPolicy:
    if not policy.needs_calibration:
        return policy
    acc = ctx.accelerator
    policy = calibrate_policy(policy, ctx.net, ctx.task, ctx.config, acc.device, acc.autocast, ctx.logger, steps)
    if acc.num_processes > 1:  # every process runs the policy the main process calibrated
        from accelerate.utils import broadcast_object_list
        policy = broadcast_object_list([policy])[0]
    return policy


def _choose(ctx: _Context, runs, budget: float):
    """The budget's pick among ``runs`` by the proxy on the calibration images; returns the runs
    to evaluate (the reference, then the pick) and the choice record for the report."""
    acc, net = ctx.accelerator, ctx.net
    candidates, ref_samples, calibrated = [], None, []
    for s, policy in runs:  # runs[0] is the reference: full depth at the largest step count
        policy = _calibrated(ctx, s, policy)
        calibrated.append((s, policy))
        summary, images = calibration_run(net, ctx.task, ctx.config, policy, acc.device, acc.autocast, s,
                                          keep=True, images=True)  # what FID sees, (N, C, H, W) in [0, 1]
        ref_samples = images if ref_samples is None else ref_samples
        candidates.append(dict(sample_steps=s, policy=policy.spec, gflops_per_image=summary["gflops_per_image"],
                               proxy=proxy_distance(images, ref_samples)))
    for c in candidates:
        c["compute_ratio"] = c["gflops_per_image"] / candidates[0]["gflops_per_image"]
    pick = choose_under_budget(candidates, budget)
    choice = dict(budget=budget, chosen=pick, candidates=candidates,
                  proxy="mean squared distance of the images (in [0, 1]) to the reference run's images from the same noise, on "
                        f"{int(ctx.config.sample.get('calib_samples', 64))} calibration images")
    if ctx.logger:
        c = candidates[pick]
        ctx.logger.info("compute budget %.3g: chose %s at %d steps (compute ratio %.3f, proxy %.4g) among %d "
                        "candidates", budget, c["policy"], c["sample_steps"], c["compute_ratio"], c["proxy"],
                        len(candidates))
    return ([calibrated[0]] + ([calibrated[pick]] if pick != 0 else [])), choice


def _run(ctx: _Context, steps: int, policy: ExitPolicy) -> PolicyResult:
    """Sample and measure one (step count, policy) pair of the sweep."""
    from libs.evaluation.fid import FIDAccumulator

    acc_, sc, device = ctx.accelerator, ctx.config.sample, ctx.accelerator.device
    policy = _calibrated(ctx, steps, policy)
    slug = f"{steps}steps_{policy.slug}" if ctx.multi_step else policy.slug
    recorder = ExitRecorder(ctx.net.num_blocks, device)
    fid_acc = FIDAccumulator(ctx.inception, cache=ctx.cache, keep_features=True) if ctx.inception else None
    png_root = Path(sc.path) / slug if sc.get("path") else None
    n, grid_n, hits = int(sc.n_samples), min(int(sc.get("grid_size", 64)), int(sc.n_samples)), ctx.cache.hits
    grid, seconds, compiled_before = [], 0.0, compile_seconds(ctx.net)
    label = f"sample {policy.spec} @{steps}"
    for b, idx in tqdm(ctx.mine, disable=not (acc_.is_main_process and ctx.progress), desc=label, dynamic_ncols=True):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), acc_.autocast():
            images = generate(ctx.net, ctx.task, sc, idx, policy, recorder, ctx.config.seed, b, device, steps=steps)
        _sync(device)
        seconds += time.perf_counter() - t0
        check_finite_images(images, f"{policy.spec} at {steps} steps, batch {b}", sc)  # never scored
        u8 = images_to_uint8(images)  # (B, C, H, W)
        if fid_acc is not None:
            fid_acc.update(u8)
        grid += [(i, im.cpu()) for i, im in zip(idx, u8) if i < grid_n]
        if png_root is not None:
            png_root.mkdir(parents=True, exist_ok=True)
            for i, im in zip(idx, u8):
                save_png(im, png_root / f"{i}.png")
    compile_s = compile_seconds(ctx.net) - compiled_before  # calls that compiled: not sampling time
    seconds -= compile_s
    # Combine processes: exit counts and FID sums add up; time is the slowest process's.
    recorder.reduce(acc_)
    if acc_.num_processes > 1:
        from accelerate.utils import gather_object
        seconds = float(acc_.reduce(torch.tensor([seconds], device=device), reduction="max")[0])
        grid = gather_object(grid)
    fid, fid_se = _fid(ctx, fid_acc, slug)
    summary = recorder.summary(ctx.net.flops(), n)
    measured = {k: v for k, v in summary.items() if k in PolicyResult.__dataclass_fields__}  # the same names
    res = PolicyResult(policy=policy.spec, family=policy.family, threshold=policy.effective_threshold(),
                       n_images=n, fid=fid, fid_se=fid_se, sample_steps=steps, algorithm=str(sc.algorithm),
                       seconds=seconds, images_per_s=n / seconds if seconds > 0 else float("nan"),
                       calibration=policy.calibration(), slug=slug, compile_seconds=compile_s,
                       cache_kib_per_image=summary["cache_bytes_per_image"] / 1024, **measured, **run_record(acc_))
    if acc_.is_main_process:
        save_grid([im for _, im in sorted(grid, key=lambda p: p[0])], ctx.output_dir / f"grid_{slug}.png")
        if ctx.logger:
            ctx.logger.info("%s at %d steps: FID=%.4g+-%.2g layer_ratio=%.3f GFLOPs/img=%.4g time=%.1fs (Inception "
                            "features reused for %d identical images)", policy.spec, steps, fid, 2 * fid_se,
                            res.layer_ratio, res.gflops_per_image, seconds, ctx.cache.hits - hits)
    return res


def _fid(ctx: _Context, fid_acc, slug: str):
    """(FID, bootstrap standard error) on the main process; NaN without reference statistics.
    Appends the pair's FIDs on the shared resamples to ``ctx.boots`` (None where there are none)."""
    import numpy as np

    from libs.evaluation.fid import frechet_distance
    from libs.evaluation.fid_uncertainty import bootstrap_indices, resampled_fids

    ctx.boots.append(None)
    if fid_acc is None:
        return float("nan"), float("nan")
    fid_acc.reduce(ctx.accelerator)
    if not ctx.accelerator.is_main_process:
        return float("nan"), float("nan")
    mu, sigma = fid_acc.compute()
    kept = fid_acc.features()  # (N, D) in process-then-batch order (one concatenation)
    features = np.empty_like(kept)
    features[ctx.gathered] = kept  # (N, D) in image order
    if ctx.config.sample.get("save_features", False):
        (ctx.output_dir / "features").mkdir(parents=True, exist_ok=True)
        np.save(ctx.output_dir / "features" / f"{slug}.npy", features.astype(np.float32))
    resamples = int(ctx.config.sample.get("fid_bootstrap", 100))
    if resamples > 1:  # the same resampled image indices for every pair: paired differences
        ctx.boots[-1] = resampled_fids(features, *ctx.ref, bootstrap_indices(len(features), resamples))
    se = float(np.std(ctx.boots[-1], ddof=1)) if resamples > 1 else float("nan")
    return frechet_distance(mu, sigma, *ctx.ref), se


def _finish(results: Sequence[PolicyResult]) -> None:
    """Ratios to the reference run (results[0]) and the frontier flags."""
    ref = results[0]
    flags = pareto_flags([r.gflops_per_image for r in results], [r.fid for r in results])
    for r, on in zip(results, flags):
        r.speedup = ref.seconds / r.seconds if r.seconds > 0 else float("nan")
        r.compute_ratio = r.gflops_per_image / ref.gflops_per_image
        r.pareto = on


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
