"""Helpers the tests share (test modules import these, never each other).

==================  ========================================================================
``configs``         ``tiny_config``: the digits training config at test size
``cli_runner``      many command lines of one CLI in one process, with simulated faults
``gaussian_model``  the analytic Gaussian data model of the sampler tests
``tiny_assets``     tiny offline VAE / CLIP / image-tree stand-ins for latent and text tasks
==================  ========================================================================
"""
