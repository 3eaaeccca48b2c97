#!/usr/bin/env bash
# gpu_check.sh — everything worth doing on a lent GPU, in one command (make gpu-check), into one report:
#   1. the card, driver and toolkit;
#   2. the GPU build for the local arch (tests, benchmarks, train_gpt) and the GPU tests;
#   3. compute-sanitizer --tool memcheck and --tool racecheck on the kernel tests (when installed);
#   4. the kernel benchmarks (bench_layers, bench_attention --full, bench_infer);
#   5. GPT-2 124M training for a few steps (configs/gpt2_124m_gpu.json): tok/s and MFU;
#   6. PyTorch SDPA at the shapes of bench_attention --full (dev/bench_sdpa.py), when torch imports.
# Each step has a time limit, and all of them together a budget of 460 s (GPU_CHECK_BUDGET), so the run
# stays under 8 minutes on one H100/H200; a step that fails or times out is recorded and the next one
# runs; a step the budget no longer covers is skipped. The report ends with one line per step.
# usage: dev/gpu_check.sh [REPORT]   (default gpu-check-report.txt; GPU_CHECK_STEPS=N sets the training steps)
set -uo pipefail
report=${1:-gpu-check-report.txt}
steps=${GPU_CHECK_STEPS:-20}
: > "$report"
exec > >(tee -a "$report") 2>&1
summary=()
start=$(date +%s)

budget=${GPU_CHECK_BUDGET:-460}  # seconds for all steps together: under 8 minutes with the setup

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit (cut to what is left of the budget)
# and records how it ended.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  if [ $left -lt 15 ]; then
    echo; echo "=== $name: skipped, the ${budget}s budget is spent"
    summary+=("$(printf '%-34s %-18s' "$name" "SKIPPED (budget)")")
    return 0
  fi
  [ $limit -le $left ] || limit=$left
  echo; echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@"; rc=$?
  local took=$(( $(date +%s) - t0 )) verdict=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT"
  [ $rc -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $rc)"
  summary+=("$(printf '%-34s %-18s %4ss' "$name" "$verdict" "$took")")
  return 0
}

echo "gpu-check report — $(date -u '+%Y-%m-%d %H:%M UTC'), $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi finds no GPU: this check is for a machine with one (the CPU build is checked by make test)"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm --format=csv
"${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version | tail -n 2
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer 2>/dev/null || true)
gpu=build/gpu

# 2. Build for the local arch (the Makefile reads it from nvidia-smi), then the GPU tests.
tests=$(ls test/test_*.cu | sed -E 's|test/(.*)\.cu|'$gpu'/test/\1|' | grep -v test_main)
benches="$gpu/dev/bench_layers $gpu/dev/bench_attention $gpu/dev/bench_infer"
step "build (GPU, local arch)" 240 make -j"$(nproc)" --no-print-directory $tests $benches train_gpt
step "GPU tests" 90 bash test/run_tests.sh --gpu $tests

# 3. compute-sanitizer on the kernel tests (the shapes the tests use; the sanitizer slows kernels ~100x).
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    for t in test_layers test_attention; do
      step "compute-sanitizer $tool $t" 45 "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 "$gpu/test/$t"
    done
  done
else
  echo; echo "=== compute-sanitizer: not installed (it ships with the full CUDA toolkit): skipped"
  summary+=("$(printf '%-34s %-18s' "compute-sanitizer" "SKIPPED (missing)")")
fi

# 4. Kernel benchmarks at GPU shapes.
step "bench_layers" 60 "$gpu/dev/bench_layers"
step "bench_attention --full" 90 "$gpu/dev/bench_attention" --full
step "bench_infer" 45 "$gpu/dev/bench_infer"

# 5. GPT-2 124M (B=8, T=1024) for a few steps; its progress lines print tok/s and MFU.
if [ ! -f data/shakespeare/train_000.bin ]; then step "tokenize Tiny Shakespeare" 60 make --no-print-directory data; fi
step "train GPT-2 124M, $steps steps" 90 ./train_gpt --config configs/gpt2_124m_gpu.json --max-steps "$steps" \
  --out-dir "${TMPDIR:-/tmp}/gpu_check_124m"
# the NCCL path of the data-parallel layer with one rank (no mpirun: NCCL with N = 1), ZeRO-3 on the
# Shakespeare model; its memory report and per-step lines go to the report.
step "train ZeRO-3 through NCCL, 1 rank" 45 ./train_gpt --config configs/shakespeare_gpu.json --zero-stage 3 \
  --max-steps 10 --val-every 5 --sample-every 0 --out-dir "${TMPDIR:-/tmp}/gpu_check_zero3"

# 6. PyTorch SDPA at the attention benchmark's shapes.
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  step "PyTorch SDPA (bench_attention shapes)" 60 python3 dev/bench_sdpa.py
else
  echo; echo "=== PyTorch SDPA: torch with CUDA does not import here: skipped"
  summary+=("$(printf '%-34s %-18s' "PyTorch SDPA" "SKIPPED (no torch)")")
fi

echo; echo "=== summary ($(( $(date +%s) - start ))s in all; report: $report)"
printf '%s\n' "${summary[@]}"
# Non-zero when a step failed or timed out (the report has the details).
! printf '%s\n' "${summary[@]}" | grep -qE 'FAILED|TIMED OUT'
