"""Resuming from a checkpoint that ``read_checkpoint`` accepted: the checks that need this run's
optimizer and config, each a one-line error naming the fix."""
from __future__ import annotations

from pathlib import Path


class ResumeMismatchError(ValueError):
    """The checkpoint is intact but does not fit this run's config."""


def load_training_state(optimizer, lr_scheduler, saved: dict, ckpt: Path) -> None:
    """Load the saved optimizer and scheduler states; a state that does not fit this run's
    optimizer (another set of trained tensors: e.g. config.loss.objective changed) is a
    ``ResumeMismatchError`` instead of torch's message."""
    ckpt = Path(ckpt)
    want = [len(g["params"]) for g in optimizer.param_groups]
    got = [len(g["params"]) for g in saved["optimizer.pth"]["param_groups"]]
    if want != got:
        raise ResumeMismatchError(
            f"cannot resume from {ckpt}: its optimizer.pth trains {sum(got)} tensors, this run's config trains "
            f"{sum(want)} (a field that decides which weights train changed since the checkpoint, e.g. "
            f"config.loss.objective): resume with the config in {ckpt / 'config.json'}, or start afresh in "
            f"another --workdir")
    try:
        optimizer.load_state_dict(saved["optimizer.pth"])
        lr_scheduler.load_state_dict(saved["lr_scheduler.pth"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ResumeMismatchError(f"cannot resume from {ckpt}: its optimizer.pth / lr_scheduler.pth do not fit this "
                                  f"run's optimizer ({type(e).__name__}: {e}): resume with the config in "
                                  f"{ckpt / 'config.json'}, or start afresh in another --workdir") from None


def check_resume_step(saved_step, n_steps: int, ckpt: Path) -> int:
    """The step to resume from; a run asked to end before the checkpoint's step is refused
    (it would do nothing and rewrite config.json)."""
    step = int(saved_step)
    if n_steps < step:
        raise ResumeMismatchError(f"config.train.n_steps={n_steps} is below step {step} of the checkpoint {ckpt} "
                                  f"this run resumes from: raise config.train.n_steps to train on, or choose "
                                  f"another --workdir to start afresh")
    return step
