"""CelebA 64x64, U-ViT-S/4, unconditional: AdaDiff fine-tuning (released values).
U-ViT pre-training used batch 128, lr 2e-4 (--config.loss.objective=uvit)."""
from configs.common import base_config, d, uvit_nnet


def get_config():
    config = base_config()
    config.nnet = uvit_nnet("small", img_size=64, patch_size=4, in_chans=3, num_classes=-1, use_checkpoint=False)
    config.dataset = d(name="celeba64", path="assets/datasets/celeba", resolution=64, random_flip=True)
    config.train.update(n_steps=200000, batch_size=1024, save_interval=25000)
    config.optimizer.update(lr=8e-4, betas=(0.99, 0.99))
    config.lr_scheduler.warmup_steps = 5000
    config.sample.update(algorithm="euler_maruyama_sde", sample_steps=1000, n_samples=50000, mini_batch_size=500,
                         exit_policy="0.95", fid_stat="assets/fid_stats/fid_stats_celeba64_train_50000_ddim.npz")
    return config
