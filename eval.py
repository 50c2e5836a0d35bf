"""Evaluate a (released or fine-tuned) U-ViT / AdaDiff model with early exit, pixel space.

    python eval.py --config=configs/cifar10_uvit_small.py --nnet_path=<...>/75000.ckpt/nnet_ema.pth \
        --exit_threshold=0.92
    accelerate launch --multi_gpu --num_processes 8 eval.py --config=... --nnet_path=... \
        --exit_threshold=0.8,0.85,0.9,0.92,none

Flags mirror config fields: --nnet_path (config.nnet_path), --exit_threshold
(config.sample.exit_threshold: one value or a comma-separated sweep; 1.0 / none = full depth),
--output_path (config.output_path, default <workdir>/eval). Full depth is always evaluated
too: it is the baseline for the measured speedup. A released U-ViT file (no uncertainty
heads) evaluates at full depth only.
"""
from absl import app, flags
from ml_collections import config_flags

from libs.eval_runner import run_eval

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration (configs/*.py).", lock_config=False)
flags.DEFINE_string("nnet_path", None, "Weights to evaluate (config.nnet_path).")
flags.DEFINE_string("exit_threshold", None, "Threshold or comma-separated sweep (config.sample.exit_threshold).")
flags.DEFINE_string("output_path", None, "Report folder (config.output_path).")
flags.DEFINE_string("workdir", None, "Run directory (config.workdir).")
flags.mark_flags_as_required(["config"])


def main(argv):
    from libs.tasks import PixelTask
    run_eval(FLAGS, lambda config: PixelTask(config, load_data=False))


if __name__ == "__main__":
    app.run(main)
