#!/usr/bin/env bash
# bench_distributed.sh — data-parallel training on this machine's CPUs: per ZeRO stage and number of ranks, the
# bytes one rank sends per optimizer step as the communication layer counts them (Comm::sent, distributed.cuh),
# against the formula, and the step time split into time inside collectives and the rest (compute).
#
#   dev/bench_distributed.sh [--steps N] [--ranks "2 4"] [--args "EXTRA FLAGS"]
#
# The model is configs/shakespeare_cpu.json's (4 layers, C 128: 7.2M parameters) with B 4, T 64 and a global batch
# of 4 micro-batches (grad-accum-tokens 1024), on Tiny Shakespeare (make data). Every rank is one process with one
# OpenMP thread (mpirun --oversubscribe: more ranks than cores share them). Step times are the median over steps
# 2..N of rank 0 (the first step warms up); they are only meaningful on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=5; RANKS="2 4"; EXTRA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --args) EXTRA=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
[ -f data/shakespeare/train_000.bin ] || { echo "no data/shakespeare/train_000.bin: run 'make data' first" >&2; exit 1; }
WORK=$(mktemp -d /tmp/gptcu_bench_distributed.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); $(date -u +%F); load: $(uptime | sed 's/.*load average: //')"
printf '%-6s %-6s %-12s %-16s %-16s %-10s %-10s %-10s\n' stage ranks params "sent B/step" "formula B/step" "step ms" "comm ms" "compute ms"
for N in $RANKS; do
  for STAGE in 0 1 2 3; do
    OUT=$WORK/s${STAGE}_n$N
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$N" \
      -x OMP_NUM_THREADS -x OMP_WAIT_POLICY ./train_gpt_cpu --config configs/shakespeare_cpu.json \
      --batch-size 4 --seq-len 64 --grad-accum-tokens 1024 --max-steps "$STEPS" --val-every 0 --sample-every 0 \
      --sample-tokens 1 --checkpoint-every 0 --zero-stage "$STAGE" --out-dir "$OUT" $EXTRA > "$OUT.txt" 2>&1 ||
      { cat "$OUT.txt" >&2; exit 1; }
    P=$(sed -nE 's/.*, ([0-9]+) parameters \(.*/\1/p' "$OUT.txt" | head -1)
    # the formula is train_gpt's own (DataParallel::formula_step_bytes), logged beside what Comm counted
    python3 - "$OUT/log.jsonl" "$P" "$N" "$STAGE" <<'PY'
import json, statistics, sys
log, P, N, stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(log)]
ms = [r["ms"] for r in rows if "ms" in r][1:]
comm = [r for r in rows if "comm_bytes" in r][1:]
formula = statistics.median(r["formula_bytes"] for r in comm)
sent = statistics.median(r["comm_bytes"] for r in comm)
step, cms = statistics.median(ms), statistics.median(r["comm_ms"] for r in comm)
print(f"{stage:<6} {N:<6} {P:<12} {sent:<16.0f} {formula:<16.0f} {step:<10.1f} {cms:<10.1f} {step - cms:<10.1f}")
PY
  done
done
