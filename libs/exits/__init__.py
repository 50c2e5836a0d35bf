"""Exit rules: which block each sample of each network call stops at.

================  ==========================================================================
``policy``        ``ExitPolicy`` and its rules (threshold, static, profile, budget, full),
                  parsing of ``--exit_policy`` spellings
``reuse``         cross-step reuse: ``deepcache:N:k``, ``phase:F:A+B``, ``plan:R`` and the
                  per-run ``ReuseCache``
``recorder``      ``ExitRecorder``: exits per step and block, heads run, blocks reused,
                  GFLOPs per image; a new reuse cache per sampling run
================  ==========================================================================

Calibration of the calibrated rules (``profile:``, ``budget:``, ``phase:``, ``plan:``) samples
images, so it lives in libs.evaluation (``calibrate_policy``).
"""
