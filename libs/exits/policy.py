"""Exit policies: after which block each sample stops, at each network call of a sampling run.

A policy is parsed and validated once (``parse_policies``) and then handed, as an object,
to the network's early-exit loop (``UViTBackbone.forward_early_exit(exit_policy=...)``),
the compute accounting (``libs.exits.recorder``), the evaluation engine and the training-time
grids. Command-line spelling (``--exit_policy``, ``config.sample.exit_policy``), a
comma-separated list:

    threshold:T   the released AdaDiff rule, decided per sample: exit after the first block
                  whose mean certainty exceeds T (in-blocks: after the ``patience``-th such
                  block). A bare number T means the same.
    static:K      every sample exits after block K (0-based) at every call; no uncertainty
                  head is computed.
    profile:T     the timestep profile of threshold:T without per-sample decisions: run
                  threshold:T once on a calibration set, take the mean exit block of each
                  sampling step, rounded, and apply it as a per-step static exit.
    budget:R      a target layer ratio R in (0, 1]: the threshold is calibrated by bisection
                  until the measured layer ratio is within 0.01 of R, then threshold:T runs.
    full | none   full depth (also 1.0 / threshold:1): no head, no exit test.

Cross-step reuse (``libs/exits/reuse.py``): a call may take the output of a span of blocks
from the cache of the last call of the same sampling run that computed it, instead of
computing the span:

    deepcache:N:k DeepCache: every N-th call (0, N, 2N, ...) computes every block and caches
                  the span of blocks k .. num_blocks-1-k; the calls between compute the k
                  shallow blocks on each side of it and reuse the span (U-ViT: the tokens
                  entering the out-block paired with in-block k-1, long skips fresh; 2k of the
                  blocks run). N >= 1 (1: every call computes), k >= 1 with 2k < num_blocks.
    phase:F:A+B   rule A on the first round(F x calls) network calls of a run, rule B after
                  (B's calls counted from the switch); A and B are rules that need no
                  calibration (threshold, static, full, deepcache), F in [0, 1]. E.g.
                  phase:0.4:threshold:0.9+deepcache:2:1. Calibration counts the calls per
                  run (one cheap static:0 run of the calibration images).
    plan:R        a calibrated compute plan under the compute ratio R in (0, 1] (GFLOPs/img
                  over full depth's at the same sampler steps): per network call, compute
                  every block, reuse a DeepCache span of depth k, or stop after block K,
                  chosen greedily on the calibration images to keep the samples closest to
                  the full-depth samples from the same noise.

``profile:``, ``budget:``, ``phase:`` and ``plan:`` need calibration (libs.evaluation
(calibrate_policy)) before they run.

Each rule validates its argument in one place, the classmethod ``argument_problem``: its
constructor raises it and ``parse_policy`` reports it against the spelling the user wrote.
A policy's spelling (``str(p)``, ``p.spec``) is canonical and reads back as the same policy,
``parse_policy(str(p)) == p``: numbers are written in the shortest form that reads back as the
same float (``threshold:0.9999999`` is never shortened to ``threshold:1``, which is full depth),
and ``-0`` is ``0``.

The network side of the contract is three hooks: ``static_exit`` (every row exits after one
known block: a truncated forward), ``init_state`` and ``decide`` (a per-sample decision
after each block, from the block's mean certainty). A new rule is one new subclass. Reuse adds
two: ``reuse_span`` (per call: the span of blocks whose output the call takes from the cache)
and ``cache_spans`` (per run: the spans the run keeps in its cache).
"""
from __future__ import annotations

import math
import struct
from typing import Callable, List, Optional, Sequence, Tuple

import torch

FULL_DEPTH_WORDS = ("full", "none", "inf")
SPELLING = "threshold:T (or a bare T), static:K, profile:T, budget:R, deepcache:N:k, phase:F:A+B, plan:R, full"


class ExitPolicyError(ValueError):
    """A policy that cannot be parsed, or cannot run on this network."""


def _fmt(v: float) -> str:
    """The shortest spelling that reads back as the same float, without a trailing '.0':
    0.9 -> '0.9', 0.9000001 -> '0.9000001', 0.9999999 -> '0.9999999', 0.0 and -0.0 -> '0'."""
    text = repr(float(v) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return text[:-2] if text.endswith(".0") else text


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _refuse(cls, value) -> None:
    """Raise the rule's ``argument_problem`` for ``value`` (the constructors' validation)."""
    problem = cls.argument_problem(value)
    if problem is not None:
        raise ExitPolicyError(f"exit policy '{cls.family}:{_fmt(value) if _finite(value) else value}': {problem}")


def _refuse_spelled(rule, value, text: str) -> None:
    """Raise the rule's ``argument_problem`` for ``value`` parsed from the spelling ``text``."""
    problem = rule.argument_problem(value)
    if problem is not None:
        raise ExitPolicyError(f"exit policy {text!r}: {problem}")


def float32(v: float) -> float:
    """``v`` rounded to float32 (what a float32 tensor compares a Python threshold against)."""
    return struct.unpack("f", struct.pack("f", v))[0]


class ExitPolicy:
    """Base class; also the full-depth policy (no uncertainty head, no exit test)."""

    family = "full"
    #: computes uncertainty heads while sampling
    uses_heads = False
    #: needs calibration (libs.evaluation (calibrate_policy)) before it runs
    needs_calibration = False
    #: may take a span's output from the cache of an earlier call (libs/exits/reuse.py)
    reuses = False

    @classmethod
    def argument_problem(cls, value) -> Optional[str]:
        """Why ``value`` cannot be this rule's argument, in one line with the allowed range
        (None: it can). The one definition of the range: the constructor and ``parse_policy``
        both ask it."""
        return None

    @property
    def spec(self) -> str:
        """Canonical spelling (the report's ``policy`` column)."""
        return "full"

    @property
    def is_full(self) -> bool:
        return self.family == "full"

    @property
    def slug(self) -> str:
        """File-name form of the spec: 'threshold_0.9', 'static_3', 'full'."""
        return self.spec.replace(":", "_")

    def calibration(self) -> str:
        """What calibration found ('' when nothing was calibrated)."""
        return ""

    def calibrate(self, run: Callable[["ExitPolicy"], dict], **options) -> "ExitPolicy":
        """A runnable copy of a policy that ``needs_calibration``; ``run(policy)`` samples the
        calibration set under ``policy`` and returns ``ExitRecorder.summary``."""
        return self

    def effective_threshold(self) -> float:
        """The certainty threshold the policy runs at (1.0 at full depth, NaN for rules without one)."""
        return 1.0 if self.is_full else math.nan

    # -------------------------------------------------------------- sampling-run side
    def for_call(self, call: int) -> "ExitPolicy":
        """The policy for network call ``call`` (0-based) of a sampling run."""
        return self

    def check(self, num_blocks: int, has_heads: bool = True) -> None:
        """Refuse what cannot run on a network of ``num_blocks`` blocks (with or without trained heads)."""
        if self.uses_heads and not has_heads:
            raise ExitPolicyError(f"exit policy {self.spec} needs trained uncertainty heads, but the weights are "
                                  f"plain U-ViT; use static:K or full, or fine-tune with train.py first")

    def cache_spans(self, num_blocks: int) -> Tuple[Tuple[int, int], ...]:
        """The spans ``(start, stop)`` (blocks start .. stop-1) whose outputs a sampling run keeps
        in its cache, so that later calls may reuse them; () for rules that never reuse."""
        return ()

    # -------------------------------------------------------------- network side
    def reuse_span(self, num_blocks: int) -> Optional[Tuple[int, int]]:
        """The span ``(start, stop)`` whose output this call takes from the run's cache instead
        of computing blocks start .. stop-1 (a row with nothing cached computes them); None: the
        call computes every block it runs."""
        return None

    def static_exit(self, num_blocks: int) -> Optional[int]:
        """Block after which every row exits, when known before the call (None: decided per sample)."""
        return num_blocks - 1

    def init_state(self, batch: int, device) -> Optional[torch.Tensor]:
        """Per-row state carried between blocks (compacted with the rows); None if stateless."""
        return None

    def decide(self, block: int, patience: int, certainty: Callable[[], torch.Tensor],
               state: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """After ``block`` (never the last): ``(exits, state)``.

        ``certainty()`` returns each active row's mean certainty, (b,) float32; ``patience``
        is how many passing blocks a row needs here (the in-blocks' patience, else 1).
        ``exits`` is a (b,) bool mask, or None when no row can exit after this block (the
        network then skips the host synchronisation of the decision)."""
        return None, state

    def decide_one(self, block: int, patience: int, certainty: Callable[..., float],
                   state) -> Tuple[Optional[bool], object]:
        """``decide`` for a batch of one row, on Python values: ``certainty()`` returns the row's
        mean certainty after this block as a float (``certainty(j)``: after an earlier block j
        of the patience window, i.e. one with patience > 1, for rules that evaluate heads
        lazily); ``state`` starts as None; ``exits`` is a bool (or None: the row cannot exit
        here). Must decide exactly as ``decide`` does (it may evaluate fewer heads). This
        default runs ``decide`` on one-element CPU tensors; a rule may override it with the same
        decisions on Python values."""
        if state is None:
            state = self.init_state(1, "cpu")
        exits, state = self.decide(block, patience, lambda: torch.tensor([certainty()], dtype=torch.float32),
                                   state)
        return (None if exits is None else bool(exits[0])), state

    def __str__(self):
        return self.spec

    def __repr__(self):
        return f"<ExitPolicy {self.spec}>"

    def __eq__(self, other):
        return isinstance(other, ExitPolicy) and type(other) is type(self) and other.spec == self.spec

    def __hash__(self):
        return hash((type(self).__name__, self.spec))


FULL = ExitPolicy()


class ThresholdExit(ExitPolicy):
    """The released rule, per sample: exit when the block's mean certainty is greater than tau."""

    family = "threshold"
    uses_heads = True

    def __init__(self, tau: float):
        tau = float(tau) + 0.0  # -0.0 is 0.0
        _refuse(ThresholdExit, tau)
        self.tau = tau

    @classmethod
    def argument_problem(cls, tau):
        if _finite(tau) and 0.0 <= tau < 1.0:
            return None
        return "the threshold is out of range: T is a mean certainty in [0, 1) (1, 'full' or 'none' = full depth)"

    @property
    def spec(self) -> str:
        return f"threshold:{_fmt(self.tau)}"

    def effective_threshold(self) -> float:
        return self.tau

    def static_exit(self, num_blocks):
        return None

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


class StaticExit(ExitPolicy):
    """Every row exits after block k, at every call (static truncation); no uncertainty head."""

    family = "static"

    def __init__(self, block: int):
        _refuse(StaticExit, block)
        self.block = int(block)

    @classmethod
    def argument_problem(cls, block):
        if _finite(block) and block == int(block) and block >= 0:
            return None
        return "K is a 0-based block index (an integer >= 0)"

    @property
    def spec(self) -> str:
        return f"static:{self.block}"

    def check(self, num_blocks, has_heads=True):
        if self.block >= num_blocks:
            raise ExitPolicyError(f"exit policy {self.spec}: the network has {num_blocks} blocks (0..{num_blocks - 1}); "
                                  f"choose K <= {num_blocks - 1} ({num_blocks - 1} = full depth)")

    def static_exit(self, num_blocks):
        return min(self.block, num_blocks - 1)


class ProfileExit(ExitPolicy):
    """threshold:T's mean exit block per sampling step, applied to every row as a static exit.

    ``blocks`` (one 0-based exit block per network call of a sampling run) is filled by
    calibration; before that the policy cannot run."""

    family = "profile"
    needs_calibration = True

    def __init__(self, tau: float, blocks: Optional[Sequence[int]] = None):
        _refuse(ProfileExit, float(tau))
        self.source = ThresholdExit(tau)
        self.blocks = tuple(int(b) for b in blocks) if blocks is not None else None

    @classmethod
    def argument_problem(cls, tau):
        return None if ThresholdExit.argument_problem(tau) is None else "T is a threshold in [0, 1)"

    @property
    def tau(self) -> float:
        return self.source.tau

    @property
    def spec(self) -> str:
        return f"profile:{_fmt(self.tau)}"

    def calibration(self) -> str:
        return "" if self.blocks is None else "blocks per step " + " ".join(map(str, self.blocks))

    def check(self, num_blocks, has_heads=True):
        if self.blocks is None:  # calibration runs threshold:T, which needs the heads
            self.source.check(num_blocks, has_heads)

    def calibrate(self, run: Callable[[ExitPolicy], dict], **_) -> "ProfileExit":
        """``run(policy) -> summary`` samples the calibration set (see ``libs.exits.recorder``);
        the profile is threshold:T's mean exit block per network call, rounded half up."""
        per_step = run(self.source)["exit_block_per_step"]
        return ProfileExit(self.tau, [int(math.floor(b + 0.5)) for b in per_step])

    def for_call(self, call):
        if self.blocks is None:
            raise ExitPolicyError(f"{self.spec} is not calibrated: run it through the evaluation engine, or "
                                  f"calibrate it first (libs.evaluation (calibrate_policy))")
        if call >= len(self.blocks):
            raise ExitPolicyError(f"{self.spec} was calibrated for {len(self.blocks)} network calls per sampling "
                                  f"run, but call {call + 1} was made: calibrate with the same sampler and steps")
        return StaticExit(self.blocks[call])

    def static_exit(self, num_blocks):
        raise ExitPolicyError(f"{self.spec} varies per sampling step: call policy.for_call(step) (the "
                              f"evaluation engine's recorder does) and pass the result to the network")


class BudgetExit(ThresholdExit):
    """A target layer ratio; runs as threshold:tau with tau found by calibration."""

    family = "budget"
    needs_calibration = True

    def __init__(self, target: float, tau: Optional[float] = None, achieved: Optional[float] = None):
        target = float(target)
        _refuse(BudgetExit, target)
        self.target = target
        self.tau = math.nan if tau is None else float(tau)
        self.achieved = achieved

    @classmethod
    def argument_problem(cls, target):
        if _finite(target) and 0.0 < target <= 1.0:
            return None
        return "R is a target layer ratio (blocks run / all blocks) in (0, 1]"

    @property
    def spec(self) -> str:
        return f"budget:{_fmt(self.target)}"

    @property
    def calibrated(self) -> bool:
        return not math.isnan(self.tau)

    def calibration(self) -> str:
        if not self.calibrated:
            return ""
        return f"threshold {self.tau:.4f} (calibration layer ratio {self.achieved:.3f})"

    def effective_threshold(self) -> float:
        return self.tau

    def calibrate(self, run: Callable[[ExitPolicy], dict], tolerance: float = 0.01,
                  max_iter: int = 20) -> "BudgetExit":
        """Bisection on the threshold until the calibration set's layer ratio is within
        ``tolerance`` of the target (the ratio grows with the threshold; threshold 1 = full
        depth = ratio 1). Returns the closest threshold found, with its measured ratio."""
        floor = run(ThresholdExit(0.0))["layer_ratio"]  # every row exits as early as the rule allows
        if self.target < floor - tolerance:
            raise ExitPolicyError(f"{self.spec} cannot be reached: on this model the threshold rule runs a layer "
                                  f"ratio in [{floor:.3f}, 1] (threshold 0 exits every sample at the earliest block "
                                  f"the rule allows); choose R >= {math.ceil(floor * 100) / 100:.2f}, or static:K "
                                  f"for fewer blocks")
        best = min((abs(floor - self.target), 0.0, floor), (abs(1.0 - self.target), 1.0, 1.0))
        lo, hi = 0.0, 1.0
        for _ in range(max_iter):
            if best[0] <= tolerance:
                break
            mid = (lo + hi) / 2
            ratio = run(ThresholdExit(mid))["layer_ratio"]
            best = min(best, (abs(ratio - self.target), mid, ratio))
            if ratio > self.target:
                hi = mid
            else:
                lo = mid
        return BudgetExit(self.target, tau=best[1], achieved=best[2])

    def for_call(self, call):
        if not self.calibrated:
            raise ExitPolicyError(f"{self.spec} is not calibrated: run it through the evaluation engine, or "
                                  f"calibrate it first (libs.evaluation (calibrate_policy))")
        return self

    def static_exit(self, num_blocks):
        if not self.calibrated:
            self.for_call(0)
        return num_blocks - 1 if self.tau >= 1.0 else None


# ----------------------------------------------------------------------------- parsing
#: the rule of each family spelled ``family:value``
RULES = {"threshold": ThresholdExit, "static": StaticExit, "profile": ProfileExit, "budget": BudgetExit}


def _number(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ExitPolicyError(f"exit policy {item!r}: {text!r} is not a number; spell policies as "
                              f"{SPELLING}") from None
    if math.isnan(value):
        raise ExitPolicyError(f"exit policy {item!r}: NaN is not a valid value; spell policies as {SPELLING}")
    return value


def parse_policy(item) -> ExitPolicy:
    """One policy from its spelling (a number is its bare spelling, a threshold; an ExitPolicy
    is returned as is). ``1``, ``threshold:1``, ``budget:1``, ``full``, ``none`` and ``inf`` are
    full depth; every other value must be in its rule's range (``argument_problem``), else an
    ``ExitPolicyError`` names the item as written and the range."""
    if isinstance(item, ExitPolicy):
        return item
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        item = _fmt(item)
    text = str(item).strip()
    low = text.lower()
    if low in FULL_DEPTH_WORDS:
        return FULL
    bare = ":" not in low  # a bare number is a threshold
    family, _, arg = ("threshold", "", text) if bare else (part.strip() for part in low.partition(":"))
    from libs.exits import reuse  # the reuse rules build on this module's rules
    if family in reuse.RULES:
        return reuse.RULES[family].parse(arg, text)
    if family not in RULES:
        raise ExitPolicyError(f"unknown exit policy {text!r}; spell policies as {SPELLING}")
    value = _number(arg, text)
    rule = RULES[family]
    if value == 1.0 and family in ("threshold", "budget"):
        return FULL
    _refuse_spelled(rule, value, text)
    return rule(int(value) if family == "static" else value)


def parse_policies(value) -> List[ExitPolicy]:
    """'0.9' | 'threshold:0.8,static:3,full' | 0.9 | [..] -> policies in the given order.

    Each policy may be listed once: two items with the same canonical spelling (``0.9`` and
    ``threshold:0.90``, ``-0`` and ``0``, ``full`` and ``1.0``) are refused with an
    ``ExitPolicyError`` naming both, rather than one silently dropped; items that differ in
    any digit (``0.9`` and ``0.9000001``) are distinct policies with distinct spellings."""
    if isinstance(value, (ExitPolicy, int, float)):
        items = [value]
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    else:
        items = list(value)
    seen = {}  # policy -> the item that gave it
    for item in items:
        policy = parse_policy(item)
        written = str(item).strip() if not isinstance(item, (int, float)) else _fmt(item)
        if policy in seen:
            raise ExitPolicyError(f"exit policy {written!r} repeats {seen[policy]!r} (both are {policy.spec}): "
                                  f"list each policy once")
        seen[policy] = written
    if not seen:
        raise ExitPolicyError(f"no exit policy given; spell policies as {SPELLING}")
    return list(seen)


def parse_thresholds_only(value) -> List[ExitPolicy]:
    """``--exit_threshold``: a list of thresholds (or full depth), as the released flag."""
    policies = parse_policies(value)
    for p in policies:
        if p.family not in ("threshold", "full"):
            raise ExitPolicyError(f"--exit_threshold takes thresholds (e.g. 0.9,0.92,none), got {p.spec}; "
                                  f"use --exit_policy for static:K, profile:T, budget:R and the reuse rules")
    return policies


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
