"""ImageNet 64x64 pixels, U-ViT-M/4, class-conditional, continuous time (train.py / eval.py)."""
from configs.common import imagenet64_config


def get_config():
    return imagenet64_config("mid")
