"""Train a U-ViT or fine-tune it into an AdaDiff model (pixel space, continuous time).

    accelerate launch train.py --config=configs/cifar10_uvit_small.py \
        --pretrained_weight=assets/pretrained/cifar10_uvit_small.pth
    python train.py --config=configs/digits_uvit_tiny.py --config.train.n_steps=500

Flags that mirror config fields set exactly those fields: --workdir (config.workdir) and
--pretrained_weight (config.train.pretrained_weight). A run resumes automatically from the
latest complete checkpoint in <workdir>/ckpts.
"""
from absl import app, flags
from ml_collections import config_flags

from libs.config_utils import set_from_flags
from libs.tasks import PixelTask
from libs.train_engine import default_workdir, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration (configs/*.py).", lock_config=False)
flags.DEFINE_string("workdir", None, "Run directory (config.workdir; default workdir/<config name>).")
flags.DEFINE_string("pretrained_weight", None, "U-ViT/AdaDiff weights to start from (config.train.pretrained_weight).")
flags.mark_flags_as_required(["config"])


def main(argv):
    config = FLAGS.config
    set_from_flags(config, {"workdir": FLAGS.workdir, "train.pretrained_weight": FLAGS.pretrained_weight})
    if not config.get("workdir"):
        set_from_flags(config, {"workdir": default_workdir(FLAGS["config"].config_filename)})
    train(config, PixelTask(config))


if __name__ == "__main__":
    app.run(main)
