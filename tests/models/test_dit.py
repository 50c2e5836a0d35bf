"""DiT through the backbone contract: released names and forward (against the test-only reference
in tests/models/dit_reference.py), every hook, exit rules and batch compaction, FLOPs against
PyTorch's counter, the AdaDiff objective's treatment of the learned-sigma channels, a sampling
run with early exit through the evaluation engine, config errors and weight mismatches."""
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from configs.digits_dit import get_config
from libs.diffusion.schedules import DiscreteVPSchedule
from libs.exits.policy import StaticExit, ThresholdExit
from libs.exits.recorder import ExitRecorder
from libs.models.dit import DiT, preset_sizes
from libs.models.registry import build_nnet
from libs.run.checkpoint import WeightsMismatchError, load_weights
from libs.run.errors import one_line
from libs.diffusion.noise import ContinuousNoise
from libs.training.engine import TrainForward
from libs.training.objectives import training_losses
from tests.models.dit_reference import official_forward, official_keys, official_pos_embed

TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=4, num_heads=2, mlp_ratio=2.0,
            class_dropout_prob=0.1, num_classes=10, learn_sigma=True)


def tiny(**kw):
    torch.manual_seed(0)
    return DiT(**{**TINY, **kw}).eval()


def randomise(net, scale=0.1):
    """Released init zeroes the adaLN layers and the final linear (the output is then 0): give
    every weight but the fixed positions random values, so the forward is tested for real."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if k != "pos_embed":
                v.copy_(torch.randn(v.shape, generator=g) * scale)
    return net


def set_head_certainty(net, certainties):
    with torch.no_grad():
        for h, c in zip(net.uem_heads, certainties):
            h.proj.weight.zero_()
            h.proj.bias.fill_(math.log(c / (1 - c)))


def inputs(B=4):
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, 3, 8, 8, generator=g), torch.rand(B, generator=g) * 999, torch.randint(0, 11, (B,), generator=g)


# ------------------------------------------------------------------ names, loading, released forward
@pytest.mark.slow
def test_xl2_has_the_released_names_and_size():
    net = DiT()  # released defaults: DiT-XL/2, 256x256 (32x32 latents), learned sigma
    own = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith("uem_heads.")}
    assert set(own) == set(official_keys(28))
    assert own["pos_embed"] == (1, 256, 1152) and own["y_embedder.embedding_table.weight"] == (1001, 1152)
    assert own["t_embedder.mlp.0.weight"] == (1152, 256) and own["final_layer.linear.weight"] == (2 * 2 * 8, 1152)
    assert own["blocks.0.adaLN_modulation.1.weight"] == (6 * 1152, 1152)
    assert own["final_layer.adaLN_modulation.1.weight"] == (2 * 1152, 1152)
    assert sum(math.prod(s) for s in own.values()) == 675_129_632  # the released DiT-XL/2 parameter count
    assert not net.pos_embed.requires_grad and net.num_blocks == 28 and len(net.uem_heads) == 28


def test_released_state_dict_loads_with_fresh_heads_and_gives_the_released_forward():
    donor = randomise(tiny())
    released = {k: v.clone() for k, v in donor.state_dict().items() if not k.startswith("uem_heads.")}
    assert set(released) == set(official_keys(4))
    torch.testing.assert_close(released["pos_embed"][0], official_pos_embed(32, 4), rtol=0, atol=0)
    net = tiny()
    report = load_weights(net, released, "DiT-tiny.pt")
    assert sorted(report.fresh_heads) == sorted(k for k in net.state_dict() if k.startswith("uem_heads."))
    x, t, y = inputs()
    y[0] = 10  # the null label (last row of the table)
    with torch.no_grad():
        ours = net(x, t, y)
        ref = official_forward(released, x, t, y, depth=4, num_heads=2, patch=2, out_channels=6)
    assert ours.shape == (4, 6, 8, 8)  # all output channels: noise, then the variance interpolation
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))  # float32 rounding
    with torch.no_grad():  # in float64 the two agree to its rounding: the same maths
        ours64 = net.double()(x.double(), t.double(), y)
        ref64 = official_forward({k: v.double() for k, v in released.items()}, x.double(), t.double(), y,
                                 depth=4, num_heads=2, patch=2, out_channels=6)
    torch.testing.assert_close(ours64, ref64, rtol=0, atol=1e-12 * float(ref64.abs().max()))
    net.float()
    net.train()  # no label dropout inside the network: training mode gives the same numbers
    with torch.no_grad():
        assert torch.equal(net(x, t, y), ours)


def test_wrong_shaped_checkpoint_is_refused_in_one_line_naming_the_keys():
    released = {k: v for k, v in tiny().state_dict().items() if not k.startswith("uem_heads.")}
    wider = tiny(hidden_size=48)
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(wider, released, "DiT-tiny.pt")
    line = one_line(str(e.value))
    assert "\n" not in line and "shape mismatch pos_embed: file (1, 16, 32), model (1, 16, 48)" in line
    assert "blocks.0.attn.qkv.weight" in line
    fewer = {k: v for k, v in released.items() if not k.startswith("blocks.3.")}
    with pytest.raises(WeightsMismatchError, match="missing keys.*blocks.3"):
        load_weights(tiny(), fewer)


# ------------------------------------------------------------------ the contract's hooks
def test_hooks_and_forwards_agree():
    net = randomise(tiny())
    x, t, y = inputs()
    with torch.no_grad():
        h, carry = net.embed(x, t, y)
        assert h.shape == (4, 1 + 16, 32) and carry is None
        preds, certs = [], []
        for i in range(net.num_blocks):
            h = net.run_block(i, h, carry)
            preds.append(net.output_head(h))
            certs.append(net.certainty_map(i, h, carry))
            m = net.mean_certainty(i, h, carry)
            assert m.dtype == torch.float32 and torch.allclose(m, certs[-1].mean(dim=(1, 2, 3)))
            assert net.mean_certainty_one(i, h[1:2], carry) == pytest.approx(float(m[1]), abs=1e-7)
            assert net.exit_patience(i) == 1
        assert net.select_rows(carry, torch.tensor([0, 2])) is None
        out = net.forward_all_exits(x, t, y)
        assert out.preds.shape == (4, 4, 6, 8, 8) and out.certainties.shape == (4, 4, 3, 8, 8)
        assert torch.equal(out.preds, torch.stack(preds)) and torch.equal(out.certainties, torch.stack(certs))
        assert ((out.certainties > 0) & (out.certainties < 1)).all()
        assert torch.equal(net(x, t, y), out.preds[-1])
        assert torch.equal(net(x, t, y=y), out.preds[-1])
        for k in range(net.num_blocks):  # exit after block k = the final layer on block k's tokens
            assert torch.equal(net(x, t, y, exit_policy=StaticExit(k)), out.preds[k])
        assert torch.equal(net(x, t, y, exit_threshold=1.0), out.preds[-1])


def test_patience_one_batch_compaction_and_each_sample_alone():
    net = randomise(tiny())
    x, t, y = inputs(6)
    with torch.no_grad():
        set_head_certainty(net, [0.2, 0.9, 0.2])  # block 1 passes 0.5: every row exits there, 2 heads run
        one = net.forward_early_exit(x[:1], t[:1], y[:1], exit_threshold=0.5)
        assert one.one_row == (1, 2)
        randomise(net)
        for h in net.uem_heads:  # spread the certainties so rows exit at different blocks
            h.proj.weight.mul_(20.0)
        certs = net.forward_all_exits(x, t, y).certainties.mean(dim=(2, 3, 4))  # (N, B)
        v = certs[:-1].flatten().sort().values
        mid = v.numel() // 2
        tau = float((v[mid - 1] + v[mid]) / 2)  # between two certainties: no row sits on the threshold
        out = net.forward_early_exit(x, t, y, exit_policy=ThresholdExit(tau))
        preds = net.forward_all_exits(x, t, y).preds
        assert len(set(out.exit_block.tolist())) > 1
        for r in range(6):
            passing = [i for i in range(net.num_blocks - 1) if float(certs[i, r]) > tau]
            k = passing[0] if passing else net.num_blocks - 1  # patience 1: the first passing block
            assert int(out.exit_block[r]) == k
            torch.testing.assert_close(out.sample[r], preds[k, r], rtol=1e-6, atol=1e-6)
            alone = net.forward_early_exit(x[r:r + 1], t[r:r + 1], y[r:r + 1], exit_policy=ThresholdExit(tau))
            assert alone.one_row[0] == k
            torch.testing.assert_close(alone.sample[0], out.sample[r], rtol=1e-5, atol=1e-5)  # BLAS blocking


def test_heads_train_on_detached_features_and_time_aware_heads_read_c():
    net = randomise(tiny())
    x, t, y = inputs()
    out = net.forward_all_exits(x, t, y)
    out.certainties.sum().backward()
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("uem_heads."))
    assert net.uem_heads[0].proj.weight.grad is not None
    ta = randomise(tiny(uem_time_aware=True))
    assert ta.uem_heads[0].proj.weight.shape == (12, 64)
    with torch.no_grad():
        a = ta.forward_all_exits(x, t, y).certainties
        b = ta.forward_all_exits(x, t + 100, y).certainties
    assert not torch.equal(a, b)


def test_time_shift_and_unconditional_and_bad_inputs():
    x, t, y = inputs()
    with torch.no_grad():
        shifted = randomise(tiny(time_shift=-1.0))
        plain = randomise(tiny())
        assert torch.equal(shifted(x, t, y), plain(x, t - 1, y))
        uncond = randomise(tiny(num_classes=0, class_dropout_prob=0.0))
        assert "y_embedder.embedding_table.weight" not in uncond.state_dict()
        assert uncond(x, t).shape == (4, 6, 8, 8)
    with pytest.raises(ValueError, match="class-conditional"):
        plain(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, y)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 8, 8\)"):
        plain(x[:, :2], t, y)
    with pytest.raises(ValueError, match="not divisible by patch size"):
        DiT(input_size=9, patch_size=2)


# ------------------------------------------------------------------ compute
def counted(fn):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("kw", [{}, {"learn_sigma": False}, {"uem_time_aware": True}])
def test_flops_match_the_counter(kw):
    net = randomise(tiny(**kw))
    f = net.flops()
    x, t, y = inputs(1)
    with torch.no_grad():
        assert counted(lambda: net(x, t, y)) == pytest.approx(f.full, rel=1e-9)
        set_head_certainty(net, [0.1, 0.1, 0.9])  # exits after block 2, three heads run
        o = net.forward_early_exit(x, t, y, exit_threshold=0.5)
        assert o.one_row == (2, 3)
        assert counted(lambda: net.forward_early_exit(x, t, y, exit_threshold=0.5)) == pytest.approx(
            f.mean_call([2], [3]), rel=1e-9)
        x2, t2, y2 = x.repeat(2, 1, 1, 1), t.repeat(2), y.repeat(2)
        assert counted(lambda: net.forward_early_exit(x2, t2, y2, exit_threshold=0.5)) == pytest.approx(
            2 * f.mean_call([2], [3]), rel=1e-9)


@pytest.mark.slow
def test_xl2_flops_are_the_published_size():
    f = DiT().flops()  # DiT-XL/2 at 256: 118.6 GFLOPs in the paper's multiply-add count
    assert f.num_blocks == 28 and 2 * 117e9 < f.full < 2 * 120e9


# ------------------------------------------------------------------ training and sampling
def test_adadiff_step_trains_the_noise_channels_only():
    net = randomise(tiny()).train()
    x0, _, y = inputs(8)
    terms = training_losses(TrainForward(net, all_exits=True), ContinuousNoise(), x0, y,
                            generator=torch.Generator().manual_seed(0))
    assert {"loss", "denoise", "uem", "layerwise"} <= set(terms)
    terms["loss"].mean().backward()
    w = net.final_layer.linear.weight.grad.reshape(2, 2, 6, 32)  # rows in (p1, p2, channel) order
    assert w[:, :, :3].abs().sum() > 0 and torch.equal(w[:, :, 3:], torch.zeros_like(w[:, :, 3:]))
    assert net.uem_heads[0].proj.weight.grad.abs().sum() > 0 and net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    plain = TrainForward(net, all_exits=False)(x0, torch.rand(8) * 999, y)
    assert plain.shape == (8, 3, 8, 8)


def test_sampling_with_early_exit_and_guidance_through_the_engine():
    from libs.evaluation.engine import generate
    from libs.tasks.pixel import PixelTask

    config = get_config()
    config.nnet.update(embed_dim=32, depth=3, num_heads=2, learn_sigma=True)
    config.sample.update(sample_steps=4, scale=0.5)
    task = PixelTask(config, load_data=False)
    torch.manual_seed(0)
    net = randomise(build_nnet(config.nnet), 0.1).eval()
    assert net.out_channels == 2 and net.eps_channels == 1
    set_head_certainty(net, [0.2, 0.9])
    rec = ExitRecorder(net.num_blocks)
    images = generate(net, task, config.sample, [0, 1, 2], ThresholdExit(0.5), rec, seed=0, batch_seed=0,
                      device="cpu")
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    s = rec.summary(net.flops(), 3)
    assert s["mean_blocks"] == 2 and s["gflops_per_image"] > 0


# ------------------------------------------------------------------ configs
def test_presets_and_config_errors():
    assert preset_sizes("DiT-S/8") == dict(depth=12, hidden_size=384, num_heads=6, patch_size=8)
    net = build_nnet(dict(name="dit", preset="DiT-S/8", img_size=32, in_chans=4, num_classes=1001))
    assert net.y_embedder.embedding_table.num_embeddings == 1001 and net.num_patches == 16
    base = dict(name="dit", img_size=8, in_chans=1, num_classes=11)
    with pytest.raises(ValueError, match="unknown DiT preset 'DiT-M/2'"):
        build_nnet({**base, "preset": "DiT-M/2"})
    with pytest.raises(ValueError, match=r"disagrees with config.nnet depth=3 \(preset: 12\)"):
        build_nnet({**base, "preset": "DiT-S/2", "depth": 3})
    with pytest.raises(ValueError, match="missing embed_dim, depth, num_heads"):
        build_nnet({**base, "patch_size": 2})
    with pytest.raises(ValueError, match="does not fit network 'dit'"):
        build_nnet({**base, "preset": "DiT-S/2", "hidden_size": 3})


def test_imagenet_config_builds_xl2_on_the_linear_schedule():
    from configs.imagenet256_dit_xl2 import get_config as imagenet
    from libs.cli.config_check import check_config
    from libs.tasks.time_modes import diffusion_time

    config = imagenet()
    check_config(config, "train")
    assert config.nnet.preset == "DiT-XL/2" and config.nnet.time_shift == -1.0
    noise, schedule, scale = diffusion_time(config)
    assert scale == 1000.0 and schedule.num_steps == 1000
    torch.testing.assert_close(schedule.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    with pytest.raises(ValueError, match="config.discrete_betas='cosine'"):
        config.discrete_betas = "cosine"
        diffusion_time(config)


def test_linear_betas_match_diffusers_ddpm():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    ours = DiscreteVPSchedule.linear()
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-6, atol=1e-7)


def test_training_resumes_exactly_with_learned_sigma(tmp_path):
    from libs.tasks.pixel import PixelTask
    from libs.training.engine import train

    def config(workdir, n_steps):
        c = get_config()
        c.nnet.update(embed_dim=32, depth=2, num_heads=2, learn_sigma=True)
        c.workdir = str(workdir)
        c.train.update(n_steps=n_steps, batch_size=16, log_interval=1, save_interval=2)
        return c

    for workdir, steps in ((tmp_path / "a", [4]), (tmp_path / "b", [2, 4])):
        for n in steps:
            train(config(workdir, n), PixelTask(config(workdir, n)))
    for name in ("nnet.pth", "nnet_ema.pth"):
        a = torch.load(tmp_path / "a/ckpts/4.ckpt" / name, weights_only=True)
        b = torch.load(tmp_path / "b/ckpts/4.ckpt" / name, weights_only=True)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    a = torch.load(tmp_path / "a/ckpts/4.ckpt/nnet.pth", weights_only=True)["final_layer.linear.weight"]
    assert torch.equal(a.reshape(2, 2, 2, 32)[:, :, 1], torch.zeros(2, 2, 32))  # sigma rows: zero init, no gradient


# ------------------------------------------------------------------ reuse (libs/exits/reuse.py)
def test_reuse_takes_a_spans_residual_and_each_sample_alone_agrees():
    """DeepCache on the DiT: the reused span's residual on the patch tokens, added to the call's
    own input (row 0, c, stays the call's own); N = 1 is full depth bit for bit; a batch with
    reuse equals each sample alone; FLOPs are the blocks computed."""
    from libs.exits.policy import FULL
    from libs.exits.reuse import DeepCache, ReuseCache, ReuseCall
    net = randomise(tiny(learn_sigma=False))
    x, t, y = inputs(4)
    t1 = t * 0.9
    f = net.flops()
    with torch.no_grad():
        cache = ReuseCache([(1, 3)])
        full0 = net.forward_early_exit(x, t, y, exit_policy=FULL, reuse_cache=cache).sample
        assert torch.equal(full0, net(x, t, y))
        assert cache.bytes_per_row() == net.num_patches * net.hidden_size * 4
        got = net.forward_early_exit(x, t1, y, exit_policy=ReuseCall(1), reuse_cache=cache)
        h, _ = net.embed(x, t, y)
        h_in = net.run_block(0, h, None)
        residual = net.run_block(2, net.run_block(1, h_in, None), None)[:, 1:] - h_in[:, 1:]
        h, _ = net.embed(x, t1, y)
        h = net.run_block(0, h, None)
        h = net.run_block(3, torch.cat([h[:, :1], h[:, 1:] + residual], dim=1), None)
        torch.testing.assert_close(got.sample, net.output_head(h), atol=1e-6, rtol=1e-6)
        assert got.reused.tolist() == [True] * 4
        rec = ExitRecorder(net.num_blocks)
        for policy in (DeepCache(1, 1), DeepCache(2, 1)):
            outs = []
            for rows in ([0, 1, 2, 3], [0], [1], [2], [3]):
                rec.start_run()
                fn = rec.wrap(net, policy)
                outs.append([fn(x[rows], t[rows] * (1 - 0.2 * c), y[rows]) for c in range(3)])
            for r in range(4):
                for c in range(3):
                    torch.testing.assert_close(outs[0][c][r:r + 1], outs[1 + r][c], atol=1e-6, rtol=1e-6)
            if policy.every == 1:
                assert all(torch.equal(outs[0][c], net(x, t * (1 - 0.2 * c), y)) for c in range(3))
        one = x[:1], t[:1], y[:1]
        cache = ReuseCache([(1, 3)])
        net.forward_early_exit(*one, exit_policy=FULL, reuse_cache=cache)
        assert counted(lambda: net.forward_early_exit(*one, exit_policy=ReuseCall(1), reuse_cache=cache)) == \
            pytest.approx(f.call(3, reused=(1, 2)), rel=1e-9)
