#!/usr/bin/env bash
# Continuous vs static batching on the same engine (docs/serving.md): N requests of mixed lengths (max_tokens
# 8..256, greedy), served by `infer_gpt --requests` once with continuous batching (--max-seqs B), and again as
# static batches: N/B separate runs of B requests, where a batch holds its slots until its longest request ends.
# Usage: dev/static_vs_continuous.sh MODEL [N=64] [B=16] [PROGRAM=./infer_gpt_cpu]
set -euo pipefail
model=$1; n=${2:-64}; b=${3:-16}; prog=${4:-./infer_gpt_cpu}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
words=(To be or not to be that is the question whether tis nobler in the mind to suffer)
RANDOM=19
for ((i = 0; i < n; i++)); do
  printf '{"id": %d, "prompt": "%s %s %s", "max_tokens": %d, "temperature": 0}\n' $i ${words[RANDOM % 18]} \
    ${words[RANDOM % 18]} ${words[RANDOM % 18]} $((8 + RANDOM % 249))
done > "$dir/all.jsonl"
split -l "$b" -d "$dir/all.jsonl" "$dir/batch_"
# tokens, ms, engine steps of one run
rate() { sed -nE 's/.*: ([0-9]+) tokens generated in ([0-9]+) ms.*; ([0-9]+) steps.*/\1 \2 \3/p'; }
report() { echo "$1: $2 tokens, $4 steps ($(awk "BEGIN{printf \"%.1f\", $2/$4}") tokens/step), $3 ms = $(awk "BEGIN{printf \"%.1f\", $2*1000/$3}") tok/s"; }
read -r tok ms st < <("$prog" --model "$model" --max-seqs "$b" --requests "$dir/all.jsonl" --out /dev/null 2>&1 | rate)
report continuous "$tok" "$ms" "$st"
stok=0; sms=0; sst=0
for f in "$dir"/batch_*; do
  read -r t m s < <("$prog" --model "$model" --max-seqs "$b" --requests "$f" --out /dev/null 2>&1 | rate)
  stok=$((stok + t)); sms=$((sms + m)); sst=$((sst + s))
done
report "static    " "$stok" "$sms" "$sst"
