#!/usr/bin/env bash
# The GPU measurements of early exit in one command (under 8 minutes on an H200); results,
# as text and JSON, in ${OUT:-bench_out}/. CIFAR-10 U-ViT-S/2 with random weights (speed does
# not depend on training):
#   early_exit_{bf16,fp32}.*  one forward at batch 1, 16, 256: full depth, nobody exits (pure
#                             overhead), every sample after block 1, a bare truncated forward,
#                             all / half at the middle block; measured vs ideal (blocks)
#   sampling_{bf16,fp32}.txt  sampling at a threshold vs full depth per batch size, and the
#                             per-image throughput of batched sampling vs the batch-1 loop
#   train_step.txt            AdaDiff training step vs the plain U-ViT loss (bf16)
# Each step has its own time limit, so one slow step cannot take the others' time.
set -uo pipefail
out=${OUT:-bench_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
for dt in bf16 fp32; do
    timeout 100 $py benchmarks/bench_early_exit.py --device cuda --dtype $dt --batch_sizes 1,16,256 \
        --repeats 7 --warmup 2 --min_time 0.1 --json "$out/early_exit_$dt.json" 2>&1 | tee "$out/early_exit_$dt.txt"
done
timeout 120 $py benchmarks/bench_sampling.py --config cifar10_uvit_small --steps 20 --device cuda --dtype bf16 \
    --batch_sizes 1,16,256 --n_images 256 --random_heads 40 --threshold 0.55 --repeats 2 2>&1 \
    | tee "$out/sampling_bf16.txt"
timeout 70 $py benchmarks/bench_sampling.py --config cifar10_uvit_small --steps 20 --device cuda --dtype fp32 \
    --batch_sizes 1,16,64 --n_images 64 --random_heads 40 --threshold 0.55 --repeats 2 2>&1 \
    | tee "$out/sampling_fp32.txt"
timeout 30 $py benchmarks/bench_train_step.py --device cuda --dtype bf16 --batch_size 128 --repeats 10 2>&1 \
    | tee "$out/train_step.txt"
echo "done; results in $out/"
