"""ImageNet 256x256 in SD latent space, U-ViT-H, class-conditional with guidance, discrete time
(train_ldm_discrete.py / eval_ldm_discrete.py). Values in configs/common.py:imagenet_latent_config."""
from configs.common import imagenet_latent_config


def get_config():
    return imagenet_latent_config(256, "huge")
