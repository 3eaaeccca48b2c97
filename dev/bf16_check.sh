#!/usr/bin/env bash
# The mixed-precision check of the real training config: trains configs/shakespeare_cpu.json (or CONFIG) on the
# kernel path twice from the same weights and batches, --precision fp32 and --precision bf16, and compares the
# val losses at every --val-every step: each bf16 val loss must be within 2% of fp32's at the same step.
#   bash dev/bf16_check.sh [STEPS (default 300)] [extra train_gpt flags...]      (make bf16-check)
# In the CPU build the kernels run on cudasim: about 4 s a step for this config on 2 cores, so 300 steps of both
# runs take ~40 min. Where ./train_gpt exists and a GPU is there it uses ./train_gpt.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
shift || true
config=${CONFIG:-configs/shakespeare_cpu.json}  # make bf16-check passes the build's TRAIN_CONFIG
bin=./train_gpt_cpu
if [ -x ./train_gpt ] && nvidia-smi >/dev/null 2>&1; then bin=./train_gpt; fi
[ -f data/shakespeare/train_000.bin ] || { echo "no data/shakespeare shards: run 'make data' first" >&2; exit 1; }
for p in fp32 bf16; do
  echo "== $bin --config $config --device cuda --precision $p --max-steps $steps"
  "$bin" --config "$config" --device cuda --precision "$p" --max-steps "$steps" --sample-every 0 --sample-tokens 0 \
    --checkpoint-every 0 --out-dir "out/bf16_check_$p" "$@" | grep -E "precision|val loss|step +[0-9]+/[0-9]+ .*(0|5)0/"
done
# the val losses of both logs, side by side, and the verdict
val() { grep -o '"step":[0-9]*,"val_loss":[0-9.e+-]*' "out/bf16_check_$1/log.jsonl" | sed 's/"step"://; s/,"val_loss":/ /'; }
join <(val fp32) <(val bf16) | awk '
  BEGIN { printf "%6s %10s %10s %8s\n", "step", "fp32", "bf16", "diff"; bad = 0 }
  { d = ($3 - $2) / $2; printf "%6d %10.4f %10.4f %+7.2f%%\n", $1, $2, $3, 100 * d; if (d > 0.02 || d < -0.02) bad++ }
  END { if (bad) { print "FAIL: " bad " val losses differ by more than 2%"; exit 1 } print "PASS: every bf16 val loss within 2% of fp32" }'
