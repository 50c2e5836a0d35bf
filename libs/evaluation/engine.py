"""The evaluation engine shared by every ``eval*.py`` and by training's periodic evaluation.

For each exit policy of a sweep (``libs/exits/policy.py``; full depth always included, as the
baseline) it samples the same ``n_samples`` images (per-image seeds: every policy sees the
same noise and the same labels/prompts, whatever the number of processes), and measures FID
against the reference statistics, blocks per network call, layer ratio, GFLOPs per image,
sampling time, images/s, speedup over full depth and the mean exit block per sampling step
(written by ``libs/evaluation/report.py``). Policies that need calibration (``profile:``,
``budget:``) are first calibrated on ``config.sample.calib_samples`` images of their own
seeds. What differs between pixel, latent and text-to-image models is the ``task`` object
(``libs/tasks/``): shape of x_T, conditioning, schedule, decoding to images.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import List, Sequence

import torch
from tqdm.auto import tqdm

from libs.run.seeds import Stream, mix_seed
from libs.evaluation.report import PolicyResult, write_report
from libs.exits.policy import FULL, ExitPolicy, parse_policies
from libs.exits.recorder import ExitRecorder
from libs.evaluation.image_io import images_to_uint8, save_grid, save_png
from libs.diffusion.wrappers import cfg_model_fn, conditional_model_fn, with_time_scale
from libs.diffusion.registry import make_sampler


log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- sampling
def initial_noise(task, indices: Sequence[int], seed: int, device) -> torch.Tensor:
    """x_T of the given image indices: one seed per image, whatever the batch or process."""
    return torch.stack([torch.randn(task.sample_shape, generator=torch.Generator().manual_seed(
        mix_seed(seed, Stream.X_T, i))) for i in indices]).to(device)


def sampler_generator(seed: int, batch_seed: int, device) -> torch.Generator:
    """The sampler's own randomness (SDE noise) for one batch."""
    return torch.Generator(device=device).manual_seed(mix_seed(seed, Stream.SAMPLER, batch_seed))


def generate(net, task, sample_cfg, indices: Sequence[int], exit_policy, recorder: ExitRecorder,
             seed: int, batch_seed: int, device, decode: bool = True) -> torch.Tensor:
    """One batch of images in [0, 1] (or x_0 itself with ``decode=False``) for the given image
    indices under one exit policy. Runs under ``torch.inference_mode`` (cheaper per op than
    ``no_grad``: it matters at small batches), so the images it returns are inference tensors:
    clone them before using them in autograd."""
    with torch.inference_mode():
        return _generate(net, task, sample_cfg, indices, exit_policy, recorder, seed, batch_seed, device, decode)


def _generate(net, task, sample_cfg, indices, exit_policy, recorder, seed, batch_seed, device, decode):
    x_T = initial_noise(task, indices, seed, device)
    cond = task.conditions(indices, device)
    recorder.start_run()
    net_fn = with_time_scale(recorder.wrap(net, exit_policy), task.time_scale)
    scale = float(sample_cfg.get("scale", 0.0) or 0.0)
    if scale > 0:
        model_fn = cfg_model_fn(net_fn, cond, task.null_condition(len(indices), device), scale)
    else:
        model_fn = conditional_model_fn(net_fn, cond)
    x0 = make_sampler(sample_cfg, task.schedule)(model_fn, x_T, sampler_generator(seed, batch_seed, device))
    return task.decode(x0) if decode else x0


def calibrate_policy(policy: ExitPolicy, net, task, config, device, autocast=contextlib.nullcontext,
                     logger=None) -> ExitPolicy:
    """A runnable copy of ``policy``: ``profile:`` and ``budget:`` are calibrated on the first
    ``config.sample.calib_samples`` image indices (noise of their own seed stream, so not the
    evaluated images' noise); other policies are returned as they are."""
    if not policy.needs_calibration:
        return policy
    sc = config.sample
    n, bs = int(sc.get("calib_samples", 64)), int(sc.mini_batch_size)
    seed = mix_seed(config.seed, Stream.CALIBRATION)

    @torch.no_grad()
    def run(rule: ExitPolicy, keep: bool = False):
        """The summary of ``rule`` on the calibration images; with ``keep`` also FLOPs and their
        samples x_0 (what the reuse plan's proxy compares, libs/exits/reuse.py)."""
        recorder, samples = ExitRecorder(net.num_blocks, device), []
        for b, s in enumerate(range(0, n, bs)):
            with autocast():
                samples.append(generate(net, task, sc, list(range(s, min(s + bs, n))), rule, recorder, seed, b,
                                        device, decode=False).float().cpu())
        summary = recorder.summary(net.flops() if keep else None, n)
        return (summary, torch.cat(samples)) if keep else summary

    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    calibrated = policy.calibrate(run)
    net.train(was_training)
    logger = logger or log
    logger.info("calibrated %s on %d images in %.1fs: %s", policy.spec, n, time.perf_counter() - t0,
                calibrated.calibration())
    target = getattr(calibrated, "target", None)
    if target is not None and abs(calibrated.achieved - target) > 0.01:
        logger.warning("%s: the closest calibration layer ratio is %.3f (threshold %.4f); the rule's exits come "
                       "in steps too coarse for +-0.01 on %d images", policy.spec, calibrated.achieved,
                       calibrated.tau, n)
    return calibrated


@torch.no_grad()
def sample_grid(net, task, config, path, exit_policy="full", device=None) -> None:
    """The first ``config.sample.grid_size`` images of the evaluation set, as one PNG."""
    sc = config.sample
    device = device or next(net.parameters()).device
    policy = calibrate_policy(parse_policies(exit_policy)[0], net, task, config, device)
    n = int(sc.get("grid_size", 64))
    recorder = ExitRecorder(net.num_blocks, device)
    images = []
    for s in range(0, n, int(sc.mini_batch_size)):
        idx = list(range(s, min(s + int(sc.mini_batch_size), n)))
        images += list(images_to_uint8(generate(net, task, sc, idx, policy, recorder, config.seed,
                                                s // int(sc.mini_batch_size), device)).cpu())
    save_grid(images, Path(path))


def sweep_policies(value) -> List[ExitPolicy]:
    """The policies of a sweep: full depth first (the speedup baseline), then as given."""
    policies = parse_policies(value)
    return [FULL] + [p for p in policies if not p.is_full]


def evaluate(net, task, config, policies, accelerator, output_dir, logger=None,
             progress: bool = True) -> List[PolicyResult]:
    """Run the sweep; every process must call this. Writes the report on the main process."""
    from libs.evaluation.fid import FeatureCache, FIDAccumulator, frechet_distance, load_statistics

    sc = config.sample
    output_dir = Path(output_dir)
    device = accelerator.device
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    policies = sweep_policies(policies)
    for p in policies:
        p.check(net.num_blocks)
    n, bs = int(sc.n_samples), int(sc.mini_batch_size)
    if n < 1 or bs < 1:
        raise ValueError(f"config.sample.n_samples ({n}) and mini_batch_size ({bs}) must be positive")

    # Fail fast on missing reference statistics and Inception weights, before sampling.
    ref = load_statistics(sc.fid_stat) if sc.get("fid_stat") else None
    inception = None
    if ref is not None:
        from libs.evaluation.inception import load_inception
        inception = load_inception(config.get("inception_path") or None, device=device)
    elif logger:
        logger.warning("config.sample.fid_stat is empty: no FID, only compute and time")

    batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    mine = [(b, idx) for b, idx in enumerate(batches) if b % world == rank]
    png_root = Path(sc.path) if sc.get("path") else None
    grid_n = min(int(sc.get("grid_size", 64)), n)
    net.eval()
    results = []
    cache = FeatureCache()  # byte-identical images across policies get their features once
    for policy in policies:
        if policy.needs_calibration:
            policy = calibrate_policy(policy, net, task, config, device, accelerator.autocast, logger)
            if world > 1:  # every process runs the policy the main process calibrated
                from accelerate.utils import broadcast_object_list
                policy = broadcast_object_list([policy])[0]
        recorder = ExitRecorder(net.num_blocks, device)
        acc = FIDAccumulator(inception, cache=cache) if inception is not None else None
        hits_before = cache.hits
        grid, seconds = [], 0.0
        bar = tqdm(mine, disable=not (is_main and progress), desc=f"sample {policy.spec}", dynamic_ncols=True)
        for b, idx in bar:
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), accelerator.autocast():
                images = generate(net, task, sc, idx, policy, recorder, config.seed, b, device)
            _sync(device)
            seconds += time.perf_counter() - t0
            u8 = images_to_uint8(images)  # (B, C, H, W)
            if acc is not None:
                acc.update(u8)
            grid += [(i, im.cpu()) for i, im in zip(idx, u8) if i < grid_n]
            if png_root is not None:
                folder = png_root / policy.slug
                folder.mkdir(parents=True, exist_ok=True)
                for i, im in zip(idx, u8):
                    save_png(im, folder / f"{i}.png")
        # Combine processes: exit counts and FID sums add up; time is the slowest process's.
        recorder.reduce(accelerator)
        seconds = float(accelerator.reduce(torch.tensor([seconds], device=device), reduction="max")[0]) \
            if world > 1 else seconds
        fid = float("nan")
        if acc is not None:
            if world > 1:
                acc.sum = accelerator.reduce(acc.sum.to(device), reduction="sum")
                acc.sum_outer = accelerator.reduce(acc.sum_outer.to(device), reduction="sum")
                acc.num_images = int(accelerator.reduce(torch.tensor([acc.num_images], device=device),
                                                        reduction="sum")[0])
            if is_main:
                mu, sigma = acc.compute()
                fid = frechet_distance(mu, sigma, *ref)
        if world > 1:
            from accelerate.utils import gather_object
            grid = gather_object(grid)
        summary = recorder.summary(net.flops(), n)
        res = PolicyResult(policy=policy.spec, family=policy.family, threshold=policy.effective_threshold(),
                           n_images=n, fid=fid, mean_blocks=summary["mean_blocks"],
                           layer_ratio=summary["layer_ratio"], gflops_per_image=summary["gflops_per_image"],
                           seconds=seconds, images_per_s=n / seconds if seconds > 0 else float("nan"),
                           calibration=policy.calibration(), exit_block_per_step=summary["exit_block_per_step"],
                           blocks_reused=summary["blocks_reused"],
                           cache_kib_per_image=summary["cache_bytes_per_image"] / 1024,
                           blocks_computed_per_step=summary["blocks_computed_per_step"],
                           blocks_reused_per_step=summary["blocks_reused_per_step"])
        results.append(res)
        if is_main:
            save_grid([im for _, im in sorted(grid, key=lambda p: p[0])], output_dir / f"grid_{policy.slug}.png")
            if logger:
                logger.info("%s FID=%.4g layer_ratio=%.3f GFLOPs/img=%.4g time=%.1fs (Inception features reused "
                            "for %d identical images)", policy.spec, fid, res.layer_ratio, res.gflops_per_image,
                            seconds, cache.hits - hits_before)
    full = results[0].seconds
    for r in results:
        r.speedup = full / r.seconds if r.seconds > 0 else float("nan")
    if is_main:
        write_report(results, output_dir)
    accelerator.wait_for_everyone()
    return results


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
