#!/usr/bin/env bash
# Sweep of sampler step counts x exit policies for one data set: FID (+- bootstrap SE), layer ratio,
# GFLOPs/img, compute ratio, measured speedup and the Pareto points (report.txt, tradeoff.png).
# Usage: DATASET=cifar THRESHOLDS=0.8,0.85,0.9,0.92,0.95 NUM_GPUS=8 bash scripts/sweep.sh [--config.x=y ...]
#        DATASET=imagenet POLICIES=0.9,profile:0.9 bash scripts/sweep.sh --config.sample.sample_steps=15,25,50
#        DATASET=cifar POLICIES=0.9,0.92,static:6,static:8,profile:0.92,budget:0.6 bash scripts/sweep.sh
# DATASET is cifar, celeba, imagenet or coco; NNET_PATH / WORKDIR / CONFIG as in scripts/eval_<DATASET>.sh.
set -euo pipefail
DATASET=${DATASET:-cifar}
THRESHOLDS=${THRESHOLDS:-0.8,0.85,0.9,0.92,0.95}
POLICIES=${POLICIES:-$THRESHOLDS}
OUTPUT_PATH=${OUTPUT_PATH:-workdir/sweep_$DATASET} EXIT_POLICY="$POLICIES" \
  bash "$(dirname "$0")/eval_$DATASET.sh" "$@"
