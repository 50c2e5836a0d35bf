#!/usr/bin/env bash
# The GPU measurements of early exit in one command (under 8 minutes on an H200: the steps'
# time limits add up to 465 s); results, as text and JSON, in ${OUT:-bench_out}/. CIFAR-10
# U-ViT-S/2 with random weights (speed does not depend on training):
#   early_exit_{bf16,fp32}.*  one forward at batch 1, 16, 256: full depth, nobody exits (pure
#                             overhead), every sample after block 1, a bare truncated forward,
#                             all / half at the middle block; measured vs ideal (blocks)
#   sampling_{bf16,fp32}.txt  sampling at a threshold vs full depth per batch size, and the
#                             per-image throughput of batched sampling vs the batch-1 loop
#   compile_{bf16,fp32}.*     compiled sampling (config.sample.compile, bench_compile.py) at
#                             batch 1, 16, 256: eager vs blocks vs graphs (CUDA graphs through
#                             mode="reduce-overhead") for full depth, static:6 and threshold:0.55,
#                             compile seconds apart, and each batched cell's images/s against
#                             the batch-1 eager loop
#   train_step.txt            AdaDiff training step vs the plain U-ViT loss (bf16)
# Each step has its own time limit, so one slow step cannot take the others' time.
# DEVICE=cpu SMOKE=1 bash benchmarks/gpu_suite.sh: every step on the CPU at toy sizes (the
# digits model, batch 1 and 2, two sampler steps), to check the command lines without a GPU.
set -uo pipefail
out=${OUT:-bench_out}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}
if [ "${SMOKE:-0}" = 1 ]; then
    cfg=digits_uvit_tiny; b3=1,2; b_fp32=1,2; n=2; steps=2; reps=1; tlim=6
else
    cfg=cifar10_uvit_small; b3=1,16,256; b_fp32=1,16,64; n=256; steps=20; reps=7; tlim=1
fi
if [ "$dev" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
for dt in bf16 fp32; do
    timeout $((60 * tlim)) $py benchmarks/bench_early_exit.py --config $cfg --device $dev --dtype $dt \
        --batch_sizes $b3 --repeats $reps --warmup 2 --min_time 0.1 --json "$out/early_exit_$dt.json" 2>&1 \
        | tee "$out/early_exit_$dt.txt"
done
timeout $((90 * tlim)) $py benchmarks/bench_sampling.py --config $cfg --steps $steps --device $dev --dtype bf16 \
    --batch_sizes $b3 --n_images $((n / 2 > 2 ? n / 2 : 2)) --random_heads 40 --threshold 0.55 --repeats 2 2>&1 \
    | tee "$out/sampling_bf16.txt"
timeout $((50 * tlim)) $py benchmarks/bench_sampling.py --config $cfg --steps $steps --device $dev --dtype fp32 \
    --batch_sizes $b_fp32 --n_images $((n < 64 ? n : 64)) --random_heads 40 --threshold 0.55 --repeats 2 2>&1 \
    | tee "$out/sampling_fp32.txt"
# Compiled sampling: one inductor cache for both dtypes' runs (their graphs differ; the
# compiler's own warm-up is paid once). Compile seconds are reported apart from the timings.
cache=$(mktemp -d)
for dt in bf16 fp32; do
    [ $dt = bf16 ] && lim=110 || lim=70
    timeout $((lim * tlim)) $py benchmarks/bench_compile.py --config $cfg --nnet_path '' --random_heads 40 \
        --policies full,static:6,threshold:0.55 --modes eager,blocks,graphs --compile_mode reduce-overhead \
        --steps $((steps / 2 > 0 ? steps / 2 : 1)) --batch_sizes $b3 --batch1_runs 1 --repeats $((reps < 3 ? reps : 3)) \
        --device $dev --dtype $dt --cache_dir "$cache" --json "$out/compile_$dt.json" 2>&1 \
        | tee "$out/compile_$dt.txt"
done
timeout $((25 * tlim)) $py benchmarks/bench_train_step.py --config $cfg --device $dev --dtype bf16 \
    --batch_size $((n < 128 ? n : 128)) --repeats $((reps < 10 ? reps : 10)) 2>&1 | tee "$out/train_step.txt"
echo "done; results in $out/"
