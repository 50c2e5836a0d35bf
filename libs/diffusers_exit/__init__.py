"""Early exit for diffusers transformers: the adapter to the backbone contract, heads saved
apart from the model, data-free head training, and a sweep next to diffusers' own caches.

================  ==========================================================================
``adapter``       ``attach_exits(transformer)``: DiT / PixArt transformers as ``ExitBackbone``s
``heads``         the uncertainty heads as their own safetensors file, refused for another model
================  ==========================================================================
"""
from libs.diffusers_exit.adapter import attach_exits  # noqa: F401
