"""ImageNet 512x512 in SD latent space, U-ViT-L, class-conditional with guidance, continuous time
(train_ldm.py / eval_ldm.py). Values in configs/common.py:imagenet_latent_config."""
from configs.common import imagenet_latent_config


def get_config():
    return imagenet_latent_config(512, "large")
