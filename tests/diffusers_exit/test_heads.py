"""libs/diffusers_exit/heads.py: heads saved and loaded alone; a file for another model refused."""
import pytest
import torch
from safetensors.torch import load_file

from libs.diffusers_exit import attach_exits
from libs.run.errors import UserError
from tests.diffusers_exit.tiny_models import tiny_dit, tiny_pixart


def test_heads_round_trip_alone(tmp_path):
    net = attach_exits(tiny_dit())
    with torch.no_grad():
        for head in net.uem_heads:
            head.proj.weight.normal_()
    path = tmp_path / "heads.safetensors"
    net.save_heads(path)
    saved = load_file(str(path))
    assert all(k.split(".")[1] == "proj" for k in saved)  # the heads only, no transformer weight
    other = attach_exits(tiny_dit(), heads=path)
    for a, b in zip(net.uem_heads.state_dict().values(), other.uem_heads.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("other", [lambda: tiny_pixart(layers=3), lambda: tiny_dit(layers=2)],
                         ids=["wrong model", "wrong depth"])
def test_mismatched_head_file_is_refused_in_one_line(tmp_path, other):
    path = tmp_path / "heads.safetensors"
    attach_exits(tiny_dit(layers=3)).save_heads(path)
    with pytest.raises(UserError) as e:
        attach_exits(other(), heads=path)
    msg = str(e.value)
    assert "\n" not in msg and "DiTTransformer2DModel (depth 3" in msg and "not for this model" in msg
