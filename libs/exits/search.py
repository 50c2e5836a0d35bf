"""``search:R``: a calibrated plan found by searching a structured family of whole plans with a
score of the calibration images (``libs/evaluation/plan_search.py`` searches; this is the rule).

Once calibrated it runs the plan found (a ``phase:``, ``forecast:``, ``gate:`` or threshold rule)
and names it, with its action per network call, in the report's ``calibration`` column.
"""
from __future__ import annotations

from typing import List, Optional

from libs.exits.call import fmt
from libs.exits.registry import ExitPolicy, register
from libs.exits.reuse import ComputePlan


@register
class PlanSearch(ExitPolicy):
    """``search:R``: the plan of the searched family that keeps the calibration images closest
    to full depth's (the search's score) under the compute ratio R (module docstring)."""

    family = "search"
    spelling = "search:R      the best plan of a searched family (phase, reuse, forecast, gate) under the ratio R"
    per_call = True

    def __init__(self, ratio: float, plan: Optional[ExitPolicy] = None, proxy: Optional[float] = None,
                 achieved: Optional[float] = None, calls: Optional[int] = None, tried: int = 0, scored=(),
                 skipped: int = 0):
        ratio = float(ratio)
        self.refuse(ratio)
        self.ratio, self.plan, self.proxy, self.achieved, self.calls = ratio, plan, proxy, achieved, calls
        self.tried = tried  # plans run and scored (proxy: the chosen plan's score)
        self.skipped = skipped  # plans of the family not run: over R by their least compute
        self.scored = tuple(scored)  # (spec, compute ratio, score) of every plan run, in order
        # Before calibration: the search runs threshold rules and reuses, so it needs heads and a cache.
        self.uses_heads = plan is None or plan.uses_heads
        self.reuses = plan is None or plan.reuses
        self.forecast_order = None if plan is None else plan.forecast_order

    @classmethod
    def argument_problem(cls, ratio):
        return ComputePlan.argument_problem(ratio)  # the same compute ratio as plan:R

    @property
    def spec(self) -> str:
        return f"search:{fmt(self.ratio)}"

    @property
    def needs_calibration(self) -> bool:
        return self.plan is None

    def actions(self) -> List[str]:
        """The chosen plan's action per network call."""
        return [self.plan.for_call(c).spec for c in range(self.calls)]

    def calibration(self) -> str:
        if self.plan is None:
            return ""
        return (f"{self.plan.spec} (compute ratio {self.achieved:.3f}, score {self.proxy:.4g}, best of {self.tried} run, "
                f"{self.skipped} over R unrun); per call: " + " ".join(self.actions()))

    def check(self, num_blocks, has_heads=True):
        if self.plan is not None:
            self.plan.check(num_blocks, has_heads)

    def cache_spans(self, num_blocks):
        return () if self.plan is None else self.plan.cache_spans(num_blocks)

    def _call(self, call):
        return self.plan.for_call(call)
