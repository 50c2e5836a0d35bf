"""Training.

==================  ========================================================================
``engine``          ``train(config, task)``: the training loop, its ``Run`` and ``TrainState``
``hooks``           the loop's divergence guards and interval hooks
``losses``          the AdaDiff and U-ViT loss terms
``objectives``      ``training_losses``: an objective by name over the noise process
``data_order``      the deterministic, resumable data order
``best_checkpoint`` optional choice of the checkpoint with the best FID
==================  ========================================================================
"""
