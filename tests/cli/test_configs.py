"""Config values that follow the released configs."""
import importlib

import pytest


@pytest.mark.parametrize("name,n_steps,vae", [
    ("imagenet256_uvit_large", 300000, "autoencoder_kl.pth"),
    ("imagenet256_uvit_huge", 500000, "autoencoder_kl_ema.pth"),
    ("imagenet512_uvit_large", 500000, "autoencoder_kl.pth"),
    ("imagenet512_uvit_huge", 500000, "autoencoder_kl_ema.pth"),
])
def test_imagenet_latent_training_length_and_autoencoder(name, n_steps, vae):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.train.n_steps == n_steps
    assert config.autoencoder.pretrained_path == f"assets/stable-diffusion/{vae}"


# ----------------------------------------------------------------------------- the config check
def _problems(config, kind="train"):
    from libs.cli.config_check import ConfigError, check_config

    try:
        check_config(config, kind)
    except ConfigError as e:
        assert "\n" not in str(e)
        return str(e).removeprefix("invalid config: ").split("; ")
    return []


def test_the_check_reports_the_networks_own_problems_all_at_once(monkeypatch):
    """config.nnet is checked by the network class's check_args (nothing is built), together
    with the rest of the config."""
    import torch

    from libs.models import registry

    def no_building(self, *args, **kwargs):
        raise AssertionError("the config check built a module")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_building)
    config = importlib.import_module("configs.mscoco_uvit_small").get_config()
    assert _problems(config) == []
    config.nnet.update(img_size=31, num_heads=7, depth=11, clip_dim=0)
    config.sample.exit_policy = "0.9,threshold:0.90"
    config.optimizer.name = "sgd"
    got = _problems(config)
    assert [p.split("=")[0] for p in got] == ["config.nnet.img_size", "config.nnet.depth", "config.nnet.embed_dim",
                                              "config.nnet.clip_dim", "config.sample.exit_policy",
                                              "config.optimizer.name"]
    assert got == [*registry.check_nnet(config.nnet), *got[4:]]  # the network's messages, word for word
    assert "exit policy 'threshold:0.90' repeats '0.9'" in got[4]
    assert got[5] == "config.optimizer.name='sgd': choose one of adamw"


def test_the_check_uses_the_names_the_code_accepts():
    from libs.training.engine import OPTIMIZERS

    config = importlib.import_module("configs.cifar10_uvit_small").get_config()
    for name in OPTIMIZERS:
        config.optimizer.name = name
        assert _problems(config) == []
    config.nnet.name = "vit"
    assert _problems(config) == ["config.nnet.name='vit': choose one of dit, uvit, uvit_t2i"]
    config.nnet.name = "uvit"
    config.nnet.heads = 8  # a misspelt field is not silently ignored
    assert _problems(config)[0].startswith("config.nnet.heads=8: not an argument of libs.models.uvit.UViT")
    assert _problems(config, "eval")[0].startswith("config.nnet.heads=8")


def test_no_config_sets_unread_fields():
    for name in ("common", "cifar10_uvit_small", "imagenet256_uvit_huge", "mscoco_uvit_small"):
        module = importlib.import_module(f"configs.{name}")
        config = module.base_config() if name == "common" else module.get_config()
        assert "pred" not in config  # was set and never read
