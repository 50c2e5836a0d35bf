#!/usr/bin/env bash
# The main job: AdaDiff end to end on the embedded default data set (scikit-learn's 8x8
# handwritten digits), on a CPU, in a few minutes:
#   1. FID reference statistics of the digits (shipped in assets/fid_stats/; made here only if
#      that file is missing)
#   2. AdaDiff fine-tuning of the shipped U-ViT backbone (pretrained/, made by train.py: see
#      pretrained/README.md for the exact command)
#   3. the compute-quality frontier with UniPC (the strongest step reduction measured on this
#      model; DPM-Solver-fast and DPM-Solver++(2M) are weaker): every sampler step count of
#      SAMPLE_STEPS x {full depth, the AdaDiff threshold 0.9}, on the same images and noise: FID
#      (+- a bootstrap standard error over the images), GFLOPs/img, its ratio to the largest step
#      count at full depth, the Pareto points, plots, a grid per pair (report.txt, tradeoff.png),
#      and the paired differences: each exit row against full depth at the same step count and
#      against step reduction at equal compute (the cheapest full-depth row costing at least as
#      much), with paired bootstrap errors (libs/evaluation/paired.py). The step counts are where
#      exit and step reduction cross on this model. It ends with one verdict line per exit rule.
#      A wider sweep: EXIT_POLICIES=0.85,0.9,static:4,profile:0.9 SAMPLE_STEPS=6,8,10,12,15,20 bash scripts/main_job.sh
#      The best pair under a compute budget: COMPUTE_BUDGET=0.5 bash scripts/main_job.sh
#      More eval.py flags: EVAL_ARGS="--config.sample.save_features=True" bash scripts/main_job.sh
# Every variable below can be overridden from the environment, e.g. STEPS=2000 bash scripts/main_job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/digits_uvit_tiny.py}
BACKBONE=${BACKBONE:-pretrained/digits_uvit_tiny_backbone.safetensors}
WORKDIR=${WORKDIR:-workdir/main_job}
FID_STAT=${FID_STAT:-assets/fid_stats/fid_stats_digits8_train.npz}
# 800 fine-tuning steps: at 500 the heads exit later (threshold 0.9 ran 0.87-0.88 of the blocks at
# 8-15 UniPC steps, against 0.68-0.69 after 800), so fewer steps do not hold the quality.
STEPS=${STEPS:-800}
ALGORITHM=${ALGORITHM:-unipc}
EXIT_POLICIES=${EXIT_POLICIES:-0.9}
# 8, 10 and 12 steps: where exit and step reduction cross on this model (at 15 steps threshold
# 0.9 beats 12 full steps by 0.36 +- 0.63 only; SAMPLE_STEPS=8,10,12,15 adds it, about 40 s more).
SAMPLE_STEPS=${SAMPLE_STEPS:-8,10,12}
N_SAMPLES=${N_SAMPLES:-250}
EVAL_ARGS=${EVAL_ARGS:-}
COMPUTE_BUDGET=${COMPUTE_BUDGET:-}

# Steps 1 and 2 are independent: when the statistics must be made, the two run side by side,
# one CPU thread each; otherwise the fine-tuning takes every thread.
echo "== 1/3 FID reference statistics ($FID_STAT), alongside 2/3"
if [ -f "$FID_STAT" ]; then echo "cached"; stats_pid=""; TRAIN_THREADS=${TRAIN_THREADS:-2}; else
  mkdir -p "$WORKDIR"
  OMP_NUM_THREADS=1 python scripts/make_fid_stats.py --config="$CONFIG" --out="$FID_STAT" \
    > "$WORKDIR/fid_stats.log" 2>&1 &
  stats_pid=$!
  TRAIN_THREADS=${TRAIN_THREADS:-1}
fi

echo "== 2/3 AdaDiff fine-tuning of $BACKBONE ($STEPS steps)"
OMP_NUM_THREADS=$TRAIN_THREADS python train.py --config="$CONFIG" --pretrained_weight="$BACKBONE" \
  --workdir="$WORKDIR/adadiff" --config.train.n_steps="$STEPS" --config.train.save_interval="$STEPS" \
  --config.train.log_interval=100

if [ -n "$stats_pid" ]; then
  if ! wait "$stats_pid"; then cat "$WORKDIR/fid_stats.log"; echo "FID reference statistics failed" >&2; exit 1; fi
  tail -n 1 "$WORKDIR/fid_stats.log"
fi

echo "== 3/3 frontier ($ALGORITHM): sampler steps $SAMPLE_STEPS x ($EXIT_POLICIES and full depth), $N_SAMPLES samples each"
# shellcheck disable=SC2086  # EVAL_ARGS: extra flags, split on spaces
python eval.py --config="$CONFIG" --nnet_path="$WORKDIR/adadiff/ckpts/$STEPS.ckpt/nnet_ema.pth" \
  --exit_policy="$EXIT_POLICIES" --output_path="$WORKDIR/eval" --config.sample.fid_stat="$FID_STAT" \
  --config.sample.n_samples="$N_SAMPLES" --config.sample.sample_steps="$SAMPLE_STEPS" \
  --config.sample.algorithm="$ALGORITHM" ${COMPUTE_BUDGET:+--compute_budget="$COMPUTE_BUDGET"} $EVAL_ARGS
echo "report, plots and grids: $WORKDIR/eval/ (report.txt, tradeoff.png, grid_*.png)"
echo "== the verdict (paired differences; +- is 2 paired standard errors):"
grep '^verdict ' "$WORKDIR/eval/report.txt" || echo "no verdict: the sweep has no exit rule or no FID"
