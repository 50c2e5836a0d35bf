"""The named pieces the training loop (``libs/training/engine.py``) calls around its steps:
set-up and resume (``prepare_workdir``, ``override_hyperparameters``: after a resume the
config sets lr, weight_decay and betas), guards that every process decides alike
(``check_loss_finite``, ``check_weights``: NaN/inf or ``|w| > config.train.max_abs_weight``
stops the run before those weights are saved), and interval hooks (``every``, ``LossMeter``,
``write_log_row``, ``sample_grids``, ``evaluate_fid``, ``prune_checkpoints``)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from libs.evaluation.engine import evaluate, sample_grid
from libs.models.compile import compile_network, compile_seconds
from libs.run.checkpoint import clean_stale_temporaries, list_checkpoints
from libs.run.config_io import config_diff, load_config_json
from libs.run.distributed import record_change
from libs.run.weight_guard import describe_bad_weight, first_bad_weight

STOP_HINT = "Try a lower config.optimizer.lr, config.train.grad_clip, or bf16."


def every(step: int, interval) -> bool:
    """Whether a hook with this interval runs at ``step`` (a 0 / None interval: never)."""
    return bool(interval) and step % interval == 0


# ----------------------------------------------------------------------------- set-up and resume
def warn_config_changed(workdir: Path, config, logger) -> List[str]:
    """Warn (and return the dotted keys) where ``config`` differs from ``<workdir>/config.json``."""
    saved = Path(workdir) / "config.json"
    if not saved.exists():
        return []
    changed = config_diff(load_config_json(saved).to_dict(), config.to_dict())
    if changed:
        logger.warning("config differs from the run's saved config.json in: %s", ", ".join(changed))
    return changed


def prepare_workdir(config, lock, resuming: bool, logger) -> None:
    """Main process only, while holding ``lock``: make the workdir and log what a run inherits
    from an earlier one there (changed config, stale lock, removed checkpoint temporaries)."""
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if resuming:
        warn_config_changed(workdir, config, logger)
    if lock.takeover_message():
        logger.warning("%s", lock.takeover_message())
    for note in clean_stale_temporaries(workdir / "ckpts"):
        logger.warning("%s", note)


def warn_run_record_changed(ckpt: Path, now: dict, logger) -> None:
    """A resume whose precision or process count differs from the checkpoint's ``run.json``:
    the run goes on, but its result is then not the uninterrupted run's, and the log says so."""
    try:
        saved = json.loads((Path(ckpt) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return  # a checkpoint from before run.json: nothing to compare
    change = record_change(saved if isinstance(saved, dict) else {}, now)
    if change:
        logger.warning("resuming %s with %s: the result will differ from an uninterrupted run's (same precision and "
                       "process count reproduce it)", ckpt, change)


def override_hyperparameters(optimizer: torch.optim.Optimizer, lr_scheduler, oc) -> None:
    """Make the optimiser's groups and the schedule's base follow ``oc`` (config.optimizer)."""
    lr_scheduler.base_lrs = [oc.lr] * len(optimizer.param_groups)
    for g in optimizer.param_groups:
        g.update(initial_lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas),
                 lr=oc.lr * lr_scheduler.lr_lambdas[0](lr_scheduler.last_epoch))


RUN_RECORD = "run.json"  # in each checkpoint: the precision used and the process count (run_record)


# ----------------------------------------------------------------------------- guards
def check_loss_finite(loss: torch.Tensor, accelerator, step: int, last_ckpt) -> None:
    """Raise FloatingPointError when the loss is non-finite on any process."""
    if not bool(torch.isfinite(accelerator.gather(loss.detach()[None])).all()):
        raise FloatingPointError(
            f"non-finite loss at step {step}; stopping without saving. The last good checkpoint is "
            f"{last_ckpt or 'none'}. {STOP_HINT}")


def check_weights(net: nn.Module, ema: nn.Module, max_abs: float, step: int, last_ckpt) -> None:
    """Raise FloatingPointError if the network or its EMA holds NaN/inf or |w| > max_abs."""
    for which, module in (("network", net), ("EMA network", ema)):
        bad = first_bad_weight(module.named_parameters(), max_abs)
        if bad is not None:
            raise FloatingPointError(
                f"the {which} diverged at step {step}: {describe_bad_weight(bad, max_abs)} "
                f"(config.train.max_abs_weight={max_abs:g}); stopping without saving. The last good checkpoint is "
                f"{last_ckpt or 'none'}. {STOP_HINT}")


# ----------------------------------------------------------------------------- logging
class LossMeter:
    """Running sums of the loss terms since the last log row, and the time they took."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.count, self.t_last = 0, time.perf_counter()

    def add(self, terms: Dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().mean()
        self.count += 1

    def flush(self, accelerator, step: int, lr: float, grad_norm, batch_size: int) -> dict:
        """The log row: each term's mean over the steps since the last row and over processes,
        with the learning rate, the last gradient norm and the throughput; then start afresh."""
        keys = sorted(self.sums)
        means = accelerator.reduce(torch.stack([self.sums[k] for k in keys]) / self.count, reduction="mean")
        dt = time.perf_counter() - self.t_last
        row = {k: float(v) for k, v in zip(keys, means)}
        row.update(step=step, lr=lr, grad_norm=float(grad_norm), steps_per_s=self.count / dt,
                   images_per_s=self.count * batch_size / dt)
        self.reset()
        return row


def write_log_row(row: dict, metrics, accelerator, trackers: bool, bar, logger) -> None:
    """One log row to stats.jsonl, the trackers (config.train.log_with), the progress bar and the log."""
    metrics.write(**row)
    if trackers:
        accelerator.log(row, step=row["step"])
    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
    logger.info("step %d %s", row["step"], " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))


# ----------------------------------------------------------------------------- samples, FID, pruning
def sample_grids(ema: nn.Module, task, config, policies, step: int, logger) -> None:
    """Main process: one grid per policy, ``samples/<step>.png`` at full depth and
    ``samples/<step>_<policy slug>.png`` for the exit policies."""
    folder = Path(config.workdir) / "samples"
    ema = compile_network(ema, config.sample.get("compile", "none"), logger=logger)  # config.sample.compile
    for policy in policies:
        name = f"{step}.png" if policy.is_full else f"{step}_{policy.slug}.png"
        sample_grid(ema, task, config, folder / name, policy)
    logger.info("sample grids in %s (compiling: %.1fs)", folder, compile_seconds(ema))


def evaluate_fid(ema: nn.Module, task, config, policies, accelerator, step: int, metrics, logger) -> list:
    """All processes: FID and compute of every policy into ``eval/step_<step>``, one stats row
    ``{"step", "eval": [...]}`` and, with trackers, ``fid_<policy>`` scalars. Returns the results."""
    results = evaluate(ema, task, config, policies, accelerator, Path(config.workdir) / "eval" / f"step_{step}",
                       logger, progress=False)
    metrics.write(step=step, eval=[r.row() for r in results])
    if config.train.get("log_with"):
        accelerator.log({f"fid_{r.policy}": r.fid for r in results}, step=step)
    return results


def prune_checkpoints(root: Path, keep: Optional[int]) -> List[Path]:
    """Remove all but the newest ``keep`` checkpoints (0 = keep all, as the released code);
    returns the removed directories."""
    if not keep or keep <= 0:
        return []
    removed = list_checkpoints(root)[:-keep]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed
