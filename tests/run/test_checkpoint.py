"""Weights I/O: released U-ViT / AdaDiff files, our own files, and clear errors."""
import logging
import pickle

import pytest
import torch

from libs import uvit
from libs.run.checkpoint import WeightsMismatchError, atomic_save, load_weights, save_weights

TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, num_classes=11)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return uvit.UViT(**{**TINY, **kw})


def same_weights(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_released_uvit_file_loads_with_fresh_heads(tmp_path, caplog):
    src = make(0)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("uem_heads.")}
    torch.save(sd, tmp_path / "uvit.pth")
    dst = make(1)
    heads_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("uem_heads.")}
    # Released U-ViT files load strict=False with exactly the heads missing and nothing unexpected.
    missing, unexpected = make(2).load_state_dict(sd, strict=False)
    assert sorted(missing) == sorted(heads_before) and unexpected == []
    with caplog.at_level(logging.INFO, logger="libs.run.checkpoint"):
        report = load_weights(dst, tmp_path / "uvit.pth")
    assert report.kind == "uvit" and sorted(report.fresh_heads) == sorted(heads_before)
    assert "fresh initialisation" in caplog.text
    for k, v in dst.state_dict().items():
        assert torch.equal(v, heads_before[k] if k in heads_before else sd[k]), k


def test_released_adadiff_names_are_mapped(tmp_path):
    src = make(0)
    sd = {}
    for k, v in src.state_dict().items():
        if k.startswith("uem_heads."):
            i, _, param = k[len("uem_heads."):].split(".")
            k = f"lte_classifer.{i}.lte.{param}"
        sd[k] = v
    torch.save(sd, tmp_path / "adadiff.pth")
    dst = make(1)
    assert load_weights(dst, tmp_path / "adadiff.pth").kind == "adadiff"
    assert same_weights(src, dst)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_own_files(tmp_path, suffix):
    src = make(0)
    save_weights(src, tmp_path / f"nnet{suffix}")
    dst = make(1)
    assert load_weights(dst, tmp_path / f"nnet{suffix}").kind == "project"
    assert same_weights(src, dst)
    assert [p.name for p in tmp_path.iterdir()] == [f"nnet{suffix}"]  # no temporary left behind


def test_wrapper_prefixes_and_in_memory_state_dicts():
    src = make(0)
    dst = make(1)
    load_weights(dst, {f"module.{k}": v for k, v in src.state_dict().items()})
    assert same_weights(src, dst)


def test_mismatched_files_list_keys_and_shapes(tmp_path):
    src = make(0)
    sd = src.state_dict()
    with pytest.raises(WeightsMismatchError) as e:
        load_weights(make(0, embed_dim=64), sd)
    assert "shape mismatch pos_embed: file (1, 18, 32), model (1, 18, 64)" in str(e.value)
    partial = {k: v for k, v in sd.items() if k != "mid_block.attn.proj.bias"}
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(1\): mid_block.attn.proj.bias"):
        load_weights(make(1), partial)
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \(1\): extra.weight"):
        load_weights(make(1), {**sd, "extra.weight": torch.zeros(1)})
    some_heads = {k: v for k, v in sd.items() if not k.startswith("uem_heads.0.")}
    with pytest.raises(WeightsMismatchError, match="uem_heads.0.proj.weight"):
        load_weights(make(1), some_heads)  # a file with some heads but not all is not a U-ViT file
    with pytest.raises(WeightsMismatchError, match="uem_heads.0.proj.weight: file \\(12, 32\\), model \\(12, 64\\)"):
        load_weights(make(1, uem_time_aware=True), sd)  # released heads into the time-aware variant
    with pytest.raises(WeightsMismatchError, match="label_emb.weight"):
        load_weights(make(1, num_classes=-1), sd)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_weights(make(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_weights(make(), tmp_path / "junk.pth")
    torch.save({"model": make().state_dict(), "step": torch.tensor(3)}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"nested dicts \['model'\]"):
        load_weights(make(), tmp_path / "nested.pth")
    with open(tmp_path / "object.pth", "wb") as f:
        pickle.dump(object(), f)
    with pytest.raises(ValueError, match="cannot read"):
        load_weights(make(), tmp_path / "object.pth")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), "stopped"])
def test_an_interrupt_a_writer_wrapped_comes_out_as_itself(tmp_path, interrupt):
    """torch.save and friends may wrap what a signal raised inside them; a SIGTERM must still end
    the run as a SIGTERM (status 143), not as Ctrl-C (a race seen in test_real_signal_stops_cleanly)."""
    import signal

    from libs.run.atomic import atomic_write
    from libs.run.errors import Stopped

    interrupt = Stopped(signal.SIGTERM) if interrupt == "stopped" else interrupt

    def writer(f):
        try:
            raise interrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("writer failed") from e

    with pytest.raises(KeyboardInterrupt) as info:
        atomic_write(tmp_path / "x.bin", writer)
    assert type(info.value) is type(interrupt) and getattr(info.value, "signum", None) == getattr(interrupt, "signum", None)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pth"
    atomic_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_a_link_is_followed_to_the_real_file_before_its_checksum(tmp_path):
    from libs.run.checkpoint import save_checkpoint, read_state_dict
    from libs.run.config_io import resolve_input_links
    from libs.run.manifest import CorruptCheckpointError
    from ml_collections import ConfigDict

    net = make()
    ckpt = save_checkpoint(tmp_path / "ckpts", 1, {"nnet_ema.pth": net.state_dict()}, {})
    real = ckpt / "nnet_ema.pth"
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 1
    real.write_bytes(bytes(data))
    link = tmp_path / "elsewhere.pth"
    link.symlink_to(real)
    with pytest.raises(CorruptCheckpointError, match="does not match its checksum"):
        read_state_dict(link)  # the manifest beside the real file checks it
    config = ConfigDict({"nnet_path": str(link), "train": {"pretrained_weight": ""}, "sample": {"fid_stat": "x"}})
    resolve_input_links(config)
    assert config.nnet_path == str(real) and config.sample.fid_stat == "x"  # only links change
