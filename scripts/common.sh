# Shared by the launch scripts: `launch SCRIPT ARGS...` runs a top-level script through
# accelerate on NUM_GPUS processes (1 = a plain single process) with MIXED_PRECISION.
# Multi-node: set NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP (NUM_GPUS counts all processes).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

launch() {
  local script=$1; shift
  local args=(--num_processes "${NUM_GPUS:-1}" --mixed_precision "${MIXED_PRECISION:-fp16}")
  if [ "${NUM_GPUS:-1}" -gt 1 ]; then args+=(--multi_gpu); fi
  if [ "${NUM_MACHINES:-1}" -gt 1 ]; then
    args+=(--num_machines "$NUM_MACHINES" --machine_rank "${MACHINE_RANK:-0}" --main_process_ip "$MAIN_PROCESS_IP")
  fi
  accelerate launch "${args[@]}" "$script" "$@"
}
