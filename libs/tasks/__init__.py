"""Tasks: what differs between setups (pixel / latent / text-to-image, continuous / discrete
time): the training data, the forward-noise process, how a loaded batch becomes the network's
``(x0, cond)``, and for sampling the shape of x_T, the conditioning of image i, the schedule
with its network-time scale, and the decoding of x_0 to images in [0, 1]. The training and
evaluation engines only talk to these small objects.

==================  ==========================================================================
``pixel``           ``PixelTask``: pixel images, optional class labels
``latent``          ``LatentTask`` (stored SD-VAE moments, labels), ``LatentDecoder``
``text``            ``TextTask`` (moments, CLIP contexts), ``PromptTask`` (given contexts)
``conditions``      per-image labels and captions, condition dropout for guidance
``time_modes``      ``config.time``: noise, schedule and network-time scale; sampling setup
==================  ==========================================================================
"""
