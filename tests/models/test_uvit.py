"""Contracts of the U-ViT backbone, its uncertainty heads and per-sample early exit."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from libs import uvit, uvit_t2i
from libs.models.uvit_core import unpatchify

# Key names and shapes of the released CIFAR-10 U-ViT-S/2 state dict (copied from the
# project's shared reference, so the test runs from any checkout).
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "uvit_s2_cifar10_state_dict.txt"
CIFAR10_S2 = dict(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
                  qkv_bias=False, mlp_time_embed=False, num_classes=-1)
TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, qkv_bias=False)
TINY_T2I = dict(TINY, clip_dim=16, num_clip_token=5)


def tiny(num_classes=-1, **kw):
    torch.manual_seed(0)
    return uvit.UViT(**{**TINY, "num_classes": num_classes, **kw}).eval()


def tiny_t2i(**kw):
    torch.manual_seed(0)
    return uvit_t2i.UViT(**{**TINY_T2I, **kw}).eval()


def sharpen_heads(net, scale=40.0):
    """Random heads give certainties ~0.5 for every sample; scale them so samples differ."""
    with torch.no_grad():
        for h in net.uem_heads:
            h.proj.weight.mul_(scale)
            h.proj.bias.normal_(0, 0.5)


def set_head_certainty(net, certainties):
    """Make head i output the constant certainty ``certainties[i]`` for every input."""
    with torch.no_grad():
        for h, c in zip(net.uem_heads, certainties):
            h.proj.weight.zero_()
            h.proj.bias.fill_(math.log(c / (1 - c)))


# ------------------------------------------------------------------ state dict compatibility
def test_state_dict_matches_released_cifar10_s2():
    net = uvit.UViT(**CIFAR10_S2)
    ours = [(k, tuple(v.shape)) for k, v in net.state_dict().items() if not k.startswith("uem_heads.")]
    ref = []
    for line in REFERENCE.read_text().splitlines():
        key, shape = line.split(" ", 1)
        ref.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    assert ours == ref  # same names, shapes and order
    assert len(ref) == 164
    assert sum(math.prod(s) for _, s in ref) == 44_255_328
    heads = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("uem_heads.")}
    assert len(heads) == 2 * 13 and heads["uem_heads.12.proj.weight"] == (12, 512)


def test_label_and_context_embeddings_and_time_aware_heads():
    net = uvit.UViT(**{**TINY, "num_classes": 11})
    assert net.label_emb.weight.shape == (11, 32) and net.pos_embed.shape == (1, 2 + 16, 32)
    t2i = uvit_t2i.UViT(**TINY_T2I)
    assert t2i.context_embed.weight.shape == (32, 16) and t2i.pos_embed.shape == (1, 1 + 5 + 16, 32)
    ta = uvit.UViT(**TINY, uem_time_aware=True)
    assert ta.uem_heads[0].proj.weight.shape == (12, 64)


# ------------------------------------------------------------------ independent reference forward
def naive_uvit(sd, x, t, cfg, y=None, context=None):
    """A from-the-spec U-ViT forward on raw tensors (no code shared with libs/)."""
    D, H, p, C = cfg["embed_dim"], cfg["num_heads"], cfg["patch_size"], cfg["in_chans"]
    B = x.shape[0]
    tok = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    tok = tok.flatten(2).transpose(1, 2)
    half = D // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)[:, None]
    if context is not None:
        extras = [temb, context @ sd["context_embed.weight"].T + sd["context_embed.bias"]]
    elif y is not None:
        extras = [sd["label_emb.weight"][y][:, None], temb]
    else:
        extras = [temb]
    h = torch.cat(extras + [tok], 1) + sd["pos_embed"]
    n_extra = h.shape[1] - tok.shape[1]

    def ln(v, name):
        return F.layer_norm(v, (D,), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    def block(v, name, skip=None):
        if skip is not None:
            v = torch.cat([v, skip], -1) @ sd[name + ".skip_linear.weight"].T + sd[name + ".skip_linear.bias"]
        a = ln(v, name + ".norm1") @ sd[name + ".attn.qkv.weight"].T
        a = a.reshape(B, -1, 3, H, D // H).permute(2, 0, 3, 1, 4)
        att = torch.softmax(a[0] @ a[1].transpose(-1, -2) * (D // H) ** -0.5, -1) @ a[2]
        att = att.transpose(1, 2).reshape(B, -1, D)
        v = v + att @ sd[name + ".attn.proj.weight"].T + sd[name + ".attn.proj.bias"]
        m = F.gelu(ln(v, name + ".norm2") @ sd[name + ".mlp.fc1.weight"].T + sd[name + ".mlp.fc1.bias"])
        return v + m @ sd[name + ".mlp.fc2.weight"].T + sd[name + ".mlp.fc2.bias"]

    skips = []
    for i in range(cfg["depth"] // 2):
        h = block(h, f"in_blocks.{i}")
        skips.append(h)
    h = block(h, "mid_block")
    for i in range(cfg["depth"] // 2):
        h = block(h, f"out_blocks.{i}", skips.pop())
    h = ln(h, "norm") @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"]
    h = h[:, n_extra:]  # (B, L, p*p*C) with patch vector order (p1, p2, C)
    s = cfg["img_size"] // p
    img = h.reshape(B, s, s, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, s * p, s * p)
    return F.conv2d(img, sd["final_layer.weight"], sd["final_layer.bias"], padding=1)


@pytest.mark.parametrize("kind", ["uncond", "class", "text"])
def test_forward_matches_independent_reference(kind):
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3) * 999
    with torch.no_grad():
        if kind == "text":
            net, ctx = tiny_t2i(), torch.randn(3, 5, 16)
            out, ref = net(x, t, context=ctx), naive_uvit(net.state_dict(), x, t, TINY_T2I, context=ctx)
        elif kind == "class":
            net, y = tiny(num_classes=11), torch.tensor([0, 5, 10])
            out, ref = net(x, t, y=y), naive_uvit(net.state_dict(), x, t, TINY, y=y)
        else:
            net = tiny()
            out, ref = net(x, t), naive_uvit(net.state_dict(), x, t, TINY)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ early exit
def released_exit_reference(net, x, t, tau, cond=None, patience=2):
    """The released rule at batch size 1: shared head + certainty at every block, exit on the
    mean certainty of the batch (= this one sample), patience in the in-blocks."""
    assert x.shape[0] == 1
    out = net.forward_all_exits(x, t, cond)
    half, count = net.depth // 2, 0
    for i in range(net.num_blocks):
        if out.certainties[i].mean() > tau:
            if i < half:
                count += 1
                if count >= patience:
                    return out.preds[i], i
            else:
                return out.preds[i], i
    return out.preds[-1], net.num_blocks - 1


@pytest.mark.parametrize("text", [False, True])
def test_threshold_at_or_above_one_is_exactly_full_forward(text):
    net = tiny_t2i() if text else tiny(num_classes=11)
    set_head_certainty(net, [0.999999] * net.num_blocks)
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4) * 999
    cond = torch.randn(4, 5, 16) if text else torch.randint(0, 11, (4,))
    with torch.no_grad():
        full = net(x, t, cond)
        for tau in (1.0, 1.5):
            assert torch.equal(net(x, t, cond, exit_threshold=tau), full)
            o = net.forward_early_exit(x, t, cond, exit_threshold=tau)
            assert torch.equal(o.sample, full)
            assert o.exit_block.tolist() == [net.num_blocks - 1] * 4 and o.uem_evals.tolist() == [0] * 4


@pytest.mark.parametrize("text", [False, True])
def test_batch_with_mixed_exits_equals_each_sample_alone(text):
    net = tiny_t2i() if text else tiny(num_classes=11)
    sharpen_heads(net)
    torch.manual_seed(1)
    B = 12
    x, t = torch.randn(B, 3, 8, 8), torch.rand(B) * 999
    cond = torch.randn(B, 5, 16) if text else torch.randint(0, 11, (B,))
    with torch.no_grad():
        alone = [net.forward_all_exits(x[i:i + 1], t[i:i + 1], cond[i:i + 1]).certainties.mean(dim=(1, 2, 3, 4))
                 for i in range(B)]
        # Pick the threshold (among the observed certainties) that spreads exits the most.
        candidates = torch.stack(alone).flatten().sort().values[::3]
        tau = max(candidates.tolist(), key=lambda c: len(set(
            net.forward_early_exit(x, t, cond, exit_threshold=c).exit_block.tolist())))
        batch = net.forward_early_exit(x, t, cond, exit_threshold=tau)
        for i in range(B):
            ref, k = released_exit_reference(net, x[i:i + 1], t[i:i + 1], tau, cond[i:i + 1],
                                             patience=1 if text else 2)
            assert batch.exit_block[i].item() == k
            torch.testing.assert_close(batch.sample[i:i + 1], ref, atol=1e-5, rtol=1e-5)
            solo = net(x[i:i + 1], t[i:i + 1], cond[i:i + 1], exit_threshold=tau)
            torch.testing.assert_close(batch.sample[i:i + 1], solo, atol=1e-5, rtol=1e-5)
    assert len(set(batch.exit_block.tolist())) >= 3, batch.exit_block  # the test exercises mixed exits


def test_exit_at_block_k_equals_shared_head_on_block_k():
    net = tiny()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    for k in range(1, net.num_blocks):
        cert = [0.01] * net.num_blocks
        cert[k] = 0.99
        if k < net.depth // 2:
            cert[0] = 0.99  # patience: the second passing in-block is k
        set_head_certainty(net, cert)
        with torch.no_grad():
            o = net.forward_early_exit(x, t, exit_threshold=0.5)
            allx = net.forward_all_exits(x, t)
        assert o.exit_block.tolist() == [k, k]
        torch.testing.assert_close(o.sample, allx.preds[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("passing,image_exit,text_exit", [
    ([1, 1, 1, 1, 1, 1, 1], 1, 0),       # image model waits for the second in-block
    ([1, 0, 1, 0, 0, 0, 0], 2, 0),       # in-block passes need not be consecutive
    ([1, 0, 0, 1, 0, 0, 0], 3, 0),       # one in-block pass, then the mid block exits at once
    ([0, 0, 1, 0, 0, 0, 0], 6, 2),       # a single in-block pass never exits the image model
    ([0, 0, 0, 0, 1, 0, 0], 4, 4),       # out-blocks exit at the first pass
    ([0, 0, 0, 0, 0, 0, 1], 6, 6),       # the last block has no exit test
    ([0, 0, 0, 0, 0, 0, 0], 6, 6),
])
def test_patience_semantics(passing, image_exit, text_exit):
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    for net, cond, expected in ((tiny(depth=6), None, image_exit),
                                (tiny_t2i(depth=6), torch.randn(2, 5, 16), text_exit)):
        set_head_certainty(net, [0.9 if p else 0.1 for p in passing])
        with torch.no_grad():
            o = net.forward_early_exit(x, t, cond, exit_threshold=0.5)
        assert o.exit_block.tolist() == [expected] * 2
        assert o.uem_evals.tolist() == [min(expected + 1, net.num_blocks - 1)] * 2


def test_threshold_is_compared_strictly_and_validated():
    net = tiny()
    set_head_certainty(net, [0.5] * net.num_blocks)
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        assert net.forward_early_exit(x, t, exit_threshold=0.5).exit_block.item() == net.num_blocks - 1
        assert net.forward_early_exit(x, t, exit_threshold=0.49).exit_block.item() == 1
        with pytest.raises(ValueError, match="exit_threshold"):
            net(x, t, exit_threshold=-0.1)
        with pytest.raises(ValueError, match="exit_threshold"):
            net(x, t, exit_threshold=float("nan"))


# ------------------------------------------------------------------ training output
def test_all_exits_output_and_gradient_isolation():
    net = tiny(num_classes=11).train()
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3) * 999, torch.tensor([1, 2, 3])
    out = net.forward_all_exits(x, t, y)
    assert out.preds.shape == (5, 3, 3, 8, 8) and out.certainties.shape == (5, 3, 3, 8, 8)
    assert bool(((out.certainties > 0) & (out.certainties < 1)).all())
    with torch.no_grad():
        torch.testing.assert_close(out.sample, net(x, t, y), atol=1e-5, rtol=1e-5)
    # Certainty maps see detached features: their loss reaches only the heads.
    out.certainties.sum().backward()
    for name, p in net.named_parameters():
        assert (p.grad is not None) == name.startswith("uem_heads."), name
    # Each block's head really is unpatchified in (p1, p2, C) order: compare to head i by hand.
    net.zero_grad()
    with torch.no_grad():
        h, temb = net._embed(x, t, y)
        h = net.in_blocks[0](h)
        c0 = torch.sigmoid(net.uem_heads[0].proj(h[:, 2:]))
        torch.testing.assert_close(unpatchify(c0, 3), out.certainties[0])


def test_time_aware_heads_use_the_timestep():
    net = tiny(uem_time_aware=True)
    x = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    out = net.forward_all_exits(x, torch.tensor([1.0, 900.0]))
    assert not torch.allclose(out.certainties[:, 0], out.certainties[:, 1])


def test_gradient_checkpointing_gives_same_gradients():
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    grads = []
    for ckpt in (False, True):
        net = tiny(use_checkpoint=ckpt).train()
        out = net.forward_all_exits(x, t)
        (out.preds.square().mean() + out.certainties.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    net = tiny(num_classes=11)
    sharpen_heads(net)
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 11, (6,))
    with torch.no_grad():
        ref = net(x, t, y)
        with torch.autocast("cpu", dtype=dtype):
            full = net(x, t, y)
            ee = net.forward_early_exit(x, t, y, exit_threshold=0.5)
            allx = net.forward_all_exits(x, t, y)
    assert torch.isfinite(full.float()).all() and torch.isfinite(ee.sample.float()).all()
    assert (full.float() - ref).abs().max() < 0.1
    assert allx.preds.shape[:2] == (5, 6) and ee.sample.shape == (6, 3, 8, 8)


def test_bad_inputs_have_clear_errors():
    net = tiny(num_classes=11)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 8, 8\)"):
        net(torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="class-conditional"):
        net(torch.randn(1, 3, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="context must have shape"):
        tiny_t2i()(torch.randn(1, 3, 8, 8), torch.rand(1), context=torch.randn(1, 7, 16))
    with pytest.raises(TypeError, match="context="):
        tiny_t2i()(torch.randn(1, 3, 8, 8), torch.rand(1), y=torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible"):
        uvit.UViT(**{**TINY, "img_size": 9})
