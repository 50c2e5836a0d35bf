"""What one network call does, as data: ``Call`` (a small frozen value: ``last`` block it may
run, None = the network's last; ``reuse`` DeepCache depth of the span taken from the run's
cache; per-sample ``rule``, None = every row runs to ``last``; reuse ``gate`` G: only rows
whose certainty before the span is >= G reuse), and ``Rule``, the per-sample rule that decides
after each block but the last which rows stop (released: ``Threshold``). Also the spelling
helpers (``fmt``, ``finite``, ``ExitPolicyError``)."""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

Span = Tuple[int, int]


class ExitPolicyError(ValueError):
    """A policy that cannot be parsed, or cannot run on this network."""


def fmt(v: float) -> str:
    """The shortest spelling that reads back as the same float, without a trailing '.0':
    0.9 -> '0.9', 0.9000001 -> '0.9000001', 0.9999999 -> '0.9999999', 0.0 and -0.0 -> '0'."""
    text = repr(float(v) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return text[:-2] if text.endswith(".0") else text


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(v, low: int) -> bool:
    return finite(v) and v == int(v) and v >= low


def float32(v: float) -> float:
    """``v`` rounded to float32 (what a float32 tensor compares a Python threshold against)."""
    return struct.unpack("f", struct.pack("f", v))[0]


def deepcache_span(k: int, num_blocks: int) -> Span:
    """DeepCache's span of depth k: blocks k .. num_blocks-1-k (the k shallow blocks on each side run)."""
    return (k, num_blocks - k)


def headless(name: str) -> ExitPolicyError:
    """The error of a rule ``name`` that needs uncertainty heads on weights without them."""
    return ExitPolicyError(f"exit policy {name} needs trained uncertainty heads, but the weights are plain U-ViT; "
                           f"use static:K or full, or fine-tune with train.py first")


class Rule:
    """A per-sample exit rule. ``decide_one`` defaults to ``decide`` on one-element CPU tensors;
    an override must make the same decisions on Python values (``certainty(j)``: the certainty
    after an earlier block j of the patience window)."""

    spec = "rule"

    def init_state(self, batch: int, device) -> Optional[torch.Tensor]:
        return None

    def decide(self, block: int, patience: int, certainty: Callable[[], torch.Tensor], state):
        """After ``block`` (never the last): ``(exits, state)``; ``certainty()`` is each active
        row's mean certainty, (b,) float32; ``patience`` how many passing blocks a row needs
        here. ``exits`` is None when no row can exit after this block (no host sync then)."""
        raise NotImplementedError

    def decide_one(self, block: int, patience: int, certainty: Callable[..., float], state):
        if state is None:
            state = self.init_state(1, "cpu")
        exits, state = self.decide(block, patience, lambda: torch.tensor([certainty()], dtype=torch.float32), state)
        return (None if exits is None else bool(exits[0])), state


@dataclass(frozen=True)
class Threshold(Rule):
    """The released AdaDiff rule: a row exits after the first block whose mean certainty is
    greater than ``tau`` (in-blocks: after the ``patience``-th such block)."""

    tau: float

    @property
    def spec(self) -> str:
        return f"threshold:{fmt(self.tau)}"

    def init_state(self, batch, device):
        return torch.zeros(batch, dtype=torch.long, device=device)  # passing blocks so far (patience)

    def decide(self, block, patience, certainty, state):
        passed = certainty() > self.tau  # (b,); the float32 tensor compares against float32(tau)
        if patience > 1:
            state = state + passed  # long + bool: passing blocks so far
            if block + 1 < patience:  # too few blocks yet for any row to reach the patience
                return None, state
            passed = state >= patience
        return passed, state

    def decide_one(self, block, patience, certainty, state):
        tau = float32(self.tau)  # as the tensor comparison: in float32
        if patience <= 1:
            return certainty() > tau, state
        # Patience, lazily: the row exits after the patience-th passing block of the window.
        # A block that fails cannot be that one (else the row would have exited earlier), so
        # no head runs until the current block passes; only then are the heads of the window's
        # earlier blocks that were not evaluated yet ("pending") counted, oldest first. The
        # exits are those of ``decide``; fewer heads run.
        passes, pending = state if state is not None else (0, ())
        if block + 1 < patience:  # too few blocks yet to exit: defer this block's head
            return None, (passes, pending + (block,))
        if not certainty() > tau:
            return False, (passes, pending)
        passes += 1
        for n, j in enumerate(pending):
            if passes >= patience:
                return True, (passes, pending[n:])
            passes += certainty(j) > tau
        return passes >= patience, (passes, ())


@dataclass(frozen=True)
class Call:
    """What one network call does (module docstring). ``Call()`` is full depth."""

    last: Optional[int] = None
    reuse: Optional[int] = None
    rule: Optional[Rule] = None
    gate: Optional[float] = None

    def __post_init__(self):
        if self.gate is not None and (self.reuse is None or not finite(self.gate) or not 0 <= self.gate <= 1):
            raise ExitPolicyError(f"reuse gate {self.gate!r}: a gate is a certainty in [0, 1] of a call that reuses")
        if self.last is not None and not integer(self.last, 0):
            raise ExitPolicyError(f"static:{self.last!r}: K is a 0-based block index (an integer >= 0)")
        if self.reuse is not None and not integer(self.reuse, 1):
            raise ExitPolicyError(f"reuse depth {self.reuse!r}: k is an integer >= 1")

    @property
    def spec(self) -> str:
        """'full', 'static:K', 'threshold:T', 'reuse:k', joined by '+' when several apply."""
        parts = ([f"reuse:{self.reuse}"] if self.reuse is not None else []) + \
                ([f"static:{self.last}"] if self.last is not None else []) + \
                ([self.rule.spec] if self.rule is not None else []) + \
                ([f"gate:{fmt(self.gate)}"] if self.gate is not None else [])
        return "+".join(parts) or "full"

    def __str__(self):
        return self.spec

    @property
    def uses_heads(self) -> bool:
        return self.rule is not None or self.gate is not None

    def last_block(self, num_blocks: int) -> int:
        return num_blocks - 1 if self.last is None else min(self.last, num_blocks - 1)

    def static_exit(self, num_blocks: int) -> Optional[int]:
        """The block after which every row exits, when known before the call (no per-sample
        rule), else None: what a whole-call compiled graph needs."""
        return None if self.rule is not None else self.last_block(num_blocks)

    def reuse_span(self, num_blocks: int) -> Optional[Span]:
        return None if self.reuse is None else deepcache_span(self.reuse, num_blocks)

    def blocks_computed(self, num_blocks: int) -> int:
        """Blocks every row computes when no rule exits it early (a reuse call: 2k)."""
        return 2 * self.reuse if self.reuse is not None else self.last_block(num_blocks) + 1

    def check(self, num_blocks: int, has_heads: bool = True, name: Optional[str] = None) -> None:
        """Refuse what cannot run on a network of ``num_blocks`` blocks (with or without heads);
        ``name``: the spelling the messages name (default: this call's)."""
        name = name or self.spec
        if self.uses_heads and not has_heads:
            raise headless(name)
        if self.last is not None and self.last >= num_blocks:
            raise ExitPolicyError(f"exit policy {name}: the network has {num_blocks} blocks "
                                  f"(0..{num_blocks - 1}); choose K <= {num_blocks - 1} ({num_blocks - 1} = full "
                                  f"depth)")
        if self.reuse is not None and 2 * self.reuse >= num_blocks:
            raise ExitPolicyError(f"exit policy {name}: the network has {num_blocks} blocks, so k (the shallow "
                                  f"blocks kept on each side of the reused span) must be below {num_blocks / 2:g}: "
                                  f"choose k <= {(num_blocks - 1) // 2}")
        if self.reuse is not None and self.last_block(num_blocks) < num_blocks - self.reuse - 1:
            raise ExitPolicyError(f"exit policy {name}: the call stops before the reused span ends")


FULL_CALL = Call()
