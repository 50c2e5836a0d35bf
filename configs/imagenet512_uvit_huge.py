"""ImageNet 512x512 in SD latent space (4x64x64), U-ViT-H/4, class-conditional with
classifier-free guidance, discrete time (train_ldm_discrete.py / eval_ldm_discrete.py)."""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "discrete"
    config.nnet = d(name="uvit", img_size=64, patch_size=4, in_chans=4, embed_dim=1152, depth=28, num_heads=16,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=1001, use_checkpoint=True,
                    conv=False, skip=True, uem_time_aware=False)
    config.dataset = d(name="imagenet512_features", path="assets/datasets/imagenet512_features", num_classes=1000)
    config.autoencoder = d(pretrained_path="assets/stable-diffusion/autoencoder_kl.pth", scale_factor=0.18215, config="")
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=300000, batch_size=1024, save_interval=10000, sample_interval=10000)
    config.optimizer.update(lr=2e-4, betas=(0.99, 0.99))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="dpm_solver_pp", sample_steps=50, n_samples=50000, mini_batch_size=50,
                         scale=0.7, exit_threshold="0.92", decode_chunk=25,
                         fid_stat="assets/fid_stats/fid_stats_imagenet512_guided_diffusion.npz")
    return config
