"""AdaDiff and U-ViT loss terms: values against hand computation, and where gradients flow (and, for
now, the forward-noise marginals the objectives draw from)."""
import pytest
import torch

from libs.training.losses import adadiff_loss, mos, uvit_loss
from libs.models.uvit import UViT


def test_mos_and_uvit_loss():
    a = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 3.0]]]])  # (2, 1, 1, 2)
    assert mos(a).tolist() == [2.5, 4.5]
    out = uvit_loss(a, torch.zeros_like(a))
    assert out["loss"].tolist() == [2.5, 4.5] and out["denoise"].tolist() == [2.5, 4.5]


def test_adadiff_loss_by_hand():
    # N = 2 blocks, B = 2 samples, one pixel each, so every mean is a single number.
    eps = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    preds = torch.tensor([[0.0, 0.0], [0.5, -1.5]]).view(2, 2, 1, 1, 1)
    certs = torch.tensor([[0.2, 0.4], [0.6, 0.8]]).view(2, 2, 1, 1, 1)
    out = adadiff_loss(eps, preds, certs)
    t = torch.tanh
    denoise = [0.25, 0.25]  # (1 - 0.5)^2, (-1 + 1.5)^2
    uem = [((0.2 - (1 - t(torch.tensor(1.0)))) ** 2 + (0.6 - (1 - t(torch.tensor(0.5)))) ** 2) / 2,
           ((0.4 - (1 - t(torch.tensor(1.0)))) ** 2 + (0.8 - (1 - t(torch.tensor(0.5)))) ** 2) / 2]
    m = [0.3, 0.7]  # mean certainty of each block over batch and pixels
    w = [m[0] / 1.0, m[1] / 1.0]
    layer = [w[0] * 1.0 + w[1] * 0.25, w[0] * 1.0 + w[1] * 0.25]
    torch.testing.assert_close(out["denoise"], torch.tensor(denoise))
    torch.testing.assert_close(out["uem"], torch.stack(uem).float())
    torch.testing.assert_close(out["layerwise"], torch.tensor(layer))
    torch.testing.assert_close(out["loss"], out["denoise"] + out["uem"] + out["layerwise"])
    # Paper variant: per-sample weights (1 - u_i) = c_i, unnormalised, and coefficients.
    out = adadiff_loss(eps, preds, certs, layer_weight="per_sample", uem_coef=0.5, layer_coef=2.0)
    torch.testing.assert_close(out["layerwise"], torch.tensor([0.2 * 1.0 + 0.6 * 0.25, 0.4 * 1.0 + 0.8 * 0.25]))
    torch.testing.assert_close(out["loss"], out["denoise"] + 0.5 * out["uem"] + 2.0 * out["layerwise"])
    with pytest.raises(ValueError, match="layer_weight"):
        adadiff_loss(eps, preds, certs, layer_weight="bogus")


def _grads(loss, net):
    net.zero_grad()
    loss.backward(retain_graph=True)
    return {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradient_flow():
    torch.manual_seed(0)
    net = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=-1)
    x0 = torch.randn(4, 1, 8, 8)
    out = net.forward_all_exits(x0, torch.rand(4) * 999)
    eps = torch.randn_like(x0)
    terms = adadiff_loss(eps, out.preds, out.certainties)
    heads = {n for n, _ in net.named_parameters() if n.startswith("uem_heads.")}
    # UEM regression reaches only the heads (features detached, target stop-gradient).
    assert _grads(terms["uem"].mean(), net) == heads
    # Layer-wise term reaches the backbone (through every block's prediction) and the heads (weights).
    g = _grads(terms["layerwise"].mean(), net)
    assert heads <= g and {"in_blocks.0.attn.qkv.weight", "mid_block.mlp.fc1.weight", "decoder_pred.weight"} <= g
    # The denoising loss reaches the backbone only.
    g = _grads(terms["denoise"].mean(), net)
    assert not (g & heads) and "out_blocks.0.skip_linear.weight" in g
