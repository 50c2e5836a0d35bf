"""ImageNet 64x64 pixels, U-ViT-M/4, class-conditional (U-ViT values), continuous time."""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.time = "continuous"
    config.nnet = d(name="uvit", img_size=64, patch_size=4, in_chans=3, embed_dim=768, depth=16, num_heads=12,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=1000, use_checkpoint=True,
                    conv=True, skip=True, uem_time_aware=False)
    config.dataset = d(name="imagenet64", path="assets/datasets/imagenet", resolution=64, random_flip=True)
    config.train.update(n_steps=300000, batch_size=1024, save_interval=25000, sample_interval=10000)
    config.optimizer.update(lr=3e-4, betas=(0.99, 0.99))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="dpm_solver", sample_steps=50, n_samples=50000, mini_batch_size=200,
                         exit_threshold="0.92", fid_stat="assets/fid_stats/fid_stats_imagenet64_guided_diffusion.npz")
    return config
