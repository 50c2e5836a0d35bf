"""Text-to-image sampling under a chosen exit policy: one PNG per line of a prompts file.

    python sample_t2i_discrete.py --config=configs/mscoco_uvit_small.py --nnet_path=<...>/nnet_ema.pth \
        --input_path=prompts.txt --output_path=samples/ --exit_threshold=0.87

Flags mirror config fields: --nnet_path (config.nnet_path), --exit_policy or --exit_threshold
(config.sample.exit_policy, one policy; profile: and budget: calibrate on the first
config.sample.calib_samples prompts), --output_path (config.output_path); --input_path
is the prompts file (one prompt per line, blank lines skipped). Images are written as
<output_path>/<line index>.png with prompts.txt beside them, published when all are done: the
folder then holds this run's files only (a folder holding other files is refused); the CLIP
text encoder is config.clip.version (a local folder or a cached model name).
"""
from absl import flags

from libs.cli.flags import define_flags, run

FLAGS = define_flags("eval")
flags.DEFINE_string("input_path", None, "Prompts file, one prompt per line.")
flags.mark_flags_as_required(["input_path"])


def main(argv):
    from libs.cli.sample import sample_main
    sample_main(FLAGS, FLAGS.input_path)


if __name__ == "__main__":
    run(main)
