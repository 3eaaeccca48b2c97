// broken_divergent_barrier.cu — a __syncthreads() that not every thread of the block reaches: the
// threads past the end of the array return early, the others wait at the barrier.
//
//   dev/cudarun dev/examples/broken_divergent_barrier.cu
//   cudasim: kernel 'block_sum_kernel' block (3,0,0): thread (0,0,0) waits at __syncthreads, but 24 of the
//            block's 256 threads (thread (232,0,0) the first) returned without reaching it — ...
//
// The CUDA Programming Guide allows __syncthreads() in conditional code "only if the conditional
// evaluates identically across the entire thread block, otherwise the code execution is likely to hang
// or produce unintended side effects". On a GPU it may hang, or appear to work; cudasim aborts with
// the kernel, the block and the threads involved, every time. (The fix: no early return; guard the
// load, `s[t] = i < n ? x[i] : 0.0f;`, and let every thread reach the barrier.)
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

constexpr int block_size = 256;

// Block b sums x[b·256 .. b·256+255] into sums[b] with a shared-memory tree.
__global__ void block_sum_kernel(float* sums, const float* x, int n) {  // sums: (gridDim.x), x: (n)
    __shared__ float s[block_size];
    int t = threadIdx.x, i = blockIdx.x * block_size + t;
    if (i >= n) return;  // the bug: these threads never reach the barriers below
    s[t] = x[i];
    __syncthreads();
    for (int stride = block_size / 2; stride > 0; stride /= 2) {
        if (t < stride && i + stride < n) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) sums[blockIdx.x] = s[0];
}

int main() {
    const int n = 1000, blocks = (n + block_size - 1) / block_size;  // 1000 = 3·256 + 232
    std::vector<float> x(n, 1.0f), sums(blocks);
    float *d_x, *d_sums;
    cudaMalloc(&d_x, n * sizeof(float));
    cudaMalloc(&d_sums, blocks * sizeof(float));
    cudaMemcpy(d_x, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    block_sum_kernel<<<blocks, block_size>>>(d_sums, d_x, n);
    cudaMemcpy(sums.data(), d_sums, blocks * sizeof(float), cudaMemcpyDeviceToHost);
    bool pass = sums[0] == 256.0f && sums[blocks - 1] == static_cast<float>(n - (blocks - 1) * block_size);
    std::printf("broken_divergent_barrier: %s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
