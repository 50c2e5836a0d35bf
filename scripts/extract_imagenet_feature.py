"""Encode the ImageNet train images into autoencoder moments, as the released
U-ViT ImageNet features.

    python scripts/extract_imagenet_feature.py --path assets/datasets/imagenet [--resolution 512]

ADM center crop to 256 (or 512), batches of 256; every image and its horizontal flip are
written as ``<output>/{idx}.npy`` = pickled (moments float32 (8, R/8, R/8), label).
``--layout global`` (default): originals 0..N-1, flips N..2N-1; ``--layout per_batch``: the
released script's order (each batch's originals, then its flips). Rerunning skips the
batches already written.
"""
import argparse

import torch

from libs.models.autoencoder import DEFAULT_AUTOENCODER_PATH, load_autoencoder
from libs.data.feature_writers import extract_imagenet_features
from libs.data.imagenet import imagenet_train_images


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="assets/datasets/imagenet", help="ImageNet root holding train/<class>/*.JPEG")
    p.add_argument("--resolution", type=int, default=256, choices=[256, 512])
    p.add_argument("--output", default=None, help="default: assets/datasets/imagenet<resolution>_features")
    p.add_argument("--autoencoder", default=DEFAULT_AUTOENCODER_PATH,
                   help="VAE weights: CompVis .pth, diffusers state dict or diffusers folder")
    p.add_argument("--autoencoder_config", default=None,
                   help="JSON file with an AutoencoderKL config (default: the SD v1 KL-f8 VAE)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_workers", type=int, default=8)
    p.add_argument("--layout", default="global", choices=["global", "per_batch"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    output = args.output or f"assets/datasets/imagenet{args.resolution}_features"
    dataset = imagenet_train_images(args.path, args.resolution)  # fails fast on a wrong layout
    autoencoder = load_autoencoder(args.autoencoder, device=args.device, config=args.autoencoder_config)
    written = extract_imagenet_features(autoencoder, dataset, output, batch_size=args.batch_size,
                                        num_workers=args.num_workers, layout=args.layout,
                                        progress=not args.no_progress)
    print(f"{len(dataset)} images: wrote {written} of {2 * len(dataset)} feature files to {output}")
    return written


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
