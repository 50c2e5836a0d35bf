"""Train a U-ViT or fine-tune it into an AdaDiff model: pixel space, continuous time.

    accelerate launch --multi_gpu --num_processes 8 --mixed_precision fp16 train.py \
        --config=configs/cifar10_uvit_small.py --pretrained_weight=assets/pretrained/cifar10_uvit_small.pth
    python train.py --config=configs/digits_uvit_tiny.py --config.train.n_steps=500

A run resumes automatically from the latest complete checkpoint in <workdir>/ckpts.
"""
from libs.cli.flags import define_flags, run
from libs.cli.train import train_main

FLAGS = define_flags("train")


def main(argv):
    from libs.tasks.pixel import PixelTask
    train_main(FLAGS, lambda config, sampling: PixelTask(config), "train.py")


if __name__ == "__main__":
    run(main)
