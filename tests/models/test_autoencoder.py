"""Contracts of libs/models/autoencoder.py: CompVis key conversion (full-size SD VAE), strict loading,
latent semantics, agreement with diffusers' own AutoencoderKL (CPU, random weights, seconds)."""

import json

import pytest
import torch
import torch.nn.functional as F

from libs.models.autoencoder import (
    SD_VAE_CONFIG,
    AutoencoderNotFoundError,
    AutoencoderWeightsError,
    FrozenAutoencoderKL,
    compvis_to_diffusers,
    detect_key_format,
    diffusers_to_compvis,
    load_autoencoder,
    load_autoencoder_weights,
)
from libs.models.autoencoder import _rename
from libs.run.checkpoint import atomic_save

TINY = dict(block_out_channels=[8, 16], norm_num_groups=4)  # downsample factor 2


# ----------------------------------------------------------------------------
# An independent description of the ldm (CompVis) AutoencoderKL: every parameter with its
# CompVis name, the diffusers name it must land on, and its CompVis shape. Written from the
# ldm architecture (ldm/modules/diffusionmodules/model.py), not from the converter.


def ldm_vae_params(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4,
                   in_channels=3, out_ch=3):
    """List of (compvis_name, diffusers_name, compvis_shape)."""
    out = []
    n = len(ch_mult)

    def conv(c_name, d_name, cin, cout, k):
        out.append((f"{c_name}.weight", f"{d_name}.weight", (cout, cin, k, k)))
        out.append((f"{c_name}.bias", f"{d_name}.bias", (cout,)))

    def norm(c_name, d_name, c):
        out.append((f"{c_name}.weight", f"{d_name}.weight", (c,)))
        out.append((f"{c_name}.bias", f"{d_name}.bias", (c,)))

    def resnet(c, d, cin, cout):
        norm(f"{c}.norm1", f"{d}.norm1", cin)
        conv(f"{c}.conv1", f"{d}.conv1", cin, cout, 3)
        norm(f"{c}.norm2", f"{d}.norm2", cout)
        conv(f"{c}.conv2", f"{d}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{c}.nin_shortcut", f"{d}.conv_shortcut", cin, cout, 1)

    def mid(part, c):
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", c, c)
        norm(f"{part}.mid.attn_1.norm", f"{part}.mid_block.attentions.0.group_norm", c)
        for cn, dn in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            conv(f"{part}.mid.attn_1.{cn}", f"{part}.mid_block.attentions.0.{dn}", c, c, 1)
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", c, c)

    # Encoder: levels from full resolution down; downsample after every level but the last.
    conv("encoder.conv_in", "encoder.conv_in", in_channels, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", cin, ch * m)
            cin = ch * m
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", cin, cin, 3)
    mid("encoder", cin)
    norm("encoder.norm_out", "encoder.conv_norm_out", cin)
    conv("encoder.conv_out", "encoder.conv_out", cin, 2 * z_channels, 3)
    conv("quant_conv", "quant_conv", 2 * z_channels, 2 * embed_dim, 1)
    conv("post_quant_conv", "post_quant_conv", embed_dim, z_channels, 1)
    # Decoder: runs from the lowest resolution (ldm level n-1 = diffusers up_blocks.0) up.
    cin = ch * ch_mult[-1]
    conv("decoder.conv_in", "decoder.conv_in", z_channels, cin, 3)
    mid("decoder", cin)
    for k, i in enumerate(reversed(range(n))):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{k}.upsamplers.0.conv", cin, cin, 3)
    norm("decoder.norm_out", "decoder.conv_norm_out", cin)
    conv("decoder.conv_out", "decoder.conv_out", cin, out_ch, 3)
    return out


def random_ldm_state_dict(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {c: torch.randn(shape, generator=g) * 0.05 for c, _, shape in params}


TINY_LDM = dict(ch=8, ch_mult=(1, 2))


def tiny_ldm():
    params = ldm_vae_params(**TINY_LDM)
    return params, random_ldm_state_dict(params)


# ----------------------------------------------------------------------------
# Conversion and strict loading.


@pytest.mark.slow
def test_full_size_compvis_state_dict_loads_strictly_into_sd_vae():
    params = ldm_vae_params()  # SD v1 KL-f8: ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z 4
    sd = random_ldm_state_dict(params)
    assert sum(v.numel() for v in sd.values()) == 83_653_863
    assert detect_key_format(sd) == "compvis"

    vae = FrozenAutoencoderKL()  # the default config is the SD v1 VAE
    assert vae.config["block_out_channels"] == [128, 256, 512, 512]
    own = vae.state_dict()
    assert sorted(own) == sorted(d for _, d, _ in params)  # no missing / unexpected keys

    assert load_autoencoder_weights(vae, sd) == "compvis"
    own = vae.state_dict()
    for c, d, _ in params:
        assert torch.equal(own[d], sd[c].reshape(own[d].shape)), (c, d)
        if ".attn_1." in c and c.endswith(".weight") and ".norm." not in c:
            assert own[d].shape == sd[c].shape[:2]  # 1x1 conv -> linear


def test_compvis_diffusers_round_trip():
    vae = FrozenAutoencoderKL(TINY)
    sd = vae.state_dict()
    ldm = diffusers_to_compvis(sd)
    params, _ = tiny_ldm()
    assert sorted(ldm) == sorted(c for c, _, _ in params)
    assert {c: tuple(ldm[c].shape) for c in ldm} == {c: s for c, _, s in params}
    back = compvis_to_diffusers(ldm)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("ldm", [TINY_LDM, dict(ch=8, ch_mult=(1, 2, 2)), {}], ids=["tiny", "3-level", "sd"])
def test_every_key_name_maps_there_and_back(ldm):
    """Name by name, both directions of the one rename table: each CompVis key of the
    independent description lands on its diffusers name and comes back, and so does each
    key of the built model (no two keys collide)."""
    params = ldm_vae_params(**ldm)
    ch, ch_mult = ldm.get("ch", 128), ldm.get("ch_mult", (1, 2, 4, 4))
    n = len(ch_mult)
    own = sorted(FrozenAutoencoderKL(dict(block_out_channels=[ch * m for m in ch_mult], norm_num_groups=4)).state_dict())
    assert own == sorted(d for _, d, _ in params)
    for c, d, _ in params:
        assert _rename(c, n, 0) == d and _rename(d, n, 1) == c, (c, d)
    assert sorted(_rename(_rename(k, n, 1), n, 0) for k in own) == own
    assert len({_rename(k, n, 1) for k in own}) == len(own)
    # Names outside the table are kept as they are, both ways.
    for key in ("quant_conv.weight", "encoder.conv_in.bias", "encoder.mid.attn_2.q.weight", "loss.logvar"):
        assert _rename(key, n, 0) == key and _rename(key, n, 1) == key


def test_strict_loading_lists_missing_unexpected_and_mismatched_keys():
    _, sd = tiny_ldm()
    vae = FrozenAutoencoderKL(TINY)
    broken = dict(sd)
    del broken["decoder.up.0.block.2.conv1.weight"]
    broken["encoder.mid.attn_2.q.weight"] = torch.zeros(16, 16, 1, 1)
    broken["quant_conv.bias"] = torch.zeros(7)
    with pytest.raises(AutoencoderWeightsError) as e:
        load_autoencoder_weights(vae, broken)
    msg = str(e.value)
    assert "decoder.up_blocks.1.resnets.2.conv1.weight (CompVis: decoder.up.0.block.2.conv1.weight)" in msg
    assert "encoder.mid.attn_2.q.weight" in msg
    assert "shape mismatch quant_conv.bias" in msg
    # The SD-sized model refuses the tiny weights.
    with pytest.raises(AutoencoderWeightsError, match="block_out_channels"):
        load_autoencoder_weights(FrozenAutoencoderKL(dict(TINY, block_out_channels=[8, 16, 16])), sd)


def test_loads_full_sd_checkpoint_and_ldm_training_checkpoint_keys(tmp_path):
    _, sd = tiny_ldm()
    full = {f"first_stage_model.{k}": v for k, v in sd.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3)
    full["cond_stage_model.transformer.x"] = torch.zeros(3)
    vae = FrozenAutoencoderKL(TINY)
    assert load_autoencoder_weights(vae, full) == "compvis"
    ldm_ckpt = dict(sd, **{"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2)})
    atomic_save({"state_dict": ldm_ckpt, "global_step": 3}, tmp_path / "kl-f8.ckpt")
    loaded = load_autoencoder(tmp_path / "kl-f8.ckpt", config=TINY)
    assert torch.equal(loaded.quant_conv.weight, sd["quant_conv.weight"])


def test_load_autoencoder_from_files_and_diffusers_formats(tmp_path):
    from diffusers import AutoencoderKL

    params, sd = tiny_ldm()
    atomic_save(sd, tmp_path / "autoencoder_kl.pth")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    a = load_autoencoder(tmp_path / "autoencoder_kl.pth", scale_factor=0.5, config=tmp_path / "tiny.json")
    assert a.scale_factor == 0.5

    # diffusers folder (config.json + safetensors), and a diffusers state dict file.
    ref = AutoencoderKL(**{**SD_VAE_CONFIG, **TINY, "down_block_types": ["DownEncoderBlock2D"] * 2,
                           "up_block_types": ["UpDecoderBlock2D"] * 2}).eval()
    ref.save_pretrained(tmp_path / "vae_folder")
    b = load_autoencoder(tmp_path / "vae_folder")
    atomic_save(ref.state_dict(), tmp_path / "diffusers.pth")
    c = load_autoencoder(tmp_path / "diffusers.pth", config=TINY)
    for k, v in ref.state_dict().items():
        assert torch.equal(b.state_dict()[k], v) and torch.equal(c.state_dict()[k], v)


def test_missing_weights_error_says_how_to_get_them(tmp_path):
    with pytest.raises(AutoencoderNotFoundError) as e:
        load_autoencoder(tmp_path / "stable-diffusion" / "autoencoder_kl.pth")
    assert "U-ViT" in str(e.value) and "assets/stable-diffusion" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoencoderNotFoundError, match="diffusion_pytorch_model"):
        load_autoencoder(tmp_path / "empty")


# ----------------------------------------------------------------------------
# Semantics.


def ldm_attention(x, w, prefix):
    """ldm AttnBlock: x + proj_out(softmax(q^T k / sqrt(C)) applied to v), single head, 1x1 convs."""
    B, C, H, W = x.shape
    h = F.group_norm(x, 4, w[f"{prefix}.norm.weight"], w[f"{prefix}.norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(h, w[f"{prefix}.{n}.weight"], w[f"{prefix}.{n}.bias"]) for n in "qkv")
    q = q.reshape(B, C, H * W).permute(0, 2, 1)  # (B, HW, C)
    attn = torch.softmax(torch.bmm(q, k.reshape(B, C, H * W)) * C ** -0.5, dim=2)  # (B, HW query, HW key)
    h = torch.bmm(v.reshape(B, C, H * W), attn.permute(0, 2, 1)).reshape(B, C, H, W)
    return x + F.conv2d(h, w[f"{prefix}.proj_out.weight"], w[f"{prefix}.proj_out.bias"])


def test_converted_weights_compute_the_ldm_blocks():
    _, sd = tiny_ldm()
    vae = FrozenAutoencoderKL(TINY)
    load_autoencoder_weights(vae, sd)
    x = torch.randn(2, 16, 5, 6)
    got = vae.encoder.mid_block.attentions[0](x)
    torch.testing.assert_close(got, ldm_attention(x, sd, "encoder.mid.attn_1"), rtol=1e-5, atol=1e-5)
    # ldm Downsample pads (0, 1, 0, 1) then convolves with stride 2, no padding.
    x = torch.randn(2, 8, 8, 8)
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), sd["encoder.down.0.downsample.conv.weight"],
                    sd["encoder.down.0.downsample.conv.bias"], stride=2)
    torch.testing.assert_close(vae.encoder.down_blocks[0].downsamplers[0](x), want)
    # ldm Normalize: GroupNorm(32 groups in the real model) with eps 1e-6 everywhere.
    assert all(m.eps == 1e-6 for m in vae.modules() if isinstance(m, torch.nn.GroupNorm))


def test_matches_diffusers_autoencoder_kl():
    torch.manual_seed(0)
    vae = FrozenAutoencoderKL(TINY, scale_factor=0.23010)
    from diffusers import AutoencoderKL

    ref = AutoencoderKL(**vae.config).eval()
    ref.load_state_dict(vae.state_dict())
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    moments = vae.encode_moments(x)
    assert moments.shape == (3, 8, 8, 8)
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        torch.testing.assert_close(moments[:, :4], dist.mean)
        torch.testing.assert_close(moments[:, 4:].clamp(-30, 20), dist.logvar)
        z = torch.randn(3, 4, 8, 8)
        torch.testing.assert_close(vae.decode(z), ref.decode(z / 0.23010).sample)


def test_sample_scale_and_clamp_semantics():
    vae = FrozenAutoencoderKL(TINY, scale_factor=0.18215)
    mean = torch.randn(2, 4, 3, 3)
    logvar = torch.randn(2, 4, 3, 3)
    logvar[0, 0, 0, 0], logvar[0, 0, 0, 1] = 100.0, -100.0  # clamped to 20 and -30
    moments = torch.cat([mean, logvar], dim=1)
    z = vae.sample(moments, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(7))
    want = 0.18215 * (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise)
    torch.testing.assert_close(z, want)
    assert z[0, 0, 0, 0] == pytest.approx(0.18215 * (mean[0, 0, 0, 0] + torch.exp(torch.tensor(10.0)) * noise[0, 0, 0, 0]).item())
    # Deterministic with a generator, random without.
    assert torch.equal(z, vae.sample(moments, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(z, vae.sample(moments))


def test_round_trip_shapes_scale_factor_and_chunked_decode():
    torch.manual_seed(0)
    a = FrozenAutoencoderKL(TINY, scale_factor=0.18215)
    b = FrozenAutoencoderKL(TINY, scale_factor=0.5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(5, 3, 12, 16) * 2 - 1
    moments = a.encode_moments(x)
    assert moments.shape == (5, 8, 6, 8) and moments.dtype == torch.float32
    z = a.sample(moments, generator=torch.Generator().manual_seed(0))
    assert z.shape == (5, 4, 6, 8)
    img = a.decode(z)
    assert img.shape == x.shape
    # decode(z) = decoder(post_quant_conv(z / scale)): the same unscaled latent decodes alike.
    torch.testing.assert_close(b.decode(z / 0.18215 * 0.5), img, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(img, a.decoder(a.post_quant_conv(z / 0.18215)))
    torch.testing.assert_close(a.decode_chunked(z, 2), img, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.decode_chunked(z, 10), img)
    with pytest.raises(ValueError):
        a.decode_chunked(z, 0)


def test_frozen_and_eval():
    vae = FrozenAutoencoderKL(TINY)
    parent = torch.nn.Sequential(vae).train()
    assert not vae.training and not any(m.training for m in vae.modules())
    assert not any(p.requires_grad for p in vae.parameters())
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    assert vae.encode_moments(x).grad_fn is None
    assert vae.decode(torch.randn(1, 4, 4, 4, requires_grad=True)).grad_fn is None
    del parent
