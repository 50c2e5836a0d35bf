"""Early exit for diffusers transformers: the adapter to the backbone contract, heads saved
apart from the model, data-free head training, and a sweep next to diffusers' own caches
(docs/diffusers.md).

================  ==========================================================================
``adapter``       ``attach_exits(transformer)``: DiT / PixArt transformers as ``ExitBackbone``s
``heads``         the uncertainty heads as their own safetensors file, refused for another model
``task``          ``DiffusersTask``: the training engine's task for an adapted model (a data set,
                  or data-free with the 'distill' objective; heads / exits / all trained)
``features``      the data-free training set: the frozen model's own samples, cached
``prompts``       a prompt file encoded once by the pipeline's text encoder (PixArt conditions)
``caches``        diffusers' first-block cache and TaylorSeer as sweep entries; their work count
``sweep``         steps x (full depth, exit and reuse rules, diffusers' caches) on the same images
``demo``          the three stages (train on digits, data-free heads, sweep) of the demo script
================  ==========================================================================
"""
from libs.diffusers_exit.adapter import attach_exits  # noqa: F401
