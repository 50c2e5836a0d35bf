"""AdaDiff: step-wise adaptive computation for diffusion transformers.

The layers, bottom to top (a module imports only from its own layer or the ones above it in
this list, never from a later one; ``tests/test_layers.py`` checks it):

==================  ==========================================================================
``run``             run infrastructure: atomic writes, checkpoints and manifests, the run lock,
                    logs, user errors, config files, seed streams, weight checks
``data``            datasets by name, FID reference images, latent feature files
``exits``           exit rules (``policy``) and their compute record (``recorder``)
``models``          the backbone contract and the exit loop, U-ViT, FLOP counts, the network
                    registry, the frozen autoencoder and CLIP text encoder
``diffusion``       schedules, the forward-noise process, samplers, model-fn wrappers
``tasks``           pixel / latent / text-to-image setups: data, conditions, decoding
``evaluation``      sampling a set, exit-policy sweeps and calibration, FID, reports, images
``training``        the training loop, losses and objectives, data order, best checkpoint
``diffusers_exit``  diffusers transformers (DiT, PixArt) in the backbone contract, their heads
                    trained data-free, the sweep next to diffusers' own caches
``cli``             the entry scripts' shared main functions and the config check
==================  ==========================================================================

``libs.uvit``, ``libs.uvit_t2i``, ``libs.autoencoder``, ``libs.clip``, ``libs.checkpoint`` and
``libs.nets`` are thin aliases kept for the released U-ViT import paths.
"""
