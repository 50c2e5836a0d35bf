#!/usr/bin/env bash
# The main job: AdaDiff end to end on the embedded default data set (scikit-learn's 8x8
# handwritten digits), on a CPU, in a few minutes:
#   1. FID reference statistics of the digits (cached in assets/fid_stats/)
#   2. AdaDiff fine-tuning of the shipped U-ViT backbone (pretrained/, made by train.py: see
#      pretrained/README.md for the exact command)
#   3. the compute-quality frontier: every sampler step count of SAMPLE_STEPS x {full depth, the
#      AdaDiff threshold 0.9, threshold 0.9's timestep profile}, on the same images and noise:
#      FID (+- a bootstrap standard error over the images), GFLOPs/img, its ratio to 50 steps at
#      full depth, the Pareto points, plots, a grid per pair (report.txt, tradeoff.png).
#      A wider sweep: EXIT_POLICIES=0.85,0.9,static:4,profile:0.9 SAMPLE_STEPS=10,12,15,20,25,50 bash scripts/main_job.sh
#      The best pair under a compute budget: COMPUTE_BUDGET=0.3 bash scripts/main_job.sh
# Every variable below can be overridden from the environment, e.g. STEPS=2000 bash scripts/main_job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/digits_uvit_tiny.py}
BACKBONE=${BACKBONE:-pretrained/digits_uvit_tiny_backbone.safetensors}
WORKDIR=${WORKDIR:-workdir/main_job}
FID_STAT=${FID_STAT:-assets/fid_stats/fid_stats_digits8_train.npz}
STEPS=${STEPS:-800}
EXIT_POLICIES=${EXIT_POLICIES:-0.9,profile:0.9}
SAMPLE_STEPS=${SAMPLE_STEPS:-10,15,50}
N_SAMPLES=${N_SAMPLES:-250}
COMPUTE_BUDGET=${COMPUTE_BUDGET:-}

# Steps 1 and 2 are independent: they run side by side, one CPU thread each (the Inception
# network of step 1 and the tiny U-ViT of step 2 each gain little from a second thread, so
# together they finish well before the two would one after the other).
echo "== 1/3 FID reference statistics ($FID_STAT), alongside 2/3"
if [ -f "$FID_STAT" ]; then echo "cached"; stats_pid=""; else
  mkdir -p "$WORKDIR"
  OMP_NUM_THREADS=1 python scripts/make_fid_stats.py --config="$CONFIG" --out="$FID_STAT" \
    > "$WORKDIR/fid_stats.log" 2>&1 &
  stats_pid=$!
fi

echo "== 2/3 AdaDiff fine-tuning of $BACKBONE ($STEPS steps)"
OMP_NUM_THREADS=${TRAIN_THREADS:-1} python train.py --config="$CONFIG" --pretrained_weight="$BACKBONE" \
  --workdir="$WORKDIR/adadiff" --config.train.n_steps="$STEPS" --config.train.save_interval="$STEPS" \
  --config.train.log_interval=100

if [ -n "$stats_pid" ]; then
  if ! wait "$stats_pid"; then cat "$WORKDIR/fid_stats.log"; echo "FID reference statistics failed" >&2; exit 1; fi
  tail -n 1 "$WORKDIR/fid_stats.log"
fi

echo "== 3/3 frontier: sampler steps $SAMPLE_STEPS x ($EXIT_POLICIES and full depth), $N_SAMPLES samples each"
python eval.py --config="$CONFIG" --nnet_path="$WORKDIR/adadiff/ckpts/$STEPS.ckpt/nnet_ema.pth" \
  --exit_policy="$EXIT_POLICIES" --output_path="$WORKDIR/eval" --config.sample.fid_stat="$FID_STAT" \
  --config.sample.n_samples="$N_SAMPLES" --config.sample.sample_steps="$SAMPLE_STEPS" \
  ${COMPUTE_BUDGET:+--compute_budget="$COMPUTE_BUDGET"}
echo "report, plots and grids: $WORKDIR/eval/ (report.txt, tradeoff.png, grid_*.png)"
