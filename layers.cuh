// layers.cuh — every op of a GPT-2 / Llama block except attention, forward and backward.
//
// Per op, in this order: the math (forward, backward derivation, cost), the plain-loop CPU reference
// (`_cpu`, templated on the scalar so tests can run it in double), the CUDA kernel(s) (`_kernel`),
// the host launcher (the only place that knows block sizes; it checks every launch), and GPTCU_OP(op):
// the op(exec, ...) the model calls, which runs the launcher or the reference (common.cuh).
//
// Conventions: N = B·T rows; every pointer has its shape in a comment; gradients ACCUMULATE (+=) into
// every d* output, in the references and in the kernels (callers zero them). The one exception is
// fused_classifier, which overwrites the logits by their gradient (its name says "in place").
// Nothing here uses float atomics: every reduction has a fixed order, so two runs give the same bits.
// docs/layers.md derives every backward; test/test_layers.cu checks every kernel and every backward.
//
// Precision. Every kernel and launcher is ONE template on the element type T: float, or __nv_bfloat16 for
// mixed precision (common.cuh: Precision, to_fp32, from_fp32). Which buffers are T and which stay fp32:
//   T (bf16 in mixed precision): activations and their gradients (inp, out, dinp, dout, the logits and
//       dlogits), and the copies of the weights that the forward and backward read (weight, bias, wte, wpe
//       arguments), refreshed from the fp32 master weights after each AdamW step.
//   fp32 always: the master weights, their gradients (dweight, dbias, dwte, dwpe: sums over every token of a
//       batch and over micro-batches, which bf16's 8 bits would swamp), AdamW's moments and the gradient norm;
//       LayerNorm/RMSNorm statistics (mean, rstd); the classifier's per-row losses; the partial sums of every
//       reduction (column_reduce, global norm); and all arithmetic inside a kernel.
// With T = float the two coincide and every op computes what it did before. A kernel widens each T it loads
// (exact) and rounds once per value it stores (to nearest, ties to even), so on the same inputs a bf16 op
// differs from its fp32 reference by one rounding of each T output, a relative error of at most u = 2^-8
// (test/test_util.h derives the tests' tolerances from it). The tensor-core matmul also rounds its inputs.
// A pointer that may be null (bias, wpe, dinp) is a std::type_identity_t<T>*: T is deduced from the others,
// so callers may pass a bare nullptr. The CPU references (`_cpu`) take one scalar type: fp32 or double.
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <type_traits>

#include <mma.h>  // nvcuda::wmma: the tensor-core matmul (the CPU build's is dev/shadow/mma.h)
#include <cublasLt.h>  // the matmul with fused epilogues (the CPU build's: dev/cudasim_cublaslt.h)

#include "common.cuh"

// ----------------------------------------------------------------------------
// Helpers shared by the kernels below (the warp/block reductions and ScratchBuffer are in common.cuh).

// Per-column sums over rows, written as fixed partial sums then added in a fixed order: the weight and
// bias gradients of LayerNorm and RMSNorm, and the bias gradient of matmul.
//   partial_w[r, c] = Σ_{n in chunk r} dout[n, c] · x̂[n, c],  x̂ = (inp − mean)·rstd  (mean = nullptr: RMSNorm, x̂ =
//   inp·rstd) partial_b[r, c] = Σ_{n in chunk r} dout[n, c]
// Block (32, 8): threadIdx.x owns one column, so each warp reads 32 consecutive elements of a row
// (coalesced); threadIdx.y strides over the chunk's rows; the 8 row-partials are added in shared memory
// in y order. Grid (ceil(C/32), R): R row chunks of rows_per_chunk rows, so any N and C work.
// The partials and the outputs are fp32 (weight gradients: the rule at the top); dout and inp are T.
// Cost: reads dout (and inp) once: sizeof(T)·N·C (2·sizeof(T)·N·C) bytes; writes 4·R·C per output.
template <class T>
__global__ void column_reduce_partial_kernel(float* partial_w,      // (R, C) or nullptr
                                             float* partial_b,      // (R, C) or nullptr
                                             const T* dout,         // (N, C)
                                             const T* inp,          // (N, C), needed if partial_w
                                             const float* mean,     // (N) or nullptr (RMSNorm)
                                             const float* rstd,     // (N), needed if partial_w
                                             int N, int C, int rows_per_chunk) {
    __shared__ float sum_w[8][32];  // one declaration per line: the CPU build poisons each
    __shared__ float sum_b[8][32];
    int tx = threadIdx.x, ty = threadIdx.y;
    int c = blockIdx.x * 32 + tx, chunk = blockIdx.y;
    int row_begin = chunk * rows_per_chunk, row_end = min(N, row_begin + rows_per_chunk);
    float acc_w = 0.0f, acc_b = 0.0f;
    if (c < C)
        for (int n = row_begin + ty; n < row_end; n += 8) {
            float d = to_fp32(dout[static_cast<size_t>(n) * C + c]);
            acc_b += d;
            if (partial_w) {
                float xhat = (to_fp32(inp[static_cast<size_t>(n) * C + c]) - (mean ? mean[n] : 0.0f)) * rstd[n];
                acc_w += d * xhat;
            }
        }
    sum_w[ty][tx] = acc_w;
    sum_b[ty][tx] = acc_b;
    __syncthreads();
    if (ty == 0 && c < C) {
        float w = 0.0f, b = 0.0f;
        for (int y = 0; y < 8; y++) { w += sum_w[y][tx]; b += sum_b[y][tx]; }
        if (partial_w) partial_w[static_cast<size_t>(chunk) * C + c] = w;
        if (partial_b) partial_b[static_cast<size_t>(chunk) * C + c] = b;
    }
}

// out[c] += Σ_r partial[r, c], r in order. One thread per column; consecutive threads read consecutive
// columns of each partial row (coalesced). Cost: 4·R·C bytes read, C read+written.
__global__ void column_reduce_finish_kernel(float* out, const float* partial, int R,
                                            int C) {  // out (C), partial (R, C)
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int r = 0; r < R; r++) sum += partial[static_cast<size_t>(r) * C + c];
    out[c] += sum;
}

// dweight[c] += Σ_n dout·x̂ (if dweight), dbias[c] += Σ_n dout (if dbias); see column_reduce_partial_kernel.
template <class T>
void column_reduce(float* dweight, float* dbias, const T* dout, const std::type_identity_t<T>* inp, const float* mean,
                   const float* rstd, int N, int C, cudaStream_t stream) {
    static ScratchBuffer scratch;
    const int rows_per_chunk = 64;
    int R = ceil_div(N, rows_per_chunk);
    float* partial_w = scratch.get<float>(2 * static_cast<size_t>(R) * C);
    float* partial_b = partial_w + static_cast<size_t>(R) * C;
    dim3 grid(ceil_div(C, 32), R), block(32, 8);
    column_reduce_partial_kernel<<<grid, block, 0, stream>>>(dweight ? partial_w : nullptr, dbias ? partial_b : nullptr,
                                                             dout, inp, mean, rstd, N, C, rows_per_chunk);
    cuda_check(cudaGetLastError());
    if (dweight) {
        column_reduce_finish_kernel<<<ceil_div(C, 256), 256, 0, stream>>>(dweight, partial_w, R, C);
        cuda_check(cudaGetLastError());
    }
    if (dbias) {
        column_reduce_finish_kernel<<<ceil_div(C, 256), 256, 0, stream>>>(dbias, partial_b, R, C);
        cuda_check(cudaGetLastError());
    }
}

// ----------------------------------------------------------------------------
// 1. Encoder: token embedding + position embedding
//   forward:  out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]      (wpe = nullptr: no learned positions, Llama)
//   backward: the forward copies rows, so the gradient flows back to the rows it copied from:
//             dwte[v, :] += Σ_{(b,t): tokens[b,t] = v} dout[b, t, :],   dwpe[t, :] += Σ_b dout[b, t, :]
//   cost: no FLOPs to speak of; forward moves 12·N·C bytes (8 without wpe): memory-bound.
//   Determinism: many positions can share a token (and in real text do: "the", end-of-text), so the rows
//   of dwte receive several sums. Float atomics would add them in whatever order the GPU runs the blocks,
//   and the bits of dwte would change from run to run. Instead the FIRST position holding a token owns
//   that token's row and adds all its positions in increasing order (encoder_backward_wte_kernel).

template <class Real>
void encoder_forward_cpu(Real* out,            // (B, T, C)
                         const int* tokens,    // (B, T)
                         const Real* wte,      // (V, C)
                         const Real* wpe,      // (maxT, C) or nullptr
                         int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            Real* o = out + (static_cast<size_t>(b) * T + t) * C;
            const Real* e = wte + static_cast<size_t>(tokens[b * T + t]) * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + (wpe ? wpe[static_cast<size_t>(t) * C + c] : Real(0));
        }
}

template <class Real>
void encoder_backward_cpu(Real* dwte,          // (V, C), accumulated
                          Real* dwpe,          // (maxT, C) or nullptr, accumulated
                          const Real* dout,    // (B, T, C)
                          const int* tokens,   // (B, T)
                          int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const Real* d = dout + (static_cast<size_t>(b) * T + t) * C;
            Real* dw = dwte + static_cast<size_t>(tokens[b * T + t]) * C;
            for (int c = 0; c < C; c++) {
                dw[c] += d[c];
                if (dwpe) dwpe[static_cast<size_t>(t) * C + c] += d[c];
            }
        }
}

// One thread per output element (n, c); consecutive threads take consecutive c, so the reads of the
// wte row, the wpe row and the write of out are coalesced. Cost: 3·sizeof(T)·N·C bytes (2· without wpe).
// (The element type is X here: T is the sequence length.)
template <class X>
__global__ void encoder_forward_kernel(X* out, const int* tokens, const X* wte, const X* wpe, int N, int T, int C) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<size_t>(N) * C) return;
    int n = static_cast<int>(i / C), c = static_cast<int>(i % C), t = n % T;
    float v = to_fp32(wte[static_cast<size_t>(tokens[n]) * C + c]);
    if (wpe) v += to_fp32(wpe[static_cast<size_t>(t) * C + c]);
    out[i] = from_fp32<X>(v);
}

// dwte without atomics. Block (n, channel slice): blockDim.x threads (a multiple of 32, up to 1024: the
// launcher makes it cover C in one slice when C <= 1024) own channels blockIdx.y·blockDim.x + tid.
// The block scans all N tokens in chunks of blockDim.x (thread tid tests position m0 + tid), compacts
// the positions holding the same token as n into shared memory in increasing order (warp ballot, then
// each warp's offset from the per-warp counts), and:
//   - if the first matching position is before n, another block owns this token: the block returns
//     (every thread reads the same shared value, so the whole block leaves together);
//   - otherwise every thread adds dout[m, c] over the matches, in order: the same sum on every run.
// Reads of dout rows are coalesced across the threads of the slice. Cost: at most N² token compares per
// channel slice (every token distinct: each block scans all N; a repeated token's later blocks leave at the
// chunk of its first position), the tokens staying in L1/L2 (32 KB at N = 8192); dout (N·C of T) read once.
template <class X>
__global__ void encoder_backward_wte_kernel(float* dwte, const X* dout, const int* tokens, int N, int C) {
    __shared__ int positions[1024];  // this chunk's matching positions, increasing
    __shared__ int warp_counts[32];
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
    int n = blockIdx.x, c = blockIdx.y * blockDim.x + tid;
    int token = tokens[n];
    float sum = 0.0f;
    for (int m0 = 0; m0 < N; m0 += blockDim.x) {
        int m = m0 + tid;
        bool match = m < N && tokens[m] == token;
        unsigned mask = __ballot_sync(0xffffffffu, match);
        if (lane == 0) warp_counts[warp] = __popc(mask);
        __syncthreads();
        int offset = 0, total = 0;
        for (int w = 0; w < warps; w++) {
            if (w < warp) offset += warp_counts[w];
            total += warp_counts[w];
        }
        if (match) positions[offset + __popc(mask & ((1u << lane) - 1u))] = m;
        __syncthreads();
        if (total > 0 && positions[0] < n) return;  // an earlier position owns this token's row
        if (c < C)
            for (int i = 0; i < total; i++) sum += to_fp32(dout[static_cast<size_t>(positions[i]) * C + c]);
        __syncthreads();  // everyone has read positions before the next chunk overwrites it
    }
    if (c < C) dwte[static_cast<size_t>(token) * C + c] += sum;
}

// dwpe[t, c] += Σ_b dout[b, t, c]: one thread per (t, c), b summed in order. Coalesced along c.
// Cost: N·C of T read, 8·T·C bytes read+written.
template <class X>
__global__ void encoder_backward_wpe_kernel(float* dwpe, const X* dout, int B, int T, int C) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // = t·C + c
    if (i >= static_cast<size_t>(T) * C) return;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += to_fp32(dout[static_cast<size_t>(b) * T * C + i]);
    dwpe[i] += sum;
}

template <class X>
void encoder_forward(X* out,                               // (B, T, C)
                     const int* tokens,                    // (B, T)
                     const X* wte,                         // (V, C)
                     const std::type_identity_t<X>* wpe,   // (maxT, C) or nullptr
                     int B, int T, int C, cudaStream_t stream) {
    size_t total = static_cast<size_t>(B) * T * C;
    encoder_forward_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, 256)), 256, 0, stream>>>(out, tokens, wte,
                                                                                                    wpe, B * T, T, C);
    cuda_check(cudaGetLastError());
}

template <class X>
void encoder_backward(float* dwte,         // (V, C), accumulated
                      float* dwpe,         // (maxT, C) or nullptr, accumulated
                      const X* dout,       // (B, T, C)
                      const int* tokens,   // (B, T)
                      int B, int T, int C, cudaStream_t stream) {
    const int block = std::min(1024, ceil_div(C, 32) * 32);  // one channel slice whenever C <= 1024
    dim3 grid(B * T, ceil_div(C, block));
    encoder_backward_wte_kernel<<<grid, block, 0, stream>>>(dwte, dout, tokens, B * T, C);
    cuda_check(cudaGetLastError());
    if (dwpe) {
        encoder_backward_wpe_kernel<<<static_cast<unsigned>(ceil_div<size_t>(static_cast<size_t>(T) * C, 256)), 256, 0,
                                      stream>>>(dwpe, dout, B, T, C);
        cuda_check(cudaGetLastError());
    }
}
// op(exec, ...): the kernels or the CPU reference (common.cuh)
GPTCU_OP(encoder_forward)
GPTCU_OP(encoder_backward)

// ----------------------------------------------------------------------------
// 2a. LayerNorm (eps = 1e-5, as GPT-2), over the C channels of each row
//   forward:  μ = (1/C)·Σ x_c,  σ² = (1/C)·Σ (x_c − μ)²,  r = 1/sqrt(σ² + eps)   (saved: μ, r per row)
//             x̂_c = (x_c − μ)·r,  y_c = w_c·x̂_c + b_c
//   backward: dw_c += Σ_rows dy_c·x̂_c,  db_c += Σ_rows dy_c.  With g_c = dy_c·w_c (the gradient at x̂):
//             dx_c += r·(g_c − mean(g) − x̂_c·mean(g·x̂))
//             (three terms: the direct path through x_c, the path through μ, the path through r;
//              derived in docs/layers.md)
//   cost per row: forward ~8·C FLOP, reads 4·C + weight, writes 4·C bytes; backward ~12·C FLOP,
//   reads 8·C, read+writes 8·C: memory-bound.
constexpr float layernorm_eps = 1e-5f;

template <class Real>
void layernorm_forward_cpu(Real* out,           // (N, C)
                           Real* mean,          // (N)
                           Real* rstd,          // (N)
                           const Real* inp,     // (N, C)
                           const Real* weight,  // (C)
                           const Real* bias,    // (C)
                           int N, int C) {
    for (int n = 0; n < N; n++) {
        const Real* x = inp + static_cast<size_t>(n) * C;
        Real m = 0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        Real var = 0;
        for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
        var /= C;
        Real s = Real(1) / std::sqrt(var + Real(layernorm_eps));
        Real* y = out + static_cast<size_t>(n) * C;
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

template <class Real>
void layernorm_backward_cpu(Real* dinp,          // (N, C), accumulated
                            Real* dweight,       // (C), accumulated
                            Real* dbias,         // (C), accumulated
                            const Real* dout,    // (N, C)
                            const Real* inp,     // (N, C)
                            const Real* weight,  // (C)
                            const Real* mean,    // (N)
                            const Real* rstd,    // (N)
                            int N, int C) {
    for (int n = 0; n < N; n++) {
        const Real* x = inp + static_cast<size_t>(n) * C;
        const Real* dy = dout + static_cast<size_t>(n) * C;
        Real* dx = dinp + static_cast<size_t>(n) * C;
        Real g_mean = 0, gx_mean = 0;
        for (int c = 0; c < C; c++) {
            Real xhat = (x[c] - mean[n]) * rstd[n], g = dy[c] * weight[c];
            g_mean += g;
            gx_mean += g * xhat;
        }
        g_mean /= C;
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            Real xhat = (x[c] - mean[n]) * rstd[n], g = dy[c] * weight[c];
            dx[c] += rstd[n] * (g - g_mean - xhat * gx_mean);
            dweight[c] += dy[c] * xhat;
            dbias[c] += dy[c];
        }
    }
}

// One warp per row (a block of 256 threads normalises 8 rows). Lanes stride the row by 32, so each
// load instruction of the warp reads 32 consecutive elements (coalesced); the sums are warp shuffles.
// Two passes over the row (mean, then the centred variance) for accuracy; the second and third passes
// hit L1. The whole warp returns together when its row is past N. mean and rstd are fp32 in any precision.
template <class T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                                         const T* bias, int N, int C) {
    int lane = threadIdx.x % 32, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const T* x = inp + static_cast<size_t>(row) * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += to_fp32(x[c]);
    float m = warp_reduce_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) var += (to_fp32(x[c]) - m) * (to_fp32(x[c]) - m);
    float s = rsqrtf(warp_reduce_sum(var) / C + layernorm_eps);
    T* y = out + static_cast<size_t>(row) * C;
    for (int c = lane; c < C; c += 32)
        y[c] = from_fp32<T>((to_fp32(x[c]) - m) * s * to_fp32(weight[c]) + to_fp32(bias[c]));
    if (lane == 0) { mean[row] = m; rstd[row] = s; }
}

// dinp: one warp per row, as the forward (two shuffle-reduced means, then the three-term formula).
// dweight, dbias: column sums over rows, column_reduce (fixed order, no atomics).
template <class T>
__global__ void layernorm_backward_kernel(T* dinp, const T* dout, const T* inp, const T* weight, const float* mean,
                                          const float* rstd, int N, int C) {
    int lane = threadIdx.x % 32, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const T* x = inp + static_cast<size_t>(row) * C;
    const T* dy = dout + static_cast<size_t>(row) * C;
    float m = mean[row], s = rstd[row];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float g = to_fp32(dy[c]) * to_fp32(weight[c]);
        g_sum += g;
        gx_sum += g * (to_fp32(x[c]) - m) * s;
    }
    float g_mean = warp_reduce_sum(g_sum) / C, gx_mean = warp_reduce_sum(gx_sum) / C;
    T* dx = dinp + static_cast<size_t>(row) * C;
    for (int c = lane; c < C; c += 32) {
        float xhat = (to_fp32(x[c]) - m) * s, g = to_fp32(dy[c]) * to_fp32(weight[c]);
        dx[c] = from_fp32<T>(to_fp32(dx[c]) + s * (g - g_mean - xhat * gx_mean));
    }
}

template <class T>
void layernorm_forward(T* out,            // (N, C)
                       float* mean,       // (N)
                       float* rstd,       // (N)
                       const T* inp,      // (N, C)
                       const T* weight,   // (C)
                       const T* bias,     // (C)
                       int N, int C, cudaStream_t stream) {
    const int block = 256, rows_per_block = block / 32;
    layernorm_forward_kernel<<<ceil_div(N, rows_per_block), block, 0, stream>>>(out, mean, rstd, inp, weight, bias, N,
                                                                                C);
    cuda_check(cudaGetLastError());
}

template <class T>
void layernorm_backward(T* dinp,            // (N, C), accumulated
                        float* dweight,     // (C), accumulated
                        float* dbias,       // (C), accumulated
                        const T* dout,      // (N, C)
                        const T* inp,       // (N, C)
                        const T* weight,    // (C)
                        const float* mean,  // (N)
                        const float* rstd,  // (N)
                        int N, int C, cudaStream_t stream) {
    const int block = 256, rows_per_block = block / 32;
    layernorm_backward_kernel<<<ceil_div(N, rows_per_block), block, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N,
                                                                                 C);
    cuda_check(cudaGetLastError());
    column_reduce(dweight, dbias, dout, inp, mean, rstd, N, C, stream);
}
// GPTCU_OP_WITH(layernorm_forward, ...): layers_cpu_blas.h (a faster CPU path)
// GPTCU_OP_WITH(layernorm_backward, ...): layers_cpu_blas.h (a faster CPU path)

// ----------------------------------------------------------------------------
// 2b. RMSNorm (Llama): LayerNorm without the mean and the bias
//   forward:  r = 1/sqrt((1/C)·Σ x_c² + eps)  (saved per row),  x̂_c = x_c·r,  y_c = w_c·x̂_c
//   backward: dw_c += Σ_rows dy_c·x̂_c.  With g_c = dy_c·w_c:  ∂r/∂x_c = −r³·x_c/C, so
//             dx_c += r·g_c − x_c·r³·(1/C)·Σ_j g_j·x_j = r·(g_c − x̂_c·mean(g·x̂))
//   cost per row: forward ~4·C FLOP, backward ~8·C FLOP; same bytes as LayerNorm: memory-bound.

template <class Real>
void rmsnorm_forward_cpu(Real* out,           // (N, C)
                         Real* rstd,          // (N)
                         const Real* inp,     // (N, C)
                         const Real* weight,  // (C)
                         int N, int C, std::type_identity_t<Real> eps) {
    for (int n = 0; n < N; n++) {
        const Real* x = inp + static_cast<size_t>(n) * C;
        Real ms = 0;
        for (int c = 0; c < C; c++) ms += x[c] * x[c];
        Real s = Real(1) / std::sqrt(ms / C + eps);
        Real* y = out + static_cast<size_t>(n) * C;
        for (int c = 0; c < C; c++) y[c] = x[c] * s * weight[c];
        rstd[n] = s;
    }
}

template <class Real>
void rmsnorm_backward_cpu(Real* dinp,          // (N, C), accumulated
                          Real* dweight,       // (C), accumulated
                          const Real* dout,    // (N, C)
                          const Real* inp,     // (N, C)
                          const Real* weight,  // (C)
                          const Real* rstd,    // (N)
                          int N, int C) {
    for (int n = 0; n < N; n++) {
        const Real* x = inp + static_cast<size_t>(n) * C;
        const Real* dy = dout + static_cast<size_t>(n) * C;
        Real* dx = dinp + static_cast<size_t>(n) * C;
        Real gx_mean = 0;
        for (int c = 0; c < C; c++) gx_mean += dy[c] * weight[c] * x[c] * rstd[n];
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            Real xhat = x[c] * rstd[n];
            dx[c] += rstd[n] * (dy[c] * weight[c] - xhat * gx_mean);
            dweight[c] += dy[c] * xhat;
        }
    }
}

// One warp per row, lanes strided by 32 (coalesced), shuffle sums: as layernorm_forward_kernel.
template <class T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps) {
    int lane = threadIdx.x % 32, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const T* x = inp + static_cast<size_t>(row) * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += to_fp32(x[c]) * to_fp32(x[c]);
    float s = rsqrtf(warp_reduce_sum(ss) / C + eps);
    T* y = out + static_cast<size_t>(row) * C;
    for (int c = lane; c < C; c += 32) y[c] = from_fp32<T>(to_fp32(x[c]) * s * to_fp32(weight[c]));
    if (lane == 0) rstd[row] = s;
}

template <class T>
__global__ void rmsnorm_backward_kernel(T* dinp, const T* dout, const T* inp, const T* weight, const float* rstd, int N,
                                        int C) {
    int lane = threadIdx.x % 32, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const T* x = inp + static_cast<size_t>(row) * C;
    const T* dy = dout + static_cast<size_t>(row) * C;
    float s = rstd[row], gx_sum = 0.0f;
    for (int c = lane; c < C; c += 32) gx_sum += to_fp32(dy[c]) * to_fp32(weight[c]) * to_fp32(x[c]) * s;
    float gx_mean = warp_reduce_sum(gx_sum) / C;
    T* dx = dinp + static_cast<size_t>(row) * C;
    for (int c = lane; c < C; c += 32) {
        float g = to_fp32(dy[c]) * to_fp32(weight[c]);
        dx[c] = from_fp32<T>(to_fp32(dx[c]) + s * (g - to_fp32(x[c]) * s * gx_mean));
    }
}

template <class T>
void rmsnorm_forward(T* out,            // (N, C)
                     float* rstd,       // (N)
                     const T* inp,      // (N, C)
                     const T* weight,   // (C)
                     int N, int C, float eps, cudaStream_t stream) {
    const int block = 256, rows_per_block = block / 32;
    rmsnorm_forward_kernel<<<ceil_div(N, rows_per_block), block, 0, stream>>>(out, rstd, inp, weight, N, C, eps);
    cuda_check(cudaGetLastError());
}

template <class T>
void rmsnorm_backward(T* dinp,            // (N, C), accumulated
                      float* dweight,     // (C), accumulated
                      const T* dout,      // (N, C)
                      const T* inp,       // (N, C)
                      const T* weight,    // (C)
                      const float* rstd,  // (N)
                      int N, int C, cudaStream_t stream) {
    const int block = 256, rows_per_block = block / 32;
    rmsnorm_backward_kernel<<<ceil_div(N, rows_per_block), block, 0, stream>>>(dinp, dout, inp, weight, rstd, N, C);
    cuda_check(cudaGetLastError());
    column_reduce(dweight, nullptr, dout, inp, nullptr, rstd, N, C, stream);
}
GPTCU_OP(rmsnorm_forward)
GPTCU_OP(rmsnorm_backward)

// ----------------------------------------------------------------------------
// 3. Matmul (nn.Linear): out = inp · weightᵀ + bias
//   shapes:   inp (N, C), weight (OC, C) row-major as PyTorch stores nn.Linear, bias (OC) or nullptr, out (N, OC)
//   forward:  out[n, o] = bias[o] + Σ_c inp[n, c]·weight[o, c]
//   backward: differentiate that line by each factor:
//             dinp[n, c]    += Σ_o dout[n, o]·weight[o, c]     i.e. dinp    += dout · weight     (N,OC)(OC,C)
//             dweight[o, c] += Σ_n dout[n, o]·inp[n, c]        i.e. dweight += doutᵀ · inp       (OC,N)(N,C)
//             dbias[o]      += Σ_n dout[n, o]                  (a column sum: column_reduce)
//   cost: forward 2·N·C·OC FLOP, backward 4·N·C·OC: compute-bound at every shape of the model
//         (arithmetic intensity ~ min(N, C, OC)/2 FLOP per byte... far above the ~10-20 of a GPU's balance).
//
// Three backends, chosen at run time (set_matmul_backend):
//   cublas: cublasGemmEx with fp32 compute: for fp32 matrices TF32 stays off (CUBLAS_DEFAULT_MATH: full fp32
//           products and sums); for bf16 matrices bf16 tensor cores, fp32 sums. Fast.
//   tiled:  matmul_tiled_kernel below, written out to be read: shared-memory tiles, an 8×8 register
//           block per thread, float4 loads (fp32). Deterministic too (fixed summation order).
//   wmma:   matmul_wmma_kernel below: the same products on tensor cores, inputs rounded to bf16, sums in fp32.
// Every backend takes the element type T (the rule at the top of this file): inp, weight, bias, out, dinp, dout
// are T; dweight and dbias are fp32. So each kernel has two element types: T for what it reads, TOut for out.

template <class Real>
void matmul_forward_cpu(Real* out,            // (N, OC)
                        const Real* inp,      // (N, C)
                        const Real* weight,   // (OC, C)
                        const Real* bias,     // (OC) or nullptr
                        int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const Real* x = inp + static_cast<size_t>(n) * C;
            const Real* w = weight + static_cast<size_t>(o) * C;
            Real sum = bias ? bias[o] : Real(0);
            for (int c = 0; c < C; c++) sum += x[c] * w[c];
            out[static_cast<size_t>(n) * OC + o] = sum;
        }
}

template <class Real>
void matmul_backward_cpu(Real* dinp,           // (N, C) or nullptr, accumulated
                         Real* dweight,        // (OC, C), accumulated
                         Real* dbias,          // (OC) or nullptr, accumulated
                         const Real* dout,     // (N, OC)
                         const Real* inp,      // (N, C)
                         const Real* weight,   // (OC, C)
                         int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            Real d = dout[static_cast<size_t>(n) * OC + o];
            const Real* x = inp + static_cast<size_t>(n) * C;
            const Real* w = weight + static_cast<size_t>(o) * C;
            Real* dw = dweight + static_cast<size_t>(o) * C;
            for (int c = 0; c < C; c++) dw[c] += d * x[c];
            if (dinp) {
                Real* dx = dinp + static_cast<size_t>(n) * C;
                for (int c = 0; c < C; c++) dx[c] += d * w[c];
            }
            if (dbias) dbias[o] += d;
        }
}

enum class MatmulBackend { cublas, tiled, wmma, cublaslt };
inline MatmulBackend& matmul_backend_setting() {
    static MatmulBackend backend = MatmulBackend::cublas;
    return backend;
}
inline void set_matmul_backend(MatmulBackend b) { matmul_backend_setting() = b; }
inline MatmulBackend get_matmul_backend() { return matmul_backend_setting(); }
// The programs' --matmul flag.
inline MatmulBackend parse_matmul_backend(const std::string& name) {
    if (name == "cublas") return MatmulBackend::cublas;
    if (name == "tiled") return MatmulBackend::tiled;
    if (name == "wmma") return MatmulBackend::wmma;
    if (name == "cublaslt") return MatmulBackend::cublaslt;
    throw std::runtime_error("--matmul must be cublas, tiled, wmma or cublaslt (got '" + name + "')");
}

// The tiled kernel computes one generic product (GEMM letters, local to this kernel: M, N, K; here N
// is NOT B·T):
//     out[i, j] (+)= Σ_k A(i, k)·B(k, j) (+ bias[j]),   out row-major with leading dimension ldo,
// where each operand is stored either "k-contiguous" (A(i, k) = a[i·lda + k]) or "k-strided"
// (A(i, k) = a[k·lda + i]). The three products of nn.Linear are three layouts of the same kernel:
//     forward   out     = inp  · weightᵀ : A = inp (k-contig., lda C),   B = weight (k-contig., ldb C)
//     backward  dinp   += dout · weight  : A = dout (k-contig., lda OC), B = weight (k-strided, ldb C)
//     backward  dweight += doutᵀ · inp   : A = dout (k-strided, lda OC), B = inp (k-strided, ldb C)
//
// Work split: a block of 256 threads (16 × 16) computes a 128×128 tile of out. It walks K in steps of
// 8: stages a 128×8 slab of A and an 8×128 slab of B in shared memory (1024 floats each: one float4 per
// thread per operand), syncs, and each thread then computes an 8×8 block of outputs in registers — rows
// {ty·4 .. ty·4+3} and {64+ty·4 .. 64+ty·4+3}, columns likewise with tx. Per k it reads 2 float4 of A
// and 2 of B from shared memory and does 64 FMAs (register blocking: 16× fewer shared-memory reads per
// FMA than one output per thread). The two groups of 4 sit 64 apart rather than 8 adjacent rows, so the
// 16 threads of a half-warp read 16 different float4 of a 64-float span: no bank conflicts. Slabs are
// stored k-major (tile[k][i]) so those reads are float4s.
// Loads are coalesced in both layouts: a k-contiguous operand is read 2 threads × float4 per row
// (32 consecutive bytes = one sector), a k-strided one 32 threads × float4 along a row (512 bytes).
// float4 loads need 16-byte alignment (ld % 4 == 0 and an aligned base pointer); otherwise, and at the
// edges of the matrices (M, N, K not multiples of the tile), the loads are scalar and out-of-range
// elements are zero, so any shape works.
// Cost per block and K step: (128·8 + 8·128)·4 = 8 KB loaded for 128·128·8·2 FLOP: 32 FLOP per byte from
// L2/DRAM, 8 FLOP per byte from shared memory.
constexpr int matmul_tile = 128, matmul_tile_k = 8, matmul_threads = 256;

// Loads rows [r0, r0+128) × k [k0, k0+8) of an operand into tile[k][r] (zeros outside the matrix), widened to
// fp32. vector_ok (fp32 only: matmul_vector_ok) reads 4 consecutive floats as one float4.
template <bool K_CONTIGUOUS, class T>
__device__ inline void matmul_load_tile(float (*tile)[matmul_tile], const T* x, int ld, int r0, int rows, int k0,
                                        int K, bool vector_ok, int tid) {
    if (K_CONTIGUOUS) {  // x(r, k) = x[r·ld + k]: thread reads 4 consecutive k of row r
        int r = tid / 2, k = (tid % 2) * 4, gr = r0 + r, gk = k0 + k;
        float v[4];
        if constexpr (std::is_same_v<T, float>) vector_ok = vector_ok && gr < rows && gk + 3 < K;
        else vector_ok = false;
        if (vector_ok) {
            float4 f = *reinterpret_cast<const float4*>(x + static_cast<size_t>(gr) * ld + gk);
            v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
        } else {
            for (int q = 0; q < 4; q++)
                v[q] = gr < rows && gk + q < K ? to_fp32(x[static_cast<size_t>(gr) * ld + gk + q]) : 0.0f;
        }
        for (int q = 0; q < 4; q++) tile[k + q][r] = v[q];
    } else {  // x(r, k) = x[k·ld + r]: thread reads 4 consecutive r of row k
        int k = tid / 32, r = (tid % 32) * 4, gr = r0 + r, gk = k0 + k;
        float v[4];
        if constexpr (std::is_same_v<T, float>) vector_ok = vector_ok && gk < K && gr + 3 < rows;
        else vector_ok = false;
        if (vector_ok) {
            float4 f = *reinterpret_cast<const float4*>(x + static_cast<size_t>(gk) * ld + gr);
            v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
        } else {
            for (int q = 0; q < 4; q++)
                v[q] = gk < K && gr + q < rows ? to_fp32(x[static_cast<size_t>(gk) * ld + gr + q]) : 0.0f;
        }
        for (int q = 0; q < 4; q++) tile[k][r + q] = v[q];
    }
}

// Row (or column) of the tile that this thread's i-th register row holds: i < 4 in the first half, i ≥ 4
// in the second, 64 further.
__device__ inline int matmul_tile_offset(int t, int i) { return (i / 4) * 64 + t * 4 + i % 4; }

template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS, class T, class TOut>
__global__ void __launch_bounds__(matmul_threads)
    matmul_tiled_kernel(TOut* out,      // (M, N), leading dimension ldo
                        const T* a,     // A(i, k), see above
                        const T* b,     // B(k, j), see above
                        const T* bias,  // (N) or nullptr
                        int M, int N, int K, int lda, int ldb, int ldo, bool accumulate, bool a_vector_ok,
                        bool b_vector_ok) {
    __shared__ __align__(16) float a_tile[matmul_tile_k][matmul_tile];
    __shared__ __align__(16) float b_tile[matmul_tile_k][matmul_tile];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int m0 = blockIdx.y * matmul_tile, n0 = blockIdx.x * matmul_tile;
    float acc[8][8] = {};
    for (int k0 = 0; k0 < K; k0 += matmul_tile_k) {
        matmul_load_tile<A_K_CONTIGUOUS>(a_tile, a, lda, m0, M, k0, K, a_vector_ok, tid);
        matmul_load_tile<B_K_CONTIGUOUS>(b_tile, b, ldb, n0, N, k0, K, b_vector_ok, tid);
        __syncthreads();
        for (int k = 0; k < matmul_tile_k; k++) {
            float ar[8], br[8];
            for (int half = 0; half < 2; half++) {
                float4 av = *reinterpret_cast<const float4*>(&a_tile[k][half * 64 + ty * 4]);
                float4 bv = *reinterpret_cast<const float4*>(&b_tile[k][half * 64 + tx * 4]);
                ar[half * 4 + 0] = av.x; ar[half * 4 + 1] = av.y; ar[half * 4 + 2] = av.z; ar[half * 4 + 3] = av.w;
                br[half * 4 + 0] = bv.x; br[half * 4 + 1] = bv.y; br[half * 4 + 2] = bv.z; br[half * 4 + 3] = bv.w;
            }
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++) acc[i][j] += ar[i] * br[j];
        }
        __syncthreads();  // the slabs are read before the next step overwrites them
    }
    for (int i = 0; i < 8; i++) {
        int row = m0 + matmul_tile_offset(ty, i);
        if (row >= M) continue;
        for (int j = 0; j < 8; j++) {
            int col = n0 + matmul_tile_offset(tx, j);
            if (col >= N) continue;
            float v = acc[i][j] + (bias ? to_fp32(bias[col]) : 0.0f);
            TOut* o = out + static_cast<size_t>(row) * ldo + col;
            *o = from_fp32<TOut>(accumulate ? to_fp32(*o) + v : v);
        }
    }
}

template <class T>
bool matmul_vector_ok(const T* p, int ld) {
    return std::is_same_v<T, float> && ld % 4 == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS, class T, class TOut>
void matmul_tiled(TOut* out, const T* a, const T* b, const T* bias, int M, int N, int K, int lda, int ldb, int ldo,
                  bool accumulate, cudaStream_t stream) {
    dim3 grid(ceil_div(N, matmul_tile), ceil_div(M, matmul_tile));
    matmul_tiled_kernel<A_K_CONTIGUOUS, B_K_CONTIGUOUS, T, TOut><<<grid, matmul_threads, 0, stream>>>(
        out, a, b, bias, M, N, K, lda, ldb, ldo, accumulate, matmul_vector_ok(a, lda), matmul_vector_ok(b, ldb));
    cuda_check(cudaGetLastError());
}

// ---- The same product on tensor cores: bf16 inputs, fp32 sums, through nvcuda::wmma.
// A tensor core multiplies a 16×16 bf16 tile by a 16×16 bf16 tile and adds a 16×16 fp32 tile in one warp-wide
// operation (wmma::mma_sync): 4096 multiply-adds per warp per call, at ~16× the fp32 FMA rate (A100 datasheet: 312
// bf16 vs 19.5 fp32 TFLOP/s). The warp's 32 lanes hold the tiles as opaque "fragments"; load_matrix_sync and
// store_matrix_sync move them between fragments and memory, all 32 lanes together.
//
// Precision. Each input is rounded to bf16 (8 significant bits: relative error ≤ u = 2^-8 ≈ 3.9e-3, round to nearest
// even); a product of two bf16 numbers is exact in fp32 (8 + 8 ≤ 24 bits), and the sums are fp32. So against the
// exact product, with ã = a(1 + α), b̃ = b(1 + β), |α|, |β| ≤ u:
//     |Σ_k ã_k·b̃_k − Σ_k a_k·b_k| ≤ (2u + u²)·Σ_k |a_k·b_k|          (inputs), plus
//     the fp32 sums' own error                  ≤ ~K·2^-24·Σ_k |a_k·b_k|  (2.4e-5 at K = 400: small beside 2u),
// a bound relative to Σ|a·b|, not to the result, which can cancel to ~0. Typical errors are smaller: rounding x = m·2^e
// (m in [1, 2)) moves it by an amount spread evenly over ±ulp/2 = ±u·2^e, a relative error of rms (u/√3)/m, which
// over m spread evenly in [1, 2) is u/√6. Two such independent errors per product, summed over K products, are a
// random walk: ‖error‖/‖out‖ ≈ u/√3 ≈ 2.3e-3 over a tensor of random inputs, at any K (test_layers measures 2.0e-3
// to 2.1e-3). The tests check both (test_util.h: check_bf16_product). fp32's unit roundoff, 2^-24, is 2^16× smaller.
//
// Work split: a block of 128 threads (4 warps) computes a 64×64 tile of out; warp w computes the 32×32 quarter
// (w / 2, w % 2) of it as 2×2 wmma accumulators of 16×16. The block walks K in steps of 32: it stages a 64×32 slab
// of A and of B in shared memory, converted to bf16 and stored k-contiguous (slab[row][k], the layout wmma's
// row_major A and col_major B read), syncs, and each warp does 2 k-steps of 16 × (2 A + 2 B fragment loads, 4
// mma_sync). Slab rows are 32 + 8 bf16 = 80 bytes: wmma wants a row stride that is a multiple of 16 bytes, and the
// 8 extra elements shift consecutive rows by 4 banks. The out tile goes through shared memory (store_matrix_sync,
// one 32×32 fp32 quarter per warp, rows of 36 floats) so that the lanes can add the bias, accumulate and skip the
// rows and columns past the matrix with plain coalesced stores: a fragment's layout is unspecified.
// Loads are coalesced in both layouts: 32 consecutive floats of a row per warp instruction (a k-contiguous operand
// along k, a k-strided one along its rows); out-of-range elements are zeros, so any M, N, K works.
// Cost per block and K step: (64·32 + 32·64)·4 = 16 KB read for 64·64·32·2 FLOP: 16 FLOP per byte.
constexpr int matmul_wmma_tile = 64, matmul_wmma_tile_k = 32, matmul_wmma_threads = 128;
constexpr int matmul_wmma_slab_ld = matmul_wmma_tile_k + 8;  // bf16 elements per slab row (80 bytes)
constexpr int matmul_wmma_out_ld = 32 + 4;                   // floats per row of a warp's staged 32×32 quarter

// slab[r][k] = bf16(x(r0 + r, k0 + k)) for the 64×32 slab at rows r0, k k0 (zeros outside the matrix).
template <bool K_CONTIGUOUS, class T>
__device__ inline void matmul_wmma_load_slab(__nv_bfloat16 (*slab)[matmul_wmma_slab_ld], const T* x, int ld, int r0,
                                             int rows, int k0, int K, int tid) {
    if (K_CONTIGUOUS) {  // x(r, k) = x[r·ld + k]: a warp reads 32 consecutive k of one row, 4 rows per pass
        int k = tid % 32, gk = k0 + k;
        for (int r = tid / 32; r < matmul_wmma_tile; r += matmul_wmma_threads / 32) {
            int gr = r0 + r;
            float v = gr < rows && gk < K ? to_fp32(x[static_cast<size_t>(gr) * ld + gk]) : 0.0f;
            slab[r][k] = __float2bfloat16_rn(v);
        }
    } else {  // x(r, k) = x[k·ld + r]: a warp reads 32 consecutive r of one row of x, 2 values of k per pass
        int r = tid % matmul_wmma_tile, gr = r0 + r;
        for (int k = tid / matmul_wmma_tile; k < matmul_wmma_tile_k; k += matmul_wmma_threads / matmul_wmma_tile) {
            int gk = k0 + k;
            float v = gr < rows && gk < K ? to_fp32(x[static_cast<size_t>(gk) * ld + gr]) : 0.0f;
            slab[r][k] = __float2bfloat16_rn(v);
        }
    }
}

template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS, class T, class TOut>
__global__ void __launch_bounds__(matmul_wmma_threads)
matmul_wmma_kernel(TOut* out,        // (M, N), leading dimension ldo
                   const T* a,       // A(i, k), as matmul_tiled_kernel
                   const T* b,       // B(k, j), as matmul_tiled_kernel
                   const T* bias,    // (N) or nullptr
                   int M, int N, int K, int lda, int ldb, int ldo, bool accumulate) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bf16 wmma needs compute capability 8.0 (A100) or newer; the GPU build targets sm_80 and sm_90
#else
    namespace wmma = nvcuda::wmma;
    __shared__ __align__(32) __nv_bfloat16 a_slab[matmul_wmma_tile][matmul_wmma_slab_ld];
    __shared__ __align__(32) __nv_bfloat16 b_slab[matmul_wmma_tile][matmul_wmma_slab_ld];
    __shared__ __align__(32) float out_stage[matmul_wmma_threads / 32][32][matmul_wmma_out_ld];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;  // this warp's quarter of the block's tile
    const int m0 = blockIdx.y * matmul_wmma_tile, n0 = blockIdx.x * matmul_wmma_tile;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int k0 = 0; k0 < K; k0 += matmul_wmma_tile_k) {
        matmul_wmma_load_slab<A_K_CONTIGUOUS>(a_slab, a, lda, m0, M, k0, K, tid);
        matmul_wmma_load_slab<B_K_CONTIGUOUS>(b_slab, b, ldb, n0, N, k0, K, tid);
        __syncthreads();
        for (int kk = 0; kk < matmul_wmma_tile_k; kk += 16) {
            // A(i, k) row-major at a_slab[i][k]; B(k, j) column-major at b_slab[j][k].
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], &a_slab[wr + i * 16][kk], matmul_wmma_slab_ld);
            for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], &b_slab[wc + j * 16][kk], matmul_wmma_slab_ld);
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();  // the slabs are read before the next step overwrites them
    }
    float (*stage)[matmul_wmma_out_ld] = out_stage[warp];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&stage[i * 16][j * 16], acc[i][j], matmul_wmma_out_ld, wmma::mem_row_major);
    __syncwarp();  // the lanes read what other lanes' stores wrote
    for (int r = 0; r < 32; r++) {  // lane = column: one row of 32 consecutive floats per warp store
        int row = m0 + wr + r, col = n0 + wc + lane;
        if (row >= M || col >= N) continue;
        float v = stage[r][lane] + (bias ? to_fp32(bias[col]) : 0.0f);
        TOut* o = out + static_cast<size_t>(row) * ldo + col;
        *o = from_fp32<TOut>(accumulate ? to_fp32(*o) + v : v);
    }
#endif
}

template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS, class T, class TOut>
void matmul_wmma(TOut* out, const T* a, const T* b, const T* bias, int M, int N, int K, int lda, int ldb, int ldo,
                 bool accumulate, cudaStream_t stream) {
    dim3 grid(ceil_div(N, matmul_wmma_tile), ceil_div(M, matmul_wmma_tile));
    matmul_wmma_kernel<A_K_CONTIGUOUS, B_K_CONTIGUOUS, T, TOut><<<grid, matmul_wmma_threads, 0, stream>>>(
        out, a, b, bias, M, N, K, lda, ldb, ldo, accumulate);
    cuda_check(cudaGetLastError());
}
// ---- end of the tensor-core matmul

// out[n, o] = bias[o], before a cuBLAS GEMM that adds the product (beta = 1): then bias + Σ is rounded to out's
// type once, as in the hand-written kernels (a bias added after a bf16 GEMM would round twice). One thread per
// element, coalesced. Cost: sizeof(T)·N·OC bytes written (the GEMM then reads them back).
template <class T>
__global__ void bias_broadcast_kernel(T* out, const T* bias, int N, int OC) {  // out (N, OC), bias (OC)
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < static_cast<size_t>(N) * OC) out[i] = bias[i % OC];
}

// C (m, n) = alpha·op(A)·op(B) + beta·C in cuBLAS's column-major terms, A and B of type T, C of type TC.
template <class T, class TC>
void cublas_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const T* A, int lda, const T* B,
                 int ldb, float beta, TC* C, int ldc, cudaStream_t stream) {
    const float one = 1.0f;
    cublas_check(cublasSetStream(cublas_handle(), stream));
    cublas_check(cublasGemmEx(cublas_handle(), ta, tb, m, n, k, &one, A, cublas_data_type<T>(), lda, B,
                              cublas_data_type<T>(), ldb, &beta, C, cublas_data_type<TC>(), ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

// cuBLASLt (MatmulBackend::cublaslt, llm.c's choice): the forward's GEMM with the bias, and for GPT-2's c_fc the
// GELU too, fused into its epilogue, so the output is written once, rounded once (no bias_broadcast_kernel pass,
// no separate gelu_forward pass over (N, 4C)). The same column-major view as cuBLAS below: D = outᵀ (OC, N) =
// op(weightᵀ) · inpᵀ with transa = T; the bias is one value per row of D. With `pre` (GELU_AUX_BIAS), D gets
// gelu(x·Wᵀ + b) and pre the value before the GELU, which gelu_backward needs. No workspace: the heuristic picks
// among the algorithms that need none.
inline cublasLtHandle_t cublaslt_handle() {
    static cublasLtHandle_t handle = [] {
        cublasLtHandle_t h;
        cublas_check(cublasLtCreate(&h));
        return h;
    }();
    return handle;
}
template <class T>
void matmul_forward_cublaslt(T* out,                   // (N, OC): x·Wᵀ + b, or gelu of it when pre is given
                             T* pre,                   // (N, OC) or nullptr: x·Wᵀ + b before the GELU
                             const T* inp,             // (N, C)
                             const T* weight,          // (OC, C)
                             const T* bias,            // (OC) or nullptr
                             int N, int C, int OC, cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublas_check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
    cublasLtEpilogue_t epilogue = pre ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                      : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (bias) cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (pre) {
        const int64_t ld = OC;
        cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre, sizeof pre));
        cublas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld));
    }
    const cudaDataType_t type = cublas_data_type<T>();
    cublasLtMatrixLayout_t a, b, d;  // column-major: weightᵀ (C, OC), inpᵀ (C, N), outᵀ (OC, N)
    cublas_check(cublasLtMatrixLayoutCreate(&a, type, C, OC, C));
    cublas_check(cublasLtMatrixLayoutCreate(&b, type, C, N, C));
    cublas_check(cublasLtMatrixLayoutCreate(&d, type, OC, N, OC));
    cublasLtMatmulPreference_t pref;
    cublas_check(cublasLtMatmulPreferenceCreate(&pref));
    const size_t no_workspace = 0;
    cublas_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &no_workspace,
                                                      sizeof no_workspace));
    cublasLtMatmulHeuristicResult_t algo{};
    int found = 0;
    cublas_check(cublasLtMatmulAlgoGetHeuristic(cublaslt_handle(), desc, a, b, d, d, pref, 1, &algo, &found));
    if (found == 0)
        throw std::runtime_error("cuBLASLt has no algorithm for the matmul N=" + std::to_string(N) + " C=" +
                                 std::to_string(C) + " OC=" + std::to_string(OC) + "; use --matmul cublas");
    const float one = 1.0f, zero = 0.0f;
    cublas_check(cublasLtMatmul(cublaslt_handle(), desc, &one, weight, a, inp, b, &zero, out, d, out, d, &algo.algo,
                                nullptr, 0, stream));
    cublas_check(cublasLtMatmulPreferenceDestroy(pref));
    for (cublasLtMatrixLayout_t l : {a, b, d}) cublas_check(cublasLtMatrixLayoutDestroy(l));
    cublas_check(cublasLtMatmulDescDestroy(desc));
}

// cuBLAS is column-major: it sees a row-major (R, S) matrix as its (S, R) transpose. So the row-major
// out (N, OC) is cuBLAS's column-major outᵀ (OC, N), and the forward out = inp·weightᵀ becomes
//     outᵀ (OC, N) = weight (OC, C) · inpᵀ (C, N),
// where cuBLAS sees our weight as weightᵀ (C, OC) — hence OP_T on it — and our inp as inpᵀ (C, N): OP_N.
template <class T>
void matmul_forward(T* out,                               // (N, OC)
                    const T* inp,                         // (N, C)
                    const T* weight,                      // (OC, C)
                    const std::type_identity_t<T>* bias,  // (OC) or nullptr
                    int N, int C, int OC, cudaStream_t stream) {
    if (get_matmul_backend() == MatmulBackend::tiled) {
        matmul_tiled<true, true>(out, inp, weight, bias, N, OC, C, C, C, OC, false, stream);
        return;
    }
    if (get_matmul_backend() == MatmulBackend::wmma) {
        matmul_wmma<true, true>(out, inp, weight, bias, N, OC, C, C, C, OC, false, stream);
        return;
    }
    if (get_matmul_backend() == MatmulBackend::cublaslt)
        return matmul_forward_cublaslt(out, static_cast<T*>(nullptr), inp, weight, bias, N, C, OC, stream);
    if (bias) {
        size_t total = static_cast<size_t>(N) * OC;
        bias_broadcast_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, 256)), 256, 0, stream>>>(out, bias, N,
                                                                                                       OC);
        cuda_check(cudaGetLastError());
    }
    cublas_gemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, inp, C, bias ? 1.0f : 0.0f, out, OC, stream);
}

// In cuBLAS's column-major view (beta = 1 accumulates):
//     dinpᵀ (C, N)     = weightᵀ (C, OC) · doutᵀ (OC, N)   — our weight is its weightᵀ: OP_N; dout is doutᵀ: OP_N
//     dweightᵀ (C, OC) = inpᵀ (C, N) · dout (N, OC)        — inp is inpᵀ: OP_N; dout is doutᵀ: OP_T
// dinp is T, dweight and dbias fp32 (the rule at the top of this file).
template <class T>
void matmul_backward(std::type_identity_t<T>* dinp,  // (N, C) or nullptr (skipped), accumulated
                     float* dweight,                 // (OC, C), accumulated
                     float* dbias,                   // (OC) or nullptr, accumulated
                     const T* dout,                  // (N, OC)
                     const T* inp,                   // (N, C)
                     const T* weight,                // (OC, C)
                     int N, int C, int OC, cudaStream_t stream) {
    if (get_matmul_backend() == MatmulBackend::tiled) {
        if (dinp) matmul_tiled<true, false>(dinp, dout, weight, static_cast<const T*>(nullptr), N, C, OC, OC, C, C,
                                            true, stream);
        matmul_tiled<false, false>(dweight, dout, inp, static_cast<const T*>(nullptr), OC, C, N, OC, C, C, true,
                                   stream);
    } else if (get_matmul_backend() == MatmulBackend::wmma) {  // (cublaslt: the backward is cuBLAS's, below)
        if (dinp) matmul_wmma<true, false>(dinp, dout, weight, static_cast<const T*>(nullptr), N, C, OC, OC, C, C,
                                           true, stream);
        matmul_wmma<false, false>(dweight, dout, inp, static_cast<const T*>(nullptr), OC, C, N, OC, C, C, true,
                                  stream);
    } else {
        if (dinp) cublas_gemm(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC, 1.0f, dinp, C, stream);
        cublas_gemm(CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C, stream);
    }
    if (dbias) column_reduce(static_cast<float*>(nullptr), dbias, dout, nullptr, nullptr, nullptr, N, OC, stream);
}

// ----------------------------------------------------------------------------
// 4a. GELU, tanh approximation (as GPT-2)
//   forward:  y = 0.5·x·(1 + tanh u),  u = s·(x + 0.044715·x³),  s = sqrt(2/π)
//   backward: dy/dx = 0.5·(1 + tanh u) + 0.5·x·(1 − tanh² u)·s·(1 + 3·0.044715·x²)   (product + chain rule)
//             dinp += dout·dy/dx
//   cost: per element ~15 FLOP + tanh; forward 8 bytes, backward 16 bytes: memory-bound.
constexpr float gelu_scale = 0.7978845608028654f;  // sqrt(2/π)

template <class Real>
void gelu_forward_cpu(Real* out, const Real* inp, int N) {  // out, inp: (N)
    for (int i = 0; i < N; i++) {
        Real x = inp[i], u = Real(gelu_scale) * (x + Real(0.044715) * x * x * x);
        out[i] = Real(0.5) * x * (Real(1) + std::tanh(u));
    }
}

template <class Real>
void gelu_backward_cpu(Real* dinp, const Real* inp, const Real* dout, int N) {  // (N) each; dinp accumulated
    for (int i = 0; i < N; i++) {
        Real x = inp[i], u = Real(gelu_scale) * (x + Real(0.044715) * x * x * x), th = std::tanh(u);
        Real grad = Real(0.5) * (Real(1) + th) +
                    Real(0.5) * x * (Real(1) - th * th) * Real(gelu_scale) * (Real(1) + Real(3 * 0.044715) * x * x);
        dinp[i] += dout[i] * grad;
    }
}

// One thread per element: consecutive threads, consecutive elements (coalesced).
template <class T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = to_fp32(inp[i]), u = gelu_scale * (x + 0.044715f * x * x * x);
    out[i] = from_fp32<T>(0.5f * x * (1.0f + tanhf(u)));
}

template <class T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float x = to_fp32(inp[i]), u = gelu_scale * (x + 0.044715f * x * x * x), th = tanhf(u);
    float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * gelu_scale * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = from_fp32<T>(to_fp32(dinp[i]) + to_fp32(dout[i]) * grad);
}

template <class T>
void gelu_forward(T* out, const T* inp, int N, cudaStream_t stream) {  // (N) each
    gelu_forward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(out, inp, N);
    cuda_check(cudaGetLastError());
}

template <class T>
void gelu_backward(T* dinp, const T* inp, const T* dout, int N, cudaStream_t stream) {  // dinp accumulated
    gelu_backward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(dinp, inp, dout, N);
    cuda_check(cudaGetLastError());
}
// GPTCU_OP_WITH(gelu_forward, ...): layers_cpu_blas.h (a faster CPU path)
// GPTCU_OP_WITH(gelu_backward, ...): layers_cpu_blas.h (a faster CPU path)

// c_fc + GELU, GPT-2's MLP up-projection, as one call: pre = inp·weightᵀ + bias, out = gelu(pre) (pre is kept
// for gelu_backward). On MatmulBackend::cublaslt the kernels do it in one GEMM whose epilogue writes both;
// otherwise, and on the CPU path, it is matmul_forward then gelu_forward, whose references check it. In bf16 the
// epilogue's GELU reads the fp32 pre-activation, one rounding fewer than gelu_forward reading pre back as bf16.
template <class T>
void matmul_gelu_forward(const Exec& ex, T* out, T* pre /*(N, OC)*/, const T* inp /*(N, C)*/,
                         const T* weight /*(OC, C)*/, const std::type_identity_t<T>* bias /*(OC) or nullptr*/, int N,
                         int C, int OC) {
    if (ex.on_device && get_matmul_backend() == MatmulBackend::cublaslt)
        return matmul_forward_cublaslt(out, pre, inp, weight, bias, N, C, OC, ex.stream);
    matmul_forward(ex, pre, inp, weight, bias, N, C, OC);
    gelu_forward(ex, out, static_cast<const T*>(pre), N * OC);
}

// ----------------------------------------------------------------------------
// 4b. SwiGLU (Llama's MLP activation), on the fused [gate | up] projection of width 2H per row
//   forward:  y = silu(g)·u,  silu(g) = g·σ(g),  σ(g) = 1/(1 + e^(−g))
//   backward: du += dy·silu(g);  dg += dy·u·silu'(g),  silu'(g) = σ(g) + g·σ(g)(1 − σ(g)) = σ(g)·(1 + g·(1 − σ(g)))
//   cost: per output ~8 FLOP + exp; forward 12 bytes, backward 28 bytes: memory-bound.

template <class Real>
void swiglu_forward_cpu(Real* out,          // (N, H)
                        const Real* inp,    // (N, 2H): [:, :H] gate, [:, H:] up
                        int N, int H) {
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            Real g = inp[static_cast<size_t>(n) * 2 * H + h], u = inp[static_cast<size_t>(n) * 2 * H + H + h];
            out[static_cast<size_t>(n) * H + h] = g / (Real(1) + std::exp(-g)) * u;
        }
}

template <class Real>
void swiglu_backward_cpu(Real* dinp,         // (N, 2H), accumulated
                         const Real* inp,    // (N, 2H)
                         const Real* dout,   // (N, H)
                         int N, int H) {
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            size_t gi = static_cast<size_t>(n) * 2 * H + h, ui = gi + H;
            Real g = inp[gi], u = inp[ui], d = dout[static_cast<size_t>(n) * H + h];
            Real sig = Real(1) / (Real(1) + std::exp(-g));
            dinp[gi] += d * u * sig * (Real(1) + g * (Real(1) - sig));
            dinp[ui] += d * g * sig;
        }
}

// One thread per output (n, h): consecutive threads read consecutive gates and consecutive ups
// (two coalesced streams) and write consecutive outputs.
template <class T>
__global__ void swiglu_forward_kernel(T* out, const T* inp, int N, int H) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<size_t>(N) * H) return;
    size_t n = i / H, h = i % H, gi = n * 2 * H + h;
    float g = to_fp32(inp[gi]), u = to_fp32(inp[gi + H]);
    out[i] = from_fp32<T>(g / (1.0f + expf(-g)) * u);
}

template <class T>
__global__ void swiglu_backward_kernel(T* dinp, const T* inp, const T* dout, int N, int H) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<size_t>(N) * H) return;
    size_t n = i / H, h = i % H, gi = n * 2 * H + h;
    float g = to_fp32(inp[gi]), u = to_fp32(inp[gi + H]), d = to_fp32(dout[i]);
    float sig = 1.0f / (1.0f + expf(-g));
    dinp[gi] = from_fp32<T>(to_fp32(dinp[gi]) + d * u * sig * (1.0f + g * (1.0f - sig)));
    dinp[gi + H] = from_fp32<T>(to_fp32(dinp[gi + H]) + d * g * sig);
}

template <class T>
void swiglu_forward(T* out,          // (N, H)
                    const T* inp,    // (N, 2H): [:, :H] gate, [:, H:] up
                    int N, int H, cudaStream_t stream) {
    size_t total = static_cast<size_t>(N) * H;
    swiglu_forward_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, 256)), 256, 0, stream>>>(out, inp, N, H);
    cuda_check(cudaGetLastError());
}

template <class T>
void swiglu_backward(T* dinp,         // (N, 2H), accumulated
                     const T* inp,    // (N, 2H)
                     const T* dout,   // (N, H)
                     int N, int H, cudaStream_t stream) {
    size_t total = static_cast<size_t>(N) * H;
    swiglu_backward_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, 256)), 256, 0, stream>>>(dinp, inp, dout, N,
                                                                                                    H);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(swiglu_forward)
GPTCU_OP(swiglu_backward)

// ----------------------------------------------------------------------------
// 5. Residual connection
//   forward:  out = a + b;   backward: ∂out/∂a = ∂out/∂b = 1, so da += dout, db += dout
//   cost: forward 1 FLOP and 12 bytes per element; backward 2 FLOP and 20 bytes: memory-bound.

template <class Real>
void residual_forward_cpu(Real* out, const Real* a, const Real* b, int N) {  // (N) each
    for (int i = 0; i < N; i++) out[i] = a[i] + b[i];
}

template <class Real>
void residual_backward_cpu(Real* da, Real* db, const Real* dout, int N) {  // (N) each; da, db accumulated
    for (int i = 0; i < N; i++) { da[i] += dout[i]; db[i] += dout[i]; }
}

// One thread per element, coalesced.
template <class T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_fp32<T>(to_fp32(a[i]) + to_fp32(b[i]));
}

template <class T>
__global__ void residual_backward_kernel(T* da, T* db, const T* dout, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float d = to_fp32(dout[i]);
    da[i] = from_fp32<T>(to_fp32(da[i]) + d);
    db[i] = from_fp32<T>(to_fp32(db[i]) + d);
}

template <class T>
void residual_forward(T* out, const T* a, const T* b, int N, cudaStream_t stream) {  // (N) each
    residual_forward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(out, a, b, N);
    cuda_check(cudaGetLastError());
}

template <class T>
void residual_backward(T* da, T* db, const T* dout, int N, cudaStream_t stream) {  // (N) each; da, db accumulated
    residual_backward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(da, db, dout, N);
    cuda_check(cudaGetLastError());
}
// GPTCU_OP_WITH(residual_forward, ...): layers_cpu_blas.h (a faster CPU path)
GPTCU_OP(residual_backward)

// ----------------------------------------------------------------------------
// 6. Fused classifier: softmax + cross-entropy over the vocabulary, gradient written in place
//   rows n with target y_n (−1: ignored), logits z (N, Vp) of which the first V columns are real and the
//   last Vp − V are padding (they never enter the softmax and get zero gradient):
//   forward:  p_v = e^(z_v − m) / Σ_u e^(z_u − m)  (m = max_u z_u: no overflow),
//             loss_n = −log p_y = log Σ_u e^(z_u − m) + m − z_y      (0 for ignored rows)
//   backward: ∂loss/∂z_v = p_v − [v = y]   (docs/layers.md), scaled by dloss (e.g. 1/number of valid rows,
//             so the gradient is that of the mean loss):  dlogits_v = dloss·(p_v − [v = y]) for v < V,
//             0 for V ≤ v < Vp and for every v of an ignored row. OVERWRITES logits (not accumulated).
//   cost per row: ~3·V FLOP + V exps; reads 4·V bytes twice (the second read often from L2), writes
//   4·Vp: memory-bound.

template <class Real>
void fused_classifier_cpu(Real* logits,          // (N, Vp): in logits, out dlogits (if write_dlogits)
                          Real* losses,          // (N): per-row loss, 0 for ignored rows
                          const int* targets,    // (N): in [0, V), or −1 = ignore
                          std::type_identity_t<Real> dloss, int N, int V, int Vp, bool write_dlogits) {
    // rows are independent: split them over the cores (the CPU training path runs this, V ~ 50k)
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        Real* z = logits + static_cast<size_t>(n) * Vp;
        int y = targets[n];
        if (y < 0) {
            losses[n] = 0;
            if (write_dlogits) for (int v = 0; v < Vp; v++) z[v] = 0;
            continue;
        }
        Real m = z[0];
        for (int v = 1; v < V; v++) m = std::max(m, z[v]);
        Real sum = 0, zy = z[y];
        if (write_dlogits) {  // keep e^(z − m) in place: one exp per logit, not two
            for (int v = 0; v < V; v++) sum += (z[v] = std::exp(z[v] - m));
            for (int v = 0; v < Vp; v++) z[v] = v < V ? dloss * (z[v] / sum - (v == y ? Real(1) : Real(0))) : Real(0);
        } else {
            for (int v = 0; v < V; v++) sum += std::exp(z[v] - m);
        }
        losses[n] = std::log(sum) + m - zy;
    }
}

// Merges two partial softmax normalisers (running max m, Σ e^(z − m)) into one ("online softmax").
// The running max starts at −FLT_MAX, not −inf, so merging two empty partials gives 0·e^0 = 0, not NaN.
__device__ inline void softmax_merge(float& m, float& s, float m_other, float s_other) {
    float m_new = fmaxf(m, m_other);
    s = s * expf(m - m_new) + s_other * expf(m_other - m_new);
    m = m_new;
}

// One block per row. Pass 1: each thread walks v = tid, tid + blockDim, ... (consecutive threads,
// consecutive logits: coalesced) keeping its own running max and normaliser, rescaling the sum when the
// max grows (one read of the row); the (m, s) pairs merge by warp shuffles, then across warps in warp
// order (the same on every thread and every run). Pass 2 writes dlogits in place, same access pattern.
// z_y is read by every thread before the first barrier, i.e. before any thread overwrites it.
template <class T>
__global__ void fused_classifier_kernel(T* logits, float* losses, const int* targets, float dloss, int V, int Vp,
                                        bool write_dlogits) {
    __shared__ float warp_m[32];  // per-warp running max
    __shared__ float warp_s[32];  // per-warp normaliser
    int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
    int n = blockIdx.x;
    T* z = logits + static_cast<size_t>(n) * Vp;
    int y = targets[n];
    if (y < 0) {  // ignored row: the whole block takes this branch
        if (write_dlogits) for (int v = tid; v < Vp; v += blockDim.x) z[v] = from_fp32<T>(0.0f);
        if (tid == 0) losses[n] = 0.0f;
        return;
    }
    float z_y = to_fp32(z[y]);
    float m = -FLT_MAX, s = 0.0f;
    for (int v = tid; v < V; v += blockDim.x) {
        float zv = to_fp32(z[v]);
        if (zv > m) { s = s * expf(m - zv) + 1.0f; m = zv; }
        else s += expf(zv - m);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        float m_other = __shfl_xor_sync(0xffffffffu, m, offset), s_other = __shfl_xor_sync(0xffffffffu, s, offset);
        softmax_merge(m, s, m_other, s_other);
    }
    if (lane == 0) { warp_m[warp] = m; warp_s[warp] = s; }
    __syncthreads();
    m = -FLT_MAX;
    s = 0.0f;
    for (int w = 0; w < warps; w++) softmax_merge(m, s, warp_m[w], warp_s[w]);
    if (tid == 0) losses[n] = logf(s) + m - z_y;
    if (!write_dlogits) return;
    float inv_s = 1.0f / s;
    for (int v = tid; v < Vp; v += blockDim.x) {
        float p = v < V ? expf(to_fp32(z[v]) - m) * inv_s : 0.0f;
        float indicator = v == y ? 1.0f : 0.0f;
        z[v] = from_fp32<T>(v < V ? dloss * (p - indicator) : 0.0f);
    }
}

template <class T>
void fused_classifier(T* logits,              // (N, Vp): in logits, out dlogits (if write_dlogits)
                      float* losses,          // (N): per-row loss, 0 for ignored rows
                      const int* targets,     // (N): in [0, V), or −1 = ignore
                      float dloss, int N, int V, int Vp, bool write_dlogits, cudaStream_t stream) {
    fused_classifier_kernel<<<N, 256, 0, stream>>>(logits, losses, targets, dloss, V, Vp, write_dlogits);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(fused_classifier)

// ----------------------------------------------------------------------------
// 7a. AdamW (Loshchilov & Hutter), on fp32 master parameters, one step t (1-based)
//   g = grad_scale·grad                        (grad_scale < 1 clips by the global norm, see below)
//   m = β1·m + (1 − β1)·g,   v = β2·v + (1 − β2)·g²            (moment estimates)
//   m̂ = m / (1 − β1^t),      v̂ = v / (1 − β2^t)                 (bias correction: m, v start at 0)
//   p -= lr·(m̂ / (sqrt(v̂) + eps) + weight_decay·p)              (decay decoupled from the gradient)
//   A tensor without decay (biases, norms, as GPT-2) is updated with weight_decay = 0 by the caller.
//   cost: ~15 FLOP + sqrt per parameter; 16 bytes read, 12 written: memory-bound.

template <class Real>
void adamw_update_cpu(Real* params, const Real* grads, Real* m, Real* v, size_t n,  // (n) each
                      std::type_identity_t<Real> lr, std::type_identity_t<Real> beta1, std::type_identity_t<Real> beta2,
                      std::type_identity_t<Real> eps, std::type_identity_t<Real> weight_decay, int step,
                      std::type_identity_t<Real> grad_scale) {
    Real correction1 = Real(1) - std::pow(beta1, Real(step)), correction2 = Real(1) - std::pow(beta2, Real(step));
    for (size_t i = 0; i < n; i++) {
        Real g = grads[i] * grad_scale;
        m[i] = beta1 * m[i] + (Real(1) - beta1) * g;
        v[i] = beta2 * v[i] + (Real(1) - beta2) * g * g;
        Real m_hat = m[i] / correction1, v_hat = v[i] / correction2;
        params[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + weight_decay * params[i]);
    }
}

// One thread per parameter, coalesced. The bias corrections are computed once on the host.
__global__ void adamw_update_kernel(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                                    float beta1, float beta2, float eps, float weight_decay, float correction1,
                                    float correction2, float grad_scale) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grads[i] * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g, vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float p = params[i];
    params[i] = p - lr * ((mi / correction1) / (sqrtf(vi / correction2) + eps) + weight_decay * p);
}

inline void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,  // (n) each
                         float lr, float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale,
                         cudaStream_t stream) {
    float correction1 = 1.0f - std::pow(beta1, static_cast<float>(step));
    float correction2 = 1.0f - std::pow(beta2, static_cast<float>(step));
    adamw_update_kernel<<<static_cast<unsigned>(ceil_div<size_t>(n, 256)), 256, 0, stream>>>(
        params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, correction1, correction2, grad_scale);
    cuda_check(cudaGetLastError());
}
// GPTCU_OP_WITH(adamw_update, ...): layers_cpu_blas.h (a faster CPU path)

// ----------------------------------------------------------------------------
// 7b. Global gradient norm (for clipping): ‖g‖² = Σ_i g_i² over all parameters
//   The caller takes the sqrt and, if ‖g‖ > max_norm, passes grad_scale = max_norm/‖g‖ to adamw_update.
//   Deterministic: pass 1 has a grid that depends only on n (at most 1024 blocks); each block sums a
//   fixed strided subset into one partial; pass 2 (one block) adds the partials in a fixed order.
//   cost: 2 FLOP and 4 bytes per element: memory-bound.

template <class Real>
Real global_norm_squared_cpu(const Real* grads, size_t n) {  // grads (n)
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += static_cast<double>(grads[i]) * grads[i];
    return static_cast<Real>(sum);
}

// Grid-stride loop (consecutive threads read consecutive elements: coalesced), then a block sum.
__global__ void global_norm_partial_kernel(float* partial, const float* grads, size_t n) {  // partial (gridDim.x)
    float sum = 0.0f;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        sum += grads[i] * grads[i];
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void global_norm_finish_kernel(float* out, const float* partial, int count) {  // one block
    float sum = 0.0f;
    for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partial[i];
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) *out = sum;
}

inline void global_norm_squared(float* out,            // device scalar, OVERWRITTEN
                                const float* grads,    // (n)
                                size_t n, cudaStream_t stream) {
    static ScratchBuffer scratch;
    const int block = 256, max_blocks = 1024;
    int blocks = static_cast<int>(std::min<size_t>(max_blocks, std::max<size_t>(1, ceil_div<size_t>(n, block))));
    float* partial = scratch.get<float>(max_blocks);
    global_norm_partial_kernel<<<blocks, block, 0, stream>>>(partial, grads, n);
    cuda_check(cudaGetLastError());
    global_norm_finish_kernel<<<1, 1024, 0, stream>>>(out, partial, blocks);
    cuda_check(cudaGetLastError());
}
// The model's call, global_norm_squared(exec, grads, n): layers_cpu_blas.h (a faster CPU path).

// ----------------------------------------------------------------------------
// 7c. Element-type copy: out[i] = in[i] as TOut
//   fp32 → bf16 rounds to the nearest bf16, ties to even (from_fp32); bf16 → fp32 is exact (to_fp32).
//   In mixed precision the bf16 copy of the weights that the forward and backward read is made this way from the
//   fp32 master weights, after each AdamW step (the rule at the top of this file).
//   cost: (sizeof(TIn) + sizeof(TOut)) bytes per element: memory-bound.

template <class TOut, class TIn>
void convert_cpu(TOut* out, const TIn* in, size_t n) {  // (n) each
    for (size_t i = 0; i < n; i++) out[i] = from_fp32<TOut>(to_fp32(in[i]));
}

// One thread per element, coalesced.
template <class TOut, class TIn>
__global__ void convert_kernel(TOut* out, const TIn* in, size_t n) {
    size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_fp32<TOut>(to_fp32(in[i]));
}

template <class TOut, class TIn>
void convert(TOut* out, const TIn* in, size_t n, cudaStream_t stream) {  // (n) each
    convert_kernel<<<static_cast<unsigned>(ceil_div<size_t>(n, 256)), 256, 0, stream>>>(out, in, n);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(convert)
