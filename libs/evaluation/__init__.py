"""Evaluation: sampling a set of images under step counts x exit policies and measuring it.

===================  =======================================================================
``engine``           ``sample_grid``, ``evaluate`` (a sweep of step counts x policies, with FID)
``sampling``         ``generate`` (one batch), per-image noise and sampler seeds
``calibration``      ``calibrate_policy`` (profile:, budget:) and runs on the calibration images
``frontier``         Pareto flags, the compute budget's choice and its quality proxy
``report``           the report (json / csv / txt), ``tradeoff.png``
``image_io``         sample grids and PNGs
``fid``              Frechet distance, statistics files, ``FIDAccumulator``, feature cache
``fid_uncertainty``  bootstrap standard error of an FID over its image set
``paired``           paired FID differences between rows, the step-reduction match, verdicts
``inception``        the pytorch-fid Inception network and where its weights are found
===================  =======================================================================
"""
