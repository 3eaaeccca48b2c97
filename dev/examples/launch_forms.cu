// launch_forms.cu — the launch and declaration forms real CUDA programs use that are not "a kernel
// name and its exact arguments": a template kernel whose arguments are deduced at the launch, a kernel
// with a default argument, a kernel that shares its name with the host function that launches it,
// `extern float __shared__ s[]` (the qualifier after the type), a launch through cudaLaunchKernel with
// `void** args`, and cudaMemcpyToSymbol given the symbol itself (the C++ overload nvcc offers).
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/launch_forms.cu
//   on a GPU:    nvcc -O2 -o launch_forms dev/examples/launch_forms.cu && ./launch_forms
#include <cuda_runtime.h>

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

__constant__ float offset;  // set with cudaMemcpyToSymbol(offset, ...)

// y[i] = a·x[i] + offset, for any element type: launched without template arguments (T deduced)
template <class T>
__global__ void axpb(T* y, const T* x, T a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + static_cast<T>(offset);
}

// y[i] = x[i] · scale, scale 2 unless given
__global__ void scale(float* y, const float* x, int n, float factor = 2.0f) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * factor;
}

// reverse each block's slice through dynamic shared memory declared with the qualifier after the type
__global__ void reverse(float* y, const float* x) {
    extern float __shared__ tile[];
    int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    tile[t] = x[base + t];
    __syncthreads();
    y[base + t] = tile[blockDim.x - 1 - t];
}

// The kernel and the host function that launches it share a name (llm.c's dev/cuda files do this).
__global__ void negate(float* y, const float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = -x[i];
}
void negate(float* y, const float* x, int n, int block_size) {
    negate<<<(n + block_size - 1) / block_size, block_size>>>(y, x, n);
}

int main() {
    const int n = 1000, block = 128, grid = (n + block - 1) / block, padded = grid * block;
    std::vector<float> x(padded);
    std::vector<double> xd(n);
    for (int i = 0; i < padded; i++) x[i] = static_cast<float>((i * 37) % 101) - 50.0f;
    for (int i = 0; i < n; i++) xd[i] = x[i] * 0.5;
    float *d_x, *d_y;
    double *d_xd, *d_yd;
    CHECK(cudaMalloc(&d_x, padded * sizeof(float)));
    CHECK(cudaMalloc(&d_y, padded * sizeof(float)));
    CHECK(cudaMalloc(&d_xd, n * sizeof(double)));
    CHECK(cudaMalloc(&d_yd, n * sizeof(double)));
    CHECK(cudaMemcpy(d_x, x.data(), padded * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_xd, xd.data(), n * sizeof(double), cudaMemcpyHostToDevice));
    const float off = 0.25f;
    CHECK(cudaMemcpyToSymbol(offset, &off, sizeof off));

    int wrong = 0;
    auto expect = [&](const char* what, std::vector<float> got, auto want) {
        for (int i = 0; i < static_cast<int>(got.size()); i++)
            if (got[i] != static_cast<float>(want(i))) {
                std::printf("%s: element %d is %g, expected %g\n", what, i, got[i], static_cast<float>(want(i)));
                wrong++;
                return;
            }
    };
    auto download = [&](int count) {
        std::vector<float> h(count);
        CHECK(cudaMemcpy(h.data(), d_y, count * sizeof(float), cudaMemcpyDeviceToHost));
        return h;
    };

    axpb<<<grid, block>>>(d_y, d_x, 3.0f, n);  // T = float, deduced
    CHECK(cudaGetLastError());
    expect("template, deduced (float)", download(n), [&](int i) { return 3.0f * x[i] + off; });
    axpb<<<grid, block>>>(d_yd, d_xd, 2.0, n);  // T = double
    std::vector<double> yd(n);
    CHECK(cudaMemcpy(yd.data(), d_yd, n * sizeof(double), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n && !wrong; i++)
        if (yd[i] != 2.0 * xd[i] + off) {
            std::printf("template, deduced (double): element %d\n", i);
            wrong++;
        }

    scale<<<grid, block>>>(d_y, d_x, n);  // the default factor
    expect("default argument", download(n), [&](int i) { return x[i] * 2.0f; });
    scale<<<grid, block>>>(d_y, d_x, n, 0.5f);
    expect("default argument given", download(n), [&](int i) { return x[i] * 0.5f; });

    reverse<<<grid, block, block * sizeof(float)>>>(d_y, d_x);
    expect("extern float __shared__", download(padded),
           [&](int i) { return x[i / block * block + block - 1 - i % block]; });

    negate(d_y, d_x, n, block);
    expect("kernel and host function of one name", download(n), [&](int i) { return -x[i]; });

    float factor = 4.0f;
    int count = n;
    void* args[] = {&d_y, &d_x, &count, &factor};
    CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(scale), dim3(grid), dim3(block), args, 0, nullptr));
    expect("cudaLaunchKernel(void** args)", download(n), [&](int i) { return x[i] * 4.0f; });

    CHECK(cudaFree(d_x));
    CHECK(cudaFree(d_y));
    CHECK(cudaFree(d_xd));
    CHECK(cudaFree(d_yd));
    std::printf("launch_forms: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
