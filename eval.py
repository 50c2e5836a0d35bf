"""Evaluate a (released or fine-tuned) U-ViT / AdaDiff model with early exit: pixel space.

    python eval.py --config=configs/cifar10_uvit_small.py --nnet_path=<...>/75000.ckpt/nnet_ema.pth \
        --exit_threshold=0.92
    accelerate launch --multi_gpu --num_processes 8 eval.py --config=... --nnet_path=... \
        --exit_threshold=0.8,0.85,0.9,0.92,none

--exit_threshold takes one value or a comma-separated sweep (1.0 / none = full depth); full
depth is always evaluated too, as the baseline of the measured speedup. A released U-ViT
file (no uncertainty heads) evaluates at full depth only.
"""
from libs.cli.evaluate import eval_main
from libs.cli.flags import define_flags, run

FLAGS = define_flags("eval")


def main(argv):
    from libs.tasks.pixel import PixelTask
    eval_main(FLAGS, lambda config: PixelTask(config, load_data=False), "eval.py")


if __name__ == "__main__":
    run(main)
