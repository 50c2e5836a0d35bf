#!/usr/bin/env bash
# AdaDiff fine-tuning of the released U-ViT, imagenet (released settings in configs/imagenet256_uvit_large.py).
# Usage: NUM_GPUS=8 bash scripts/train_imagenet.sh [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/imagenet256_uvit_large.py}
PRETRAINED=${PRETRAINED:-assets/pretrained/imagenet256_uvit_large.pth}          # released U-ViT weights
WORKDIR=${WORKDIR:-workdir/imagenet256_uvit_large}
launch train_ldm.py --config="$CONFIG" --pretrained_weight="$PRETRAINED" --workdir="$WORKDIR" "$@"
