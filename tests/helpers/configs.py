"""Tiny training configs the tests share: the digits config with a two-block, 32-wide net."""
from configs.digits_uvit_tiny import get_config


def tiny_config(workdir, **train):
    """The digits config at test size in ``workdir``: 6 steps of batch 16, a log row every
    step, a checkpoint every 3; ``train`` overrides config.train fields."""
    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.workdir = str(workdir)
    config.train.update({**dict(n_steps=6, batch_size=16, log_interval=1, save_interval=3), **train})
    config.optimizer.lr = 2e-3
    config.lr_scheduler.warmup_steps = 2
    return config
