"""The eval scripts' body (libs/cli/evaluate.py): the probe call that refuses weights whose
outputs or certainties are not finite before anything is sampled or scored."""

import pytest
import torch

from configs.digits_uvit_tiny import get_config
from libs.cli.evaluate import probe_outputs
from libs.models.registry import build_nnet
from libs.tasks.pixel import PixelTask


def tiny():
    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.nnet_path = "w.pth"
    return config


def test_finite_weights_pass_the_probe():
    config = tiny()
    probe_outputs(build_nnet(config.nnet).eval(), PixelTask(config, load_data=False), config, "cpu")


@pytest.mark.parametrize("what", ["predictions", "certainties"])
def test_non_finite_outputs_or_certainties_are_refused_naming_the_blocks(what):
    config = tiny()
    net = build_nnet(config.nnet).eval()
    real = net.forward_all_exits

    def poisoned(*a, **k):
        out = real(*a, **k)
        values = out.preds if what == "predictions" else out.certainties
        values[1].view(-1)[0] = float("nan")  # block 1 only
        return out

    net.forward_all_exits = poisoned
    with pytest.raises(FloatingPointError, match=rf"w.pth give non-finite {what} at block\(s\) 1 on a probe input"):
        probe_outputs(net, PixelTask(config, load_data=False), config, "cpu")


def test_huge_but_finite_weights_are_refused():
    config = tiny()
    net = build_nnet(config.nnet).eval()
    with torch.no_grad():
        net.pos_embed.fill_(1e30)  # finite, passes the weight check; every output overflows
    with pytest.raises(FloatingPointError, match=r"non-finite predictions at block\(s\) 0, 1, 2"):
        probe_outputs(net, PixelTask(config, load_data=False), config, "cpu")
