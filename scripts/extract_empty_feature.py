"""CLIP context of the empty prompt, the unconditional input of classifier-free guidance.

    python scripts/extract_empty_feature.py

Writes ``<output>`` = float32 (77, 768); does nothing if it already exists.
"""
import argparse
from pathlib import Path

import torch

from libs.models.clip import DEFAULT_CLIP, FrozenCLIPEmbedder
from libs.data.feature_writers import extract_empty_context


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="assets/datasets/coco256_features/empty_context.npy")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name (found locally) or local folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> bool:
    args = parse_args(argv)
    if Path(args.output).is_file():
        print(f"{args.output} exists; nothing to do")
        return False
    clip = FrozenCLIPEmbedder(args.clip, device=args.device)
    extract_empty_context(clip, args.output)
    print(f"wrote {args.output}")
    return True


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
