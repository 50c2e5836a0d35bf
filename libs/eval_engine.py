"""The evaluation engine shared by every ``eval*.py`` and by training's periodic evaluation.

For each exit threshold of a sweep (full depth always included, as the baseline) it samples
the same ``n_samples`` images (per-image seeds: every threshold sees the same noise and the
same labels/prompts, whatever the number of processes), and reports FID against the
reference statistics, blocks per network call, layer ratio, GFLOPs per image, sampling time,
images/s, speedup over full depth and the mean exit block per sampling step. What differs
between pixel, latent and text-to-image models is the ``task`` object (``libs/tasks.py``):
shape of x_T, conditioning, schedule, decoding to images.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from libs.data_order import mix_seed
from libs.exit_stats import ExitRecorder
from libs.model_fn import cfg_model_fn, conditional_model_fn, with_time_scale

_RNG_XT, _RNG_SAMPLER = 11, 12

SAMPLERS = ("euler_maruyama_sde", "euler_maruyama_ode", "dpm_solver", "dpm_solver_pp", "dpm_solver_pp_2m")


# ----------------------------------------------------------------------------- thresholds
def parse_thresholds(value) -> List[float]:
    """'0.9' | '0.8,0.9' | 'none' | 0.9 | [..] -> sorted-as-given list; full depth is 1.0.

    A threshold is a certainty in [0, 1]; 1.0 (or 'none' / 'full') means no early exit."""
    if isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    else:
        items = list(value)
    out = []
    for item in items:
        if isinstance(item, str) and item.lower() in ("none", "full", "inf"):
            tau = 1.0
        else:
            try:
                tau = float(item)
            except (TypeError, ValueError):
                raise ValueError(f"exit threshold {item!r} is not a number; use values in [0, 1] "
                                 f"(e.g. 0.92, or a sweep '0.8,0.9,none'; 'none' or 1.0 = full depth)") from None
        if not 0.0 <= tau <= 1.0 or math.isnan(tau):
            raise ValueError(f"exit threshold {tau} is out of range: it is a mean certainty in [0, 1] "
                             f"(1.0 or 'none' = full depth)")
        if tau not in out:
            out.append(tau)
    if not out:
        raise ValueError("no exit threshold given")
    return out


# ----------------------------------------------------------------------------- samplers
def make_sampler(sample_cfg, schedule):
    """``sample(model_fn, x_T, generator) -> x_0`` for ``sample_cfg.algorithm``."""
    from dpm_solver_pp import dpm_solver_sample
    from libs.samplers import euler_maruyama_ode, euler_maruyama_sde

    name, steps = sample_cfg.algorithm, sample_cfg.sample_steps
    if name == "euler_maruyama_sde":
        return lambda f, x, g: euler_maruyama_sde(f, x, schedule, steps, generator=g)
    if name == "euler_maruyama_ode":
        return lambda f, x, g: euler_maruyama_ode(f, x, schedule, steps)
    if name == "dpm_solver":  # released continuous setting: noise prediction, DPM-Solver-fast on logSNR steps
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=3, method="singlestep_fast",
                                                 predict="noise", skip_type="logSNR")
    if name == "dpm_solver_pp":  # released discrete setting: data prediction, fast orders, every call on one
        # (steps + 1)-point time-uniform grid (not 1/3, 2/3 of lambda intervals), see dpm_solver_pp.py
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=3, method="singlestep",
                                                 predict="data", skip_type="time_uniform")
    if name == "dpm_solver_pp_2m":
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=2, method="multistep",
                                                 predict="data", skip_type=sample_cfg.get("skip_type", "time_uniform"))
    raise ValueError(f"unknown sampler config.sample.algorithm={name!r}; choose one of {SAMPLERS}")


# ----------------------------------------------------------------------------- results
@dataclass
class ThresholdResult:
    threshold: float
    n_images: int
    fid: float
    mean_blocks: float
    layer_ratio: float
    gflops_per_image: float
    seconds: float
    images_per_s: float
    speedup: float = 1.0
    exit_block_per_step: list = field(default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "exit_block_per_step"}


def images_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 as the PNG writer does (x * 255 + 0.5, clamped)."""
    return (x.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def save_png(img: torch.Tensor, path: Path) -> None:
    """(C, H, W) uint8 -> PNG."""
    from PIL import Image
    arr = img.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


def save_grid(images: Sequence[torch.Tensor], path: Path, nrow: Optional[int] = None) -> None:
    """Tile (C, H, W) uint8 images into one PNG."""
    from torchvision.utils import make_grid
    if not images:
        return
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    grid = make_grid(torch.stack([im.float() / 255 for im in images]), nrow=nrow, padding=1, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(images_to_uint8(grid), path)


# ----------------------------------------------------------------------------- engine
def generate(net, task, sample_cfg, indices: Sequence[int], exit_threshold: float, recorder: ExitRecorder,
             seed: int, batch_seed: int, device) -> torch.Tensor:
    """One batch of images in [0, 1] for the given image indices at one threshold."""
    shape = task.sample_shape
    x_T = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(mix_seed(seed, _RNG_XT, i)))
                       for i in indices]).to(device)
    cond = task.conditions(indices, device)
    recorder.start_run()
    net_fn = with_time_scale(recorder.wrap(net, exit_threshold), task.time_scale)
    scale = float(sample_cfg.get("scale", 0.0) or 0.0)
    if scale > 0:
        model_fn = cfg_model_fn(net_fn, cond, task.null_condition(len(indices), device), scale)
    else:
        model_fn = conditional_model_fn(net_fn, cond)
    generator = torch.Generator(device=device).manual_seed(mix_seed(seed, _RNG_SAMPLER, batch_seed))
    x0 = make_sampler(sample_cfg, task.schedule)(model_fn, x_T, generator)
    return task.decode(x0)


@torch.no_grad()
def sample_grid(net, task, config, path, exit_threshold: float = 1.0, device=None) -> None:
    """The first ``config.sample.grid_size`` images of the evaluation set, as one PNG."""
    sc = config.sample
    device = device or next(net.parameters()).device
    n = int(sc.get("grid_size", 64))
    recorder = ExitRecorder(net.num_blocks, device)
    images = []
    for s in range(0, n, int(sc.mini_batch_size)):
        idx = list(range(s, min(s + int(sc.mini_batch_size), n)))
        images += list(images_to_uint8(generate(net, task, sc, idx, exit_threshold, recorder, config.seed,
                                                s // int(sc.mini_batch_size), device)).cpu())
    save_grid(images, Path(path))


def evaluate(net, task, config, thresholds: Sequence[float], accelerator, output_dir, logger=None,
             progress: bool = True) -> List[ThresholdResult]:
    """Run the sweep; every process must call this. Writes the report on the main process."""
    from tools.fid import FIDAccumulator, frechet_distance, load_statistics

    sc = config.sample
    output_dir = Path(output_dir)
    device = accelerator.device
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    thresholds = sorted(set(parse_thresholds(thresholds)) | {1.0}, reverse=True)  # full depth first: baseline
    n, bs = int(sc.n_samples), int(sc.mini_batch_size)
    if n < 1 or bs < 1:
        raise ValueError(f"config.sample.n_samples ({n}) and mini_batch_size ({bs}) must be positive")

    # Fail fast on missing reference statistics and Inception weights, before sampling.
    ref = load_statistics(sc.fid_stat) if sc.get("fid_stat") else None
    inception = None
    if ref is not None:
        from tools.inception import load_inception
        inception = load_inception(config.get("inception_path") or None, device=device)
    elif logger:
        logger.warning("config.sample.fid_stat is empty: no FID, only compute and time")

    batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    mine = [(b, idx) for b, idx in enumerate(batches) if b % world == rank]
    png_root = Path(sc.path) if sc.get("path") else None
    grid_n = min(int(sc.get("grid_size", 64)), n)
    net.eval()
    results = []
    for tau in thresholds:
        recorder = ExitRecorder(net.num_blocks, device)
        acc = FIDAccumulator(inception) if inception is not None else None
        grid, seconds = [], 0.0
        bar = tqdm(mine, disable=not (is_main and progress), desc=f"sample tau={tau:g}", dynamic_ncols=True)
        for b, idx in bar:
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), accelerator.autocast():
                images = generate(net, task, sc, idx, tau, recorder, config.seed, b, device)
            _sync(device)
            seconds += time.perf_counter() - t0
            u8 = images_to_uint8(images)  # (B, C, H, W)
            if acc is not None:
                acc.update(u8)
            grid += [(i, im.cpu()) for i, im in zip(idx, u8) if i < grid_n]
            if png_root is not None:
                folder = png_root / f"tau_{tau:g}"
                folder.mkdir(parents=True, exist_ok=True)
                for i, im in zip(idx, u8):
                    save_png(im, folder / f"{i}.png")
        # Combine processes: exit counts and FID sums add up; time is the slowest process's.
        counts = accelerator.reduce(recorder.counts.to(device), reduction="sum") if world > 1 else recorder.counts
        recorder.counts = counts
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
        summary = recorder.summary(task.flops, n)
        res = ThresholdResult(threshold=tau, n_images=n, fid=fid, mean_blocks=summary["mean_blocks"],
                              layer_ratio=summary["layer_ratio"], gflops_per_image=summary["gflops_per_image"],
                              seconds=seconds, images_per_s=n / seconds if seconds > 0 else float("nan"),
                              exit_block_per_step=summary["exit_block_per_step"])
        results.append(res)
        if is_main:
            save_grid([im for _, im in sorted(grid, key=lambda p: p[0])], output_dir / f"grid_tau_{tau:g}.png")
            if logger:
                logger.info("tau=%g FID=%.4g layer_ratio=%.3f GFLOPs/img=%.4g time=%.1fs", tau, fid,
                            res.layer_ratio, res.gflops_per_image, seconds)
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


# ----------------------------------------------------------------------------- report
COLUMNS = ("threshold", "fid", "layer_ratio", "mean_blocks", "gflops_per_image", "seconds", "images_per_s",
           "speedup", "n_images")


def format_table(results: Sequence[ThresholdResult]) -> str:
    head = f"{'threshold':>9} {'FID':>8} {'layers':>7} {'blocks':>7} {'GFLOPs/img':>11} {'time(s)':>8} " \
           f"{'img/s':>8} {'speedup':>8}"
    lines = [head]
    for r in results:
        tau = "full" if r.threshold >= 1.0 else f"{r.threshold:g}"
        lines.append(f"{tau:>9} {r.fid:>8.3f} {r.layer_ratio:>7.3f} {r.mean_blocks:>7.2f} "
                     f"{r.gflops_per_image:>11.4g} {r.seconds:>8.1f} {r.images_per_s:>8.2f} {r.speedup:>8.2f}")
    return "\n".join(lines)


def write_report(results: Sequence[ThresholdResult], output_dir) -> None:
    """report.csv, report.json, report.txt and the plots."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow({k: r.row()[k] for k in COLUMNS})
    (output_dir / "report.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    (output_dir / "report.txt").write_text(format_table(results) + "\n")
    plot_report(results, output_dir)


def plot_report(results: Sequence[ThresholdResult], output_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["full" if r.threshold >= 1 else f"{r.threshold:g}" for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, xlabel in ((axes[0], "layer_ratio", "layer ratio (blocks run / all blocks)"),
                            (axes[1], "seconds", "sampling time (s)")):
        xs = [getattr(r, key) for r in results]
        ys = [r.fid for r in results]
        ax.plot(xs, ys, "o-")
        for x, y, lab in zip(xs, ys, labels):
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
    axes[0].set_title("FID vs layers")
    axes[1].set_title("FID vs time")
    for r, lab in zip(results, labels):
        axes[2].plot(range(1, len(r.exit_block_per_step) + 1), r.exit_block_per_step, label=f"tau={lab}")
    axes[2].set_xlabel("sampling step (network call)")
    axes[2].set_ylabel("mean exit block (0-based)")
    axes[2].set_title("exit block vs sampling step")
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_dir / "tradeoff.png", dpi=110)
    plt.close(fig)
    np.savetxt(output_dir / "exit_block_per_step.csv",
               np.array([r.exit_block_per_step for r in results]).T, delimiter=",",
               header=",".join(labels), comments="")
