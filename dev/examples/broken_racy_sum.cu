// broken_racy_sum.cu — a block sum with a shared-memory race that every thread order of the CPU build
// hides: every thread adds its element to one shared total with a plain `total += x`, a load, an add
// and a store. On a GPU the 32 lanes of a warp (and the warps of the block) do these at the same time,
// so most additions are lost; in the CPU build a thread runs until its next barrier, so each `+=`
// completes before the next thread starts, and the sum is right under --order forward, reverse and
// random alike. The race check sees it, whatever the order:
//
//   dev/cudarun dev/examples/broken_racy_sum.cu                     # PASS (the race hides)
//   dev/cudarun --racecheck --threads 1 dev/examples/broken_racy_sum.cu
//   cudasim: race (read after write) on shared memory in kernel 'block_sum_kernel' block (0,0,0):
//   thread (1,0,0) reads `total` at byte offset 0 at dev/examples/broken_racy_sum.cu:NN, and thread (0,0,0)
//   wrote it at dev/examples/broken_racy_sum.cu:NN, with no __syncthreads between them ...
//
// The fix is `atomicAdd(&total, x[i])` (atomics are never races), or a tree reduction with barriers.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

constexpr int block_size = 256;

// sums[b] = x[b·256] + ... + x[b·256 + 255] (integers, so that every order gives the exact sum).
__global__ void block_sum_kernel(int* sums, const int* x, int n) {  // sums: (blocks), x: (n)
    __shared__ int total;
    int t = threadIdx.x, i = blockIdx.x * block_size + t;
    if (t == 0) total = 0;
    __syncthreads();
    if (i < n) total += x[i];  // the bug: a read-modify-write by every thread at once; atomicAdd(&total, x[i])
    __syncthreads();
    if (t == 0) sums[blockIdx.x] = total;
}

int main() {
    const int n = 1000, blocks = (n + block_size - 1) / block_size;
    std::vector<int> x(n), sums(blocks);
    for (int i = 0; i < n; i++) x[i] = i % 7 - 3;
    int *d_x, *d_sums;
    cudaMalloc(&d_x, n * sizeof(int));
    cudaMalloc(&d_sums, blocks * sizeof(int));
    cudaMemcpy(d_x, x.data(), n * sizeof(int), cudaMemcpyHostToDevice);
    block_sum_kernel<<<blocks, block_size>>>(d_sums, d_x, n);
    cudaMemcpy(sums.data(), d_sums, blocks * sizeof(int), cudaMemcpyDeviceToHost);
    bool pass = true;
    for (int b = 0; b < blocks; b++) {
        int want = 0;
        for (int i = b * block_size; i < n && i < (b + 1) * block_size; i++) want += x[i];
        pass = pass && sums[b] == want;
    }
    std::printf("broken_racy_sum: %s\n", pass ? "PASS" : "FAIL");
    cudaFree(d_x);
    cudaFree(d_sums);
    return pass ? 0 : 1;
}
