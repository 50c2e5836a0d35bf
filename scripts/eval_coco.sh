#!/usr/bin/env bash
# Early-exit evaluation, coco, at the released threshold (0.87) with full depth as the baseline.
# Usage: NUM_GPUS=8 bash scripts/eval_coco.sh [--config.x=y ...]; THRESHOLD=0.9,0.92,none for a sweep;
# EXIT_POLICY=0.92,static:6,profile:0.92,budget:0.6 for other exit policies (libs/exits/policy.py).
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG=${CONFIG:-configs/mscoco_uvit_small.py}
WORKDIR=${WORKDIR:-workdir/mscoco_uvit_small}
NNET_PATH=${NNET_PATH:-$WORKDIR/ckpts/330000.ckpt/nnet_ema.pth}   # released AdaDiff checkpoint step: 330000
THRESHOLD=${THRESHOLD:-0.87}
EXIT_POLICY=${EXIT_POLICY:-$THRESHOLD}
OUTPUT_PATH=${OUTPUT_PATH:-$WORKDIR/eval}
launch eval_t2i_discrete.py --config="$CONFIG" --nnet_path="$NNET_PATH" --exit_policy="$EXIT_POLICY" --output_path="$OUTPUT_PATH" "$@"
