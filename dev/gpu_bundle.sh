#!/usr/bin/env bash
# gpu_bundle.sh — packs what `make gpu-check` needs on a GPU machine that has the CUDA toolkit but no package
# registry and no internet (a lent cloud GPU, an air-gapped node), so the check runs there in one command.
#
#   dev/gpu_bundle.sh [--prebuilt] [--llmc DIR] [OUT_DIR]      (OUT_DIR default: gpu-bundle, git-ignored)
#
# Into OUT_DIR, from this machine (x86-64 Debian/Ubuntu with the build's packages installed):
#   debs/         the Debian packages of the GPU build (apt-get download): doctest, nlohmann-json, cpp-httplib,
#                 OpenBLAS, OpenMPI and the libraries they load. On the GPU machine they are unpacked into
#                 /tmp/gpu-deps (dpkg -x, never into /) and used through CPATH, LIBRARY_PATH and LD_LIBRARY_PATH.
#   data/         ../shared/data (GPT-2 tokenizer files, Tiny Shakespeare) and shakespeare/ (the tokenized shards)
#   bin/          the CPU programs some GPU tests run (train_gpt_cpu, infer_gpt_cpu, eval_gpt_cpu, tok), stripped
#   prebuilt.tar.xz  with --prebuilt: the GPU tests, benchmarks, train_gpt and infer_gpt built here (stripped);
#                 used on the GPU machine only for a target its own build fails on
#   llmc/         with --llmc DIR: llm.c's train_gpt2cu built here for sm_90 (for gpu_check's side by side; one line
#                 of its cuda_utils.cuh is changed for CUDA 13's cudaMemAdvise, on its out-of-memory path only)
#   run.sh        the command to run there, from the repository root: bash OUT_DIR/run.sh
#                 (setup, the GPU build with make -k, then make gpu-check; the report in $OUT, else the root)
# Binaries made here need the GPU machine's glibc to be this one's or newer (Debian 12 -> Ubuntu 24.04 works).
set -euo pipefail
prebuilt=0 llmc="" out=gpu-bundle
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt=1; shift ;;
    --llmc) llmc=$2; shift 2 ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    -*) echo "gpu_bundle: unknown flag $1 (see --help)" >&2; exit 1 ;;
    *) out=$1; shift ;;
  esac
done
data=${GPTCU_DATA:-../shared/data}
[ -d "$data/gpt2" ] || { echo "gpu_bundle: no $data/gpt2 (set GPTCU_DATA)" >&2; exit 1; }
mkdir -p "$out/debs" "$out/bin" "$out/data"

echo "gpu_bundle: Debian packages"
(cd "$out/debs" && apt-get download doctest-dev nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 \
  libbrotli-dev libbrotli1 libssl-dev zlib1g-dev libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread \
  libopenblas0 libgfortran5 libquadmath0 libopenmpi-dev libopenmpi3 libhwloc15 libevent-core-2.1-7 \
  libevent-pthreads-2.1-7 libboost-context1.74.0 2>&1 | grep -v "^Get:\|unsandboxed" || true)

echo "gpu_bundle: data and the CPU programs"
make --no-print-directory -j"$(nproc)" data train_gpt_cpu infer_gpt_cpu eval_gpt_cpu tokenizer/tok >/dev/null
rm -rf "$out/data/shared" && cp -r "$data" "$out/data/shared" && rm -rf "$out/data/shakespeare" &&
  cp -r data/shakespeare "$out/data/shakespeare"
for p in train_gpt_cpu infer_gpt_cpu eval_gpt_cpu; do strip -o "$out/bin/$p" "$p"; done
strip -o "$out/bin/tok" tokenizer/tok

if [ $prebuilt = 1 ]; then
  echo "gpu_bundle: the GPU binaries (nvcc for sm_80 + sm_90; long on a small machine)"
  tests=$(ls test/test_*.cu | sed -E 's|test/(.*)\.cu|build/gpu/test/\1|' | grep -v test_main)
  benches="build/gpu/dev/bench_layers build/gpu/dev/bench_attention build/gpu/dev/bench_infer"
  make --no-print-directory -j"$(nproc)" $tests $benches train_gpt infer_gpt >/dev/null
  stage=$(mktemp -d)
  for f in $tests $benches train_gpt infer_gpt; do mkdir -p "$stage/$(dirname "$f")" && strip -o "$stage/$f" "$f"; done
  tar cf - -C "$stage" . | xz -T0 -6 > "$out/prebuilt.tar.xz" && rm -rf "$stage"
fi

if [ -n "$llmc" ]; then
  echo "gpu_bundle: llm.c's train_gpt2cu from $llmc (sm_90, bf16, no MPI/NCCL)"
  work=$(mktemp -d) && cp -r "$llmc/train_gpt2.cu" "$llmc/llmc" "$work/"
  host_location='cudaMemLocation{cudaMemLocationTypeHost, 0}'
  sed -i "s/cudaMemAdviseSetPreferredLocation, cudaCpuDeviceId)/cudaMemAdviseSetPreferredLocation, $host_location)/" \
    "$work/llmc/cuda_utils.cuh"
  nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
  (cd "$work" && "$nvcc" --threads=0 -t=0 --use_fast_math -std=c++17 -O3 \
    --generate-code 'arch=compute_90,code=[compute_90,sm_90]' -DENABLE_BF16 -c train_gpt2.cu -o train_gpt2.o &&
    "$nvcc" train_gpt2.o -lcublas -lcublasLt -o train_gpt2cu)
  mkdir -p "$out/llmc" && cp "$work/train_gpt2cu" "$out/llmc/" && rm -rf "$work"
fi

cat > "$out/run.sh" <<'EOF'
#!/usr/bin/env bash
# Written by dev/gpu_bundle.sh. On the GPU machine, from the repository root: bash BUNDLE/run.sh
set -u
B=$(cd "$(dirname "$0")" && pwd) t0=$(date +%s)
echo "== machine"; head -n 2 /etc/os-release; g++ --version | head -n 1; nproc
D=/tmp/gpu-deps skip=""; mkdir -p $D
[ -f /usr/include/openssl/ssl.h ] && skip="$skip libssl-dev"
[ -f /usr/include/zlib.h ] && skip="$skip zlib1g-dev"
ldconfig -p | grep -q 'libgfortran.so.5 ' && skip="$skip libgfortran5 libquadmath0"
for f in "$B"/debs/*.deb; do n=$(basename "$f" | cut -d_ -f1); [[ " $skip " == *" $n "* ]] || dpkg -x "$f" $D; done
L=$D/usr/lib/x86_64-linux-gnu CU=${CUDA_HOME:-/usr/local/cuda}
export CPATH=$D/usr/include:$D/usr/include/x86_64-linux-gnu:$D/usr/include/x86_64-linux-gnu/openblas-pthread:$L/openmpi/include
export LIBRARY_PATH=$L:$L/openblas-pthread:$L/openmpi/lib
export LD_LIBRARY_PATH=$L:$L/openblas-pthread:$CU/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ln -sf openblas-pthread/libopenblas.so.0 $L/libopenblas.so.0   # the alternatives link dpkg -x does not make
if [ ! -e $CU/lib64/libnccl.so ] && [ ! -e $CU/lib/libnccl.so ] && ! ldconfig -p | grep -q 'libnccl.so '; then
  nl=$(find /usr /opt -name 'libnccl.so.2*' 2>/dev/null | head -n 1); nh=$(find /usr /opt -name nccl.h 2>/dev/null | head -n 1)
  echo "NCCL from $nl and $nh"; mkdir -p /tmp/gpu-nccl && ln -sf "$nl" /tmp/gpu-nccl/libnccl.so
  export LIBRARY_PATH=$LIBRARY_PATH:/tmp/gpu-nccl LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/tmp/gpu-nccl CPATH=$CPATH:$(dirname "$nh")
fi
[ -d ../shared/data ] || { mkdir -p ../shared && cp -r "$B/data/shared" ../shared/data; }
mkdir -p data && rm -rf data/shakespeare && cp -r "$B/data/shakespeare" data/shakespeare
cp "$B"/bin/*_cpu . && cp "$B/bin/tok" tokenizer/tok
mkdir -p build && touch build/.deps-ok   # the packages are here (above): no apt-get
tests=$(ls test/test_*.cu | sed -E 's|test/(.*)\.cu|build/gpu/test/\1|' | grep -v test_main)
targets="$tests build/gpu/dev/bench_layers build/gpu/dev/bench_attention build/gpu/dev/bench_infer train_gpt infer_gpt"
b0=$(date +%s)
make -k -j"$(nproc)" --no-print-directory $targets 2>&1 | grep -v '^/.*/nvcc \|^g++ ' | tail -n 60
echo "== GPU build: $(( $(date +%s) - b0 ))s"
if [ -f "$B/prebuilt.tar.xz" ]; then
  pre=$(mktemp -d) && tar xJf "$B/prebuilt.tar.xz" -C "$pre"
  for f in $targets; do [ -f "$f" ] || { echo "not built here: $f (the bundle's is used)"; cp "$pre/$f" "$f"; }; done
fi
llmc=""; [ -x "$B/llmc/train_gpt2cu" ] && llmc=$B/llmc
GPU_CHECK_PREBUILT=1 LLMC=$llmc make --no-print-directory gpu-check GPU_CHECK_REPORT="${OUT:-.}/gpu-check-report.txt"
rc=$?
echo "== total $(( $(date +%s) - t0 ))s, rc $rc"
exit $rc
EOF
chmod +x "$out/run.sh"
du -sh "$out"
echo "gpu_bundle: done; on the GPU machine, from the repository root: bash $out/run.sh"
