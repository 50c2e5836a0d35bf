"""Head-gated reuse: the trained uncertainty heads decide, per sample and call, whether a
reused (copied or forecast) span may stand in for computing it.

Spelling: ``gate:G:RULE`` (``GatedReuse``), RULE a reuse rule that needs no calibration
(``deepcache:N:k``, ``forecast:N:k:O``), G in [0, 1]. E.g. ``gate:0.6:forecast:2:1:1``.

At a call where RULE reuses the span (k, num_blocks - k), each row runs the blocks before the
span (0 .. k-1) as RULE does, then head k-1 reads the row's mean certainty there; the row takes
the span from the cache only where that certainty is at least G, and otherwise computes the
span (and stores it: its history gets a fresh value). Calls where RULE computes every block
are RULE's.

Why head k-1: the head after block i is trained to estimate, per sample, how close the
network's prediction from block i already is to the full network's (AdaDiff's uncertainty
estimation). Where the blocks before the span already predict the output with high
certainty, the span changes the output little, so a stale or extrapolated value of it costs
little; where the prefix is uncertain, the output rests on the span, and the row recomputes
it. This is the exit test's signal read as a reuse test: the exit rule stops a confident row,
the gate lets a confident row skip the span's fresh computation and keeps its fresh skips and
out-blocks.

The two ends: G = 0 never recomputes (RULE itself, plus one head per reusing call), G = 1
recomputes every row whose certainty is below 1 (a mean of sigmoids: every row in practice),
so the outputs are full depth's. The head runs once per row and reusing call and is counted
in the compute (``uem_evals``). The decision is per row, on the row's own certainty, so a batch
decides as each of its rows alone.
"""
from __future__ import annotations

import dataclasses

from libs.exits.call import finite, fmt
from libs.exits.registry import ExitPolicy, number, parse_policy, register


@register
class GatedReuse(ExitPolicy):
    """``gate:G:RULE``: RULE's reuse, taken per row only where head k-1's certainty is >= G."""

    family = "gate"
    spelling = "gate:G:RULE   a reuse RULE whose rows reuse only where the head before the span reads >= G"
    reuses = uses_heads = per_call = True

    def __init__(self, gate: float, rule):
        rule = parse_policy(rule)
        self.refuse((float(gate), rule))
        self.gate, self.rule = float(gate) + 0.0, rule
        self.forecast_order = rule.forecast_order

    @classmethod
    def argument_problem(cls, value):
        if not (isinstance(value, tuple) and len(value) == 2 and finite(value[0]) and 0 <= value[0] <= 1):
            return "spell it gate:G:RULE with G in [0, 1] (the certainty a row needs to reuse) and a reuse RULE"
        rule = value[1]
        if not isinstance(rule, ExitPolicy) or not rule.reuses or rule.needs_calibration or rule.family == "gate":
            spec = rule.spec if isinstance(rule, ExitPolicy) else rule
            return (f"{spec} cannot be gated: RULE is a reuse rule that needs no calibration (deepcache:N:k, "
                    f"forecast:N:k:O)")
        return None

    @classmethod
    def parse(cls, arg: str, text: str) -> "GatedReuse":
        head, _, rest = arg.partition(":")
        value = (number(head, text), parse_policy(rest)) if rest.strip() else None
        cls.refuse(value, text)
        return cls(*value)

    @property
    def spec(self) -> str:
        return f"gate:{fmt(self.gate)}:{self.rule.spec}"

    def check(self, num_blocks, has_heads=True):
        super().check(num_blocks, has_heads)
        self.rule.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return self.rule.cache_spans(num_blocks)

    def _call(self, call):
        action = self.rule.for_call(call)
        return action if action.reuse is None else dataclasses.replace(action, gate=self.gate)
