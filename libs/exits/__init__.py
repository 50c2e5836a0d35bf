"""Exit rules: what each network call of a sampling run does, and the accounting of it.

================  ==========================================================================
``call``          ``Call``: what one network call does (last block, reused span, per-sample
                  rule) as a frozen value; the per-sample ``Threshold`` rule
``registry``      the one table of rules: ``ExitPolicy`` (a run-level rule), ``register``,
                  parsing of ``--exit_policy`` spellings, ``spelling_help()``
``policy``        exit rules: threshold, static, profile, budget, full; ``as_call``
``reuse``         cross-step reuse: ``deepcache:N:k``, ``phase:F:A+B``, ``plan:R`` and the
                  per-run ``ReuseCache``
``forecast``      ``forecast:N:k:O``: the reused span forecast from the last full calls
                  (order 0 copy, 1 linear, 2 quadratic in time); ``ForecastCache``
``gated``         ``gate:G:RULE``: the head before the span decides, per row, whether to reuse
``search``        ``search:R``: the plan a search of whole plans found (the search itself:
                  ``libs/evaluation/plan_search.py``)
``sampling_run``  ``SamplingRun``: the ``net_fn`` of one run (each call's ``Call``, the reuse
                  cache, the noise channels of the output)
``recorder``      ``ExitRecorder``: exits per step and block, heads run, blocks reused,
                  GFLOPs per image (it only counts)
================  ==========================================================================

Calibration samples images, so it lives in ``libs/evaluation``. Importing this package
registers every rule module.
"""
# The order of the imports is the order of the registry's table and of the --exit_policy help.
from libs.exits import policy, reuse  # noqa: F401,I001 (registers the rules)
from libs.exits import forecast, gated, search  # noqa: F401,I001 (registers the rules built on reuse)
