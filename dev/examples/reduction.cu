// reduction.cu — the sum of a vector in two launches. Each block reduces its slice in shared memory
// (a tree down to 32 values), then one warp finishes with shuffles; a second launch of one block sums
// the per-block partial sums. Self-checking: prints PASS or FAIL and exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/reduction.cu
//   on a GPU:    nvcc -O2 -o reduction dev/examples/reduction.cu && ./reduction
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        cudaError_t e_ = (call);                                                                    \
        if (e_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));       \
            std::exit(1);                                                                           \
        }                                                                                           \
    } while (0)

constexpr int block_size = 256;

// Block b sums x[i] for i = b·256 + t, then every gridDim.x·256 further (a grid-stride loop, so any
// n fits any grid), and writes its total to partial[b]. Consecutive threads read consecutive
// elements: every load is coalesced.
__global__ void reduce_kernel(const float* x, float* partial, int n) {  // x: (n), partial: (gridDim.x)
    __shared__ float s[block_size];
    int t = threadIdx.x;
    float v = 0.0f;
    for (int i = blockIdx.x * block_size + t; i < n; i += gridDim.x * block_size) v += x[i];
    s[t] = v;
    __syncthreads();
    for (int stride = block_size / 2; stride >= 32; stride /= 2) {  // tree: 256 -> 32 values
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t < 32) {  // one warp finishes in registers: shuffles need neither shared memory nor a barrier
        v = s[t];
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
        if (t == 0) partial[blockIdx.x] = v;
    }
}

int main() {
    const int n = 1000003;  // not a multiple of anything on purpose
    const int blocks = 96;
    std::vector<float> x(n);
    unsigned state = 12345;
    double reference = 0, magnitude = 0;
    for (float& v : x) {
        state = state * 1664525u + 1013904223u;                   // a small LCG: no dependencies
        v = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;  // uniform in [-0.5, 0.5)
        reference += v;
        magnitude += std::fabs(v);
    }
    float *d_x, *d_partial, *d_sum;
    CHECK(cudaMalloc(&d_x, n * sizeof(float)));
    CHECK(cudaMalloc(&d_partial, blocks * sizeof(float)));
    CHECK(cudaMalloc(&d_sum, sizeof(float)));
    CHECK(cudaMemcpy(d_x, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    reduce_kernel<<<blocks, block_size>>>(d_x, d_partial, n);
    CHECK(cudaGetLastError());
    reduce_kernel<<<1, block_size>>>(d_partial, d_sum, blocks);
    CHECK(cudaGetLastError());
    float sum = 0;
    CHECK(cudaMemcpy(&sum, d_sum, sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d_x));
    CHECK(cudaFree(d_partial));
    CHECK(cudaFree(d_sum));

    // fp32 sums in a different order than the double reference: the error is a few ulps of the
    // sum of magnitudes, far below 1e-6 of it.
    double error = std::fabs(sum - reference) / magnitude;
    bool pass = error <= 1e-6;
    std::printf("reduction of %d floats: %.6f (reference %.6f, error %.1e of sum |x|): %s\n", n, sum, reference, error,
                pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
