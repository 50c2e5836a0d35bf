"""Network registry: ``build_nnet(config.nnet)`` with ``config.nnet.name`` in NETWORKS, and
``check_nnet(config.nnet)``: its problems, from the network class's ``check_args``, without
building it."""
from __future__ import annotations

from typing import List, Mapping

import torch.nn as nn

from libs.models import dit, uvit, uvit_t2i

# name -> the class (or builder) of config.nnet; each has check_args(**nnet) -> problems
NETWORKS = {"uvit": uvit.UViT, "uvit_t2i": uvit_t2i.UViT, "dit": dit.dit_from_config}


def check_nnet(nnet: Mapping) -> List[str]:
    """Every problem of ``config.nnet`` for its network (one line each, see
    ``ExitBackbone.check_args``); [] for a name not in NETWORKS (``build_nnet`` refuses it)."""
    kw = dict(nnet)
    check = getattr(NETWORKS.get(kw.pop("name", "uvit")), "check_args", None)
    return check(**kw) if check is not None else []


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
