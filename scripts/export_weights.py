"""Export network weights (e.g. a checkpoint's nnet_ema.pth) to .pth or .safetensors.

    python scripts/export_weights.py SRC DST [--drop_heads] [--dtype float16]

--drop_heads removes the uncertainty heads, giving a plain U-ViT file (as released U-ViT
weights: loading it initialises fresh heads). The file is written atomically; DST may not be
SRC, nor lie in a checkpoint or a training workdir (libs/run/output_guard.py).
"""
import argparse

import torch

from libs.run.checkpoint import HEAD_PREFIX, convert_state_dict, read_state_dict, save_weights
from libs.run.output_guard import check_output_file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst", help=".pth or .safetensors")
    p.add_argument("--drop_heads", action="store_true", help="remove the uncertainty heads (plain U-ViT file)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    args = p.parse_args(argv)
    check_output_file(args.dst, "DST", [args.src])
    sd, _ = convert_state_dict(read_state_dict(args.src))
    if args.drop_heads:
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIX)}
    if args.dtype:
        sd = {k: v.to(getattr(torch, args.dtype)) if v.is_floating_point() else v for k, v in sd.items()}
    save_weights(sd, args.dst)
    print(f"wrote {len(sd)} tensors to {args.dst}")


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
