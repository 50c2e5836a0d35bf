#!/usr/bin/env bash
# AdaDiff fine-tuning of the released U-ViT, celeba (released settings in configs/celeba64_uvit_small.py).
# Usage: NUM_GPUS=8 bash scripts/train_celeba.sh [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/celeba64_uvit_small.py}
PRETRAINED=${PRETRAINED:-assets/pretrained/celeba_uvit_small.pth}          # released U-ViT weights
WORKDIR=${WORKDIR:-workdir/celeba64_uvit_small}
launch train.py --config="$CONFIG" --pretrained_weight="$PRETRAINED" --workdir="$WORKDIR" "$@"
