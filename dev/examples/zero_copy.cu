// zero_copy.cu — kernels that read and write host memory directly ("zero-copy"): memory from
// cudaHostAlloc(cudaHostAllocMapped) and memory from malloc pinned by cudaHostRegister, each reached
// through the device pointer cudaHostGetDevicePointer returns, after cudaSetDeviceFlags(cudaDeviceMapHost)
// as the CUDA samples' simpleZeroCopy does. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/zero_copy.cu
//   on a GPU:    nvcc -O2 -o zero_copy dev/examples/zero_copy.cu && ./zero_copy
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

__global__ void add_kernel(float* c, const float* a, const float* b, int n) {  // c = a + b
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

int main() {
    const int n = 1 << 16;
    int can_map = 0;
    CHECK(cudaDeviceGetAttribute(&can_map, cudaDevAttrCanMapHostMemory, 0));
    if (!can_map) {
        std::printf("zero_copy: the device cannot map host memory: FAIL\n");
        return 1;
    }
    CHECK(cudaSetDeviceFlags(cudaDeviceMapHost));
    // a and b: mapped pinned allocations; c: ordinary malloc memory, registered
    float *a, *b;
    CHECK(cudaHostAlloc(reinterpret_cast<void**>(&a), n * sizeof(float), cudaHostAllocMapped));
    CHECK(cudaHostAlloc(reinterpret_cast<void**>(&b), n * sizeof(float), cudaHostAllocMapped));
    float* c = static_cast<float*>(std::aligned_alloc(4096, n * sizeof(float)));
    CHECK(cudaHostRegister(c, n * sizeof(float), cudaHostRegisterMapped));
    for (int i = 0; i < n; i++) {
        a[i] = static_cast<float>(i % 97);
        b[i] = static_cast<float>(i % 89) * 0.5f;
        c[i] = -1.0f;
    }
    float *d_a, *d_b, *d_c;
    CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_a), a, 0));
    CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_b), b, 0));
    CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d_c), c, 0));
    add_kernel<<<(n + 255) / 256, 256>>>(d_c, d_a, d_b, n);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());  // the kernel's writes to host memory are visible after this
    int wrong = 0;
    for (int i = 0; i < n; i++)
        if (c[i] != a[i] + b[i] && wrong++ < 5) std::printf("c[%d] = %g, expected %g\n", i, c[i], a[i] + b[i]);
    CHECK(cudaHostUnregister(c));
    std::free(c);
    CHECK(cudaFreeHost(a));
    CHECK(cudaFreeHost(b));
    std::printf("zero_copy: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
