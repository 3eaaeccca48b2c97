// softmax_cg.cu — row-wise softmax with cooperative groups: one warp-sized tile per row. Each lane
// strides over the row; cg::reduce gives every lane the row maximum, then the sum of exponentials,
// with no shared memory and no __syncthreads. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/softmax_cg.cu
//   on a GPU:    nvcc -O2 -o softmax_cg dev/examples/softmax_cg.cu && ./softmax_cg
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace cg = cooperative_groups;

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        cudaError_t e_ = (call);                                                                    \
        if (e_ != cudaSuccess) {                                                                    \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));       \
            std::exit(1);                                                                           \
        }                                                                                           \
    } while (0)

constexpr int block_size = 128;  // 4 warps: 4 rows per block

// out[row][c] = exp(in[row][c] - max) / Σ exp(in[row][·] - max): subtracting the row maximum keeps
// every exponent <= 0, so nothing overflows. Lane l of the tile owns columns l, l+32, l+64, ...:
// the 32 lanes read 32 consecutive floats at a time (coalesced).
__global__ void softmax_kernel(float* out, const float* in, int rows, int cols) {  // in, out: (rows, cols)
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(block);
    int row = blockIdx.x * warp.meta_group_size() + warp.meta_group_rank();
    if (row >= rows) return;  // the whole tile leaves together, so no lane is missing from a reduce
    const float* x = in + static_cast<size_t>(row) * cols;
    float* y = out + static_cast<size_t>(row) * cols;
    int lane = warp.thread_rank(), lanes = warp.size();
    float m = -INFINITY;
    for (int c = lane; c < cols; c += lanes) m = fmaxf(m, x[c]);
    m = cg::reduce(warp, m, cg::greater<float>());
    float sum = 0.0f;
    for (int c = lane; c < cols; c += lanes) sum += expf(x[c] - m);
    sum = cg::reduce(warp, sum, cg::plus<float>());
    for (int c = lane; c < cols; c += lanes) y[c] = expf(x[c] - m) / sum;
}

static bool check(int rows, int cols) {
    size_t count = static_cast<size_t>(rows) * cols;
    std::vector<float> in(count), out(count);
    unsigned state = 777;
    for (float& v : in) {
        state = state * 1664525u + 1013904223u;
        v = static_cast<float>(state >> 8) / 16777216.0f * 20.0f - 10.0f;  // uniform in [-10, 10)
    }
    float *d_in, *d_out;
    CHECK(cudaMalloc(&d_in, count * sizeof(float)));
    CHECK(cudaMalloc(&d_out, count * sizeof(float)));
    CHECK(cudaMemcpy(d_in, in.data(), count * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_out, 0xff, count * sizeof(float)));  // NaN: an element never written fails
    int rows_per_block = block_size / 32;
    softmax_kernel<<<(rows + rows_per_block - 1) / rows_per_block, block_size>>>(d_out, d_in, rows, cols);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(out.data(), d_out, count * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d_in));
    CHECK(cudaFree(d_out));
    // Reference in double; ‖out − ref‖ / ‖ref‖ over the whole tensor, every element finite.
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++) {
        const float* x = &in[static_cast<size_t>(r) * cols];
        double m = x[0], s = 0;
        for (int c = 0; c < cols; c++) m = std::fmax(m, x[c]);
        for (int c = 0; c < cols; c++) s += std::exp(x[c] - m);
        for (int c = 0; c < cols; c++) {
            double want = std::exp(x[c] - m) / s, got = out[static_cast<size_t>(r) * cols + c];
            if (!std::isfinite(got)) {
                std::printf("softmax %d×%d: out[%d][%d] = %g (unwritten?): FAIL\n", rows, cols, r, c, got);
                return false;
            }
            num += (got - want) * (got - want);
            den += want * want;
        }
    }
    double error = std::sqrt(num / den);
    bool pass = error <= 1e-6;  // fp32 exp and sums: ~1e-7 relative
    std::printf("softmax %d×%d: relative error %.1e%s\n", rows, cols, error, pass ? "" : ": FAIL");
    return pass;
}

int main() {
    bool pass = true;
    for (auto [rows, cols] : {std::pair{1000, 333}, std::pair{7, 1}, std::pair{33, 32}, std::pair{5, 4099}})
        pass = check(rows, cols) && pass;
    std::printf("softmax_cg: %s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
