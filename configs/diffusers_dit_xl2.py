"""Early exit for diffusers' DiT-XL/2 256 (``facebook/DiT-XL-2-256``) with heads trained
without ImageNet: its own samples at 1,000 classes, its full depth as the target.

The weights come from a local folder only (``local_files_only``; nothing is downloaded): a
snapshot in the Hugging Face cache, e.g.
``~/.cache/huggingface/hub/models--facebook--DiT-XL-2-256/snapshots/<rev>``, or any
``save_pretrained`` folder. ``--model`` is its ``transformer`` folder; set ``nnet.vae`` to its
``vae`` folder (latents 4x32x32, scale 0.18215, decoded for the image distance and FID):

    SNAP=~/.cache/huggingface/hub/models--facebook--DiT-XL-2-256/snapshots/<rev>
    python -m libs.diffusers_exit.demo --config=configs/diffusers_dit_xl2.py --stages=heads,sweep \
        --workdir=workdir/dit_xl2 --model=$SNAP/transformer --set=nnet.vae="'$SNAP/vae'"

Time: the released model saw 0-based DDPM indices 0..999 of linear betas; this project's
discrete steps are n = 1..1000, so the network gets n - 1 (``time_shift=-1``). The null label is
row 1000 of each block's label table (``num_classes=1001`` here, as configs/imagenet256_dit_xl2.py).
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "discrete"
    config.discrete_betas = "linear"
    config.nnet = d(name="diffusers", cls="DiTTransformer2DModel", pretrained="", subfolder="", model_config=d(),
                    train="heads", heads="", time_shift=-1.0, img_size=32, in_chans=4, num_classes=1001, vae="")
    config.dataset = d(name="none")
    config.loss.update(objective="distill", p_uncond=0.1)
    config.train.update(n_steps=2000, batch_size=64, log_interval=100, sample_interval=0, save_interval=1000,
                        num_workers=0, ema_rate=0.999)
    config.optimizer.update(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    config.lr_scheduler.warmup_steps = 100
    config.sample.update(algorithm="dpm_solver_pp", sample_steps="10,25,50", n_samples=1000, mini_batch_size=50,
                         scale=0.0, exit_policy="0.9", grid_size=64)
    config.distill = d(n_images=10000, algorithm="dpm_solver_pp", steps=10, scale=0.0, mini_batch_size=250,
                       feature_file="", n_steps=2000, lr=1e-3)
    return config
