"""Network registry: ``build_nnet(config.nnet)`` with ``config.nnet.name`` in NETWORKS,
``check_nnet(config.nnet)``: its problems, from the network class's ``check_args``, without
building it, and ``load_nnet(config.nnet, path, seed)``: the network built and its weights
loaded (``libs.run.checkpoint.load_weights``)."""
from __future__ import annotations

from typing import List, Mapping, Tuple

import torch
import torch.nn as nn

from libs.models import dit, uvit, uvit_t2i
from libs.run.checkpoint import LoadReport, load_weights

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


def load_nnet(nnet: Mapping, path, seed: int = 0) -> Tuple[nn.Module, LoadReport]:
    """Build ``config.nnet`` (parameters initialised from ``seed``: what a plain U-ViT file
    lacks, the heads, starts from there) and load the weights at ``path`` into it; returns the
    network on the CPU and the load report (what the file held: ``report.kind``)."""
    torch.manual_seed(seed)
    net = build_nnet(nnet)
    return net, load_weights(net, path)
