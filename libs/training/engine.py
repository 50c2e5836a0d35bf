"""The training engine shared by every ``train*.py``. A run is its config (saved as
``<workdir>/config.json``) and a ``task`` (``libs/tasks/``: dataset, noise process, batch ->
``(x0, cond)``). ``_train`` reads as one page:

    set up -> resume or initialise -> [step (batch, loss, update, EMA), guards, log, sample,
    evaluate, save] * n -> choose the best checkpoint

``Run`` holds what stays fixed over a run, ``TrainState`` what the steps change; guards and
interval hooks are in ``libs/training/hooks.py``. Every random draw is a function of (seed,
rank, step), so a resumed run continues exactly as an uninterrupted one."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from libs.evaluation.engine import sweep_policies
from libs.models.registry import build_nnet
from libs.run.atomic import atomic_write_text
from libs.run.checkpoint import latest_checkpoint, load_weights, newest_intact_checkpoint, save_checkpoint
from libs.run.config_io import config_to_json
from libs.run.distributed import check_launch, precision_note, precision_used, process_group_kwargs, run_record
from libs.run.lock import LauncherWatch, RunLock
from libs.run.output_guard import check_output_folder
from libs.run.resume import check_resume_step, load_training_state
from libs.run.log import MetricsWriter, setup_logger
from libs.run.seeds import Stream, mix_seed
from libs.training import best_checkpoint, hooks
from libs.training.data_order import SeededItems, StepBatchSampler
from libs.training.objectives import training_losses

OPTIMIZERS = ("adamw",)  # the values of config.optimizer.name (libs/cli/config_check.py checks them too)
HEAD_OBJECTIVES = ("adadiff", "distill")  # objectives that train on every block's exit and certainty

class TrainForward(nn.Module):
    """What the optimiser differentiates (and DDP wraps): the full-depth output or every block's prediction
    and certainty, of the noise channels only (``net.noise_prediction``)."""

    def __init__(self, net: nn.Module, all_exits: bool):
        super().__init__()
        self.net = net
        self.all_exits = all_exits

    def forward(self, x, t, cond=None):
        if self.all_exits:  # the losses see only the noise prediction
            out = self.net.forward_all_exits(x, t, cond)
            return self.net.noise_prediction(out.preds), out.certainties
        return self.net.noise_prediction(self.net(x, t, cond))


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
    """Run (or resume) training; returns the last checkpoint directory (the best by FID with
    ``config.train.select_best_by_fid``). The config must have passed ``check_config(config,
    "train")``; the main process holds ``<workdir>/run.lock`` throughout."""
    is_main = int(os.environ.get("RANK", "0")) == 0  # global rank, as launchers set it (before any setup)
    check_output_folder(config.workdir, "--workdir", workdir=True)  # not a checkpoint, nor inside one
    with RunLock(config.workdir, enabled=is_main) as lock:
        return _train(config, task, lock)


@dataclass
class Run:
    """What stays fixed over one run: config, task, processes, log and stats files, the policies sampled at
    intervals and the per-step generator (re-seeded from (seed, stream, rank, step) before every use)."""
    config: Any
    task: Any
    accelerator: Accelerator
    logger: logging.Logger
    metrics: MetricsWriter
    policies: List[Any]
    loss_kwargs: Dict[str, Any]
    generator: torch.Generator

    @property
    def workdir(self) -> Path:
        return Path(self.config.workdir)

    @property
    def ckpt_root(self) -> Path:
        return self.workdir / "ckpts"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def trackers(self) -> bool:
        return bool(self.config.train.get("log_with"))


@dataclass
class TrainState:
    """What the steps change: the network, its EMA, the optimiser and schedule, the last step
    done and the newest checkpoint (None before the first save of a fresh run)."""
    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    params: List[nn.Parameter]
    step: int = 0
    last_ckpt: Optional[Path] = None
    model: Optional[nn.Module] = None  # TrainForward(net) as accelerate prepared it (DDP, mixed precision)


def _train(config, task, lock: RunLock) -> Path:
    tc, n_steps = config.train, config.train.n_steps
    # Set up: processes, checks before any work, the workdir and its log.
    run, resuming = _setup(config, task, lock)

    # Resume or initialise.
    state = _build(run)
    _resume_or_init(run, state, resuming)
    batches = _batches(run, state.step)
    _prepare(run, state)
    watch, meter = LauncherWatch(), hooks.LossMeter()

    with tqdm(total=n_steps, initial=state.step, disable=not run.is_main, desc="train", dynamic_ncols=True) as bar:
        for step in range(state.step + 1, n_steps + 1):
            # Batch, loss, update, EMA.
            terms, grad_norm = _step(run, state, next(batches), step)
            log_due = hooks.every(step, tc.log_interval) or step == n_steps
            save_due = hooks.every(step, tc.save_interval) or step == n_steps

            # Stop before diverged weights are logged or saved, or when the launcher is gone.
            if log_due or save_due:
                hooks.check_weights(state.net, state.ema, tc.get("max_abs_weight", 0.0), step, state.last_ckpt)
            watch.check(step)

            # Log.
            meter.add(terms)
            bar.update(1)
            if log_due:
                row = meter.flush(run.accelerator, step, state.optimizer.param_groups[0]["lr"], grad_norm,
                                  tc.batch_size)
                hooks.write_log_row(row, run.metrics, run.accelerator, run.trackers, bar, run.logger)

            # Sample grids (main process) and evaluate FID (all processes) with the EMA network.
            if run.is_main and hooks.every(step, tc.get("sample_interval")):
                hooks.sample_grids(state.ema, task, config, run.policies, step, run.logger)
            if hooks.every(step, tc.get("eval_interval")):
                hooks.evaluate_fid(state.ema, task, config, run.policies, run.accelerator, step, run.metrics,
                                   run.logger)

            # Save.
            if save_due:
                _save(run, state)

    # Choose the best checkpoint by FID.
    if best_checkpoint.enabled(config):
        state.last_ckpt = best_checkpoint.finish(config, run.accelerator, run.workdir, state.last_ckpt, run.logger)
    run.accelerator.end_training()
    return state.last_ckpt


def sampling_policies(config) -> list:
    """Full depth and the configured exit policies (config.sample.exit_policy); a plain U-ViT
    objective trains no heads, so only the policies that need none (static:K) are kept."""
    adadiff = config.loss.objective in HEAD_OBJECTIVES
    return [p for p in sweep_policies(str(config.sample.exit_policy))
            if adadiff or not (p.uses_heads or p.needs_calibration)]


def _setup(config, task, lock: RunLock) -> Tuple[Run, bool]:
    """The accelerator, the checks that need it, the logger and the workdir (main process);
    returns the run and whether a checkpoint to resume from exists."""
    tc = config.train
    accelerator = Accelerator(log_with=tc.get("log_with") or None, project_dir=str(config.workdir),
                              kwargs_handlers=process_group_kwargs())
    check_launch(accelerator)  # processes that did not join would each run the whole job here
    world, device = accelerator.num_processes, accelerator.device
    if tc.batch_size % world:
        raise ValueError(f"config.train.batch_size={tc.batch_size} is not divisible by the number of "
                         f"processes ({world}); choose a multiple of {world}")
    policies = sampling_policies(config)
    best_checkpoint.check_selection(config)
    workdir, is_main = Path(config.workdir), accelerator.is_main_process
    resuming = latest_checkpoint(workdir / "ckpts") is not None

    logger = setup_logger("adadiff.train", workdir, is_main)
    if is_main:
        hooks.prepare_workdir(config, lock, resuming, logger)
    logger.info("workdir %s, %d process(es) on %s, precision %s", workdir, world, device, precision_used(accelerator))
    note = precision_note(accelerator)
    if note:
        logger.warning("%s", note)
    loss_kwargs = {k: config.loss[k] for k in ("uem_coef", "layer_coef", "layer_weight") if k in config.loss} \
        if config.loss.objective in HEAD_OBJECTIVES else {}
    loss_kwargs.update(getattr(task, "objective_kwargs", {}))  # a task's own (the distill teacher)
    return Run(config, task, accelerator, logger, MetricsWriter(workdir / "stats.jsonl", enabled=is_main),
               policies, loss_kwargs, torch.Generator(device=device)), resuming


def _build(run: Run) -> TrainState:
    """The network (initialised from config.seed), its EMA copy, AdamW over the trained
    parameters and the warmup schedule."""
    config = run.config
    torch.manual_seed(config.seed)
    build = getattr(run.task, "build_network", None)  # a task may build its own (libs/diffusers_exit/task.py)
    net = build() if build is not None else build_nnet(config.nnet)
    for policy in run.policies:
        policy.check(net.num_blocks)
    if config.loss.objective == "uvit":  # plain U-ViT training: the uncertainty heads take no part
        net.uem_heads.requires_grad_(False)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    params = [p for p in net.parameters() if p.requires_grad]
    oc = config.optimizer
    if oc.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={oc.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    optimizer = torch.optim.AdamW(params, lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas))
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(config.lr_scheduler.warmup_steps))
    run.logger.info("network %s: %.2fM parameters (%.2fM trained)", config.nnet.name,
                    sum(p.numel() for p in net.parameters()) / 1e6, sum(p.numel() for p in params) / 1e6)
    return TrainState(net, ema, optimizer, lr_scheduler, params)


def _resume_or_init(run: Run, state: TrainState, resuming: bool) -> None:
    """Resume from the newest intact checkpoint (the config's hyper-parameters win), else load
    config.train.pretrained_weight, else start fresh; then record config.json (main process)."""
    config = run.config
    resume_from, saved = newest_intact_checkpoint(run.ckpt_root) if resuming else (None, None)
    if resume_from is not None:
        load_weights(state.net, saved["nnet.pth"], str(resume_from / "nnet.pth"))
        load_weights(state.ema, saved["nnet_ema.pth"], str(resume_from / "nnet_ema.pth"))
        load_training_state(state.optimizer, state.lr_scheduler, saved, resume_from)
        state.step = check_resume_step(saved["step.pth"], config.train.n_steps, resume_from)
        state.last_ckpt = resume_from
        hooks.override_hyperparameters(state.optimizer, state.lr_scheduler, config.optimizer)
        run.logger.info("resumed from %s (step %d)", resume_from, state.step)
        hooks.warn_run_record_changed(resume_from, run_record(run.accelerator), run.logger)
    elif config.train.get("pretrained_weight"):
        load_weights(state.net, config.train.pretrained_weight)  # logs what it loaded (fresh heads, ...)
        state.ema.load_state_dict(state.net.state_dict())
    else:
        run.logger.info("training from scratch (no --pretrained_weight)")
    if run.is_main:  # the run's record, now that its weights loaded
        atomic_write_text(run.workdir / "config.json", config_to_json(config))


def _batches(run: Run, start_step: int) -> Iterator:
    """This process's batches for steps start_step+1, ... (``libs/training/data_order.py``)."""
    tc, acc = run.config.train, run.accelerator
    dataset = run.task.train_dataset
    sampler = StepBatchSampler(len(dataset), tc.batch_size, acc.process_index, acc.num_processes, run.config.seed,
                               start_step)
    return iter(DataLoader(SeededItems(dataset), batch_sampler=sampler, num_workers=tc.num_workers,
                           pin_memory=acc.device.type == "cuda", persistent_workers=tc.num_workers > 0))


def _prepare(run: Run, state: TrainState) -> None:
    """Wrap the forward pass and optimiser for the processes, move the EMA, start the trackers
    and drop the stats rows of the steps a resume redoes."""
    acc = run.accelerator
    state.model, state.optimizer = acc.prepare(TrainForward(state.net, run.config.loss.objective in HEAD_OBJECTIVES),
                                               state.optimizer)
    state.ema.to(acc.device)
    if run.trackers:
        acc.init_trackers(run.workdir.name, config={k: str(v) for k, v in run.config.to_dict().items()})
    if run.metrics.drop_after(state.step):
        run.logger.info("stats.jsonl: dropped the rows after step %d (redone from here)", state.step)


def _step(run: Run, state: TrainState, batch, step: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step and the EMA update; returns the per-sample loss terms and the
    gradient norm before clipping. Every draw is seeded from (seed, stream, rank, step)."""
    config, acc, generator = run.config, run.accelerator, run.generator
    tc = config.train
    # Batch and noise: per-step, per-process randomness.
    generator.manual_seed(mix_seed(config.seed, Stream.BATCH, acc.process_index, step))
    x0, cond = run.task.make_batch(batch, acc.device, generator)
    generator.manual_seed(mix_seed(config.seed, Stream.NOISE, acc.process_index, step))
    terms = training_losses(state.model, run.task.noise, x0, cond, objective=config.loss.objective,
                            generator=generator, **run.loss_kwargs)
    loss = terms["loss"].mean()

    # Stop before a non-finite loss reaches the weights; every process agrees.
    hooks.check_loss_finite(loss, acc, step, state.last_ckpt)

    # Update.
    state.optimizer.zero_grad(set_to_none=True)
    acc.backward(loss)
    grad_norm = acc.clip_grad_norm_(state.params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
    state.optimizer.step()
    state.lr_scheduler.step()

    # Update EMA.
    ema_update(state.ema, state.net, tc.ema_rate)
    state.step = step
    return terms, grad_norm


def _save(run: Run, state: TrainState) -> None:
    """Checkpoint ``state.step`` atomically (main process; the others wait), prune to
    config.train.keep_ckpts and, with select_best_by_fid, evaluate the saved EMA network."""
    config, acc, step = run.config, run.accelerator, state.step
    acc.wait_for_everyone()
    if run.is_main:
        state.last_ckpt = save_checkpoint(run.ckpt_root, step, {
            "nnet.pth": _cpu_state(state.net), "nnet_ema.pth": _cpu_state(state.ema),
            "optimizer.pth": state.optimizer.state_dict(), "lr_scheduler.pth": state.lr_scheduler.state_dict(),
            "step.pth": step}, {"config.json": config_to_json(config),
                                hooks.RUN_RECORD: json.dumps(run_record(acc)) + "\n"})
        hooks.prune_checkpoints(run.ckpt_root, config.train.get("keep_ckpts", 0))
        run.logger.info("saved %s", state.last_ckpt)
    else:
        state.last_ckpt = run.ckpt_root / f"{step}.ckpt"
    acc.wait_for_everyone()
    if best_checkpoint.enabled(config):
        best_checkpoint.evaluate_checkpoint(state.ema, run.task, config, acc, run.workdir, step, run.logger)


def _cpu_state(net: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
