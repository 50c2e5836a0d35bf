"""Analytic FLOPs against PyTorch's own FLOP counter on real forwards."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from libs import uvit, uvit_t2i
from libs.exits.policy import FULL
from libs.exits.recorder import ExitRecorder
from libs.exits.reuse import DeepCache, ReuseCache, ReuseCall
from tests.helpers.tiny_uvit import tiny

TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2)


def counted(fn):
    # The math SDPA backend decomposes attention into matmuls, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("kind", ["uncond", "class", "text", "time_aware"])
def test_analytic_flops_match_counter(kind):
    cfg = dict(TINY)
    if kind == "class":
        cfg["num_classes"] = 11
    if kind == "time_aware":
        cfg["uem_time_aware"] = True
    if kind == "text":
        cfg.update(clip_dim=16, num_clip_token=5)
        net, cond = uvit_t2i.UViT(**cfg).eval(), torch.randn(1, 5, 16)
    else:
        net = uvit.UViT(**cfg).eval()
        cond = torch.tensor([3]) if kind == "class" else None
    f = net.flops()
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        assert counted(lambda: net(x, t, cond)) == pytest.approx(f.full, rel=1e-9)
        # Force an exit after block 3 (an out-block): 4 blocks and 4 heads are evaluated, or 3
        # with the in-blocks' patience: at batch 1 in-block 0's head waits for a later in-block
        # to pass, and none does.
        for i, h in enumerate(net.uem_heads):
            h.proj.weight.zero_()
            h.proj.bias.fill_(10.0 if i == 3 else -10.0)
        heads = 4 if kind == "text" else 3
        o = net.forward_early_exit(x, t, cond, exit_threshold=0.5)
        assert o.exit_block.item() == 3 and o.uem_evals.item() == heads
        measured = counted(lambda: net.forward_early_exit(x, t, cond, exit_threshold=0.5))
        assert measured == pytest.approx(f.mean_call([3], [heads]), rel=1e-9)
        # A batch decides for all rows at once: every head up to the exit runs.
        x2, t2, cond2 = x.repeat(2, 1, 1, 1), t.repeat(2), None if cond is None else cond.repeat(2, *[1] * (cond.dim() - 1))
        o2 = net.forward_early_exit(x2, t2, cond2, exit_threshold=0.5)
        assert o2.exit_block.tolist() == [3, 3] and o2.uem_evals.tolist() == [4, 4]
        measured2 = counted(lambda: net.forward_early_exit(x2, t2, cond2, exit_threshold=0.5))
    assert measured2 == pytest.approx(2 * f.mean_call([3], [4]), rel=1e-9)
    assert f.mean_call([3, 4], [4, 4]) == pytest.approx((f.mean_call([3], [4]) + f.mean_call([4], [4])) / 2)


def test_cifar10_s2_numbers():
    f = uvit.UViT(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
                  num_classes=-1).flops()
    assert f.num_blocks == 13
    assert f.blocks[7] > f.blocks[0]  # out-blocks carry the skip projection
    assert 20e9 < f.full < 25e9  # U-ViT-S/2 on 32x32: ~22.9 GFLOPs (2 x MACs) per call


def test_reuse_flops_and_cache_memory_on_the_tiny_model():
    """A reusing call's FLOPs (PyTorch's counter) are the blocks it computes; the recorder's GFLOPs,
    blocks and cache memory over a DeepCache run follow."""
    net = tiny(num_classes=5)
    x, y = torch.randn(1, 3, 8, 8), torch.tensor([2])
    f = net.flops()
    t = torch.full((1,), 500.0)
    cache = ReuseCache([(1, 4)])

    def counted(policy):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            net.forward_early_exit(x, t, y, exit_policy=policy, reuse_cache=cache)
        return fc.get_total_flops()

    with torch.no_grad():
        assert counted(FULL) == f.full
        assert counted(ReuseCall(1)) == f.call(4, reused=(1, 2, 3)) == f.embed + f.blocks[0] + f.blocks[4] + f.output_head
    rec = ExitRecorder(net.num_blocks)
    rec.start_run()
    fn = rec.wrap(net, DeepCache(2, 1))
    with torch.no_grad():
        for c in range(4):
            fn(x, torch.full((1,), 900.0 - 150 * c), y)
    s = rec.summary(f, 1)
    assert s["gflops_per_image"] * 1e9 == pytest.approx(2 * f.full + 2 * f.call(4, reused=(1, 2, 3)))
    assert s["blocks_reused"] == 1.5 and s["mean_blocks"] == 3.5 and s["layer_ratio"] == 0.7
    assert s["blocks_computed_per_step"] == [5, 2, 5, 2] and s["blocks_reused_per_step"] == [0, 3, 0, 3]
    tokens = net.num_extras + net.num_patches
    assert s["cache_bytes_per_image"] == tokens * net.embed_dim * 4  # one span's output tokens, float32
