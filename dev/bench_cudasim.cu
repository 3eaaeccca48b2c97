// bench_cudasim.cu — how many CUDA threads per second the machine runs, for three kernel shapes that
// cost the CPU emulator differently (docs/cpu-execution.md, "How fast it is"):
//   elementwise  y = a·x + y, no barrier and no warp collective (each thread runs start to finish)
//   block_sum    a shared-memory tree reduction: log2(256) = 8 __syncthreads per block
//   warp_sum     a shuffle reduction: 5 __shfl_xor_sync per warp, no block barrier
//   row_dot      a 64-element dot product per thread (as llm.c's attention query·key kernel): 128 loads from two
//                buffers, no barrier; in the checked build (make CHECK=1) every one of them is checked
// On a GPU the numbers are the GPU's; in the CPU build they are the emulator's (one fiber per CUDA thread
// that reaches a barrier or a collective; threads that reach none run on one fiber, one after the other).
//
// usage: bench_cudasim [--blocks N] [--iters N]     (256 threads per block; default 4096 blocks, 5 iterations)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dev/bench_util.h"

constexpr int block_size = 256;

__global__ void elementwise_kernel(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

// out[b] = sum of x over block b's 256 elements
__global__ void block_sum_kernel(float* out, const float* x, int n) {
    __shared__ float s[block_size];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = block_size / 2; stride > 0; stride /= 2) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// out[w] = sum of x over warp w's 32 elements
__global__ void warp_sum_kernel(float* out, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (threadIdx.x % 32 == 0) out[i / 32] = v;
}

// out[i] = x[i % rows, :] · w: each thread reads dot_length elements of x (rows, dot_length) and of w (dot_length)
constexpr int dot_length = 64;
__global__ void row_dot_kernel(float* out, const float* x, int rows, const float* w, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* row = x + (i % rows) * dot_length;
    float s = 0.0f;
    for (int k = 0; k < dot_length; k++) s += row[k] * w[k];
    out[i] = s;
}

int main(int argc, char** argv) {
    int blocks = 4096, iters = 5;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::printf(
                "usage: bench_cudasim [--blocks N] [--iters N]\n"
                "CUDA threads per second for an element-wise kernel, a shared-memory reduction, a shuffle\n"
                "reduction and a 64-element dot product per thread, 256 threads per block (default 4096 blocks,\n"
                "median of 5 iterations).\n");
            return 0;
        }
        if (a == "--blocks" && i + 1 < argc)
            blocks = std::atoi(argv[++i]);
        else if (a == "--iters" && i + 1 < argc)
            iters = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr,
                         "bench_cudasim: unknown argument '%s' (usage: bench_cudasim [--blocks N] [--iters N])\n",
                         a.c_str());
            return 1;
        }
    }
    if (blocks <= 0 || iters <= 0) {
        std::fprintf(stderr, "bench_cudasim: --blocks and --iters must be positive (got %d, %d)\n", blocks, iters);
        return 1;
    }
    try {
        const int n = blocks * block_size, rows = std::min(1024, n / dot_length);  // x: up to 256 KB, in cache
        Rng rng(1);
        std::vector<float> host(n);
        for (float& v : host) v = rng.uniform(-1.0f, 1.0f);
        DeviceBuffer<float> x(host), y(host), out(n / 32), dots(n);
        DeviceBuffer<char> no_flush;
        cudaDeviceProp prop;
        cuda_check(cudaGetDeviceProperties(&prop, 0));
        std::printf("device: %s; %d blocks x %d threads = %d threads per launch; median of %d\n\n", prop.name, blocks,
                    block_size, n, iters);
        std::printf("%-12s %10s %16s\n", "kernel", "ms", "M threads/s");
        auto row = [&](const char* name, const std::function<void()>& fn) {
            double ms = median_ms(fn, 1, iters, no_flush);
            std::printf("%-12s %10.2f %16.1f\n", name, ms, n / ms * 1e-3);
        };
        row("elementwise", [&] { elementwise_kernel<<<blocks, block_size>>>(y, x, 0.5f, n); });
        row("block_sum", [&] { block_sum_kernel<<<blocks, block_size>>>(out, x, n); });
        row("warp_sum", [&] { warp_sum_kernel<<<blocks, block_size>>>(out, x, n); });
        row("row_dot", [&] { row_dot_kernel<<<blocks, block_size>>>(dots, x, rows, y, n); });
        cuda_check(cudaGetLastError());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_cudasim: %s\n", e.what());
        return 1;
    }
    return 0;
}
