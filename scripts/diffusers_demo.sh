#!/usr/bin/env bash
# The diffusers demo, on the CPU in a few minutes (libs/diffusers_exit/demo.py, docs/diffusers.md):
#   1. a small diffusers DiTTransformer2DModel, built from configs/diffusers_digits.py, trained on
#      the embedded digits through the adapter (AdaDiff objective), saved as a diffusers folder;
#   2. fresh uncertainty heads for that frozen model trained WITHOUT the data: the model's own
#      samples (a cheap 10-step sampler, cached) and its own full-depth output as the target;
#   3. the sweep: sampler steps x (full depth, the exit rule, a reuse rule, diffusers'
#      first-block cache and TaylorSeer at two settings each) on the same noise and labels.
# Every variable below can be overridden from the environment, e.g.
#   FID_STAT=assets/fid_stats/fid_stats_digits8_train.npz bash scripts/diffusers_demo.sh
# (FID of every pair; the statistics file is made by scripts/make_fid_stats.py, see scripts/main_job.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/diffusers_digits.py}
WORKDIR=${WORKDIR:-workdir/diffusers_demo}
TRAIN_STEPS=${TRAIN_STEPS:-400}
HEAD_STEPS=${HEAD_STEPS:-200}
SAMPLE_STEPS=${SAMPLE_STEPS:-10,20}
N_SAMPLES=${N_SAMPLES:-200}
METHODS=${METHODS:-0.9,0.95,deepcache:2:1,fbc:0.1,fbc:0.2,taylorseer:2,taylorseer:3}
FID_STAT=${FID_STAT:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=${TQDM_DISABLE:-1}

python -m libs.diffusers_exit.demo --config="$CONFIG" --workdir="$WORKDIR" --methods="$METHODS" \
  --fid_stat="$FID_STAT" --set="train.n_steps=$TRAIN_STEPS" --set="train.save_interval=$TRAIN_STEPS" \
  --set="distill.n_steps=$HEAD_STEPS" --set="sample.sample_steps='$SAMPLE_STEPS'" \
  --set="sample.n_samples=$N_SAMPLES" --set="sample.mini_batch_size=$N_SAMPLES"
