"""Evaluation: sampling a set of images under step counts x exit policies and measuring it.

===================  =======================================================================
``engine``           ``sample_grid``, ``evaluate`` (a sweep of step counts x policies, with FID)
``sampling``         ``sample_batch`` / ``generate`` (one batch), ``index_batches``, per-image seeds
``calibration``      ``calibrate_policy`` (profile:, budget:, phase:, plan:'s greedy planner),
                     runs on the calibration images, the quality proxy ``proxy_distance``
``plan_search``      the search of whole plans behind ``search:R``
``frontier``         Pareto flags and the compute budget's choice
``report``           the report (json / csv / txt), ``tradeoff.png``
``image_io``         sample grids and PNGs
``fid``              Frechet distance, statistics files, ``FIDAccumulator``, feature cache
``fid_uncertainty``  bootstrap standard error of an FID over its image set
``paired``           paired FID differences between rows, the step-reduction match, verdicts
``inception``        the pytorch-fid Inception network and where its weights are found
===================  =======================================================================
"""
