#!/usr/bin/env bash
# bench_llmc.sh — CPU training, side by side: ./train_gpt_cpu against llm.c's train_gpt2.c (Karpathy's C
# reference), same GPT-2 shape, same random-token shard, same B and T, in alternating runs.
#
#   dev/bench_llmc.sh [--llmc DIR] [--work DIR] [--rounds N] [--steps N] [CASE...]
#   CASE: L,C,B,T (layers, channels, batch, sequence), e.g. 12,768,4,64 (GPT-2 124M) — the default cases
#         are the ones of docs/benchmarks.md: 4,128,16,128  6,384,8,128  12,768,4,64  12,768,8,256
#
# llm.c is built OUTSIDE this repository (in --work, default /tmp/gptcu_llmc) from a copy of DIR/train_gpt2.c
# (default /work/ext/llm.c) with these edits (below), none to its model or training step: the checkpoint
# path, B and T come from the environment, the step count from LLMC_STEPS, and the periodic val loss and
# sampling are off. Compiled as llm.c's Makefile does with OpenMP: gcc -Ofast -march=native -fopenmp -DOMP.
# Its random-init checkpoint (llm.c format: 256 int32 header, then the parameters in llm.c's order, N(0,
# 0.02) weights as GPT-2's init) and the shard (random tokens < 50257, the shard format both programs read)
# are written by numpy. Nothing of llm.c is in this repository.
#
# Per program and run: the median step time over steps 2..N (the first step warms up) and the peak RSS
# (/usr/bin/time). ./train_gpt_cpu also writes its final checkpoint and val loss, so its peak RSS
# includes checkpoint time; llm.c writes none.
set -euo pipefail
LLMC=/work/ext/llm.c; WORK=/tmp/gptcu_llmc; ROUNDS=3; STEPS=6; CASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --llmc) LLMC=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) CASES+=("$1"); shift ;;
  esac
done
[ ${#CASES[@]} -gt 0 ] || CASES=(4,128,16,128 6,384,8,128 12,768,4,64 12,768,8,256)
[ -f "$LLMC/train_gpt2.c" ] || { echo "no llm.c checkout at $LLMC (want $LLMC/train_gpt2.c): pass --llmc DIR" >&2; exit 1; }
[ -x ./train_gpt_cpu ] || { echo "./train_gpt_cpu is missing: make train_gpt_cpu" >&2; exit 1; }
mkdir -p "$WORK/run/dev/data/tinyshakespeare"

# llm.c's program, edited (each edit must apply once, else the script stops and says which)
cp "$LLMC/train_gpt2.c" "$WORK/train_gpt2.c"
python3 - "$WORK/train_gpt2.c" <<'EOF'
import sys
path = sys.argv[1]; src = open(path).read()
for old, new in (('gpt2_build_from_checkpoint(&model, "gpt2_124M.bin");', 'gpt2_build_from_checkpoint(&model, getenv("LLMC_MODEL"));'),
                 ('int B = 4;', 'int B = atoi(getenv("LLMC_B"));'), ('int T = 64;', 'int T = atoi(getenv("LLMC_T"));'),
                 ('step <= 40;', 'step < atoi(getenv("LLMC_STEPS"));'), ('if (step % 10 == 0) {', 'if (0) {'),
                 ('if (step > 0 && step % 20 == 0) {', 'if (0) {')):
    if src.count(old) != 1: sys.exit(f"llm.c's train_gpt2.c has no single '{old}' any more: update dev/bench_llmc.sh")
    src = src.replace(old, new)
open(path, "w").write(src)
EOF
gcc -Ofast -march=native -fopenmp -DOMP -Wno-unused-result -I"$LLMC" "$WORK/train_gpt2.c" -lm -lgomp -o "$WORK/train_gpt2"

python3 - "$WORK" <<'EOF'
import sys, numpy as np
work = sys.argv[1]
rng = np.random.default_rng(1)
for name, n in (("train", 1 << 20), ("val", 1 << 16)):
    header = np.zeros(256, np.int32); header[:3] = (20240520, 1, n)
    with open(f"{work}/{name}_000.bin", "wb") as f:
        f.write(header.tobytes()); f.write(rng.integers(0, 50257, n, dtype=np.uint16).tobytes())
EOF
ln -sf "$WORK/train_000.bin" "$WORK/run/dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
ln -sf "$WORK/val_000.bin" "$WORK/run/dev/data/tinyshakespeare/tiny_shakespeare_val.bin"

llmc_model() {  # L C -> path of an llm.c checkpoint (V 50257, Vp 50304, maxT 1024, NH = C/64)
  local f="$WORK/gpt2_L$1_C$2.bin"
  [ -f "$f" ] || python3 - "$f" "$1" "$2" <<'EOF'
import sys, numpy as np
path, L, C = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
V, Vp, maxT, NH = 50257, 50304, 1024, max(1, C // 64)
rng = np.random.default_rng(1)
header = np.zeros(256, np.int32); header[:8] = (20240326, 3, maxT, V, L, NH, C, Vp)
normal = lambda *shape, std=0.02: (rng.standard_normal(shape, np.float32) * std).astype(np.float32)
wte = normal(Vp, C); wte[V:] = 0
resid = 0.02 / np.sqrt(2 * L)
tensors = [wte, normal(maxT, C), np.ones((L, C), np.float32), np.zeros((L, C), np.float32), normal(L, 3 * C, C),
           np.zeros((L, 3 * C), np.float32), normal(L, C, C, std=resid), np.zeros((L, C), np.float32),
           np.ones((L, C), np.float32), np.zeros((L, C), np.float32), normal(L, 4 * C, C),
           np.zeros((L, 4 * C), np.float32), normal(L, C, 4 * C, std=resid), np.zeros((L, C), np.float32),
           np.ones(C, np.float32), np.zeros(C, np.float32)]
with open(path, "wb") as f:
    f.write(header.tobytes())
    for t in tensors: f.write(t.tobytes())
EOF
  echo "$f"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "nan")}'; }
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-16s %-8s %5s | %12s %9s | %12s %9s | %6s %6s | %s\n' model BxT round ours_ms ours_MB llmc_ms llmc_MB ratio mem load
for c in "${CASES[@]}"; do
  IFS=, read -r L C B T <<< "$c"
  NH=$(( C / 64 > 0 ? C / 64 : 1 ))
  model=$(llmc_model "$L" "$C")
  for r in $(seq "$ROUNDS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -f '%M' -o "$WORK/ours.rss" ./train_gpt_cpu \
      --model "{\"n_layer\":$L,\"n_head\":$NH,\"n_embd\":$C,\"max_seq_len\":1024}" --batch-size "$B" --seq-len "$T" \
      --train-data "$WORK/train_000.bin" --val-data "$WORK/val_000.bin" --val-batches 1 --max-steps "$STEPS" \
      --val-every 0 --sample-every 0 --sample-tokens 1 --checkpoint-every 0 --out-dir "$WORK/out" > "$WORK/ours.log"
    ours=$(grep -oE '\| [0-9.]+ ms \|' "$WORK/ours.log" | tail -n +2 | grep -oE '[0-9.]+' | median)
    (cd "$WORK/run" && LLMC_MODEL="$model" LLMC_B=$B LLMC_T=$T LLMC_STEPS=$STEPS \
      /usr/bin/time -f '%M' -o "$WORK/llmc.rss" "$WORK/train_gpt2" > "$WORK/llmc.log")
    llmc=$(grep -oE 'took [0-9.]+ ms' "$WORK/llmc.log" | tail -n +2 | grep -oE '[0-9.]+' | median)
    ours_mb=$(( $(cat "$WORK/ours.rss") / 1024 )); llmc_mb=$(( $(cat "$WORK/llmc.rss") / 1024 ))
    printf '%-16s %-8s %5s | %12.1f %9d | %12.1f %9d | %5.2fx %5.2fx | %s\n' "L$L C$C" "${B}x$T" "$r" "$ours" \
      "$ours_mb" "$llmc" "$llmc_mb" "$(echo "$llmc / $ours" | bc -l)" "$(echo "$llmc_mb / $ours_mb" | bc -l)" "$load"
  done
done
echo "ratio: llm.c ms / ours ms (above 1: we are faster); mem: llm.c peak RSS / ours (above 1: we use less)"
