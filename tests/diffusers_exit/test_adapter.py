"""libs/diffusers_exit/adapter.py on tiny random DiT and PixArt transformers: full depth is the
model's own forward, a static exit is the model's final layer on that block's tokens, a batch
is each sample alone, guidance, exit rules by spelling, unsupported classes refused."""
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from libs.diffusers_exit import attach_exits
from libs.diffusers_exit.adapter import PixArtCondition
from libs.diffusion.wrappers import cfg_model_fn
from libs.exits.policy import StaticExit, ThresholdExit
from libs.run.errors import UserError
from tests.diffusers_exit.tiny_models import inputs, tiny_dit, tiny_pixart


def _close(a, b, dtype):
    scale = b.abs().max()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (a - b).abs().max() <= tol * max(float(scale), 1.0), float((a - b).abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_dit_full_depth_is_the_models_forward(dtype, learn_sigma):
    model = tiny_dit(learn_sigma, dtype=dtype)
    net = attach_exits(model)
    x, t, y, _, _ = inputs(dtype=dtype)
    with torch.no_grad():
        ref = model(x, timestep=t, class_labels=y).sample
        out = net(x, t, y)
    assert out.shape == ref.shape == (3, 8 if learn_sigma else 4, 8, 8)
    assert net.eps_channels == (4 if learn_sigma else None)
    _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("learn_sigma,micro", [(True, False), (False, True)])
def test_pixart_full_depth_is_the_models_forward(dtype, learn_sigma, micro):
    model = tiny_pixart(learn_sigma, micro=micro, dtype=dtype)
    net = attach_exits(model)
    x, t, _, ctx, mask = inputs(dtype=dtype)
    added = dict(resolution=torch.full((3, 2), 64.0, dtype=dtype), aspect_ratio=torch.ones(3, 1, dtype=dtype)) \
        if micro else None
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=ctx, timestep=t, encoder_attention_mask=mask,
                    added_cond_kwargs=added).sample
        out = net(x, t, ctx, encoder_attention_mask=mask, added_cond_kwargs=added)
        packed = net(x, t, PixArtCondition(ctx, mask, added))
    _close(out, ref, dtype)
    assert torch.equal(out, packed)


def test_dit_guidance_through_the_projects_wrapper_is_the_models_guided_output():
    model = tiny_dit(dtype=torch.float64)
    net = attach_exits(model)
    x, t, y, _, _ = inputs(dtype=torch.float64)
    null = torch.full_like(y, 10)  # the label table's null row
    with torch.no_grad():
        guided = cfg_model_fn(lambda a, b, c: net(a, b, c), y, null, 3.0)(x, t)
        c = model(x, timestep=t, class_labels=y).sample
        u = model(x, timestep=t, class_labels=null).sample
    _close(guided, c + 3.0 * (c - u), torch.float64)


def _dit_exit_by_hand(model, x, t, y, k):
    """The DiT final layer on block k's tokens, from the diffusers modules."""
    h = model.pos_embed(x)
    for block in model.transformer_blocks[: k + 1]:
        h = block(h, timestep=t, class_labels=y)
    cond = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=h.dtype)
    shift, scale = model.proj_out_1(F.silu(cond)).chunk(2, dim=1)
    h = model.proj_out_2(model.norm_out(h) * (1 + scale[:, None]) + shift[:, None])
    g, p, c = int(h.shape[1] ** 0.5), model.patch_size, model.out_channels
    return torch.einsum("nhwpqc->nchpwq", h.reshape(-1, g, g, p, p, c)).reshape(-1, c, g * p, g * p)


def _pixart_exit_by_hand(model, x, t, ctx, k):
    h = model.pos_embed(x)
    mod, emb = model.adaln_single(t, None, batch_size=x.shape[0], hidden_dtype=h.dtype)
    enc = model.caption_projection(ctx).view(x.shape[0], -1, h.shape[-1])
    for block in model.transformer_blocks[: k + 1]:
        h = block(h, encoder_hidden_states=enc, timestep=mod)
    shift, scale = (model.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
    h = model.proj_out(model.norm_out(h) * (1 + scale) + shift)
    g, p, c = int(h.shape[1] ** 0.5), model.config.patch_size, model.out_channels
    return torch.einsum("nhwpqc->nchpwq", h.reshape(-1, g, g, p, p, c)).reshape(-1, c, g * p, g * p)


@pytest.mark.parametrize("k", [0, 1])
def test_static_exit_is_the_final_layer_on_block_k(k):
    x, t, y, ctx, _ = inputs(dtype=torch.float64)
    dit, pixart = tiny_dit(dtype=torch.float64), tiny_pixart(dtype=torch.float64)
    with torch.no_grad():
        _close(attach_exits(dit)(x, t, y, exit_policy=f"static:{k}"), _dit_exit_by_hand(dit, x, t, y, k), torch.float64)
        _close(attach_exits(pixart)(x, t, ctx, exit_policy=StaticExit(k)), _pixart_exit_by_hand(pixart, x, t, ctx, k),
               torch.float64)


def test_batch_with_mixed_exits_equals_each_sample_alone():
    model = tiny_dit(layers=4, dtype=torch.float64)
    net = attach_exits(model)
    x, t, y, _, _ = inputs(batch=6, dtype=torch.float64)
    with torch.no_grad():
        # heads that make the rows' certainties differ: the rows exit at different blocks
        for i, head in enumerate(net.uem_heads):
            head.proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(i))
        h0 = net.run_block(0, *net.embed(x, t, y))
        tau = float(net.uem_heads[0].mean_certainty(h0, 1).sort().values[3])  # about half the rows pass at block 0
        out = net.forward_early_exit(x, t, y, exit_policy=ThresholdExit(tau))
        assert len(set(out.exit_block.tolist())) > 1
        for r in range(6):
            one = net.forward_early_exit(x[r:r + 1], t[r:r + 1], y[r:r + 1], exit_policy=ThresholdExit(tau))
            assert one.one_row[0] == int(out.exit_block[r])
            _close(one.sample[0], out.sample[r], torch.float64)


def test_exit_policy_spellings_and_full_depth_words():
    net = attach_exits(tiny_dit())
    x, t, y, _, _ = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, t, y, exit_policy="full"), net(x, t, y))
        assert torch.equal(net(x, t, y, exit_policy="static:1"), net(x, t, y, exit_policy=StaticExit(1)))
        assert net.forward_early_exit(x, t, y, exit_policy="0.0").exit_block.tolist() == [0, 0, 0]


def test_weights_are_the_models_own_not_copies():
    model = tiny_dit()
    net = attach_exits(model)
    assert net.transformer is model
    assert all(a is b for a, b in zip(net.transformer.parameters(), model.parameters()))


def test_unsupported_class_is_refused_in_one_line():
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(UserError) as e:
        attach_exits(unet)
    msg = str(e.value)
    assert "\n" not in msg and "UNet2DModel" in msg
    assert "DiTTransformer2DModel" in msg and "PixArtTransformer2DModel" in msg


def test_flops_count_the_blocks_the_model_runs():
    from torch.utils.flop_counter import FlopCounterMode

    from diffusers.models.attention_processor import AttnProcessor

    model = tiny_dit()
    for block in model.transformer_blocks:  # matmul attention: the counter sees its products (not fused SDPA's)
        block.attn1.set_processor(AttnProcessor())
    net = attach_exits(model)
    x, t, y, _, _ = inputs(batch=1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, y)
    counted, ours = counter.get_total_flops(), net.flops().full
    assert abs(counted - ours) / counted < 0.02, (counted, ours)
