#!/usr/bin/env bash
# AdaDiff fine-tuning of the released U-ViT, cifar (released settings in configs/cifar10_uvit_small.py).
# Usage: NUM_GPUS=8 bash scripts/train_cifar.sh [--config.x=y ...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/cifar10_uvit_small.py}
PRETRAINED=${PRETRAINED:-assets/pretrained/cifar10_uvit_small.pth}          # released U-ViT weights
WORKDIR=${WORKDIR:-workdir/cifar10_uvit_small}
launch train.py --config="$CONFIG" --pretrained_weight="$PRETRAINED" --workdir="$WORKDIR" "$@"
