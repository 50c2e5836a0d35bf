"""Reference FID statistics of a config's dataset (no flips), written to config.sample.fid_stat.

    python scripts/make_fid_stats.py --config=configs/digits_uvit_tiny.py
    python scripts/make_fid_stats.py --config=configs/cifar10_uvit_small.py --out=assets/fid_stats/my.npz
    python scripts/make_fid_stats.py --config=configs/digits_uvit_tiny.py --compact   # the shipped file

For a folder or an .npz of images use ``python tools/fid_stats.py SOURCE OUT.npz``.
"""

from absl import flags
from ml_collections import config_flags

from libs.cli.flags import run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Configuration whose dataset to use.", lock_config=False)
flags.DEFINE_string("out", None, "Output .npz (default: config.sample.fid_stat).")
flags.DEFINE_integer("limit", None, "Use at most this many images (e.g. 50000 for CelebA).")
flags.DEFINE_string("device", None, "cuda or cpu (default: cuda if available).")
flags.DEFINE_integer("batch_size", 100, "Inception batch size.")
flags.DEFINE_bool("compact", False, "Store sigma's upper triangle in float32, compressed (a quarter of the size).")
flags.mark_flags_as_required(["config"])


def dataset_statistics(config, out, limit=None, device=None, batch_size=100, progress=True, compact=False):
    """Stream the dataset's reference images through Inception; save and return (mu, sigma)."""
    from tqdm.auto import tqdm

    from libs.data.reference import reference_images
    from libs.data.registry import get_dataset
    from libs.evaluation.fid import FIDAccumulator, default_device, save_statistics
    from libs.evaluation.inception import load_inception

    dataset = get_dataset(**config.dataset)
    acc = FIDAccumulator(load_inception(config.get("inception_path") or None, device=device or default_device()),
                         batch_size=batch_size)
    total = min(len(dataset.train), limit) if limit else len(dataset.train)
    with tqdm(total=total, desc="reference images", disable=not progress) as bar:
        for batch in reference_images(dataset, limit=limit, batch_size=batch_size):  # uint8 (B, H, W, C)
            acc.update(batch.transpose(0, 3, 1, 2))
            bar.update(len(batch))
    mu, sigma = acc.compute()
    save_statistics(out, mu, sigma, compact=compact)
    return mu, sigma


def main(argv):
    config = FLAGS.config
    out = FLAGS.out or config.sample.fid_stat
    if not out:
        raise ValueError("no output: pass --out or set config.sample.fid_stat")
    from libs.run.output_guard import check_output_file
    check_output_file(out, "--out")
    dataset_statistics(config, out, FLAGS.limit, FLAGS.device, FLAGS.batch_size, compact=FLAGS.compact)
    print(f"saved reference statistics of dataset {config.dataset.name!r} to {out}")


if __name__ == "__main__":
    run(main)
