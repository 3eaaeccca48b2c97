#!/usr/bin/env bash
# Installs the Debian packages gpt.cu builds against, if any is missing. Idempotent: it only looks
# for the files when all are present. Needs root for apt-get; otherwise names what to install.
#
# Each package is checked by the files the build uses from it. For OpenBLAS that is the library
# itself (-lopenblas), not only <cblas.h>: libblas-dev (the reference BLAS) installs a cblas.h too,
# so a machine with only libblas-dev has the header but fails at link time with `cannot find -lopenblas`.
set -euo pipefail
declare -A need=(
  [doctest-dev]=/usr/include/doctest/doctest.h
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp
  [libopenblas-dev]="/usr/lib/*/libopenblas.so /usr/include/*/cblas.h"
  [libboost-context-dev]="/usr/include/boost/context/fiber.hpp /usr/lib/*/libboost_context.so"
  [libcpp-httplib-dev]="/usr/include/httplib.h"
  [libopenmpi-dev]="/usr/lib/*/openmpi/include/mpi.h"  # data parallel training (distributed.cuh)
  [openmpi-bin]="/usr/bin/mpirun"                      # test_distributed launches ranks with it
)
# true when every pattern of the list matches an existing file
have_all() {
  local pattern
  for pattern in $1; do
    compgen -G "$pattern" >/dev/null || return 1
  done
}
missing=()
for pkg in "${!need[@]}"; do
  have_all "${need[$pkg]}" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "gpt.cu needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
