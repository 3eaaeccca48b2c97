// wmma_gemm.cu — a GEMM on tensor cores with the warp matrix API (nvcuda::wmma), in the shape of the CUDA
// samples' first tensor-core program: D = α·A·B + β·C with fp16 or bf16 A and B, fp32 C and D. Each warp owns
// one 16×16 tile of D: it walks K in steps of 16, loading a 16×16 tile of A and of B straight from global memory
// into fragments and accumulating their product with mma_sync, then scales by α and β element by element (a
// fragment's x[] holds the lane's share of the tile; the layout is unspecified, so only element-wise operations
// on it make sense) and stores the tile. M, N, K must be multiples of 16.
// Checked against a plain loop in double. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/wmma_gemm.cu
//   on a GPU:    nvcc -O2 -arch=sm_80 -o wmma_gemm dev/examples/wmma_gemm.cu && ./wmma_gemm
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace nvcuda;

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

constexpr int WMMA_M = 16, WMMA_N = 16, WMMA_K = 16;

// A (M, K) row-major, B (K, N) column-major (element (k, n) at b[n·K + k]), C and D (M, N) row-major.
// Warp (warp_m, warp_n) of the grid computes D[warp_m·16 .. +16][warp_n·16 .. +16].
template <class T>
__global__ void wmma_gemm_kernel(float* d, const T* a, const T* b, const float* c, int M, int N, int K, float alpha,
                                 float beta) {
    int warp_m = (blockIdx.x * blockDim.x + threadIdx.x) / warpSize;
    int warp_n = blockIdx.y * blockDim.y + threadIdx.y;
    if (warp_m * WMMA_M >= M || warp_n * WMMA_N >= N) return;  // the whole warp leaves together

    wmma::fragment<wmma::matrix_a, WMMA_M, WMMA_N, WMMA_K, T, wmma::row_major> a_frag;
    wmma::fragment<wmma::matrix_b, WMMA_M, WMMA_N, WMMA_K, T, wmma::col_major> b_frag;
    wmma::fragment<wmma::accumulator, WMMA_M, WMMA_N, WMMA_K, float> acc_frag, c_frag;
    wmma::fill_fragment(acc_frag, 0.0f);
    for (int k = 0; k < K; k += WMMA_K) {
        wmma::load_matrix_sync(a_frag, a + static_cast<size_t>(warp_m) * WMMA_M * K + k, K);
        wmma::load_matrix_sync(b_frag, b + static_cast<size_t>(warp_n) * WMMA_N * K + k, K);
        wmma::mma_sync(acc_frag, a_frag, b_frag, acc_frag);
    }
    float* tile = d + static_cast<size_t>(warp_m) * WMMA_M * N + warp_n * WMMA_N;
    const float* c_tile = c + static_cast<size_t>(warp_m) * WMMA_M * N + warp_n * WMMA_N;
    wmma::load_matrix_sync(c_frag, c_tile, N, wmma::mem_row_major);
    for (int i = 0; i < c_frag.num_elements; i++) c_frag.x[i] = alpha * acc_frag.x[i] + beta * c_frag.x[i];
    wmma::store_matrix_sync(tile, c_frag, N, wmma::mem_row_major);
}

template <class T>
static bool check(const char* type, int M, int N, int K) {
    std::vector<float> a(static_cast<size_t>(M) * K), b(static_cast<size_t>(K) * N), c(static_cast<size_t>(M) * N);
    std::vector<T> a16(a.size()), b16(b.size());
    unsigned seed = 12345;
    auto next = [&seed] {
        seed = seed * 1664525u + 1013904223u;
        return static_cast<float>(seed >> 8) / (1 << 24) - 0.5f;
    };
    for (size_t i = 0; i < a.size(); i++)
        a16[i] = T(next()), a[i] = static_cast<float>(a16[i]);  // exactly what the GPU sees
    for (size_t i = 0; i < b.size(); i++) b16[i] = T(next()), b[i] = static_cast<float>(b16[i]);
    for (auto& x : c) x = next();
    const float alpha = 1.5f, beta = -0.75f;
    T *d_a, *d_b;
    float *d_c, *d_d;
    CHECK(cudaMalloc(&d_a, a16.size() * sizeof(T)));
    CHECK(cudaMalloc(&d_b, b16.size() * sizeof(T)));
    CHECK(cudaMalloc(&d_c, c.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_d, c.size() * sizeof(float)));
    CHECK(cudaMemcpy(d_a, a16.data(), a16.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_b, b16.data(), b16.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_c, c.data(), c.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(d_d, 0xff, c.size() * sizeof(float)));  // NaN: a tile never stored fails
    dim3 block(128, 4);                                       // 4 × 4 warps, each one 16×16 tile of D
    dim3 grid((M + WMMA_M * 4 - 1) / (WMMA_M * 4), (N + WMMA_N * 4 - 1) / (WMMA_N * 4));
    wmma_gemm_kernel<T><<<grid, block>>>(d_d, d_a, d_b, d_c, M, N, K, alpha, beta);
    CHECK(cudaGetLastError());
    std::vector<float> d(c.size());
    CHECK(cudaMemcpy(d.data(), d_d, d.size() * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaFree(d_a));
    CHECK(cudaFree(d_b));
    CHECK(cudaFree(d_c));
    CHECK(cudaFree(d_d));
    // The products of fp16/bf16 numbers are exact in fp32; only the fp32 sums round, K + 2 times at most.
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double sum = 0, magnitude = 0;
            for (int k = 0; k < K; k++) {
                sum += static_cast<double>(a[static_cast<size_t>(m) * K + k]) * b[static_cast<size_t>(n) * K + k];
                magnitude += std::fabs(static_cast<double>(a[static_cast<size_t>(m) * K + k]) *
                                       b[static_cast<size_t>(n) * K + k]);
            }
            double want = alpha * sum + beta * c[static_cast<size_t>(m) * N + n];
            double bound = (K + 2) * std::ldexp(1.0, -24) *
                           (std::fabs(alpha) * magnitude + std::fabs(beta * c[static_cast<size_t>(m) * N + n]));
            double err = std::fabs(d[static_cast<size_t>(m) * N + n] - want);
            if (!(err <= bound)) {
                std::printf("wmma_gemm %s %d×%d×%d: D[%d][%d] = %.9g, expected %.9g (bound %.3g): FAIL\n", type, M, N,
                            K, m, n, d[static_cast<size_t>(m) * N + n], want, bound);
                return false;
            }
            worst = std::fmax(worst, err / bound);
        }
    std::printf("wmma_gemm %s %d×%d×%d: every element within its fp32 bound (worst %.2f of it)\n", type, M, N, K,
                worst);
    return true;
}

int main() {
    bool pass = check<__nv_bfloat16>("bf16", 64, 48, 96);
    pass = check<__half>("fp16", 32, 80, 64) && pass;
    pass = check<__nv_bfloat16>("bf16", 16, 16, 16) && pass;
    std::printf("wmma_gemm: %s\n", pass ? "PASS" : "FAIL");
    return pass ? 0 : 1;
}
