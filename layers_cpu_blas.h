// layers_cpu_blas.h — the fast CPU paths of the model (the --device cpu backend): matmul through OpenBLAS
// (and without it for decode-sized products), and OpenMP + SIMD versions of the ops a training step spends
// its time in. Each has the arguments of its plain-loop reference in layers.cuh / attention.cuh, which the
// tests check it against, and GPTCU_OP_WITH(op, fast) at the end makes op(exec, ...) pick it on the CPU.
// Both builds link OpenBLAS (the GPU build for --device cpu); the layers.cuh tests need only layers.cuh.
//
// Each function computes the same math, with the same arguments, as the plain-loop _cpu reference of
// layers.cuh / attention.cuh that its name starts with (test/test_layers.cu and test/test_attention.cu
// check them against each other); only how it runs differs:
//   - matmuls, and the sums over rows of a matrix (bias gradients), go to OpenBLAS;
//   - elementwise and per-row ops split their rows over the cores (OpenMP) and keep the inner loop over
//     contiguous floats, which the compiler turns into SIMD (`omp simd`: also sums, whose order it may change);
//   - reductions that decide a result bit for bit (the gradient norm, a layernorm's weight gradient) add
//     fixed blocks in a fixed order, so the result does not depend on the number of threads.
// Measured effect per op, GPT-2 124M: docs/benchmarks.md.
#pragma once
#include <cblas.h>
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "layers.cuh"     // layernorm_eps, gelu_scale, the ops whose dispatch is at the end
#include "attention.cuh"  // qkv_q_offset, qkv_k_offset, qkv_v_offset: the layout of qkv

// glibc's vector math library (libmvec, which the linker adds with libm) has SIMD versions of tanhf;
// <cmath> tells the compiler so only under -ffast-math. Said here, an `omp simd` loop calls the 8-wide
// version (GELU's tanh was ~7% of a GPT-2 124M step as a scalar call). Not for nvcc's host pass.
#if defined(__x86_64__) && defined(__GLIBC__) && !defined(__CUDACC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 35)
#pragma omp declare simd notinbranch
extern "C" float tanhf(float) noexcept;
#endif

// ----------------------------------------------------------------------------
// Two thread pools share the cores: OpenBLAS's (the matmuls) and OpenMP's (every other op here). By
// default libgomp's workers spin for a while after each parallel region, on the cores OpenBLAS needs for
// the matmul that comes next; on the 2-core development machine that was a large share of a training
// step (docs/benchmarks.md). With OMP_WAIT_POLICY=passive they sleep at once. libgomp reads the variable
// only when the program loads, so a program sets it by restarting itself: call this first thing in main.
// A policy the user set is kept.
inline void restart_with_passive_openmp(char** argv) {
    if (std::getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // returns only if it failed: then run on as we are
}

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

// ----------------------------------------------------------------------------
// Matmul. Row-major cblas_sgemm takes our layouts directly: out (N, OC) = inp (N, C) · weightᵀ, weight (OC, C).
// The bias is copied into every row first and the product added to it (beta = 1): one pass over out.
inline void matmul_forward_cpu_blas(float* out,            // (N, OC)
                                    const float* inp,      // (N, C)
                                    const float* weight,   // (OC, C)
                                    const float* bias,     // (OC) or nullptr
                                    int N, int C, int OC) {
    if (N <= matmul_rows_max) return matmul_forward_rows_cpu(out, inp, weight, bias, N, C, OC);
    if (bias)
        for (int n = 0; n < N; n++) std::memcpy(out + static_cast<size_t>(n) * OC, bias, OC * sizeof(float));
    const float beta = bias ? 1.0f : 0.0f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

// Accumulates (beta = 1): dinp += dout · weight, dweight += doutᵀ · inp, dbias += column sums of dout
// (= doutᵀ · ones, a matrix-vector product).
inline void matmul_backward_cpu_blas(float* dinp,           // (N, C) or nullptr, accumulated
                                     float* dweight,        // (OC, C), accumulated
                                     float* dbias,          // (OC) or nullptr, accumulated
                                     const float* dout,     // (N, OC)
                                     const float* inp,      // (N, C)
                                     const float* weight,   // (OC, C)
                                     int N, int C, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) {
        static thread_local std::vector<float> ones;
        if (ones.size() < static_cast<size_t>(N)) ones.assign(N, 1.0f);
        cblas_sgemv(CblasRowMajor, CblasTrans, N, OC, 1.0f, dout, OC, ones.data(), 1, 1.0f, dbias, 1);
    }
}

// ----------------------------------------------------------------------------
// LayerNorm (layers.cuh §2): rows are independent in forward and in dinp. dweight and dbias sum over
// rows: each block of rows sums into its own partial, and the partials are added in block order.
inline void layernorm_forward_cpu_fast(float* out, float* mean, float* rstd,  // (N, C), (N), (N)
                                       const float* inp, const float* weight, const float* bias,  // (N, C), (C), (C)
                                       int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + static_cast<size_t>(n) * C;
        float m = 0, var = 0;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
#pragma omp simd reduction(+ : var)
        for (int c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
        float s = 1.0f / std::sqrt(var / C + layernorm_eps);
        float* y = out + static_cast<size_t>(n) * C;
#pragma omp simd
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}

inline void layernorm_backward_cpu_fast(float* dinp, float* dweight, float* dbias,  // (N, C), (C), (C): +=
                                        const float* dout, const float* inp,            // (N, C), (N, C)
                                        const float* weight,                            // (C)
                                        const float* mean, const float* rstd, int N, int C) {  // (N), (N)
    const int rows_per_block = 32, blocks = (N + rows_per_block - 1) / rows_per_block;
    static thread_local std::vector<float> partial_buffer;  // (blocks, 2, C): dweight, dbias of each block
    partial_buffer.assign(static_cast<size_t>(blocks) * 2 * C, 0.0f);
    float* partial = partial_buffer.data();  // the calling thread's buffer, shared with the team
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        float* dw = partial + static_cast<size_t>(blk) * 2 * C;
        float* db = dw + C;
        for (int n = blk * rows_per_block; n < std::min(N, (blk + 1) * rows_per_block); n++) {
            const float* x = inp + static_cast<size_t>(n) * C;
            const float* dy = dout + static_cast<size_t>(n) * C;
            float* dx = dinp + static_cast<size_t>(n) * C;
            const float mu = mean[n], r = rstd[n];
            float g_mean = 0, gx_mean = 0;
#pragma omp simd reduction(+ : g_mean, gx_mean)
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - mu) * r, g = dy[c] * weight[c];
                g_mean += g;
                gx_mean += g * xhat;
            }
            g_mean /= C;
            gx_mean /= C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - mu) * r, g = dy[c] * weight[c];
                dx[c] += r * (g - g_mean - xhat * gx_mean);
                dw[c] += dy[c] * xhat;
                db[c] += dy[c];
            }
        }
    }
    for (int blk = 0; blk < blocks; blk++) {
        const float* dw = partial + static_cast<size_t>(blk) * 2 * C;
        for (int c = 0; c < C; c++) {
            dweight[c] += dw[c];
            dbias[c] += dw[C + c];
        }
    }
}

// ----------------------------------------------------------------------------
// GELU (layers.cuh §4a), elementwise: split over the cores, tanh 8 floats at a time (libmvec, above).
inline void gelu_forward_cpu_fast(float* out, const float* inp, int N) {  // (N) each
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < N; i++) {
        float x = inp[i], u = gelu_scale * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

inline void gelu_backward_cpu_fast(float* dinp, const float* inp, const float* dout, int N) {  // (N) each; dinp +=
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < N; i++) {
        float x = inp[i], u = gelu_scale * (x + 0.044715f * x * x * x), th = tanhf(u);
        float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * gelu_scale * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += dout[i] * grad;
    }
}

inline void residual_forward_cpu_fast(float* out, const float* a, const float* b, int N) {  // (N) each
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < N; i++) out[i] = a[i] + b[i];
}

// ----------------------------------------------------------------------------
// AdamW (layers.cuh §7a): the bias corrections once, then one pass over p, g, m, v split over the cores.
inline void adamw_update_cpu_fast(float* params, const float* grads, float* m, float* v, size_t n,  // (n) each
                                  float lr, float beta1, float beta2, float eps, float weight_decay, int step,
                                  float grad_scale) {
    const float correction1 = 1.0f - std::pow(beta1, static_cast<float>(step));
    const float correction2 = 1.0f - std::pow(beta2, static_cast<float>(step));
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g, vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] -= lr * ((mi / correction1) / (std::sqrt(vi / correction2) + eps) + weight_decay * params[i]);
    }
}

// ‖g‖² (layers.cuh §7b): float sums over blocks of 16k (SIMD, split over the cores), added in double in
// block order: the same bits for any number of threads.
inline double global_norm_squared_cpu_fast(const float* grads, size_t n) {  // grads (n)
    const size_t block = size_t(1) << 14;
    const long blocks = static_cast<long>((n + block - 1) / block);
    std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static)
    for (long b = 0; b < blocks; b++) {
        const float* g = grads + b * block;
        const size_t len = std::min(block, n - b * block);
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = 0; i < len; i++) s += g[i] * g[i];
        partial[b] = s;
    }
    double sum = 0;
    for (double p : partial) sum += p;
    return sum;
}

// ----------------------------------------------------------------------------
// Causal attention (attention.cuh, the math above attention_forward_cpu). The reference's loops, with
// the softmax normalised once per row instead of in the innermost loop, the inner loops over the head's
// hs contiguous floats (SIMD), and work split over the cores: forward by (b, h); backward by (b, kv
// head), because the query heads of a group add into the same dK, dV rows. The backward uses
// D_t = dO_t·O_t for Σ_s P_ts·dP_ts (the same number, one dot product instead of a sum over s).
inline void attention_forward_cpu_fast(float* out /*(B, T, NH·hs)*/, float* lse /*(B, NH, T)*/,
                                       const float* qkv /*(B, T, (NH+2NKV)·hs)*/,
                                       int B, int T, int NH, int NKV, int hs) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
#pragma omp parallel
    {
        std::vector<float> p(T);
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                const int g = h / (NH / NKV);
                for (int t = 0; t < T; t++) {
                    const float* q = qkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                    float m = -std::numeric_limits<float>::infinity();
                    for (int s = 0; s <= t; s++) {
                        const float* k = qkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                        float dot = 0;
#pragma omp simd reduction(+ : dot)
                        for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                        p[s] = dot * scale;
                        m = std::max(m, p[s]);
                    }
                    float sum = 0;
                    for (int s = 0; s <= t; s++) sum += (p[s] = std::exp(p[s] - m));
                    const float inv = 1.0f / sum;
                    float* o = out + (static_cast<size_t>(b) * T + t) * NH * hs + static_cast<size_t>(h) * hs;
                    for (int i = 0; i < hs; i++) o[i] = 0;
                    for (int s = 0; s <= t; s++) {
                        const float* v = qkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
                        const float w = p[s] * inv;
#pragma omp simd
                        for (int i = 0; i < hs; i++) o[i] += w * v[i];
                    }
                    lse[(static_cast<size_t>(b) * NH + h) * T + t] = m + std::log(sum);
                }
            }
    }
}

inline void attention_backward_cpu_fast(float* dqkv /*(B, T, (NH+2NKV)·hs), +=*/, const float* dout /*(B, T, NH·hs)*/,
                                        const float* out /*(B, T, NH·hs)*/, const float* lse /*(B, NH, T)*/,
                                        const float* qkv, int B, int T, int NH, int NKV, int hs) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const int group = NH / NKV;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < NKV; g++)
            for (int h = g * group; h < (g + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    const size_t row = (static_cast<size_t>(b) * T + t) * NH * hs + static_cast<size_t>(h) * hs;
                    const float* q = qkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                    const float* dO = dout + row;
                    const float* o = out + row;
                    const float l = lse[(static_cast<size_t>(b) * NH + h) * T + t];
                    float D = 0;  // Σ_s P_ts·dP_ts = dO_t·O_t
#pragma omp simd reduction(+ : D)
                    for (int i = 0; i < hs; i++) D += dO[i] * o[i];
                    float* dq = dqkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                    for (int s = 0; s <= t; s++) {
                        const float* k = qkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                        const float* v = qkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
                        float dot = 0, dp = 0;
#pragma omp simd reduction(+ : dot, dp)
                        for (int i = 0; i < hs; i++) {
                            dot += q[i] * k[i];
                            dp += dO[i] * v[i];
                        }
                        const float ps = std::exp(dot * scale - l);  // P_ts, recomputed from the row's lse
                        const float ds = ps * (dp - D) * scale;
                        float* dk = dqkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                        float* dv = dqkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
#pragma omp simd
                        for (int i = 0; i < hs; i++) {
                            dq[i] += ds * k[i];
                            dk[i] += ds * q[i];
                            dv[i] += ps * dO[i];
                        }
                    }
                }
}

// op(exec, ...): the kernels (cuBLAS or tiled), or the OpenBLAS versions above (common.cuh)
GPTCU_OP_WITH(matmul_forward, matmul_forward_cpu_blas)
GPTCU_OP_WITH(matmul_backward, matmul_backward_cpu_blas)
// The fast paths above replace the plain-loop references on the CPU (the references stay what the tests check
// the kernels and these against).
GPTCU_OP_WITH(layernorm_forward, layernorm_forward_cpu_fast)
GPTCU_OP_WITH(layernorm_backward, layernorm_backward_cpu_fast)
GPTCU_OP_WITH(gelu_forward, gelu_forward_cpu_fast)
GPTCU_OP_WITH(gelu_backward, gelu_backward_cpu_fast)
GPTCU_OP_WITH(residual_forward, residual_forward_cpu_fast)
GPTCU_OP_WITH(adamw_update, adamw_update_cpu_fast)
GPTCU_OP_WITH(attention_forward, attention_forward_cpu_fast)
GPTCU_OP_WITH(attention_backward, attention_backward_cpu_fast)
// The model's call: ‖g‖² on the host, from the kernels (through a device scalar) or the fast CPU path.
inline float global_norm_squared(const Exec& exec, const float* grads, size_t n) {
    if (!exec.on_device) return static_cast<float>(global_norm_squared_cpu_fast(grads, n));
    static DeviceBuffer<float> out(1);
    global_norm_squared(out, grads, n, exec.stream);
    float host = 0.0f;
    cuda_check(cudaMemcpyAsync(&host, out, sizeof host, cudaMemcpyDeviceToHost, exec.stream));
    cuda_check(cudaStreamSynchronize(exec.stream));
    return host;
}
