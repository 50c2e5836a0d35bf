#!/usr/bin/env bash
# Early-exit evaluation, celeba, at the released threshold (0.95) with full depth as the baseline.
# Usage: NUM_GPUS=8 bash scripts/eval_celeba.sh [--config.x=y ...]; THRESHOLD=0.9,0.92,none for a sweep;
# EXIT_POLICY=0.92,static:6,profile:0.92,budget:0.6 for other exit policies (libs/exits/policy.py).
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/celeba64_uvit_small.py}
WORKDIR=${WORKDIR:-workdir/celeba64_uvit_small}
NNET_PATH=${NNET_PATH:-$WORKDIR/ckpts/200000.ckpt/nnet_ema.pth}   # released AdaDiff checkpoint step: 200000
THRESHOLD=${THRESHOLD:-0.95}
EXIT_POLICY=${EXIT_POLICY:-$THRESHOLD}
OUTPUT_PATH=${OUTPUT_PATH:-$WORKDIR/eval}
launch eval.py --config="$CONFIG" --nnet_path="$NNET_PATH" --exit_policy="$EXIT_POLICY" --output_path="$OUTPUT_PATH" "$@"
