"""Reference FID statistics: Inception mu (2048,), sigma (2048, 2048) of a set of images.

    python tools/fid_stats.py SOURCE OUT.npz [--batch_size 50] [--device cuda] [--inception PATH]

SOURCE is a folder of images (searched recursively) or an .npz holding uint8 NHWC images
under 'images' or 'arr_0'. OUT.npz has keys mu and sigma, as assets/fid_stats/*.npz.
"""

import argparse
from typing import Optional, Sequence

from libs.evaluation.fid import (Stats, add_inception_arguments, default_device, is_statistics_file,
                       save_statistics, statistics_of)
from libs.evaluation.inception import load_inception


def compute_reference_statistics(source: str, out: str, batch_size: int = 50,
                                 device: Optional[str] = None, inception: Optional[str] = None,
                                 num_workers: int = 0, progress: bool = True) -> Stats:
    """Statistics of a folder or image .npz, written to `out` (not the source, not in a
    checkpoint or training workdir: libs/run/output_guard.py); returns (mu, sigma)."""
    from libs.run.output_guard import check_output_file

    check_output_file(out, "OUT", [source])
    if is_statistics_file(source):
        raise ValueError(f"'{source}' already holds statistics (mu, sigma); SOURCE must be a folder "
                         "of images or an .npz of uint8 NHWC images")
    mu, sigma = statistics_of(source, lambda: load_inception(inception, device=device or default_device()),
                              batch_size=batch_size, num_workers=num_workers, progress=progress)
    save_statistics(out, mu, sigma)
    return mu, sigma


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Compute FID reference statistics (mu, sigma).")
    parser.add_argument("source", help="folder of images, or .npz with uint8 NHWC 'images'/'arr_0'")
    parser.add_argument("out", help="output .npz (keys mu, sigma)")
    add_inception_arguments(parser)
    args = parser.parse_args(argv)
    mu, _ = compute_reference_statistics(args.source, args.out, batch_size=args.batch_size,
                                         device=args.device, inception=args.inception,
                                         num_workers=args.num_workers)
    print(f"Saved FID statistics of {args.source} ({mu.shape[0]}-d) to {args.out}")


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
