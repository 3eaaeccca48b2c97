// layers_cpu_blas.h — the matmul of layers.cuh on the CPU through OpenBLAS, for the CPU path of the model
// (HostOps runs the _cpu references and needs its matmuls fast), and the op(exec, ...) dispatch of matmul,
// which picks these instead of the plain-loop matmul_forward_cpu (the reference the tests check against).
// Both builds link OpenBLAS (the GPU build for --device cpu); the layers.cuh tests need only layers.cuh.
//
// Same math and arguments as matmul_forward_cpu / matmul_backward_cpu (layers.cuh): float only.
// Row-major cblas_sgemm takes our layouts directly: out (N, OC) = inp (N, C) · weightᵀ, weight (OC, C).
#pragma once
#include <cblas.h>

#include <cstddef>

#include "layers.cuh"

// Decode-sized products (a few rows: one new token per sequence). Memory-bound: each weight is read once per
// call and used N times, so the time is the weight bytes over the memory bandwidth. sgemm is the wrong tool here:
// OpenBLAS first copies ("packs") the whole weight matrix into its own layout, which more than doubles the traffic
// at N = 1. Instead each output is a dot product of two contiguous rows; four weight rows at a time give four
// independent FMA chains per input row (no waiting on one accumulator), and the rows of `weight` are split over the
// cores by OpenMP, the one thread owner of the decode path. Sums in a fixed order: the same bits every run.
constexpr int matmul_rows_max = 8;  // up to this many rows the product reads weights once (the inputs stay in L1)
inline void matmul_forward_rows_cpu(float* out,            // (N, OC)
                                    const float* inp,      // (N, C), N <= matmul_rows_max
                                    const float* weight,   // (OC, C)
                                    const float* bias,     // (OC) or nullptr
                                    int N, int C, int OC) {
#pragma omp parallel for schedule(static)
    for (int o0 = 0; o0 < OC; o0 += 4) {
        const int rows = OC - o0 < 4 ? OC - o0 : 4;
        const float* w0 = weight + static_cast<size_t>(o0) * C;
        const float* w1 = rows > 1 ? w0 + C : w0;  // a short last group repeats row o0 and drops the extra sums
        const float* w2 = rows > 2 ? w0 + 2 * static_cast<size_t>(C) : w0;
        const float* w3 = rows > 3 ? w0 + 3 * static_cast<size_t>(C) : w0;
        for (int n = 0; n < N; n++) {
            const float* x = inp + static_cast<size_t>(n) * C;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int c = 0; c < C; c++) {
                s0 += x[c] * w0[c];
                s1 += x[c] * w1[c];
                s2 += x[c] * w2[c];
                s3 += x[c] * w3[c];
            }
            float s[4] = {s0, s1, s2, s3};
            float* y = out + static_cast<size_t>(n) * OC + o0;
            for (int j = 0; j < rows; j++) y[j] = s[j] + (bias ? bias[o0 + j] : 0.0f);
        }
    }
}

inline void matmul_forward_cpu_blas(float* out,            // (N, OC)
                                    const float* inp,      // (N, C)
                                    const float* weight,   // (OC, C)
                                    const float* bias,     // (OC) or nullptr
                                    int N, int C, int OC) {
    if (N <= matmul_rows_max) return matmul_forward_rows_cpu(out, inp, weight, bias, N, C, OC);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
    if (bias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[static_cast<size_t>(n) * OC + o] += bias[o];
}

// Accumulates (beta = 1): dinp += dout · weight, dweight += doutᵀ · inp, dbias += column sums of dout.
inline void matmul_backward_cpu_blas(float* dinp,           // (N, C) or nullptr, accumulated
                                     float* dweight,        // (OC, C), accumulated
                                     float* dbias,          // (OC) or nullptr, accumulated
                                     const float* dout,     // (N, OC)
                                     const float* inp,      // (N, C)
                                     const float* weight,   // (OC, C)
                                     int N, int C, int OC) {
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) dbias[o] += dout[static_cast<size_t>(n) * OC + o];
}

// op(exec, ...): the kernels (cuBLAS or tiled), or the OpenBLAS versions above (common.cuh)
GPTCU_OP_WITH(matmul_forward, matmul_forward_cpu_blas)
GPTCU_OP_WITH(matmul_backward, matmul_backward_cpu_blas)
