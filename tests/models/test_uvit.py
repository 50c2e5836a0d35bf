"""Contracts of the U-ViT backbone, its uncertainty heads and per-sample early exit."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from libs import uvit, uvit_t2i
from libs.models.backbone import NetworkConfigError
from libs.models.uvit_core import unpatchify
from tests.helpers.tiny_uvit import TINY, TINY_T2I, set_head_certainty, sharpen_heads, tiny, tiny_t2i

# Key names and shapes of the released CIFAR-10 U-ViT-S/2 state dict (copied from the
# project's shared reference, so the test runs from any checkout).
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "uvit_s2_cifar10_state_dict.txt"
CIFAR10_S2 = dict(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
                  qkv_bias=False, mlp_time_embed=False, num_classes=-1)


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


def test_mean_certainty_is_the_certainty_maps_mean_bitwise():
    nets = ((tiny(num_classes=11, sharp=True), "label"), (tiny(uem_time_aware=True, sharp=True), None),
            (tiny_t2i(sharp=True), "text"))
    for net, kind in nets:
        for b in (1, 5):
            x, t = torch.randn(b, 3, 8, 8), torch.rand(b) * 999
            cond = {"label": torch.randint(0, 11, (b,)), "text": torch.randn(b, 5, 16), None: None}[kind]
            with torch.no_grad():
                h, carry = net.embed(x, t, cond)
                temb = carry.time_emb
                for i, head in enumerate(net.uem_heads):
                    h = net.run_block(i, h, carry) if i < net.depth // 2 else h
                    ref = net.certainty(i, h, temb).mean(dim=(1, 2), dtype=torch.float32)
                    assert torch.equal(head.mean_certainty(h, net.num_extras, temb), ref)
                    if b == 1:
                        assert head.mean_certainty_one(h, net.num_extras, temb) == ref.item()


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
        h = net.in_blocks[0](net.embed(x, t, y)[0])
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


# ------------------------------------------------------------------ constructor arguments
RELEASED_KEYWORDS = {
    uvit.UViT: ["img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "qk_scale", "mlp_time_embed", "num_classes", "use_checkpoint", "conv", "skip", "uem_time_aware"],
    uvit_t2i.UViT: ["img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                    "qkv_bias", "qk_scale", "mlp_time_embed", "use_checkpoint", "clip_dim", "num_clip_token",
                    "conv", "skip", "uem_time_aware"],
}


@pytest.mark.parametrize("cls", list(RELEASED_KEYWORDS), ids=["uvit", "uvit_t2i"])
def test_released_keywords_pass_through_to_the_backbone(cls):
    from libs.models.backbone import constructor_defaults

    defaults = constructor_defaults(cls)
    assert sorted(defaults) == sorted(RELEASED_KEYWORDS[cls])
    assert defaults["img_size"] == 224 and defaults["embed_dim"] == 768 and defaults["conv"] is True
    extra = dict(num_classes=7) if cls is uvit.UViT else dict(clip_dim=16, num_clip_token=3)
    net = cls(**TINY, mlp_time_embed=True, conv=False, skip=False, qk_scale=0.5, **extra)
    assert net.embed_dim == 32 and net.depth == 4 and net.patch_size == 2 and not net.use_skip
    assert isinstance(net.time_embed, torch.nn.Sequential) and isinstance(net.final_layer, torch.nn.Identity)
    assert net.mid_block.attn.scale == 0.5 and net.mid_block.mlp.fc1.out_features == 64
    assert cls.check_args(**TINY, **extra) == []


@pytest.mark.parametrize("field, value, words", [
    ("img_size", 9, "config.nnet.img_size=9 is not divisible by config.nnet.patch_size=2"),
    ("num_heads", 3, "config.nnet.embed_dim=32 is not divisible by config.nnet.num_heads=3: choose num_heads "
                     "dividing embed_dim (e.g. 2)"),
    ("depth", 3, "config.nnet.depth=3: must be even"),
    ("depth", 0, "config.nnet.depth=0: must be an integer >= 1"),
    ("patch_size", 2.0, "config.nnet.patch_size=2.0: must be an integer >= 1"),
    ("embed_dim", True, "config.nnet.embed_dim=True: must be an integer >= 1"),
    ("mlp_ratio", 0, "config.nnet.mlp_ratio=0: must be a finite number > 0"),
    ("qk_scale", float("inf"), "config.nnet.qk_scale=inf: must be a finite number > 0"),
    ("num_classes", "10", "config.nnet.num_classes='10': must be an integer"),
    ("heads", 2, "config.nnet.heads=2: not an argument of libs.models.uvit.UViT; known: num_classes, img_size"),
])
def test_each_bad_argument_is_one_line_naming_the_field(field, value, words):
    args = {**TINY, field: value}
    assert [p for p in uvit.UViT.check_args(**args) if words in p], uvit.UViT.check_args(**args)
    with pytest.raises(NetworkConfigError) as e:
        uvit.UViT(**args)
    assert isinstance(e.value, ValueError) and words in str(e.value) and "\n" not in str(e.value)


def test_every_problem_is_reported_at_once_before_anything_is_built():
    bad = {**TINY, "img_size": 9, "num_heads": 5, "depth": 5, "clip_dim": 0}
    problems = uvit_t2i.UViT.check_args(**bad)
    assert [p.split("=")[0] for p in problems] == ["config.nnet.img_size", "config.nnet.depth",
                                                   "config.nnet.embed_dim", "config.nnet.clip_dim"]
    with pytest.raises(NetworkConfigError, match="^invalid network arguments: config.nnet.img_size=9 .*; "
                                                 "config.nnet.clip_dim=0: must be an integer >= 1$"):
        uvit_t2i.UViT(**bad)
    # Attention keeps its own guard (the same message), for a block built on its own.
    from libs.models.uvit_core import Attention
    with pytest.raises(NetworkConfigError, match="embed_dim=32 is not divisible by config.nnet.num_heads=5"):
        Attention(32, 5)
