// unsupported_grid_sync.cu — a kernel that cudasim cannot run, on purpose: it normalises a vector by
// its sum in ONE launch, with a grid-wide barrier (cooperative_groups::this_grid().sync()) between
// summing and dividing. On a GPU this is correct when launched with cudaLaunchCooperativeKernel,
// which guarantees that every block is resident at once. The CPU runs blocks a few at a time, so a
// grid-wide barrier cannot be emulated: the CPU build refuses it at compile time, naming the feature:
//
//   $ dev/cudarun dev/examples/unsupported_grid_sync.cu
//   ... error: static assertion failed: cudasim: grid-wide synchronisation (cooperative_groups::this_grid,
//       grid_group::sync) is not supported on the CPU, whose blocks do not all run at once; ...
//
// The portable version is two launches (sum, then divide): a kernel boundary is a grid-wide barrier.
//   on a GPU:  nvcc -O2 -arch=sm_80 -o unsupported_grid_sync dev/examples/unsupported_grid_sync.cu &&
//   ./unsupported_grid_sync
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace cg = cooperative_groups;

__global__ void normalise_kernel(float* x, float* total, int n) {  // x: (n), total: (1), zeroed before
    cg::grid_group grid = cg::this_grid();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(total, x[i]);
    grid.sync();  // every block's atomicAdd is done before any block reads the total
    if (i < n) x[i] /= *total;
}

int main() {
    const int n = 4096, block = 256, blocks = n / block;
    std::vector<float> x(n, 1.0f);
    float *d_x, *d_total;
    cudaMalloc(&d_x, n * sizeof(float));
    cudaMalloc(&d_total, sizeof(float));
    cudaMemcpy(d_x, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemset(d_total, 0, sizeof(float));
    int count = n;
    void* args[] = {&d_x, &d_total, &count};
    cudaError_t e =
        cudaLaunchCooperativeKernel(reinterpret_cast<void*>(normalise_kernel), blocks, block, args, 0, nullptr);
    cudaMemcpy(x.data(), d_x, n * sizeof(float), cudaMemcpyDeviceToHost);
    bool pass = e == cudaSuccess && std::fabs(x[0] - 1.0f / n) < 1e-9f && std::fabs(x[n - 1] - 1.0f / n) < 1e-9f;
    std::printf("unsupported_grid_sync: %s (%s)\n", pass ? "PASS" : "FAIL", cudaGetErrorString(e));
    return pass ? 0 : 1;
}
