"""Encode MS-COCO 2014 images (autoencoder moments) and captions (CLIP contexts), as
the released U-ViT MS-COCO features.

    python scripts/extract_mscoco_feature.py --split train     # then --split val

Images: central square crop, LANCZOS resize to 256. For the i-th image in image-id order,
``<output>/<split>/{i}.npy`` holds its moments (8, 32, 32) and ``{i}_{k}.npy`` the CLIP
context (77, 768) of its k-th caption. Rerunning skips the images already written.
"""
import argparse
from pathlib import Path

import torch

from libs.models.autoencoder import DEFAULT_AUTOENCODER_PATH, load_autoencoder
from libs.models.clip import DEFAULT_CLIP, FrozenCLIPEmbedder
from libs.data.feature_writers import extract_mscoco_features, read_coco_captions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--root", default="assets/datasets/coco",
                   help="COCO root holding <split>2014/ and annotations/captions_<split>2014.json")
    p.add_argument("--images", default=None, help="image folder (default <root>/<split>2014)")
    p.add_argument("--annotations", default=None, help="captions json (default <root>/annotations/captions_<split>2014.json)")
    p.add_argument("--output", default="assets/datasets/coco256_features", help="features root; writes <output>/<split>/")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--autoencoder", default=DEFAULT_AUTOENCODER_PATH,
                   help="VAE weights: CompVis .pth, diffusers state dict or diffusers folder")
    p.add_argument("--autoencoder_config", default=None,
                   help="JSON file with an AutoencoderKL config (default: the SD v1 KL-f8 VAE)")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name (found locally) or local folder")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.root)
    images = args.images or root / f"{args.split}2014"
    annotations = args.annotations or root / "annotations" / f"captions_{args.split}2014.json"
    files, captions = read_coco_captions(images, annotations)  # fails fast on a wrong layout
    clip = FrozenCLIPEmbedder(args.clip, device=args.device)
    autoencoder = load_autoencoder(args.autoencoder, device=args.device, config=args.autoencoder_config)
    out_dir = Path(args.output) / args.split
    done = extract_mscoco_features(autoencoder, clip, files, captions, out_dir, resolution=args.resolution,
                                   batch_size=args.batch_size, num_workers=args.num_workers,
                                   progress=not args.no_progress)
    print(f"{len(files)} images: encoded {done} to {out_dir}")
    return done


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
