"""Networks.

================  ==========================================================================
``backbone``      the backbone contract (``ExitBackbone``): the hooks every exit rule runs on
``exit_loop``     the one early-exit loop over those hooks: any ``Call``, cached or not, any
                  batch size (compaction; the batch of one in one place); the backbone's
                  ``forward_early_exit`` and ``EarlyExitOutput``
``compile``       compiled sampling views (``config.sample.compile``: none, blocks, graphs)
``uvit_core``     ``UViTBackbone``: U-ViT blocks, long skips, uncertainty heads
``uvit``          ``UViT``: unconditional / class-conditional
``uvit_t2i``      ``UViT`` for text-to-image (CLIP context tokens)
``dit``           ``DiT``: released DiT (adaLN-Zero blocks) with uncertainty heads, presets
``dit_blocks``    DiT's embedders, adaLN-Zero block, final layer, 2-D sin-cos positions
``flops``         FLOP counts of the building blocks, ``NetworkFlops``
``registry``      ``build_nnet(config.nnet)``
``autoencoder``   the frozen Stable Diffusion KL-f8 VAE
``clip``          the frozen CLIP text encoder
================  ==========================================================================
"""
