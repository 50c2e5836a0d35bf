"""The backbone contract: what the engines, the exit loop and the compute accounting need from
a network (``num_blocks`` blocks between an embedding and a shared output head, one
uncertainty head per block). Subclasses of ``ExitBackbone`` implement:

    embed(x, t, cond) -> (h, carry)      tokens and the per-row state carried between blocks
    run_block(i, h, carry) -> h          block i (may push to / pop from the carry)
    select_rows(carry, rows) -> carry    the carry of the rows that stay (batch compaction)
    output_head(h) -> eps                the shared head, (B, C, H, W)
    certainty_map(i, h, carry)           head i's certainty map (B, C, H, W), for training
    mean_certainty(i, h, carry)          (B,) float32 mean certainty, for the exit test
    mean_certainty_one(i, h, carry)      the same for a batch of one, as a Python float (the loop may
                                         call it for an earlier block i of the patience window, with
                                         that block's h and the current carry)
    exit_patience(i) -> int              passing blocks a row needs before it may exit after i
    flops() -> NetworkFlops              per-image FLOPs of the pieces (libs/models/flops.py)
    reuse_problem(span) -> str | None    why blocks span[0]..span[1]-1 cannot be reused (None: they can;
                                         a reusable span must leave the carry as it found it)
    cache_value(span, h_in, h_out)       what a call that computed the span keeps (default h_out - h_in)
    reuse_value(span, h_in, cached)      the span's output from the cache (default h_in + cached)
    reuse_reads_input                    whether those two read h_in (the loop keeps it only then)
    cond_name                            keyword of the conditioning ('y', 'context', ...)
    eps_channels                         None, or how many leading output channels are the noise
                                         prediction (DiT with learned sigma; ``noise_prediction``)

and get ``forward`` (full depth without heads, or early exit with ``exit_threshold`` /
``exit_policy``), ``forward_early_exit`` (``EarlyExitOutput``; ``reuse_cache=`` for reuse
rules) and ``forward_all_exits`` (every block's prediction and certainty, for training).

``check_args(**kwargs) -> [problem, ...]`` validates constructor arguments (``config.nnet``)
without building anything, one line ``config.nnet.<field>=<value>: <what is allowed>`` each;
the constructor raises them all at once (``NetworkConfigError``)."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from libs.models import exit_loop
from libs.models.exit_loop import EarlyExitOutput  # noqa: F401 (part of the contract's vocabulary)
from libs.models.flops import NetworkFlops


@dataclass
class AllExitsOutput:
    """Training output. preds: (N, B, C, H, W) the shared head on each of the N blocks
    (``preds[-1]`` = full depth); certainties: (N, B, C, H, W) in (0, 1), on detached features."""

    preds: torch.Tensor
    certainties: torch.Tensor

    @property
    def sample(self) -> torch.Tensor:
        return self.preds[-1]


class NetworkConfigError(ValueError):
    """Constructor arguments (config.nnet) that cannot build the network; one line per problem."""

    @classmethod
    def raise_for(cls, problems: List[str]) -> None:
        if problems:
            raise cls("invalid network arguments: " + "; ".join(problems))


def constructor_defaults(cls) -> Dict[str, Any]:
    """Keyword arguments of ``cls``'s constructor with their defaults, including those passed through to
    parents with ``**kwargs`` (along the MRO)."""
    out: Dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (nn.Module, object):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                out.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def integer_problem(field: str, value, low: int) -> Optional[str]:
    """``config.nnet.<field>=<value>: ...`` unless ``value`` is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return f"config.nnet.{field}={value!r}: must be an integer >= {low}"
    return None


def positive_problem(field: str, value) -> Optional[str]:
    """``config.nnet.<field>=<value>: ...`` unless ``value`` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"config.nnet.{field}={value!r}: must be a finite number > 0"
    return None


class ExitBackbone(nn.Module):
    """Base class of early-exit networks: the hooks above, and the forwards built on them."""

    num_blocks: int
    cond_name: str = "cond"
    eps_channels: Optional[int] = None

    @classmethod
    def check_args(cls, **kwargs) -> List[str]:
        """Every problem of the constructor arguments ``kwargs``, one line each (see the module
        docstring); [] when they build. Here: names the constructor does not take."""
        known = constructor_defaults(cls)
        return [f"config.nnet.{k}={v!r}: not an argument of {cls.__module__}.{cls.__name__}; known: "
                f"{', '.join(known)}" for k, v in kwargs.items() if k not in known]

    # ----------------------------------------------------------------------------- hooks
    def embed(self, x: torch.Tensor, timesteps: torch.Tensor, cond) -> Tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def run_block(self, i: int, h: torch.Tensor, carry) -> torch.Tensor:
        raise NotImplementedError

    def select_rows(self, carry, rows: torch.Tensor):
        raise NotImplementedError

    def output_head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def certainty_map(self, i: int, h: torch.Tensor, carry) -> torch.Tensor:
        raise NotImplementedError

    def mean_certainty(self, i: int, h: torch.Tensor, carry) -> torch.Tensor:
        raise NotImplementedError

    def mean_certainty_one(self, i: int, h: torch.Tensor, carry) -> float:
        return float(self.mean_certainty(i, h, carry)[0])

    def exit_patience(self, i: int) -> int:
        return 1

    reuse_reads_input: bool = True

    def reuse_problem(self, span: Tuple[int, int]) -> Optional[str]:
        s, e = span
        if 0 <= s < e <= self.num_blocks:
            return None
        return f"span {s}..{e - 1} is not a run of blocks of this network (0..{self.num_blocks - 1})"

    def cache_value(self, span, h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
        return h_out - h_in

    def reuse_value(self, span, h_in: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
        return h_in + cached

    def flops(self) -> NetworkFlops:
        raise NotImplementedError

    def noise_prediction(self, out: torch.Tensor) -> torch.Tensor:
        """The noise-prediction channels of an output (..., C, H, W) of this network (all of
        them unless ``eps_channels``): what samplers and losses see."""
        return out if self.eps_channels is None else out[..., :self.eps_channels, :, :]

    # ----------------------------------------------------------------------------- forwards
    def forward(self, x, timesteps, *args, exit_threshold: Optional[float] = None, exit_policy=None,
                **kwargs) -> torch.Tensor:
        """Noise prediction (B, C, H, W). ``exit_threshold`` (a float, < 1 = the released rule
        per sample) or ``exit_policy`` (a ``Call`` or a rule that is the same at every call)
        make samples exit early."""
        cond = self._cond_from_args(args, kwargs)
        call = exit_loop.call_from_args(exit_threshold, exit_policy)
        if call.rule is None and call.reuse is None:
            return self._forward_truncated(x, timesteps, cond, call.last_block(self.num_blocks))
        return exit_loop.forward(self, x, timesteps, cond, call)[0]

    # defined beside the loop (libs/models/exit_loop.py), so that a sampling call goes from the
    # sampling run into the loop's file and on to the blocks
    forward_early_exit = exit_loop.forward_early_exit
    _forward_truncated = exit_loop.forward_truncated

    def forward_all_exits(self, x, timesteps, *args, **kwargs) -> AllExitsOutput:
        """Every block's prediction (shared head) and certainty map, for training."""
        cond = self._cond_from_args(args, kwargs)
        h, carry = self.embed(x, timesteps, cond)
        preds, certs = [], []
        for i in range(self.num_blocks):
            h = self.run_block(i, h, carry)
            preds.append(self.output_head(h))  # (B, C, H, W)
            certs.append(self.certainty_map(i, h, carry))
        return AllExitsOutput(torch.stack(preds), torch.stack(certs))  # (N, B, C, H, W) each

    def _cond_from_args(self, args, kwargs):
        """The conditioning, given positionally or as the keyword ``cond_name`` (y / context)."""
        if len(args) > 1:
            raise TypeError(f"expected at most one conditioning argument, got {len(args)}")
        cond = args[0] if args else kwargs.pop(self.cond_name, None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} (conditioning is '{self.cond_name}=')")
        return cond

