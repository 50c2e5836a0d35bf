#!/usr/bin/env bash
# Threshold sweep for one data set: FID, layer ratio, GFLOPs and measured speedup per threshold.
# Usage: DATASET=cifar THRESHOLDS=0.8,0.85,0.9,0.92,0.95 NUM_GPUS=8 bash scripts/sweep.sh [--config.x=y ...]
# DATASET is cifar, celeba, imagenet or coco; NNET_PATH / WORKDIR / CONFIG as in scripts/eval_<DATASET>.sh.
set -euo pipefail
DATASET=${DATASET:-cifar}
THRESHOLDS=${THRESHOLDS:-0.8,0.85,0.9,0.92,0.95}
OUTPUT_PATH=${OUTPUT_PATH:-workdir/sweep_$DATASET} THRESHOLD="$THRESHOLDS" \
  bash "$(dirname "$0")/eval_$DATASET.sh" "$@"
