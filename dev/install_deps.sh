#!/usr/bin/env bash
# Installs the Debian packages gpt.cu builds against, if any is missing. Idempotent: it only looks
# for the headers when all are present. Needs root for apt-get; otherwise names what to install.
set -euo pipefail
declare -A need=(
  [doctest-dev]=/usr/include/doctest/doctest.h
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp
  [libopenblas-dev]=/usr/include/x86_64-linux-gnu/cblas.h
  [libboost-context-dev]=/usr/include/boost/context/fiber.hpp
  [libcpp-httplib-dev]=/usr/include/httplib.h
)
missing=()
for pkg in "${!need[@]}"; do
  f=${need[$pkg]}
  # cblas.h lives under the multiarch directory; accept it anywhere under /usr/include
  if [ ! -e "$f" ] && ! { [ "$pkg" = libopenblas-dev ] && ls /usr/include/*/openblas-pthread/cblas.h >/dev/null 2>&1; }; then
    missing+=("$pkg")
  fi
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
