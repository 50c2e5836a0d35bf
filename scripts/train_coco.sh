#!/usr/bin/env bash
# AdaDiff fine-tuning of the released U-ViT, coco (released settings in configs/mscoco_uvit_small.py).
# Usage: NUM_GPUS=8 bash scripts/train_coco.sh [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/mscoco_uvit_small.py}
PRETRAINED=${PRETRAINED:-assets/pretrained/mscoco_uvit_small.pth}          # released U-ViT weights
WORKDIR=${WORKDIR:-workdir/mscoco_uvit_small}
launch train_t2i_discrete.py --config="$CONFIG" --pretrained_weight="$PRETRAINED" --workdir="$WORKDIR" "$@"
