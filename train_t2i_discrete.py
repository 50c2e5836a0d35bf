"""Train / fine-tune text-to-image AdaDiff on MS-COCO SD latents + CLIP contexts, discrete time.

    accelerate launch --multi_gpu --num_processes 4 --mixed_precision fp16 train_t2i_discrete.py \
        --config=configs/mscoco_uvit_small.py --pretrained_weight=assets/pretrained/mscoco_uvit_small.pth
"""
from libs.cli.flags import define_flags, run
from libs.cli.train import train_main

FLAGS = define_flags("train")


def main(argv):
    from libs.tasks.text import TextTask
    train_main(FLAGS, lambda config, sampling: TextTask(config, need_decoder=sampling), "train_t2i_discrete.py")


if __name__ == "__main__":
    run(main)
