#!/usr/bin/env bash
# All GPU benchmarks in one go (for a short lease on a GPU machine); results in ${OUT:-bench_out}/.
set -uo pipefail
out=${OUT:-bench_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$py benchmarks/bench_early_exit.py --device cuda --dtype bf16 --batch_sizes 1,16,256 --repeats 20 --warmup 5 \
    2>&1 | tee "$out/early_exit.txt"
$py benchmarks/bench_early_exit.py --device cuda --dtype fp32 --batch_sizes 256 --repeats 10 --warmup 3 \
    2>&1 | tee -a "$out/early_exit.txt"
$py benchmarks/bench_train_step.py --device cuda --dtype bf16 --batch_size 128 --repeats 10 2>&1 | tee "$out/train_step.txt"
$py benchmarks/bench_train_step.py --device cuda --dtype fp32 --batch_size 128 --repeats 6 2>&1 | tee -a "$out/train_step.txt"
$py benchmarks/bench_sampling.py --config cifar10_uvit_small --steps 50 --device cuda --dtype bf16 --batch_sizes 256 \
    --n_images 256 --random_heads 40 --threshold 0.55 --repeats 2 2>&1 | tee "$out/sampling.txt"
$py benchmarks/bench_sampling.py --config cifar10_uvit_small --steps 50 --device cuda --dtype bf16 --batch_sizes 1 \
    --n_images 4 --random_heads 40 --threshold 0.55 --repeats 2 2>&1 | tee -a "$out/sampling.txt"
