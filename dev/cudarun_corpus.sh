#!/usr/bin/env bash
# cudarun_corpus.sh — run outside CUDA programs through dev/cudarun, unmodified, and say which pass.
#
#   dev/cudarun_corpus.sh [--samples DIR] [--llmc DIR] [--out DIR] [--time S] [--kernels N] [--filter REGEX]
#                         [--cudarun "FLAGS"]
#
# This is how docs/cpu-execution.md's "Real programs" counts are measured. The programs are not part of
# this repository: --samples is a checkout of NVIDIA's cuda-samples (its Samples/ and Common/), --llmc a
# checkout of llm.c (its dev/cuda/*.cu files); the defaults are where the development machine keeps them
# (/work/ext/cuda-samples, /work/ext/llm.c). The samples counted are those of 0_Introduction,
# 2_Concepts_and_Techniques, 3_CUDA_Features and 6_Performance that are one source file; each llm.c file
# runs with kernel numbers 1..N of its `switch` (default 1).
# Each program is compiled first (`dev/cudarun --compile-only` with --cudarun's flags: the checked build by
# default, "--no-check" the plain one; at the lowest priority, with a generous limit of its own), then run
# from its own directory with --time seconds
# (default 120). llm.c's files validate every kernel against a CPU reference, print "All results match"
# (two files print it per block size: there, for the last one, 1024), then benchmark it 1000 times per block
# size: the run stops once that line is printed (output is line-buffered through stdbuf for that). A kernel
# number a file has disabled ("Invalid kernel number") does not count: the next one runs instead.
# Writes OUT/NAME[.K].log and OUT/results.tsv: name, kernel, verdict, compile s, run s, last line.
set -uo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
samples=/work/ext/cuda-samples llmc=/work/ext/llm.c out=build/corpus time_limit=120 kernels=1 filter="" cudarun_flags=""
while [ $# -gt 0 ]; do
  case "$1" in
    --samples) samples=$2; shift ;;
    --llmc) llmc=$2; shift ;;
    --out) out=$2; shift ;;
    --time) time_limit=$2; shift ;;
    --kernels) kernels=$2; shift ;;
    --filter) filter=$2; shift ;;
    --cudarun) cudarun_flags=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "cudarun_corpus.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -d "$samples/Samples" ] || [ -d "$llmc/dev/cuda" ] || {
  echo "cudarun_corpus.sh: neither $samples/Samples nor $llmc/dev/cuda exists: give --samples or --llmc" >&2; exit 2; }
mkdir -p "$out"; out=$(readlink -f "$out")
results=$out/results.tsv
printf 'name\tkernel\tverdict\tcompile_s\trun_s\tlast_line\n' > "$results"

programs=()
for d in "$samples"/Samples/{0_Introduction,2_Concepts_and_Techniques,3_CUDA_Features,6_Performance}/*; do
  [ -d "$d" ] || continue
  [ "$(ls "$d" | grep -cE '\.(cu|cpp|c)$')" = 1 ] || continue  # one-file programs only
  f=$(ls "$d"/*.cu 2>/dev/null | head -1)
  [ -n "$f" ] && programs+=("$f")
done
[ -d "$llmc/dev/cuda" ] && programs+=("$llmc"/dev/cuda/*.cu)

# A verdict from the exit status and the log.
verdict() {
  local status=$1 log=$2
  if [ "$status" = 124 ]; then echo TIMEOUT
  elif grep -q "All results match" "$log" && ! grep -qi "mismatch" "$log"; then echo PASS
  elif [ "$status" = 2 ] && grep -qi "waiv" "$log"; then echo WAIVED
  elif [ "$status" = 0 ] && ! grep -qE "FAIL|Test failed|[Mm]ismatch" "$log"; then echo PASS
  elif [ "$status" = 0 ]; then echo SAYS_FAIL
  else echo "FAIL($status)"; fi
}

# Runs BINARY ARGS in DIR with the time limit into LOG; for llm.c, stops at "All results match".
run_one() {
  local dir=$1 log=$2; shift 2
  ( cd "$dir" && exec timeout "$time_limit" nice stdbuf -oL -eL "$@" ) > "$log" 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if grep -qE "All results match([^ ]| [^f]|$)|All results match for block_size=1024" "$log" 2>/dev/null; then
      pkill -TERM -P $pid 2>/dev/null
      break
    fi
    sleep 1
  done
  wait $pid
}

for f in "${programs[@]}"; do
  [ -n "$filter" ] && [[ ! "$f" =~ $filter ]] && continue
  name=$(basename "$f" .cu) dir=$(dirname "$f")
  flags=()
  [[ "$f" == "$samples"/* ]] && flags=(-I "$samples/Common")
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086  # the flags are words on purpose
  timeout 1200 nice "$root/dev/cudarun" --compile-only $cudarun_flags "${flags[@]}" "$f" > "$out/$name.compile.log" 2>&1
  compiled=$?
  compile_s=$(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.0f')
  if [ $compiled != 0 ]; then
    printf '%s\t-\tCOMPILE_FAIL\t%s\t-\t%s\n' "$name" "$compile_s" \
      "$(grep -m1 -E 'error|refused' "$out/$name.compile.log" | cut -c1-200)" >> "$results"
    continue
  fi
  nk=1
  if [[ "$f" == "$llmc"/* ]]; then
    nk=$(grep -cE '^\s*case [0-9]+:' "$f"); [ "$nk" -gt 0 ] || nk=1
    [ "$nk" -gt "$kernels" ] && nk=$kernels
  fi
  for ((k = 1; k <= nk; k++)); do
    args=(); [[ "$f" == "$llmc"/* ]] && args=($k)
    log=$out/$name$([ ${#args[@]} = 0 ] || echo ".$k").log
    t0=$(date +%s.%N)
    suffix=""; [[ " $cudarun_flags " == *" --no-check "* ]] && suffix=-unchecked  # dev/cudarun's binary name
    run_one "$dir" "$log" "$root/build/cudarun/$name$suffix" "${args[@]}"
    status=$?
    run_s=$(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.0f')
    if grep -q "Invalid kernel number" "$log"; then  # disabled in this file: try the next one
      [ "$nk" -lt "$(grep -cE '^\s*case [0-9]+:' "$f")" ] && nk=$((nk + 1))
      continue
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "${args[0]:--}" "$(verdict $status "$log")" "$compile_s" "$run_s" \
      "$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)" >> "$results"
  done
done
echo "cudarun_corpus.sh: $(grep -c $'\tPASS\t' "$results") passed of $(($(wc -l < "$results") - 1)) runs; $results"
