"""Evaluate text-to-image AdaDiff / U-ViT (MS-COCO validation captions) with early-exit sweeps.

    python eval_t2i_discrete.py --config=configs/mscoco_uvit_small.py --nnet_path=<...>/nnet_ema.pth \
        --exit_threshold=0.87,none
"""
from libs.cli.evaluate import eval_main
from libs.cli.flags import define_flags, run

FLAGS = define_flags("eval")


def main(argv):
    from libs.tasks.text import TextTask
    eval_main(FLAGS, lambda config: TextTask(config, load_data=False), "eval_t2i_discrete.py")


if __name__ == "__main__":
    run(main)
