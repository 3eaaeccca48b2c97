#!/usr/bin/env bash
# gpu_check.sh — everything worth doing on a lent GPU, in one command (make gpu-check), into one report.
# Steps, most important first (a lease can end before the last one):
#   1. the card, driver and toolkit;
#   2. the GPU build for the local arch (tests, benchmarks, train_gpt; make -k: one target that fails to
#      build does not stop the others), llm.c's train_gpt2cu beside it when LLMC names a checkout;
#   3. the kernel tests (test_layers, test_attention, test_wmma, test_gpt) on the GPU;
#   4. GPT-2 124M training for a few steps (configs/gpt2_124m_gpu.json): tok/s and MFU; then llm.c's
#      train_gpt2cu on the same shard, B and T (when LLMC is set: the side-by-side of docs/benchmarks.md);
#   5. the attention benchmark (bench_attention --full) and PyTorch SDPA at its shapes (dev/bench_sdpa.py);
#   6. compute-sanitizer memcheck and racecheck on the kernel tests (when installed);
#   7. the other GPU tests, bench_layers, bench_infer, and ZeRO-3 through NCCL with one rank.
# Each step has a time limit, and all of them together a budget (GPU_CHECK_BUDGET, default 460 s, under 8
# minutes on one H100/H200 with the setup); a step that fails or times out is recorded and the next one
# runs; a step the budget no longer covers is skipped. The report ends with one line per step.
# usage: dev/gpu_check.sh [REPORT]   (default gpu-check-report.txt)
#   GPU_CHECK_STEPS=N      training steps (default 20)
#   GPU_CHECK_ONLY=REGEX   run only the steps whose names match (grep -E), e.g. 'kernel tests|sanitizer'
#   LLMC=DIR               an llm.c checkout: build its train_gpt2cu (outside this tree; or use DIR/train_gpt2cu
#                          when it is there) and time it too
#   GPU_CHECK_PREBUILT=1   skip the build: the GPU binaries were built elsewhere for this arch
set -uo pipefail
report=${1:-gpu-check-report.txt}
steps=${GPU_CHECK_STEPS:-20}
only=${GPU_CHECK_ONLY:-.}
: > "$report"
exec > >(tee -a "$report") 2>&1
summary=()
start=$(date +%s)
budget=${GPU_CHECK_BUDGET:-460}

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit (cut to what is left of the budget)
# and records how it ended.
step() {
  local name=$1 limit=$2; shift 2
  echo "$name" | grep -qE "$only" || return 0
  local left=$(( budget - ($(date +%s) - start) ))
  if [ $left -lt 15 ]; then
    echo; echo "=== $name: skipped, the ${budget}s budget is spent"
    summary+=("$(printf '%-40s %-18s' "$name" "SKIPPED (budget)")")
    return 0
  fi
  [ $limit -le $left ] || limit=$left
  echo; echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@"; rc=$?
  local took=$(( $(date +%s) - t0 )) verdict=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT"
  [ $rc -ne 0 ] && [ "$verdict" = ok ] && verdict="FAILED (exit $rc)"
  summary+=("$(printf '%-40s %-18s %4ss' "$name" "$verdict" "$took")")
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
tmp=${TMPDIR:-/tmp}

# 2. Build for the local arch (the Makefile reads it from nvidia-smi); llm.c's program in the background.
kernel_tests="$gpu/test/test_layers $gpu/test/test_attention $gpu/test/test_wmma $gpu/test/test_gpt"
tests=$(ls test/test_*.cu | sed -E 's|test/(.*)\.cu|'$gpu'/test/\1|' | grep -v test_main)
other_tests=$(for t in $tests; do [[ " $kernel_tests " == *" $t "* ]] || echo "$t"; done)
benches="$gpu/dev/bench_layers $gpu/dev/bench_attention $gpu/dev/bench_infer"
llmc_bin=$tmp/gpu_check_llmc/train_gpt2cu llmc_build=
if [ -n "${LLMC:-}" ] && [ -x "$LLMC/train_gpt2cu" ]; then
  llmc_bin=$LLMC/train_gpt2cu
elif [ -n "${LLMC:-}" ]; then
  rm -rf "$tmp/gpu_check_llmc" && cp -r "$LLMC" "$tmp/gpu_check_llmc"
  (cd "$tmp/gpu_check_llmc" && make train_gpt2cu NO_MULTI_GPU=1 NO_USE_MPI=1 > build.log 2>&1) &
  llmc_build=$!
fi
# GPU_CHECK_PREBUILT=1: the binaries are already there (built elsewhere for this arch): no build step.
if [ "${GPU_CHECK_PREBUILT:-0}" = 1 ]; then
  echo; echo "=== build: skipped (GPU_CHECK_PREBUILT=1)"
else
  step "build (GPU, local arch)" 240 make -k -j"$(nproc)" --no-print-directory $tests $benches train_gpt
fi

# 3. The kernel tests.
step "GPU kernel tests" 60 bash test/run_tests.sh --gpu $kernel_tests

# 4. GPT-2 124M (B=8, T=1024) for a few steps; its progress lines print tok/s and MFU.
if [ ! -f data/shakespeare/train_000.bin ]; then step "tokenize Tiny Shakespeare" 60 make --no-print-directory data; fi
rm -f "$tmp"/gpu_check_ours*.log "$tmp/gpu_check_llmc.log"
step "train GPT-2 124M fp32, $steps steps" 90 bash -c "./train_gpt --config configs/gpt2_124m_gpu.json \
  --precision fp32 --max-steps $steps --out-dir $tmp/gpu_check_124m | tee $tmp/gpu_check_ours.log"
# the same run in bf16 (fp32 master weights, bf16 weights and activations on tensor cores), with cuBLAS and with
# cuBLASLt's fused bias/GELU epilogues (llm.c's matmul)
step "train GPT-2 124M bf16, $steps steps" 90 bash -c "./train_gpt --config configs/gpt2_124m_gpu.json \
  --precision bf16 --max-steps $steps --out-dir $tmp/gpu_check_124m_bf16 | tee $tmp/gpu_check_ours_bf16.log"
step "train GPT-2 124M bf16 cuBLASLt, $steps steps" 90 bash -c "./train_gpt --config configs/gpt2_124m_gpu.json \
  --precision bf16 --matmul cublaslt --max-steps $steps --out-dir $tmp/gpu_check_124m_lt \
  | tee $tmp/gpu_check_ours_bf16_lt.log"
if [ -n "${LLMC:-}" ]; then
  [ -z "$llmc_build" ] || wait "$llmc_build" || { echo "llm.c build failed:"; tail -n 20 "$tmp/gpu_check_llmc/build.log"; }
  # llm.c from random init (-e d12: GPT-2 124M), its default precision (bf16), same shard, B and T; val loss
  # at the first and last step only (-v 0 would divide by zero), no sampling
  step "llm.c train_gpt2cu 124M, $steps steps" 60 bash -c "$llmc_bin -e d12 -i data/shakespeare/train_000.bin \
    -j data/shakespeare/val_000.bin -b 8 -t 1024 -x $steps -v 1000 -s 0 -h 0 | tee $tmp/gpu_check_llmc.log"
  # median tok/s over steps 2.. of each program's "step i/n | ... | N tok/s" lines, and their ratio
  median_toks() {
    grep -E '^step +[0-9]+/' "$1" | tail -n +2 | grep -oE '[0-9.]+ tok/s' | cut -d' ' -f1 | sort -g |
      awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
  }
  theirs=$(median_toks "$tmp/gpu_check_llmc.log" 2>/dev/null)
  for run in ours ours_bf16 ours_bf16_lt; do
    ours=$(median_toks "$tmp/gpu_check_$run.log" 2>/dev/null)
    [ -n "$ours" ] && [ -n "$theirs" ] || continue
    echo; echo "=== GPT-2 124M side by side: $run $ours tok/s, llm.c (bf16) $theirs tok/s, ratio $(awk -v a="$ours" \
      -v b="$theirs" 'BEGIN { printf "%.3f", a / b }') (medians of steps 2..$steps)"
  done
fi

# 5. Attention against PyTorch SDPA at the same shapes.
step "bench_attention --full" 90 "$gpu/dev/bench_attention" --full
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  step "PyTorch SDPA (bench_attention shapes)" 60 python3 dev/bench_sdpa.py
else
  echo; echo "=== PyTorch SDPA: torch with CUDA does not import here: skipped"
  summary+=("$(printf '%-40s %-18s' "PyTorch SDPA" "SKIPPED (no torch)")")
fi

# 6. compute-sanitizer on the kernel tests (the sanitizer slows kernels ~100x: the big shapes are left out,
# as under cudasim's race check).
if [ -n "$sanitizer" ]; then
  for tool in memcheck racecheck; do
    for t in test_attention test_layers; do
      step "compute-sanitizer $tool $t" 45 "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 \
        "$gpu/test/$t" --test-case-exclude='*T=512*,*finite differences*,*T 1..129*'
    done
  done
else
  echo; echo "=== compute-sanitizer: not installed (it ships with the full CUDA toolkit): skipped"
  summary+=("$(printf '%-40s %-18s' "compute-sanitizer" "SKIPPED (missing)")")
fi

# 7. The rest.
step "GPU tests (the others)" 90 bash test/run_tests.sh --gpu $other_tests
step "bench_layers" 60 "$gpu/dev/bench_layers"
step "bench_infer" 45 "$gpu/dev/bench_infer"
# the NCCL path of the data-parallel layer with one rank (no mpirun: NCCL with N = 1), ZeRO-3 on the
# Shakespeare model; its memory report and per-step lines go to the report.
step "train ZeRO-3 through NCCL, 1 rank" 45 ./train_gpt --config configs/shakespeare_gpu.json --zero-stage 3 \
  --max-steps 10 --val-every 5 --sample-every 0 --out-dir "$tmp/gpu_check_zero3"

echo; echo "=== summary ($(( $(date +%s) - start ))s in all; report: $report)"
printf '%s\n' "${summary[@]}"
# Non-zero when a step failed or timed out (the report has the details).
! printf '%s\n' "${summary[@]}" | grep -qE 'FAILED|TIMED OUT'
