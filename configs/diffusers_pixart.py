"""Early exit for a PixArt-alpha transformer (``PixArt-alpha/PixArt-XL-2-512x512``) with heads
trained without its data: a prompt file encoded once by the pipeline's own T5 encoder, its own
samples, its full depth as the target.

Local weights only (``local_files_only``). Encode the prompts once (the pipeline from the same
local snapshot; the T5 encoder is needed only for this step):

    python -c "from diffusers import PixArtAlphaPipeline; from libs.diffusers_exit.prompts import encode_prompt_file; \
        p = PixArtAlphaPipeline.from_pretrained('$SNAP', local_files_only=True, transformer=None); \
        encode_prompt_file(p, 'prompts.txt', 'workdir/pixart/contexts.safetensors')"
    python -m libs.diffusers_exit.demo --config=configs/diffusers_pixart.py --stages=heads,sweep \
        --workdir=workdir/pixart --model=$SNAP/transformer --set=nnet.vae="'$SNAP/vae'" \
        --set=nnet.prompts="'workdir/pixart/contexts.safetensors'" --set=nnet.num_classes=<prompts + 1>

The 512 model reads no micro-conditions (only the 1024 one does). Guidance is not wired for
PixArt's conditions here (``config.sample.scale=0``).
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "discrete"
    config.discrete_betas = "linear"
    config.nnet = d(name="diffusers", cls="PixArtTransformer2DModel", pretrained="", subfolder="", model_config=d(),
                    train="heads", heads="", time_shift=-1.0, img_size=64, in_chans=4, num_classes=101, vae="",
                    prompts="")
    config.dataset = d(name="none")
    config.loss.update(objective="distill", p_uncond=0.1)
    config.train.update(n_steps=2000, batch_size=32, log_interval=100, sample_interval=0, save_interval=1000,
                        num_workers=0, ema_rate=0.999)
    config.optimizer.update(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999))
    config.lr_scheduler.warmup_steps = 100
    config.sample.update(algorithm="dpm_solver_pp", sample_steps="10,20", n_samples=500, mini_batch_size=25,
                         scale=0.0, exit_policy="0.9", grid_size=16)
    config.distill = d(n_images=5000, algorithm="dpm_solver_pp", steps=10, scale=0.0, mini_batch_size=50,
                       feature_file="", n_steps=2000, lr=1e-3)
    return config
