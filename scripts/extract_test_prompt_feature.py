"""CLIP contexts of the prompts shown in sample grids during text-to-image training.

    python scripts/extract_test_prompt_feature.py --prompts my_prompts.txt

Writes ``<output>/{i}.npy`` = pickled (prompt, context float32 (77, 768)) for the i-th
non-empty line of the prompts file (a built-in list when no file is given). Rerunning keeps
the files already written (and refuses if they hold other prompts).
"""
import argparse
from pathlib import Path

import torch

from libs.models.clip import DEFAULT_CLIP, FrozenCLIPEmbedder
from libs.data.feature_writers import extract_prompt_features

# COCO-style captions used when no --prompts file is given.
DEFAULT_PROMPTS = [
    "A green train is coming down the tracks.",
    "A group of skiers are preparing to ski down a mountain.",
    "A small kitchen with a low ceiling.",
    "A group of elephants walking in muddy water.",
    "A living area with a television and a table.",
    "A road with traffic lights, street lights and cars.",
    "A bus driving in a city area with traffic signs.",
    "A bus pulls over to the curb close to an intersection.",
    "A group of people are walking and one is holding an umbrella.",
    "A baseball player taking a swing at an incoming ball.",
    "A city street line with brick buildings and trees.",
    "A close up of a plate of broccoli and sauce.",
]


def read_prompts(path) -> list:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (expected a text file, one prompt per line)")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one prompt per line)")
    return prompts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: a built-in list)")
    p.add_argument("--output", default="assets/datasets/coco256_features/run_vis")
    p.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name (found locally) or local folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args.prompts) if args.prompts else DEFAULT_PROMPTS
    clip = FrozenCLIPEmbedder(args.clip, device=args.device)
    written = extract_prompt_features(clip, prompts, args.output)
    print(f"{len(prompts)} prompts: wrote {written} files to {args.output}")
    return written


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
