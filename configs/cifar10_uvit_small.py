"""CIFAR-10, U-ViT-S/2, unconditional: AdaDiff fine-tuning with the released values."""
import ml_collections


def d(**kwargs):
    return ml_collections.ConfigDict(kwargs)


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 1234
    config.pred = "noise_pred"
    config.nnet = d(name="uvit", img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8,
                    mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=-1, use_checkpoint=False,
                    conv=True, skip=True, uem_time_aware=False)
    config.dataset = d(name="cifar10", path="assets/datasets/cifar10")
    config.exit_threshold = 0.92  # released eval threshold for CIFAR-10
    return config
