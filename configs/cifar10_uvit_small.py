"""CIFAR-10 32x32, U-ViT-S/2, unconditional: AdaDiff fine-tuning (released values).
U-ViT pre-training used 500k steps, batch 128, lr 2e-4 (--config.loss.objective=uvit)."""
from configs.common import base_config, d, uvit_nnet


def get_config():
    config = base_config()
    config.nnet = uvit_nnet("small", img_size=32, patch_size=2, in_chans=3, num_classes=-1, use_checkpoint=False)
    config.dataset = d(name="cifar10", path="assets/datasets/cifar10", random_flip=True)
    config.train.update(n_steps=200000, batch_size=512, save_interval=25000)
    config.optimizer.update(lr=4e-4, betas=(0.99, 0.999))
    config.lr_scheduler.warmup_steps = 2500
    config.sample.update(algorithm="euler_maruyama_sde", sample_steps=1000, n_samples=50000, mini_batch_size=500,
                         exit_policy="0.92", fid_stat="assets/fid_stats/fid_stats_cifar10_train_pytorch.npz")
    return config
