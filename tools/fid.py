"""FID between two image sets (pytorch-fid's protocol, ``libs.evaluation.fid``).

    python tools/fid.py A B [--batch_size 50] [--device cuda] [--inception PATH]

prints the FID between A and B, each a folder, a statistics .npz, an image .npz or a .npy of
Inception features (N, 2048), one row per image, as an evaluation writes them with
``--config.sample.save_features=True`` (``<output_path>/features/<pair>.npy``).
"""
import argparse
from typing import Optional, Sequence

from libs.evaluation.fid import add_inception_arguments, fid_between


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description="FID between two folders / .npz files (statistics mu, sigma or "
                                                 "uint8 NHWC images) / .npy files of (N, 2048) features.")
    parser.add_argument("a", help="folder of images, statistics .npz, image .npz or features .npy")
    parser.add_argument("b", help="folder of images, statistics .npz, image .npz or features .npy")
    add_inception_arguments(parser)
    args = parser.parse_args(argv)
    fid = fid_between(args.a, args.b, batch_size=args.batch_size, device=args.device,
                      inception=args.inception, num_workers=args.num_workers)
    print(f"FID: {fid:.6f}")
    return fid


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
