"""Collectives for any number of processes holding shards of any size (empty included), and
what a process says when another one stops answering.

``sum_rows`` first agrees on the row count, pads every shard with zero rows and runs the
collective (a plain ``all_reduce`` of mismatched shapes waits forever). Every collective waits
at most ``collective_timeout()`` seconds (``ADADIFF_COLLECTIVE_TIMEOUT``, default 600);
``collective_failure`` describes a dead or stalled peer in one line. ``run_record`` (precision
really used, process count) goes into the
log, ``run.json`` and the report; ``record_change`` warns when a resume changes it;
``check_launch`` refuses processes that did not join into one run."""
from __future__ import annotations

import datetime
import os
from typing import List, Optional

import torch
import torch.distributed as dist

TIMEOUT_ENV = "ADADIFF_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# What the gloo / NCCL backends say when a peer is gone or silent (their errors carry no type of their own
# in every version): connection lost, or the wait for it timed out.
_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed",
         "connection refused", "nccl communicator was aborted")
_SILENT = ("timed out", "timeout", "watchdog caught collective operation timeout")


def collective_timeout() -> float:
    """Seconds a collective may wait for the other processes (``ADADIFF_COLLECTIVE_TIMEOUT``)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < 10 ** 7):
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds in (0, 1e7); unset it for "
                         f"{DEFAULT_TIMEOUT_S:g} s")
    return value


def process_group_kwargs() -> list:
    """``Accelerator(kwargs_handlers=...)``: the process group with this project's timeout."""
    from accelerate.utils import InitProcessGroupKwargs  # accelerate's own handler type

    return [InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=collective_timeout()))]


def _world(accelerator) -> int:
    return int(getattr(accelerator, "num_processes", 1))


def _max_count(n: int, accelerator) -> int:
    """The largest ``n`` over the processes."""
    if _world(accelerator) <= 1:
        return int(n)
    t = torch.tensor([int(n)], dtype=torch.long, device=accelerator.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    out = torch.zeros((rows, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    out[:tensor.shape[0]] = tensor
    return out


def sum_rows(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """Sum over the processes of (rows, ...) tensors whose row counts may differ (missing rows
    count as zeros); every process gets the (max rows, ...) sum."""
    if _world(accelerator) <= 1:
        return tensor
    tensor = tensor.to(accelerator.device)
    if not _in_group():  # a stand-in for accelerate (tests) holds no process group: its own reduce
        return accelerator.reduce(tensor, reduction="sum")
    out = _padded(tensor, _max_count(tensor.shape[0], accelerator))
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def collective_failure(exc: BaseException) -> Optional[str]:
    """The one line of a collective that failed because another process died or stalled
    (this process is in a process group), or None when ``exc`` is something else."""
    if not isinstance(exc, (RuntimeError, getattr(dist, "DistError", RuntimeError))) or not _in_group():
        return None
    text = str(exc).lower()
    rank, world = dist.get_rank(), dist.get_world_size()
    others = _others(rank, world)
    if any(s in text for s in _LOST):
        return (f"process {rank} of {world}: lost {others} (its connection closed: that process died; its own "
                f"message, if any, is above); stopping this process too. Launch the run again (a training run "
                f"resumes from its last checkpoint)")
    if any(s in text for s in _SILENT):
        return (f"process {rank} of {world}: {others} stopped answering (no reply within "
                f"{collective_timeout():g} s, {TIMEOUT_ENV}); stopping this process. Check that process "
                f"(stopped? swapping? a stuck data loader?) and launch the run again (a training run resumes "
                f"from its last checkpoint)")
    return None


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _others(rank: int, world: int) -> str:
    """The processes this one waits on: by name when there is one other, else all of them."""
    rest: List[int] = [r for r in range(world) if r != rank]
    if len(rest) == 1:
        return f"process {rest[0]}"
    return f"one of processes {', '.join(map(str, rest))}"


def precision_used(accelerator) -> str:
    """The arithmetic the run really computes in: 'fp16' or 'bf16' when accelerate's autocast
    is on, else 'fp32' (fp16 asked for on a CPU runs in fp32: accelerate turns it off there)."""
    asked = str(getattr(accelerator, "mixed_precision", "no") or "no")
    return asked if asked != "no" and getattr(accelerator, "native_amp", False) else "fp32"


def precision_note(accelerator) -> Optional[str]:
    """The warning for a precision asked for but not used (None when they agree)."""
    asked, used = str(getattr(accelerator, "mixed_precision", "no") or "no"), precision_used(accelerator)
    if asked in ("no", used):
        return None
    return (f"mixed precision {asked} is not available on {accelerator.device.type}: this run computes in {used} "
            f"(recorded as {used})")


def run_record(accelerator) -> dict:
    """What a checkpoint and a report record of the processes: the precision used and their number."""
    return {"precision": precision_used(accelerator), "processes": _world(accelerator)}


def check_launch(accelerator) -> None:
    """Refuse processes that a launcher started as one run (``WORLD_SIZE`` > 1) but that did not
    join into one (``accelerate launch --multi_gpu`` on a CPU without ACCELERATE_USE_CPU=1):
    each would run the whole job into the same folder."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and _world(accelerator) == 1:
        raise ValueError(f"launched as {world} processes (WORLD_SIZE={world}) that did not join into one run, so "
                         f"each would run the whole job into the same folder: on a CPU, set ACCELERATE_USE_CPU=1 "
                         f"(ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {world} ...), or "
                         f"launch one process")


def record_change(saved: dict, now: dict) -> Optional[str]:
    """How this run's ``run_record`` differs from the one a checkpoint saved (None if alike)."""
    diffs = [f"{k} {saved.get(k)} -> {now[k]}" for k in ("precision", "processes")
             if k in saved and saved.get(k) != now[k]]
    return "; ".join(diffs) or None
