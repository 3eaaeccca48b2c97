#!/usr/bin/env bash
# Runs doctest binaries and ends with one line of its own: "N passed, N failed" (test cases across
# all binaries). Usage: run_tests.sh --cpu BIN... [--racecheck BIN...] [--resources CMD] [--gpu BIN...].
# --racecheck binaries (the checked build) run with CUDASIM_RACECHECK=1 and the doctest arguments in
# $RACECHECK_DOCTEST_ARGS (one argument; the Makefile sets it); --resources runs one shell
# command that counts as one test case (make check-resources). GPU binaries run only where
# nvidia-smi finds a GPU; a binary that crashes counts as one failed test case.
set -u
passed=0; failed=0; mode=cpu; have_gpu=0
nvidia-smi -L >/dev/null 2>&1 && have_gpu=1
for arg in "$@"; do
  case "$arg" in
    --cpu) mode=cpu; continue ;;
    --racecheck) mode=racecheck; continue ;;
    --resources) mode=resources; continue ;;
    --gpu) mode=gpu; [ $have_gpu = 1 ] || echo "GPU build of the tests compiled and linked; no GPU here, so not run"; continue ;;
  esac
  [ "$mode" = gpu ] && [ $have_gpu = 0 ] && continue
  if [ "$mode" = resources ]; then
    echo "=== $arg"
    if bash -c "$arg"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    continue
  fi
  echo "=== $arg$([ "$mode" = racecheck ] && echo ' (CUDASIM_RACECHECK=1)')"
  if [ "$mode" = racecheck ]; then
    out=$(CUDASIM_RACECHECK=1 "$arg" ${RACECHECK_DOCTEST_ARGS:+"$RACECHECK_DOCTEST_ARGS"} 2>&1); rc=$?
  else
    out=$("$arg" 2>&1); rc=$?
  fi
  echo "$out" | tail -n 40
  line=$(echo "$out" | grep -E '^\[doctest\] test cases:' | tail -n1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.*\| *([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.*\| *([0-9]+) failed.*/\1/')
    passed=$((passed + p)); failed=$((failed + f))
    [ $rc -ne 0 ] && [ "$f" = 0 ] && failed=$((failed + 1))
  elif echo "$out" | grep -q '^skipped: no CUDA device'; then
    :
  else
    echo "$arg exited with status $rc without a doctest summary: counted as 1 failed"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
