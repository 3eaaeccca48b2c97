// transpose.cu — matrix transpose through a shared-memory tile, the classic example of coalescing:
// a block reads a 32×32 tile row by row (coalesced), and writes the transposed tile row by row
// (coalesced again), doing the transposition in shared memory. The tile is 33 floats wide: reading a
// column of a 32-wide tile would hit the same memory bank 32 times; the padding spreads it over 32.
// Self-checking on odd shapes: prints PASS or FAIL and exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/transpose.cu
//   on a GPU:    nvcc -O2 -o transpose dev/examples/transpose.cu && ./transpose
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        cudaError_t e_ = (call);                                                                    \
        if (e_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));       \
            std::exit(1);                                                                           \
        }                                                                                           \
    } while (0)

constexpr int tile_size = 32;     // a tile is 32×32 elements
constexpr int rows_per_pass = 8;  // a block is 32×8 threads: each thread moves 4 elements

// Block (bx, by) owns tile rows [by·32, by·32+32) × columns [bx·32, bx·32+32) of `in`.
__global__ void transpose_kernel(float* out, const float* in, int rows,
                                 int cols) {          // in: (rows, cols), out: (cols, rows)
    __shared__ float tile[tile_size][tile_size + 1];  // +1: a column of the tile spans all 32 banks
    int x = blockIdx.x * tile_size + threadIdx.x;     // column of `in` this thread reads
    int y0 = blockIdx.y * tile_size;
    for (int j = threadIdx.y; j < tile_size; j += rows_per_pass)
        if (x < cols && y0 + j < rows) tile[j][threadIdx.x] = in[static_cast<size_t>(y0 + j) * cols + x];
    __syncthreads();
    int ox = blockIdx.y * tile_size + threadIdx.x;  // column of `out` this thread writes (a row of `in`)
    int oy0 = blockIdx.x * tile_size;               // first row of `out` in this tile (a column of `in`)
    for (int j = threadIdx.y; j < tile_size; j += rows_per_pass)
        if (ox < rows && oy0 + j < cols) out[static_cast<size_t>(oy0 + j) * rows + ox] = tile[threadIdx.x][j];
}

static bool check(int rows, int cols) {
    std::vector<float> in(static_cast<size_t>(rows) * cols), out(in.size());
    for (size_t i = 0; i < in.size(); i++) in[i] = static_cast<float>(i) + 0.5f;  // every value distinct
    float *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, in.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_out, in.size() * sizeof(float)));
    CHECK(cudaMemcpy(d_in, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0xff, in.size() * sizeof(float)));  // NaN: an element never written fails
    dim3 grid((cols + tile_size - 1) / tile_size, (rows + tile_size - 1) / tile_size), block(tile_size, rows_per_pass);
    transpose_kernel<<<grid, block>>>(d_out, d_in, rows, cols);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            float got = out[static_cast<size_t>(c) * rows + r], want = in[static_cast<size_t>(r) * cols + c];
            if (std::memcmp(&got, &want, sizeof got) != 0) {  // exact: a transpose only moves values
                std::printf("transpose %d×%d: out[%d][%d] = %g, expected %g: FAIL\n", rows, cols, c, r, got, want);
                return false;
            }
        }
    std::printf("transpose %d×%d: every element in place\n", rows, cols);
    return true;
}

int main() {
    bool pass = true;
    for (auto [rows, cols] : {std::pair{1000, 777}, std::pair{33, 1}, std::pair{64, 64}, std::pair{1, 100}})
        pass = check(rows, cols) && pass;
    std::printf("transpose: %s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
