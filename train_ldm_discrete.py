"""Train / fine-tune AdaDiff on class-conditional SD latents (ImageNet 256/512), discrete time.

    accelerate launch --multi_gpu --num_processes 8 --mixed_precision fp16 train_ldm_discrete.py \
        --config=configs/imagenet256_uvit_huge.py --pretrained_weight=assets/pretrained/<released U-ViT>.pth
"""
from libs.cli.flags import define_flags, run
from libs.cli.train import train_main

FLAGS = define_flags("train")


def main(argv):
    from libs.tasks.latent import LatentTask
    train_main(FLAGS, lambda config, sampling: LatentTask(config, need_decoder=sampling), "train_ldm_discrete.py")


if __name__ == "__main__":
    run(main)
