"""The real-model recipes' code paths (configs/diffusers_dit_xl2.py: discrete time, time shift,
learned sigma, 1,000 classes, latents decoded through the pipeline's VAE folder) on a tiny random
DiT and VAE of the same classes, through the demo's stages."""
import torch
from diffusers import AutoencoderKL

from configs.diffusers_dit_xl2 import get_config
from libs.diffusers_exit.demo import main
from tests.diffusers_exit.tiny_models import tiny_dit


def test_dit_xl2_recipe_runs_heads_and_sweep_on_tiny_models(tmp_path, capsys):
    tiny_dit(learn_sigma=True, layers=2, classes=1000).save_pretrained(str(tmp_path / "transformer"))
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, sample_size=8,
                  latent_channels=4).save_pretrained(str(tmp_path / "vae"))
    assert get_config().nnet.time_shift == -1.0
    main(["--config=configs/diffusers_dit_xl2.py", f"--workdir={tmp_path / 'run'}", "--stages=heads,sweep",
          f"--model={tmp_path / 'transformer'}", f"--set=nnet.vae='{tmp_path / 'vae'}'", "--set=nnet.img_size=8",
          "--set=distill.n_images=8", "--set=distill.steps=2", "--set=distill.n_steps=2", "--set=train.n_steps=2",
          "--set=train.batch_size=4", "--set=sample.sample_steps='3'", "--set=sample.n_samples=2",
          "--set=sample.mini_batch_size=2", "--methods=0.9,fbc:0.1,taylorseer:2"])
    out = capsys.readouterr().out
    assert (tmp_path / "run" / "heads.safetensors").is_file() and (tmp_path / "run" / "sweep" / "sweep.json").is_file()
    assert "taylorseer:2" in out and "stage sweep" in out
