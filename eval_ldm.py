"""Evaluate AdaDiff / U-ViT on class-conditional SD latents (continuous time) with early-exit sweeps.

    python eval_ldm.py --config=configs/imagenet256_uvit_large.py --nnet_path=<...>/nnet_ema.pth \
        --exit_threshold=0.9,0.92,none
"""
from libs.cli.entry import define_flags, eval_main, run

FLAGS = define_flags("eval")


def main(argv):
    from libs.tasks.latent import LatentTask
    eval_main(FLAGS, lambda config: LatentTask(config, load_data=False), "eval_ldm.py", "continuous")


if __name__ == "__main__":
    run(main)
