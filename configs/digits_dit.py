"""A tiny class-conditional DiT on scikit-learn's 8x8 digits (the embedded default data set),
sized like configs/digits_uvit_tiny.py, that trains with the AdaDiff objective from scratch on
a 2-core CPU in minutes; continuous time (train.py / eval.py).

    python train.py --config=configs/digits_dit.py --workdir=workdir/digits_dit
    python eval.py --config=configs/digits_dit.py --nnet_path=workdir/digits_dit/ckpts/1500.ckpt/nnet_ema.pth \
        --exit_policy=0.8,0.85,0.9,static:3,static:4

No learned variance here (``learn_sigma=False``): nothing in this project trains the variance
channels, so the tiny model predicts the noise only (the ImageNet config keeps the released
two-part output).
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.nnet = d(name="dit", img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4,
                    mlp_ratio=4.0, num_classes=11, learn_sigma=False, uem_time_aware=False, time_shift=0.0,
                    use_checkpoint=False)
    config.dataset = d(name="digits", resolution=8)
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=1500, batch_size=64, log_interval=100, sample_interval=0, save_interval=500,
                        num_workers=0, ema_rate=0.995)
    config.optimizer.update(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99))
    config.lr_scheduler.warmup_steps = 100
    config.sample.update(algorithm="dpm_solver", sample_steps=50, n_samples=1000, mini_batch_size=250, scale=0.0,
                         exit_policy="0.9", grid_size=100, fid_stat="assets/fid_stats/fid_stats_digits8_train.npz")
    return config
