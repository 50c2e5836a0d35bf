"""The objectives by name (libs/training/objectives.py): what each returns, the noise it draws."""
import pytest
import torch

from libs.diffusion.noise import ContinuousNoise, DiscreteNoise
from libs.models.uvit import UViT
from libs.training.objectives import OBJECTIVES, training_losses


def test_training_losses_dispatch():
    torch.manual_seed(0)
    net = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=-1)
    x0 = torch.randn(2, 1, 8, 8)

    def all_exits(x, t, c):
        o = net.forward_all_exits(x, t, c)
        return o.preds, o.certainties

    a = training_losses(all_exits, ContinuousNoise(), x0, generator=torch.Generator().manual_seed(1))
    b = training_losses(lambda x, t, c: net(x, t, c), ContinuousNoise(), x0, objective="uvit",
                        generator=torch.Generator().manual_seed(1))
    assert set(a) == {"loss", "denoise", "uem", "layerwise"} and set(b) == {"loss", "denoise"}
    torch.testing.assert_close(a["denoise"], b["denoise"], atol=1e-5, rtol=1e-5)  # same noise, same output
    with pytest.raises(ValueError, match="unknown objective"):
        training_losses(all_exits, ContinuousNoise(), x0, objective="nope")


@pytest.mark.parametrize("noise", [ContinuousNoise(), DiscreteNoise()])
def test_uvit_objective_is_the_noise_prediction_error_of_the_drawn_noise(noise):
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = {}

    def model(x_t, t_net, cond):
        seen.update(x_t=x_t, t_net=t_net, cond=cond)
        return 0.5 * x_t

    terms = training_losses(model, noise, x0, "c", objective="uvit", generator=torch.Generator().manual_seed(3))
    x_t, t_net, eps = noise.sample(x0, torch.Generator().manual_seed(3))  # the same draws
    assert torch.equal(seen["x_t"], x_t) and torch.equal(seen["t_net"], t_net) and seen["cond"] == "c"
    torch.testing.assert_close(terms["loss"], ((eps - 0.5 * x_t) ** 2).mean(dim=(1, 2, 3)), atol=0, rtol=1e-6)
    assert terms["loss"].shape == (4,) and set(OBJECTIVES) == {"adadiff", "uvit", "distill"}


def test_distill_objective_targets_the_teacher_or_the_frozen_full_depth():
    """'distill': the AdaDiff terms against the teacher's output (or, with no teacher, the model's
    own detached full depth) in units of the target's rms; the drawn noise takes no part."""
    from libs.training.losses import adadiff_loss

    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    preds = torch.randn(2, 3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    certs = torch.rand(2, 3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    teacher_out = 3.0 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    own = training_losses(lambda x, t, c: (preds, certs), ContinuousNoise(), x0, objective="distill",
                          generator=torch.Generator().manual_seed(3))
    s = preds[-1].square().mean(dim=(1, 2, 3)).sqrt().view(-1, 1, 1, 1)
    ref = adadiff_loss(preds[-1] / s, preds / s, certs)
    assert own["denoise"].abs().max() == 0 and torch.allclose(own["loss"], ref["loss"])
    taught = training_losses(lambda x, t, c: (preds, certs), ContinuousNoise(), x0, objective="distill",
                             generator=torch.Generator().manual_seed(3), teacher=lambda x, t, c: teacher_out)
    s = teacher_out.square().mean(dim=(1, 2, 3)).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(taught["loss"], adadiff_loss(teacher_out / s, preds / s, certs)["loss"])
