// occupancy.cu — the occupancy API as the CUDA samples' simpleOccupancy uses it: the block size that
// keeps the most threads resident (cudaOccupancyMaxPotentialBlockSize), how many such blocks fit on one
// multiprocessor (cudaOccupancyMaxActiveBlocksPerMultiprocessor), the kernel's attributes
// (cudaFuncGetAttributes), and a launch with that configuration. The answers must agree with the
// device's own limits. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/occupancy.cu
//   on a GPU:    nvcc -O2 -o occupancy dev/examples/occupancy.cu && ./occupancy
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

__global__ void square_kernel(int* x, int n) {  // x[i] = x[i]², grid-stride
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] = x[i] * x[i];
}

int main() {
    const int n = 100000;
    int min_grid = 0, block = 0, blocks_per_sm = 0;
    CHECK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, square_kernel, 0, 0));
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, square_kernel, block, 0));
    cudaFuncAttributes attr;
    CHECK(cudaFuncGetAttributes(&attr, square_kernel));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    double occupancy = static_cast<double>(blocks_per_sm * block) / prop.maxThreadsPerMultiProcessor;
    std::printf("block size %d, %d blocks per SM (%.0f%% occupancy), minimum grid %d; %d registers per thread\n", block,
                blocks_per_sm, 100 * occupancy, min_grid, attr.numRegs);
    int wrong = 0;
    auto expect = [&](bool ok, const char* what) {
        if (!ok) {
            std::printf("not so: %s\n", what);
            wrong++;
        }
    };
    expect(block > 0 && block <= attr.maxThreadsPerBlock && block % prop.warpSize == 0,
           "a block size of whole warps within the limit");
    expect(blocks_per_sm >= 1 && blocks_per_sm * block <= prop.maxThreadsPerMultiProcessor,
           "resident threads within the SM's limit");
    expect(blocks_per_sm <= prop.maxBlocksPerMultiProcessor, "resident blocks within the SM's limit");
    expect(min_grid == blocks_per_sm * prop.multiProcessorCount, "the minimum grid fills every SM");
    int more = 0;  // a block needing most of an SM's shared memory leaves room for only one
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&more, square_kernel, block,
                                                        prop.sharedMemPerMultiprocessor / 2 + 1));
    expect(more == 1, "one block per SM when each needs over half its shared memory");

    std::vector<int> x(n);
    for (int i = 0; i < n; i++) x[i] = i % 1000 - 500;
    int* d_x;
    CHECK(cudaMalloc(&d_x, n * sizeof(int)));
    CHECK(cudaMemcpy(d_x, x.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    square_kernel<<<min_grid, block>>>(d_x, n);
    CHECK(cudaGetLastError());
    std::vector<int> y(n);
    CHECK(cudaMemcpy(y.data(), d_x, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        if (y[i] != x[i] * x[i] && wrong++ < 5) std::printf("x[%d] = %d, expected %d\n", i, y[i], x[i] * x[i]);
    CHECK(cudaFree(d_x));
    std::printf("occupancy: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
