// two_files.cu — a program of two source files, as many CUDA samples are (a .cu file with the kernels and main, a
// .cpp file with the CPU reference, the samples' *_gold.cpp): the kernel's result is compared with the reference
// in two_files_ref.cpp, which knows nothing of CUDA. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/two_files.cu dev/examples/two_files_ref.cpp
//   on a GPU:    nvcc -O2 -o two_files dev/examples/two_files.cu dev/examples/two_files_ref.cpp && ./two_files
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

void saxpy_reference(float a, const float* x, float* y, int n);  // two_files_ref.cpp: y = a·x + y

__global__ void saxpy_kernel(float a, const float* x, float* y, int n) {  // y = a·x + y
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

int main() {
    const int n = 10000;
    const float a = 2.5f;
    std::vector<float> x(n), y(n), want(n);
    for (int i = 0; i < n; i++) x[i] = std::sin(0.1f * i), y[i] = want[i] = std::cos(0.3f * i);
    saxpy_reference(a, x.data(), want.data(), n);
    float *dx, *dy;
    CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CHECK(cudaMalloc(&dy, n * sizeof(float)));
    CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    saxpy_kernel<<<(n + 255) / 256, 256>>>(a, dx, dy, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int i = 0; i < n; i++)  // one multiply and one add, each rounded once: a fused a·x + y may differ by one ulp
        if (std::fabs(y[i] - want[i]) > 2e-7f * (std::fabs(a * x[i]) + std::fabs(want[i])) && wrong++ < 5)
            std::printf("y[%d] = %g, the reference says %g\n", i, y[i], want[i]);
    CHECK(cudaFree(dx));
    CHECK(cudaFree(dy));
    std::printf("two_files: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
