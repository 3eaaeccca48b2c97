// broken_use_after_free.cu — a kernel reads a device-heap block that an earlier kernel freed. On a GPU the read
// may still find the old numbers (the heap keeps the bytes until malloc hands them out again), so the bug can hide;
// the checked CPU build accepts a block's bytes only between its malloc and its free, and stops the read:
//
//   dev/cudarun dev/examples/broken_use_after_free.cu
//   cudasim: out of bounds: kernel 'sum_kernel' block (0,0,0) thread (0,0,0) reads 4 bytes at 0x... ...
#include <cuda_runtime.h>

#include <cstdio>

// *slot = a malloc'd block of n ints, 0..n-1
__global__ void fill_kernel(int** slot, int n) {
    int* b = static_cast<int*>(malloc(n * sizeof(int)));
    for (int i = 0; b && i < n; i++) b[i] = i;
    *slot = b;
}
__global__ void free_kernel(int* const* slot) { free(*slot); }
// *sum = the block's sum
__global__ void sum_kernel(int* const* slot, int n, int* sum) {
    int s = 0;
    for (int i = 0; i < n; i++) s += (*slot)[i];
    *sum = s;
}

int main() {
    const int n = 100;
    int **slot, *sum, h_sum = 0;
    cudaMalloc(&slot, sizeof(int*));
    cudaMalloc(&sum, sizeof(int));
    fill_kernel<<<1, 1>>>(slot, n);
    free_kernel<<<1, 1>>>(slot);
    sum_kernel<<<1, 1>>>(slot, n, sum);  // the bug: the block was freed by free_kernel
    cudaMemcpy(&h_sum, sum, sizeof h_sum, cudaMemcpyDeviceToHost);
    std::printf("sum %d (expected %d)\n", h_sum, n * (n - 1) / 2);
    cudaFree(slot);
    cudaFree(sum);
    return h_sum == n * (n - 1) / 2 ? 0 : 1;
}
