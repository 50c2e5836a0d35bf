"""The embedded default: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes,
shipped inside scikit-learn), a tiny class-conditional U-ViT sized for a 2-core CPU.

    python train.py --config=configs/digits_uvit_tiny.py --config.loss.objective=uvit   # backbone
    python train.py --config=configs/digits_uvit_tiny.py --pretrained_weight=<backbone>  # AdaDiff
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.nnet = d(name="uvit", img_size=8, patch_size=2, in_chans=1, embed_dim=128, depth=6, num_heads=4,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=11, use_checkpoint=False,
                    conv=True, skip=True, uem_time_aware=False)
    config.dataset = d(name="digits", resolution=8)
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=2000, batch_size=128, log_interval=50, sample_interval=0, save_interval=500,
                        num_workers=0, ema_rate=0.995)
    config.optimizer.update(lr=1e-3, betas=(0.9, 0.99))
    config.lr_scheduler.warmup_steps = 100
    config.sample.update(algorithm="dpm_solver", sample_steps=50, n_samples=1000, mini_batch_size=250, scale=0.0,
                         exit_policy="0.9", grid_size=100, fid_stat="assets/fid_stats/fid_stats_digits8_train.npz")
    return config
