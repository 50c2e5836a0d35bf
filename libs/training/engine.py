"""The training engine shared by every ``train*.py``.

A run is described entirely by its config (saved as ``<workdir>/config.json``); what differs
between pixel, latent and text-to-image training is a small ``task`` object (see
``libs/tasks/``): the training dataset, the forward-noise process and how a data batch
becomes ``(x0, cond)``. The loop below is linear:

    set up -> resume or load pretrained -> [batch, loss, step, EMA, log, sample, save] * n

Every random draw is a function of (seed, process rank, step), so a resumed run continues
exactly as an uninterrupted one would (the data order too, see ``libs/training/data_order.py``).

What a run guarantees (README "What a run guarantees"): the config is checked before any
work (libs/cli/config_check.py); one run per workdir (libs/run/lock.py); checkpoints are written
atomically with a checksum manifest and resume falls back to the newest intact one
(libs/run/checkpoint.py); diverged weights (NaN/inf or |w| > config.train.max_abs_weight) stop
the run before they are saved (libs/run/weight_guard.py); config.json is written once the run's
weights are loaded; stats.jsonl never repeats the rows of steps a resume redoes.
"""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from libs.training import best_checkpoint
from libs.run.atomic import atomic_write_text
from libs.run.checkpoint import (clean_stale_temporaries, latest_checkpoint, list_checkpoints, load_weights,
                             newest_intact_checkpoint, save_checkpoint)
from libs.run.config_io import config_diff, config_to_json, load_config_json
from libs.run.seeds import Stream, mix_seed
from libs.training.data_order import SeededItems, StepBatchSampler
from libs.evaluation.engine import evaluate, sample_grid, sweep_policies
from libs.models.registry import build_nnet
from libs.run.lock import LauncherWatch, RunLock
from libs.run.resume import check_resume_step, load_training_state
from libs.run.log import MetricsWriter, setup_logger
from libs.run.weight_guard import describe_bad_weight, first_bad_weight
from libs.training.objectives import training_losses



class TrainForward(nn.Module):
    """What the optimiser differentiates (and DDP wraps): the network's full-depth output
    (plain U-ViT objective) or every block's prediction and certainty (AdaDiff objective)."""

    def __init__(self, net: nn.Module, all_exits: bool):
        super().__init__()
        self.net = net
        self.all_exits = all_exits

    def forward(self, x, t, cond=None):
        if self.all_exits:
            out = self.net.forward_all_exits(x, t, cond)
            return out.preds, out.certainties
        return self.net(x, t, cond)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * net over parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - rate)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def warmup_lambda(warmup_steps: int):
    """Linear warmup then constant (U-ViT's 'customized' schedule)."""
    return lambda step: min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0


def train(config, task) -> Path:
    """Run (or resume) training as configured; returns the last checkpoint directory (the
    best by FID with ``config.train.select_best_by_fid``, see ``libs/training/best_checkpoint.py``).
    The config must have passed ``libs.cli.config_check.check_config(config, "train")`` (the
    entry scripts run it before building the task); the main process holds
    ``<workdir>/run.lock`` throughout."""
    is_main = int(os.environ.get("RANK", "0")) == 0  # global rank, as launchers set it (before any setup)
    with RunLock(config.workdir, enabled=is_main) as lock:
        return _train(config, task, lock)


def _train(config, task, lock: RunLock) -> Path:
    tc = config.train
    workdir = Path(config.workdir)
    accelerator = Accelerator(log_with=tc.get("log_with") or None, project_dir=str(workdir))
    is_main = accelerator.is_main_process
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index

    # ---------------------------------------------------------------- checks before any work
    if tc.batch_size % world:
        raise ValueError(f"config.train.batch_size={tc.batch_size} is not divisible by the number of "
                         f"processes ({world}); choose a multiple of {world}")
    objective = config.loss.objective
    # Full depth, and the configured exit policies; a plain U-ViT objective trains no heads,
    # so only the policies that need none (static:K) are sampled.
    sampling_policies = [p for p in sweep_policies(str(config.sample.exit_policy))
                         if objective == "adadiff" or not (p.uses_heads or p.needs_calibration)]
    best_checkpoint.check_config(config)
    ckpt_root = workdir / "ckpts"
    resume_from = latest_checkpoint(ckpt_root)

    logger = setup_logger("adadiff.train", workdir, is_main)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and (workdir / "config.json").exists():
            changed = config_diff(load_config_json(workdir / "config.json").to_dict(), config.to_dict())
            if changed:
                logger.warning("config differs from the run's saved config.json in: %s", ", ".join(changed))
        if lock.takeover_message():
            logger.warning("%s", lock.takeover_message())
        for note in clean_stale_temporaries(ckpt_root):
            logger.warning("%s", note)
    logger.info("workdir %s, %d process(es) on %s, mixed precision %s", workdir, world, device,
                accelerator.mixed_precision)

    # ---------------------------------------------------------------- model, EMA, optimiser
    torch.manual_seed(config.seed)
    net = build_nnet(config.nnet)
    for policy in sampling_policies:
        policy.check(net.num_blocks)
    if objective == "uvit":  # plain U-ViT training: the uncertainty heads take no part
        net.uem_heads.requires_grad_(False)
    nnet_ema = copy.deepcopy(net).requires_grad_(False).eval()
    params = [p for p in net.parameters() if p.requires_grad]
    oc = config.optimizer
    if oc.name != "adamw":
        raise ValueError(f"config.optimizer.name={oc.name!r}: only 'adamw' is supported")
    optimizer = torch.optim.AdamW(params, lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas))
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(config.lr_scheduler.warmup_steps))
    logger.info("network %s: %.2fM parameters (%.2fM trained)", config.nnet.name,
                sum(p.numel() for p in net.parameters()) / 1e6, sum(p.numel() for p in params) / 1e6)

    start_step = 0
    resume_from, saved = newest_intact_checkpoint(ckpt_root) if resume_from is not None else (None, None)
    if resume_from is not None:
        load_weights(net, saved["nnet.pth"], str(resume_from / "nnet.pth"))
        load_weights(nnet_ema, saved["nnet_ema.pth"], str(resume_from / "nnet_ema.pth"))
        load_training_state(optimizer, lr_scheduler, saved, resume_from)
        start_step = check_resume_step(saved["step.pth"], tc.n_steps, resume_from)
        del saved
        # The config, not the saved optimiser, decides the hyper-parameters from here on.
        lr_scheduler.base_lrs = [oc.lr] * len(optimizer.param_groups)
        for g in optimizer.param_groups:
            g.update(initial_lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas),
                     lr=oc.lr * lr_scheduler.lr_lambdas[0](lr_scheduler.last_epoch))
        logger.info("resumed from %s (step %d)", resume_from, start_step)
    elif config.train.get("pretrained_weight"):
        load_weights(net, config.train.pretrained_weight)  # logs what it loaded (fresh heads, ...)
        nnet_ema.load_state_dict(net.state_dict())
    else:
        logger.info("training from scratch (no --pretrained_weight)")
    if is_main:  # the run's record, now that its weights loaded
        atomic_write_text(workdir / "config.json", config_to_json(config))

    # ---------------------------------------------------------------- data
    sampler = StepBatchSampler(len(task.train_dataset), tc.batch_size, rank, world, config.seed, start_step)
    loader = DataLoader(SeededItems(task.train_dataset), batch_sampler=sampler, num_workers=tc.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=tc.num_workers > 0)
    batches = iter(loader)

    model, optimizer = accelerator.prepare(TrainForward(net, objective == "adadiff"), optimizer)
    nnet_ema.to(device)
    generator = torch.Generator(device=device)
    loss_kwargs = {k: config.loss[k] for k in ("uem_coef", "layer_coef", "layer_weight") if k in config.loss} \
        if objective == "adadiff" else {}
    if tc.get("log_with"):
        accelerator.init_trackers(workdir.name, config={k: str(v) for k, v in config.to_dict().items()})
    metrics = MetricsWriter(workdir / "stats.jsonl", enabled=is_main)
    if metrics.drop_after(start_step):
        logger.info("stats.jsonl: dropped the rows after step %d (redone from here)", start_step)
    watch = LauncherWatch()

    # ---------------------------------------------------------------- loop
    last_ckpt = resume_from
    sums, count, t_last = {}, 0, time.perf_counter()
    bar = tqdm(total=tc.n_steps, initial=start_step, disable=not is_main, desc="train", dynamic_ncols=True)
    for step in range(start_step + 1, tc.n_steps + 1):
        # Batch and noise: per-step, per-process randomness.
        generator.manual_seed(mix_seed(config.seed, Stream.BATCH, rank, step))
        x0, cond = task.make_batch(next(batches), device, generator)
        generator.manual_seed(mix_seed(config.seed, Stream.NOISE, rank, step))
        terms = training_losses(model, task.noise, x0, cond, objective=objective, generator=generator,
                                **loss_kwargs)
        loss = terms["loss"].mean()

        # Stop before a non-finite loss reaches the weights; every process agrees.
        if not bool(torch.isfinite(accelerator.gather(loss.detach()[None])).all()):
            bar.close()
            raise FloatingPointError(
                f"non-finite loss at step {step}; stopping without saving. The last good checkpoint is "
                f"{last_ckpt or 'none'}. Try a lower config.optimizer.lr, config.train.grad_clip, or bf16.")

        # Update.
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
        optimizer.step()
        lr_scheduler.step()

        # Update EMA.
        ema_update(nnet_ema, net, tc.ema_rate)

        # Stop before diverged weights are logged or saved (same weights, same verdict on every process).
        if (tc.log_interval and step % tc.log_interval == 0) or (tc.save_interval and step % tc.save_interval == 0) \
                or step == tc.n_steps:
            _check_weights(net, nnet_ema, tc.get("max_abs_weight", 0.0), step, last_ckpt)
        watch.check(step)

        # Log.
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().mean()
        count += 1
        bar.update(1)
        if (tc.log_interval and step % tc.log_interval == 0) or step == tc.n_steps:
            means = accelerator.reduce(torch.stack([sums[k] for k in sorted(sums)]) / count, reduction="mean")
            dt = time.perf_counter() - t_last
            row = {k: float(v) for k, v in zip(sorted(sums), means)}
            row.update(step=step, lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                       steps_per_s=count / dt, images_per_s=count * tc.batch_size / dt)
            metrics.write(**row)
            if tc.get("log_with"):
                accelerator.log(row, step=step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            logger.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
            sums, count, t_last = {}, 0, time.perf_counter()

        # Sample a grid with the EMA network (full depth and the configured exit policies).
        if is_main and tc.get("sample_interval") and step % tc.sample_interval == 0:
            for policy in sampling_policies:
                name = f"{step}.png" if policy.is_full else f"{step}_{policy.slug}.png"
                sample_grid(nnet_ema, task, config, workdir / "samples" / name, policy)
            logger.info("sample grids in %s", workdir / "samples")

        # Evaluate FID and compute at full depth and the configured exit policies (all processes).
        if tc.get("eval_interval") and step % tc.eval_interval == 0:
            results = evaluate(nnet_ema, task, config, sampling_policies, accelerator,
                               workdir / "eval" / f"step_{step}", logger, progress=False)
            metrics.write(step=step, eval=[r.row() for r in results])
            if tc.get("log_with"):
                accelerator.log({f"fid_{r.policy}": r.fid for r in results}, step=step)

        # Save.
        if (tc.save_interval and step % tc.save_interval == 0) or step == tc.n_steps:
            accelerator.wait_for_everyone()
            if is_main:
                last_ckpt = save_checkpoint(ckpt_root, step, {
                    "nnet.pth": _cpu_state(net), "nnet_ema.pth": _cpu_state(nnet_ema),
                    "optimizer.pth": optimizer.state_dict(), "lr_scheduler.pth": lr_scheduler.state_dict(),
                    "step.pth": step}, {"config.json": config_to_json(config)})
                _prune(ckpt_root, tc.get("keep_ckpts", 0))
                logger.info("saved %s", last_ckpt)
            else:
                last_ckpt = ckpt_root / f"{step}.ckpt"
            accelerator.wait_for_everyone()
            if best_checkpoint.enabled(config):
                best_checkpoint.evaluate_checkpoint(nnet_ema, task, config, accelerator, workdir, step, logger)
    bar.close()
    if best_checkpoint.enabled(config):
        last_ckpt = best_checkpoint.finish(config, accelerator, workdir, last_ckpt, logger)
    accelerator.end_training()
    return last_ckpt


def _check_weights(net: nn.Module, ema: nn.Module, max_abs: float, step: int, last_ckpt) -> None:
    """Raise FloatingPointError if the network or its EMA holds NaN/inf or |w| > max_abs."""
    for which, module in (("network", net), ("EMA network", ema)):
        bad = first_bad_weight(module.named_parameters(), max_abs)
        if bad is not None:
            raise FloatingPointError(
                f"the {which} diverged at step {step}: {describe_bad_weight(bad, max_abs)} "
                f"(config.train.max_abs_weight={max_abs:g}); stopping without saving. The last good checkpoint is "
                f"{last_ckpt or 'none'}. Try a lower config.optimizer.lr, config.train.grad_clip, or bf16.")


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _prune(root: Path, keep: int) -> None:
    """Keep only the newest ``keep`` checkpoints (0 = keep all, as the released code)."""
    if keep and keep > 0:
        import shutil
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
