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
