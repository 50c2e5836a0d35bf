"""Evaluate AdaDiff / U-ViT on class-conditional SD latents (discrete time) with early-exit sweeps.

    python eval_ldm_discrete.py --config=configs/imagenet256_uvit_huge.py --nnet_path=<...>/nnet_ema.pth \
        --exit_threshold=0.9,0.92,none
"""
from libs.cli.evaluate import eval_main
from libs.cli.flags import define_flags, run

FLAGS = define_flags("eval")


def main(argv):
    from libs.tasks.latent import LatentTask
    eval_main(FLAGS, lambda config: LatentTask(config, load_data=False), "eval_ldm_discrete.py")


if __name__ == "__main__":
    run(main)
