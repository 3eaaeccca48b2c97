// device_assert.cu — assert() inside a kernel. On a GPU a failed device assert prints the condition with
// the block and thread, stops the kernel, and leaves the context with a sticky error: the next
// synchronisation, and every CUDA call after it, returns cudaErrorAssert. cudasim does the same instead
// of aborting the process, so a program can report it as the CUDA samples' simpleAssert does.
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/device_assert.cu
//   on a GPU:    nvcc -O2 -o device_assert dev/examples/device_assert.cu && ./device_assert
#include <cassert>
#include <cstdio>
#include <cuda_runtime.h>

// every thread checks that its index is below n; the grid has more threads than that
__global__ void checked_kernel(int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    assert(i < n);
    out[i] = i;
}

int main() {
    const int n = 1000;
    int* d_out;
    if (cudaMalloc(&d_out, 1024 * sizeof(int)) != cudaSuccess) return 1;
    checked_kernel<<<4, 256>>>(d_out, n);  // 1024 threads: 24 of them fail the assert
    cudaError_t launch = cudaGetLastError();
    cudaError_t sync = cudaDeviceSynchronize();
    int host = 0;
    cudaError_t copy = cudaMemcpy(&host, d_out, sizeof(int), cudaMemcpyDeviceToHost);  // sticky: fails too
    std::printf("launch: %s; synchronize: %s; next copy: %s\n", cudaGetErrorName(launch), cudaGetErrorName(sync),
                cudaGetErrorName(copy));
    bool ok =
        (launch == cudaSuccess || launch == cudaErrorAssert) && sync == cudaErrorAssert && copy == cudaErrorAssert;
    std::printf("device_assert: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
