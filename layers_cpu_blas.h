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

inline void matmul_forward_cpu_blas(float* out,            // (N, OC)
                                    const float* inp,      // (N, C)
                                    const float* weight,   // (OC, C)
                                    const float* bias,     // (OC) or nullptr
                                    int N, int C, int OC) {
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
