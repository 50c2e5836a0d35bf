"""The exit rules: after which block each sample stops, at each network call of a sampling run
(``threshold:T``, ``static:K``, ``profile:T``, ``budget:R``, ``full``; each rule's ``spelling``
is its line of ``--exit_policy``'s help, ``libs/exits/registry.py``). Each turns a call index
into a ``Call`` (``libs/exits/call.py``); ``profile:`` and ``budget:`` are calibrated once per
run (``libs/evaluation/calibration.py``). ``as_call`` is what a network forward accepts.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from libs.exits.call import FULL_CALL, Call, ExitPolicyError, Threshold, finite, float32, fmt, integer  # noqa: F401
from libs.exits.registry import ExitPolicy, PerCallTable, number, register
from libs.exits.registry import parse_policies, parse_policy, parse_thresholds_only  # noqa: F401 (released paths)


@register
class ThresholdExit(ExitPolicy):
    """The released rule, per sample: exit when the block's mean certainty is greater than tau."""

    family = "threshold"
    spelling = "threshold:T   the released rule, per sample: exit when a block's mean certainty > T (bare T too)"
    uses_heads = True

    def __init__(self, tau: float):
        tau = float(tau) + 0.0  # -0.0 is 0.0
        self.refuse(tau)
        self.tau = tau
        self.the_call = Call(rule=Threshold(tau))

    @classmethod
    def argument_problem(cls, tau):
        if finite(tau) and 0.0 <= tau < 1.0:
            return None
        return "the threshold is out of range: T is a mean certainty in [0, 1) (1, 'full' or 'none' = full depth)"

    @classmethod
    def parse(cls, arg, text):
        return FULL if number(arg, text) == 1.0 else super().parse(arg, text)

    @property
    def spec(self) -> str:
        return f"{self.family}:{fmt(self.tau)}"

    def effective_threshold(self) -> float:
        return self.tau

@register
class StaticExit(ExitPolicy):
    """Every row exits after block k, at every call (static truncation); no uncertainty head."""

    family = "static"
    spelling = "static:K      every sample exits after block K (0-based) at every call; no head runs"

    def __init__(self, block: int):
        self.refuse(block)
        self.block = int(block)
        self.the_call = Call(last=self.block)

    @classmethod
    def argument_problem(cls, block):
        return None if integer(block, 0) else "K is a 0-based block index (an integer >= 0)"

    @property
    def spec(self) -> str:
        return f"static:{self.block}"

    def check(self, num_blocks, has_heads=True):
        self.the_call.check(num_blocks, has_heads)

@register
class ProfileExit(PerCallTable):
    """threshold:T's mean exit block per sampling step, applied to every row as a static exit;
    ``blocks`` (one 0-based exit block per network call of a run) comes from calibration."""

    family = "profile"
    spelling = "profile:T     threshold:T's mean exit block per sampling step, as a per-step static exit"

    def __init__(self, tau: float, blocks: Optional[Sequence[int]] = None):
        self.refuse(float(tau))
        self.source = ThresholdExit(tau)
        self.blocks = tuple(int(b) for b in blocks) if blocks is not None else None
        self.table = None if blocks is None else tuple(Call(last=b) for b in self.blocks)

    @classmethod
    def argument_problem(cls, tau):
        return None if ThresholdExit.argument_problem(tau) is None else "T is a threshold in [0, 1)"

    @property
    def tau(self) -> float:
        return self.source.tau

    @property
    def spec(self) -> str:
        return f"profile:{fmt(self.tau)}"

    def calibration(self) -> str:
        return "" if self.blocks is None else "blocks per step " + " ".join(map(str, self.blocks))

    def check(self, num_blocks, has_heads=True):
        if self.blocks is None:  # calibration runs threshold:T, which needs the heads
            self.source.check(num_blocks, has_heads)



@register
class BudgetExit(ThresholdExit):
    """A target layer ratio; runs as threshold:tau with tau found by calibration."""

    family = "budget"
    spelling = "budget:R      a target layer ratio R in (0, 1]: threshold:T with T calibrated to reach it"

    def __init__(self, target: float, tau: Optional[float] = None, achieved: Optional[float] = None):
        target = float(target)
        self.refuse(target)
        self.target = target
        self.tau = math.nan if tau is None else float(tau)
        self.achieved = achieved
        self.the_call = FULL_CALL if self.tau >= 1.0 else Call(rule=Threshold(self.tau))

    @classmethod
    def argument_problem(cls, target):
        if finite(target) and 0.0 < target <= 1.0:
            return None
        return "R is a target layer ratio (blocks run / all blocks) in (0, 1]"

    @property
    def spec(self) -> str:
        return f"budget:{fmt(self.target)}"

    @property
    def needs_calibration(self) -> bool:
        return math.isnan(self.tau)

    def calibration(self) -> str:
        if self.needs_calibration:
            return ""
        return f"threshold {self.tau:.4f} (calibration layer ratio {self.achieved:.3f})"


@register
class FullDepth(ExitPolicy):
    """Full depth: no uncertainty head, no exit test (``FULL``)."""

    family = "full"
    words = ("full", "none", "inf")
    the_call = FULL_CALL
    spelling = "full          full depth (also none, 1.0, threshold:1): no head, no exit test"

    @classmethod
    def parse(cls, arg, text):
        if arg:
            raise ExitPolicyError(f"unknown exit policy {text!r}: full depth takes no argument (full, none, 1.0)")
        return FULL

    @property
    def spec(self) -> str:
        return "full"

    def effective_threshold(self) -> float:
        return 1.0

FULL = FullDepth()


def as_policy(value) -> ExitPolicy:
    """What the network accepts as ``exit_threshold``/``exit_policy``: None or a number >= 1 is
    full depth, a number below 1 the released threshold rule, an ExitPolicy itself."""
    if value is None:
        return FULL
    if isinstance(value, ExitPolicy):
        return value
    tau = float(value)
    if not math.isnan(tau) and tau >= 1.0:
        return FULL  # a mean of sigmoids never exceeds 1: no row could exit
    return ThresholdExit(tau)


def as_call(value) -> Call:
    """The ``Call`` of one network forward: a ``Call`` as it is, else ``as_policy(value)``'s, which must be the
    same at every call (a per-call rule runs through a ``SamplingRun``)."""
    if isinstance(value, Call):
        return value
    policy = as_policy(value)
    call = policy.for_call(0)
    if policy.per_call:
        raise ExitPolicyError(f"{policy.spec} varies per call: run it through a sampling run "
                              f"(libs.exits.sampling_run.SamplingRun), which asks policy.for_call(call) for each "
                              f"call and passes the Call to the network")
    return call
