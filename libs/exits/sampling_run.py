"""One sampling run under one exit rule: ``SamplingRun(net, policy, recorder, time_scale)`` is
the ``net_fn(x, t, cond) -> eps`` a sampler calls (network time ``time_scale * t``). It owns
the index of the next call and its ``Call`` (``policy.for_call``), the run's reuse cache (new
per run) and the output slicing (``net.noise_prediction``); the recorder only counts."""
from __future__ import annotations

from libs.exits.policy import as_policy
from libs.exits.forecast import forecast_rows, make_cache


class SamplingRun:
    """``net_fn`` of one sampling run (one batch) under one exit rule (module docstring)."""

    def __init__(self, net, policy, recorder=None, time_scale: float = 1.0):
        self.net, self.policy, self.recorder = net, as_policy(policy), recorder
        self.time_scale = time_scale
        self.cache = make_cache(self.policy, net.num_blocks)  # a ReuseCache, a ForecastCache or None
        self.calls = 0  # network calls made so far

    def __call__(self, x, t, cond=None):
        call = self.policy.for_call(self.calls)
        self.calls += 1
        out = self.net.forward_early_exit(x, self.time_scale * t, cond, exit_policy=call, reuse_cache=self.cache)
        if self.recorder is not None:
            span = call.reuse_span(self.net.num_blocks) if out.reused is not None else None
            self.recorder.record_call(out, span, self.cache.bytes_per_row() if self.cache is not None else 0,
                                      forecast_rows(self.cache, span))
        return self.net.noise_prediction(out.sample)
