"""A small diffusers ``DiTTransformer2DModel`` (built from this config) on scikit-learn's 8x8
digits, trained through the adapter (``libs/diffusers_exit/``), its heads then retrained
without the data (``config.loss.objective='distill'``), and swept next to diffusers' own caches.
``scripts/diffusers_demo.sh`` runs the three stages; by hand:

    python -m libs.diffusers_exit.demo --config=configs/diffusers_digits.py --workdir=workdir/diffusers_demo

Width 64, 4 blocks, patch 2, no learned variance (as configs/digits_dit.py); 10 digit labels
and the null label of guidance (diffusers' label table has num_embeds_ada_norm + 1 rows).
"""
from configs.common import base_config, d


def get_config():
    config = base_config()
    config.nnet = d(name="diffusers", cls="DiTTransformer2DModel", pretrained="", subfolder="",
                    model_config=d(num_attention_heads=4, attention_head_dim=16, in_channels=1, out_channels=1,
                                   num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10),
                    train="all", heads="", time_shift=0.0, img_size=8, in_chans=1, num_classes=11)
    config.dataset = d(name="digits", resolution=8)
    config.loss.p_uncond = 0.1
    config.train.update(n_steps=600, batch_size=64, log_interval=100, sample_interval=0, save_interval=300,
                        num_workers=0, ema_rate=0.99)
    config.optimizer.update(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99))
    config.lr_scheduler.warmup_steps = 50
    config.sample.update(algorithm="dpm_solver", sample_steps="10,20", n_samples=200, mini_batch_size=200,
                         scale=0.0, exit_policy="0.9", grid_size=100)
    # Data-free stage (heads only): the frozen model's own samples, its full depth as the target.
    config.distill = d(n_images=512, algorithm="dpm_solver", steps=10, scale=0.0, mini_batch_size=256,
                       feature_file="", n_steps=200, lr=1e-2)
    return config
