"""The one table of exit rules: what a run-level rule is (``ExitPolicy``), its spelling and
parsing (``--exit_policy``, ``config.sample.exit_policy``) and help text (``spelling_help``).

A rule is an ``ExitPolicy`` subclass registered with ``@register``: ``family`` is the word
before the first ':', ``words`` its spellings without an argument, ``spelling`` its help line.
It validates its argument in ``argument_problem``, is calibrated once per run where it
``needs_calibration`` and turns each call index into a ``Call`` (``for_call``). Its spelling
(``p.spec``) is canonical: ``parse_policy(str(p)) == p``."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from libs.exits.call import Call, ExitPolicyError, finite, fmt, headless

#: family -> rule class; word (``full``, ``none``) -> rule class
RULES: Dict[str, type] = {}
WORDS: Dict[str, type] = {}
#: the family a bare number (``0.9``) is read as
BARE = "threshold"


def register(cls: type) -> type:
    """Class decorator: enter ``cls`` in the table under its family and words."""
    for key, table in [(cls.family, RULES)] + [(w, WORDS) for w in cls.words]:
        if key in table:
            raise ValueError(f"exit rule spelling {key!r} is registered twice ({table[key].__name__}, {cls.__name__})")
        table[key] = cls
    return cls


def spelling_help() -> str:
    """The --exit_policy help: one line per registered rule, in registration order."""
    return "\n".join(cls.spelling for cls in RULES.values() if cls.spelling)


def spellings() -> str:
    """The registered spellings on one line (for error messages)."""
    return ", ".join(cls.spelling.split(None, 1)[0] for cls in RULES.values() if cls.spelling)


class ExitPolicy:
    """A run-level exit rule (module docstring). Subclasses set ``family`` and ``spelling``,
    implement ``spec`` and set ``the_call`` (or implement ``_call``); a calibrated rule also
    ``needs_calibration`` and, once calibrated, ``calls`` (the calls per run it was calibrated for)."""

    family = ""
    words: Tuple[str, ...] = ()
    spelling = ""
    #: computes uncertainty heads while sampling
    uses_heads = False
    #: may take a span's output from the run's reuse cache (libs/exits/reuse.py)
    reuses = False
    #: None: a reused span is the cached value; 0, 1, 2: the order of its forecast (libs/exits/forecast.py)
    forecast_order: Optional[int] = None
    #: its calls differ by call index (a network forward alone cannot run it)
    per_call = False
    needs_calibration = False
    calls: Optional[int] = None
    #: the ``Call`` of every call, for a rule that is the same at each (else ``_call`` per index)
    the_call: Optional[Call] = None

    @classmethod
    def argument_problem(cls, value) -> Optional[str]:
        """Why ``value`` cannot be this rule's argument, in one line with the allowed range."""
        return None

    @classmethod
    def refuse(cls, value, text: Optional[str] = None) -> None:
        """Raise ``argument_problem`` for ``value`` (spelled ``text``, else ``family:value``)."""
        problem = cls.argument_problem(value)
        if problem is not None:
            text = text if text is not None else f"{cls.family}:{fmt(value) if finite(value) else value}"
            raise ExitPolicyError(f"exit policy {text!r}: {problem}")

    @classmethod
    def parse(cls, arg: str, text: str) -> "ExitPolicy":
        """The rule from the argument ``arg`` of the spelling ``text`` (default: one number)."""
        value = number(arg, text)
        cls.refuse(value, text)
        return cls(value)

    @property
    def spec(self) -> str:
        raise NotImplementedError

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

    def effective_threshold(self) -> float:
        """The certainty threshold the rule runs at (1.0 at full depth, NaN without one)."""
        return math.nan

    def check(self, num_blocks: int, has_heads: bool = True) -> None:
        """Refuse what cannot run on a network of ``num_blocks`` blocks (with or without heads)."""
        if self.uses_heads and not has_heads:
            raise headless(self.spec)

    def cache_spans(self, num_blocks: int) -> Tuple[Tuple[int, int], ...]:
        """The spans ``(start, stop)`` a sampling run keeps in its reuse cache; () if none."""
        return ()

    def for_call(self, call: int) -> Call:
        """What network call ``call`` (0-based) of a sampling run does."""
        if self.needs_calibration:
            raise ExitPolicyError(f"{self.spec} is not calibrated: run it through the evaluation engine, or "
                                  f"calibrate it first (libs.evaluation.calibration (calibrate_policy))")
        if self.calls is not None and call >= self.calls:
            raise ExitPolicyError(f"{self.spec} was calibrated for {self.calls} network calls per sampling run, "
                                  f"but call {call + 1} was made: calibrate with the same sampler and steps")
        return self._call(call)

    def _call(self, call: int) -> Call:
        return self.the_call

    def __str__(self):
        return self.spec

    def __repr__(self):
        return f"<ExitPolicy {self.spec}>"

    def __eq__(self, other):
        return isinstance(other, ExitPolicy) and type(other) is type(self) and other.spec == self.spec

    def __hash__(self):
        return hash((type(self).__name__, self.spec))


class PerCallTable(ExitPolicy):
    """A rule calibrated into one ``Call`` per network call of a run (``table``; None until
    calibrated): ``profile:``'s static exits, ``plan:``'s actions."""

    per_call = True
    table: Optional[Tuple[Call, ...]] = None

    @property
    def needs_calibration(self) -> bool:
        return self.table is None

    @property
    def calls(self) -> Optional[int]:
        return None if self.table is None else len(self.table)

    def _call(self, call):
        return self.table[call]


# ----------------------------------------------------------------------------- parsing
def number(text: str, item: str) -> float:
    """``text`` as a float, or an ``ExitPolicyError`` naming the spelling ``item``."""
    try:
        value = float(text)
    except ValueError:
        raise ExitPolicyError(f"exit policy {item!r}: {text!r} is not a number; spell policies as "
                              f"{spellings()}") from None
    if math.isnan(value):
        raise ExitPolicyError(f"exit policy {item!r}: NaN is not a valid value; spell policies as {spellings()}")
    return value


def _overflows(text: str) -> bool:
    """True when ``text`` is a number too large for a float (it reads as infinity)."""
    try:
        return math.isinf(float(text))
    except ValueError:
        return False


def parse_policy(item) -> ExitPolicy:
    """One rule from its spelling (a number is its bare spelling, a threshold; an ExitPolicy
    is returned as is); an ``ExitPolicyError`` names the item as written and the range."""
    if isinstance(item, ExitPolicy):
        return item
    if isinstance(item, (int, float)) and not isinstance(item, bool):
        item = fmt(item)
    text = str(item).strip()
    low = text.lower()
    if low in WORDS:
        return WORDS[low].parse("", text)
    family, _, arg = (BARE, "", text) if ":" not in low else (part.strip() for part in low.partition(":"))
    if ":" not in low and _overflows(low):  # '1e309' is not the word 'inf' (full depth): say both
        raise ExitPolicyError(f"exit policy {text!r}: {text!r} is not a finite number; for full depth write "
                              f"full (or none, inf, 1)")
    if family not in RULES:
        raise ExitPolicyError(f"unknown exit policy {text!r}; spell policies as {spellings()}")
    return RULES[family].parse(arg, text)


def parse_policies(value) -> List[ExitPolicy]:
    """'0.9' | 'threshold:0.8,static:3,full' | 0.9 | [..] -> rules in the given order; two items
    with the same canonical spelling (``0.9`` and ``threshold:0.90``) raise ``ExitPolicyError``."""
    if isinstance(value, (ExitPolicy, int, float)):
        items = [value]
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    else:
        items = list(value)
    seen = {}  # rule -> the item that gave it
    for item in items:
        policy = parse_policy(item)
        written = str(item).strip() if not isinstance(item, (int, float)) else fmt(item)
        if policy in seen:
            raise ExitPolicyError(f"exit policy {written!r} repeats {seen[policy]!r} (both are {policy.spec}): "
                                  f"list each policy once")
        seen[policy] = written
    if not seen:
        raise ExitPolicyError(f"no exit policy given; spell policies as {spellings()}")
    return list(seen)


def parse_thresholds_only(value) -> List[ExitPolicy]:
    """``--exit_threshold``: a list of thresholds (or full depth), as the released flag."""
    policies = parse_policies(value)
    for p in policies:
        if p.family not in ("threshold", "full"):
            raise ExitPolicyError(f"--exit_threshold takes thresholds (e.g. 0.9,0.92,none), got {p.spec}; "
                                  f"use --exit_policy for static:K, profile:T, budget:R and the reuse rules")
    return policies
