"""AdaDiff fine-tuning of the released DiT-XL/2 on ImageNet 256 (class-conditional, SD latents
4x32x32 with scale 0.18215), discrete time on DDPM's linear betas.

    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 train_ldm_discrete.py \
        --config=configs/imagenet256_dit_xl2.py --pretrained_weight=assets/pretrained/DiT-XL-2-256x256.pt
    python eval_ldm_discrete.py --config=configs/imagenet256_dit_xl2.py \
        --nnet_path=workdir/imagenet256_dit_xl2/ckpts/<step>.ckpt/nnet_ema.pth --exit_policy=0.9,0.92,full

``DiT-XL-2-256x256.pt`` is the released file of facebookresearch/DiT: a plain state dict (no
wrapper) in the released names; it loads with only the uncertainty heads fresh. Time: the
released model was trained on 0-based step indices 0..999, this project's discrete steps are
n = 1..1000 (alpha-bar_n = prod_{i<=n} (1 - beta_i)), so the network sees n - 1
(``time_shift=-1``). Label dropout is the task's (``loss.p_uncond`` 0.1, as released), the null
label is row 1000. Guidance here is eps_c + s (eps_c - eps_u) on all four noise channels:
the released cfg scale 1.5 is s = 0.5. The variance channels are not trained (weight decay 0,
as released, leaves them exactly as loaded) and the samplers use the noise channels only.
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "discrete"
    config.discrete_betas = "linear"  # betas = linspace(1e-4, 0.02, 1000)
    config.nnet = d(name="dit", preset="DiT-XL/2", img_size=32, in_chans=4, num_classes=1001, learn_sigma=True,
                    uem_time_aware=False, time_shift=-1.0, use_checkpoint=True)
    config.dataset = d(name="imagenet256_features", path="assets/datasets/imagenet256_features", num_classes=1000)
    config.autoencoder = d(pretrained_path="assets/stable-diffusion/autoencoder_kl_ema.pth", scale_factor=0.18215,
                           config="")
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=50000, batch_size=256, save_interval=5000, sample_interval=5000, ema_rate=0.9999)
    config.optimizer.update(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999))
    config.lr_scheduler.warmup_steps = 0
    config.sample.update(algorithm="dpm_solver_pp", sample_steps=50, n_samples=50000, mini_batch_size=50, scale=0.5,
                         exit_policy="0.92", decode_chunk=25,
                         fid_stat="assets/fid_stats/fid_stats_imagenet256_guided_diffusion.npz")
    return config
