"""Tasks: what differs between setups (pixel / latent / text-to-image, continuous / discrete
time): training data, noise process, batch -> ``(x0, cond)``, and for sampling x_T's shape,
conditions, schedule, network-time scale and decoding to [0, 1].

==================  ==========================================================================
``pixel``           ``PixelTask``: pixel images, optional class labels
``latent``          ``LatentTask`` (stored SD-VAE moments, labels), ``LatentDecoder``
``text``            ``TextTask`` (moments, CLIP contexts), ``PromptTask`` (given contexts)
``conditions``      per-image labels and captions, condition dropout for guidance
``time_modes``      ``config.time``: noise, schedule and network-time scale; sampling setup
==================  ==========================================================================
"""
