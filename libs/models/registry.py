"""Network registry: ``build_nnet(config.nnet)`` with ``config.nnet.name`` in NETWORKS."""
from __future__ import annotations

from typing import Mapping

import torch.nn as nn


def _uvit(**kw):
    from libs.models.uvit import UViT
    return UViT(**kw)


def _uvit_t2i(**kw):
    from libs.models.uvit_t2i import UViT
    return UViT(**kw)


def _dit(**kw):
    from libs.models.dit import dit_from_config
    return dit_from_config(**kw)


NETWORKS = {"uvit": _uvit, "uvit_t2i": _uvit_t2i, "dit": _dit}


def build_nnet(nnet: Mapping) -> nn.Module:
    """Build the network described by ``config.nnet`` (its ``name`` picks the class)."""
    kw = dict(nnet)
    name = kw.pop("name", "uvit")
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r} in config.nnet.name; known: {sorted(NETWORKS)}")
    try:
        return NETWORKS[name](**kw)
    except TypeError as e:
        raise ValueError(f"config.nnet does not fit network {name!r}: {e}") from e
