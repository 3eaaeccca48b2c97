#!/usr/bin/env bash
# check_style.sh [--fix] — every line of the C++/CUDA sources fits in 120 columns (characters, not bytes).
# Without --fix: lists each longer line as file:line: length and fails. With --fix: clang-format (the
# repository's .clang-format) reformats those lines only, then checks again; what it cannot wrap (a long
# string literal, a comment) is still listed, to be wrapped by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
fix=0; [ "${1:-}" = --fix ] && fix=1
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  files=$(git ls-files '*.cu' '*.cuh' '*.h' '*.cpp' '*.hpp' | grep -v '^test/fixtures/')
else  # a copy without .git: the same files, less what the build writes
  files=$(find . -path ./build -prune -o -path ./test/fixtures -prune -o -path ./.git -prune -o \
    \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' -o -name '*.hpp' \) -print | sed 's|^\./||')
fi
# in a UTF-8 locale grep counts characters, so "×" or "—" counts one column
long_lines() { LC_ALL=C.UTF-8 grep -nHE '^.{121,}' "$@" | cut -d: -f1,2 || true; }
if [ $fix = 1 ]; then
  for f in $files; do
    lines=$(long_lines "$f" | cut -d: -f2 | sed 's/.*/--lines=&:&/' | tr '\n' ' ')
    if [ -n "$lines" ]; then clang-format -i --style=file $lines "$f"; fi
  done
fi
out=$(long_lines $files)
if [ -n "$out" ]; then
  echo "$out"
  echo "check_style: $(echo "$out" | wc -l) lines over 120 columns (dev/check_style.sh --fix wraps most of them)" >&2
  exit 1
fi
echo "check_style: every line of $(echo $files | wc -w) files fits in 120 columns"
