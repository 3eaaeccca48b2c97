#!/usr/bin/env bash
# check_resources.sh — what only the GPU compiler knows about each kernel, checked against the launches
# the code makes (make check-resources; part of make test). Reads ptxas's report (`-Xptxas -v`, which
# the Makefile's GPU build writes next to every object as OBJ.ptxas, for sm_80 and sm_90) and the launch
# log of the CPU tests (CUDASIM_LAUNCH_LOG: "kernel threads-per-block dynamic-shared-bytes" lines), and
# fails when a kernel
#   - spills registers to local memory (spill stores or loads > 0: slow, and usually unintended), or
#   - needs more registers for one block than an SM has: registers per thread, rounded up per warp to
#     the allocation unit of 256, times the warps of the largest block it is launched with, over 65536
#     ("too many resources requested for launch" on a GPU), or
#   - has more than 48 KB of static shared memory plus the dynamic shared memory of a launch (above
#     48 KB only with the cudaFuncSetAttribute opt-in, which the CPU build checks at the launch).
# usage: dev/check_resources.sh LAUNCH_LOG [PTXAS_REPORT...]   (default: every build/gpu/**/*.ptxas)
# KNOWN_SPILLS="kernel/arch ..." lists spills that are known and accepted for now: reported, not failed.
set -euo pipefail
log=${1:?usage: dev/check_resources.sh LAUNCH_LOG [PTXAS_REPORT...]}
shift
reports=("$@")
if [ ${#reports[@]} -eq 0 ]; then
  mapfile -t reports < <(find build/gpu -name '*.ptxas' 2>/dev/null | sort)
fi
if [ ${#reports[@]} -eq 0 ]; then
  echo "check_resources: no ptxas reports under build/gpu" \
       "(the GPU build writes them: make build/gpu/test/test_layers.o)" >&2
  exit 1
fi
if [ ! -s "$log" ]; then
  echo "check_resources: launch log $log is missing or empty (run the CPU kernel tests with CUDASIM_LAUNCH_LOG=$log)" >&2
  exit 1
fi
command -v c++filt >/dev/null || { echo "check_resources: needs c++filt (binutils)" >&2; exit 1; }

# ptxas -v prints, per kernel and arch:
#   ptxas info    : Compiling entry function '_Z...' for 'sm_80'
#   ptxas info    : Function properties for _Z...
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 40 registers, 1024 bytes smem, 380 bytes cmem[0]
# -> "mangled arch registers smem spill_stores spill_loads", one line per kernel and arch.
cat "${reports[@]}" | awk '
  /Compiling entry function/ { match($0, /function .[^ ]+. for .sm_[0-9]+./)
                               split(substr($0, RSTART, RLENGTH), w, "\047")
                               name = w[2]; arch = w[4]; stores = 0; loads = 0; next }
  /bytes spill stores/ && name != "" { for (i = 1; i <= NF; i++) { if ($(i+1) == "bytes" && $(i+2) == "spill") {
                               if ($(i+3) ~ /stores/) stores = $i; else loads = $i } } next }
  /Used [0-9]+ registers/ && name != "" { regs = 0; smem = 0
                               for (i = 1; i <= NF; i++) {
                                 if ($i == "Used") regs = $(i+1)
                                 if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i }
                               print name, arch, regs, smem, stores, loads; name = "" }' |
  sort -u > "${TMPDIR:-/tmp}/check_resources.$$"
trap 'rm -f "${TMPDIR:-/tmp}/check_resources.$$"' EXIT
kernels=${TMPDIR:-/tmp}/check_resources.$$
[ -s "$kernels" ] || { echo "check_resources: no kernels found in ${reports[*]}" >&2; exit 1; }

# A kernel's base name, as both sides can give it: no namespace, template arguments, parameters or return type.
base() { sed -E ':a; s/<[^<>]*>//g; ta; s/\(.*$//; s/.* //; s/.*:://'; }

# Largest block and dynamic shared memory per base name, from the launch log ("name with spaces N BYTES").
declare -A threads dyn
while read -r line; do
  [ -n "$line" ] || continue
  bytes=${line##* }; rest=${line% *}; n=${rest##* }; name=$(printf '%s\n' "${rest% *}" | base)
  [ "${threads[$name]:-0}" -ge "$n" ] || threads[$name]=$n
  [ "${dyn[$name]:-0}" -ge "$bytes" ] || dyn[$name]=$bytes
done < "$log"

failed=0 checked=0 unlaunched=()
printf '%-44s %-6s %5s %7s %7s %9s %s\n' kernel arch regs threads smem regs/blk verdict
while read -r mangled arch regs smem stores loads; do
  name=$(printf '%s\n' "$mangled" | c++filt | base)
  n=${threads[$name]:-}
  # spills and static shared memory need no block size: a kernel the CPU tests never launched is checked for those
  [ -n "$n" ] || unlaunched+=("$name/$arch")
  checked=$((checked + 1))
  per_warp=$(( (regs * 32 + 255) / 256 * 256 )); block_regs=$(( per_warp * (( ${n:-0} + 31) / 32) ))
  verdict=ok
  if [ "$stores" -gt 0 ] || [ "$loads" -gt 0 ]; then
    verdict="FAIL: spills $stores bytes stored, $loads loaded"
    [[ " ${KNOWN_SPILLS:-} " == *" $name/$arch "* ]] && verdict="known: spills $stores bytes stored, $loads loaded (KNOWN_SPILLS)"
  fi
  if [ "$block_regs" -gt 65536 ]; then
    verdict="FAIL: $regs registers x $n threads needs $block_regs registers, an SM has 65536"
    verdict+=" (lower the block or use __launch_bounds__)"
  fi
  if [ "$smem" -gt 49152 ]; then verdict="FAIL: $smem bytes of static shared memory (48 KB at most)"; fi
  [ "$verdict" = ok ] || [[ "$verdict" == known:* ]] || failed=$((failed + 1))
  printf '%-44s %-6s %5s %7s %7s %9s %s\n' "$name" "$arch" "$regs" "${n:--}" "$((smem + ${dyn[$name]:-0}))" "$block_regs" \
    "$verdict"
done < "$kernels"
[ ${#unlaunched[@]} -eq 0 ] || echo "not launched by the CPU tests (spills and shared memory checked, not registers x threads):" \
  "$(printf '%s\n' "${unlaunched[@]}" | sort -u | tr '\n' ' ')"
echo "check_resources: $checked kernel/arch pairs checked, $failed over a limit"
[ $failed -eq 0 ]
