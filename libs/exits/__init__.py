"""Exit rules: which block each sample of each network call stops at.

================  ==========================================================================
``policy``        ``ExitPolicy`` and its rules (threshold, static, profile, budget, full),
                  parsing of ``--exit_policy`` spellings
``recorder``      ``ExitRecorder``: exits per step and block, heads run, GFLOPs per image
================  ==========================================================================

Calibration of the calibrated rules (``profile:``, ``budget:``) samples images, so it lives
in libs.evaluation (``calibrate_policy``).
"""
