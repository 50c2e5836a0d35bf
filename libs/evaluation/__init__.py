"""Evaluation: sampling a set of images under exit policies and measuring it.

================  ==========================================================================
``engine``        ``generate``, ``sample_grid``, ``evaluate`` (a policy sweep with FID)
``report``        the report (json / csv / txt) and ``tradeoff.png``
``image_io``      sample grids and PNGs
``fid``           Frechet distance, statistics files, ``FIDAccumulator``, feature cache
``inception``     the pytorch-fid Inception network and where its weights are found
================  ==========================================================================
"""
