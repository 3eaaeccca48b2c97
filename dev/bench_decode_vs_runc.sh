#!/usr/bin/env bash
# Batch-1 greedy decode, infer_gpt_cpu against llama2.c's run.c on the same model and thread count, in alternating
# rounds (so both see the same machine load). Nothing of llama2.c is part of this repository: build it outside,
#   gcc -Ofast -fopenmp -march=native run.c -lm -o RUN          (llama2.c's `make runomp`)
# and make the model for both sides:
#   python3 dev/make_bench_llama.py HF_DIR                       (random 134M Llama, fp32)
#   python3 LLAMA2C/export.py MODEL.bin --version 0 --hf HF_DIR  (run.c's format)
# Usage: dev/bench_decode_vs_runc.sh RUN MODEL.bin TOKENIZER.bin HF_DIR [threads=2] [tokens=256] [rounds=3]
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,9p "$0"; exit 2; }
run=$1 bin=$2 tok=$3 hf=$4 threads=${5:-2} n=${6:-256} rounds=${7:-3}
cd "$(dirname "$0")/.."
[ -x ./infer_gpt_cpu ] || make infer_gpt_cpu >/dev/null
echo "batch-1 greedy decode, $n tokens, OMP_NUM_THREADS=$threads, $(date -u '+%Y-%m-%d %H:%M') UTC, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  ours=$(OMP_NUM_THREADS=$threads ./infer_gpt_cpu --model "$hf" --prompt-ids 1 --max-tokens "$n" --temperature 0 2>&1 |
         grep -o '[0-9.]* tok/s after' | cut -d' ' -f1)
  theirs=$(OMP_NUM_THREADS=$threads "$run" "$bin" -z "$tok" -t 0 -n "$((n + 1))" -i "" 2>&1 | grep -o 'tok/s: [0-9.]*' | cut -d' ' -f2)
  awk -v r="$r" -v a="$ours" -v b="$theirs" 'BEGIN { printf "round %d: infer_gpt_cpu %.1f tok/s, run.c %.1f tok/s, ratio %.2fx\n", r, a, b, a / b }'
done
