// attention.cuh — causal self-attention for gpt.cu, forward and backward, four ways:
//   1. a CPU reference (plain loops, templated on the scalar so tests run it in double),
//   2. a naive CUDA path that materialises the (T, T) attention matrix (permute → cuBLAS Q·Kᵀ → causal
//      softmax kernel → cuBLAS P·V → unpermute), the way one first writes attention,
//   3. a fused path in the FlashAttention-2 manner, written by hand in fp32 CUDA C++: the (T, T) matrix
//      is never stored; a block streams K/V tiles through shared memory with an online softmax. Any head
//      size 1..256; deterministic (no float atomics: the same bits on every run).
// plus RoPE (rotary position embedding) and grouped-query attention (GQA/MQA) everywhere. Attention of new
// tokens against a (paged) KV cache, for inference, is paged_kv.cuh's.
// Each op ends with GPTCU_OP(op), the op(exec, ...) the model calls (common.cuh). The chapter that explains
// all of it is docs/attention.md; tests are test/test_attention.cu.
//
// The one activation layout every function here reads (GPT-2's c_attn output, generalised to GQA):
//   qkv: (B, T, W) with W = (NH + 2·NKV)·hs; per token [q: NH heads × hs | k: NKV heads × hs | v: NKV heads × hs].
//   GPT-2 has NKV == NH, so W = 3C with C = NH·hs. Query head h reads kv head h / (NH / NKV).
//   out: (B, T, NH·hs), heads side by side (what the output projection c_proj reads).
//   lse: (B, NH, T) the row log-sum-exp of the scaled scores, saved by the fused forward for the backward.
// Softmax scale 1/sqrt(hs). Causal: query t sees keys 0..t.
//
//   4. the fused path again on tensor cores (bf16 wmma): the same tiling, Q·Kᵀ, P·V and the backward's five
//      products on nvcuda::wmma with bf16 inputs and fp32 sums; softmax statistics, D and dS in fp32.
//      set_attention_backend(AttentionBackend::wmma) makes attention_forward / attention_backward run it.
// Everything runs in both builds (the CPU build's wmma is dev/shadow/mma.h).
//
// Precision: the rule at the top of layers.cuh. Every kernel and launcher is ONE template on the element type X
// (float, or __nv_bfloat16 for mixed precision; X because T is the sequence length here) of qkv, out, dout, dqkv
// and the naive path's att and datt. fp32 always: lse, D, the softmax statistics and all arithmetic outside the
// tensor-core products. A kernel widens each X it loads (exact) and rounds once per X it stores, so with X = bf16
// an output is the X = float kernel's output on the same inputs rounded once to bf16; the wmma kernels stage X
// into their bf16 tiles directly (a copy when X is bf16). The CPU references (`_cpu`) take one scalar type.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <mma.h>  // nvcuda::wmma: the tensor-core products (the CPU build's is dev/shadow/mma.h)

#include "common.cuh"

// ----------------------------------------------------------------------------
// Shared pieces: where things live in qkv, the workspace, the cuBLAS handle.

// Offset of element 0 of query head h / kv head g of token (b, t) in qkv (B, T, (NH + 2·NKV)·hs).
__host__ __device__ inline size_t qkv_q_offset(int b, int t, int h, int T, int NH, int NKV, int hs) {
    return (static_cast<size_t>(b) * T + t) * ((NH + 2 * NKV) * hs) + static_cast<size_t>(h) * hs;
}
__host__ __device__ inline size_t qkv_k_offset(int b, int t, int g, int T, int NH, int NKV, int hs) {
    return qkv_q_offset(b, t, NH + g, T, NH, NKV, hs);
}
__host__ __device__ inline size_t qkv_v_offset(int b, int t, int g, int T, int NH, int NKV, int hs) {
    return qkv_q_offset(b, t, NH + NKV + g, T, NH, NKV, hs);
}

// The argument checks every launcher makes; the message says what is wrong and with which values.
inline void attention_check_shape(const char* fn, int B, int T, int NH, int NKV, int hs) {
    if (B < 1 || T < 1 || NH < 1 || NKV < 1 || hs < 1 || NH % NKV != 0)
        throw std::runtime_error(std::string(fn) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) +
                                 " NH=" + std::to_string(NH) + " NKV=" + std::to_string(NKV) +
                                 " hs=" + std::to_string(hs) + " (all must be >= 1 and NKV must divide NH)");
}

// The scratch memory of attention (common.cuh's ScratchBuffer): launchers carve it into the pieces they need
// (the backward's D, the naive path's permuted q/k/v, paged_kv.cuh's split-K partial results).
// Every piece is O(T) per sequence and head (never O(T²)); test "fused attention allocates nothing O(T²)"
// checks the size through attention_workspace_bytes(). One attention op runs at a time (one stream).
inline ScratchBuffer& attention_workspace() {
    static ScratchBuffer workspace;
    return workspace;
}
inline size_t attention_workspace_bytes() { return attention_workspace().bytes(); }
// Frees the workspace (the next launch allocates what it needs): for programs done with attention, and tests.
inline void attention_workspace_release() { attention_workspace().release(); }

// C = alpha·op(A)·op(B) + beta·C, column-major, `batch` times with the given strides (cuBLAS's convention).
// A, B and C are X (cublas_data_type, common.cuh); the sums are fp32 either way, C is rounded once to X.
template <class X>
void attention_gemm_batched(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const X* A,
                            int lda, long long stride_a, const X* Bm, int ldb, long long stride_b, float beta, X* C,
                            int ldc, long long stride_c, int batch, cudaStream_t stream) {
    cublasHandle_t h = cublas_handle();
    cublas_check(cublasSetStream(h, stream));
    cublas_check(cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, A, cublas_data_type<X>(), lda, stride_a, Bm,
                                            cublas_data_type<X>(), ldb, stride_b, &beta, C, cublas_data_type<X>(), ldc,
                                            stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// Opts a kernel into more than 48 KiB of dynamic shared memory when it needs it (sm_80: up to 163 KiB,
// sm_90: up to 227 KiB), or throws naming the head size and the GPU's limit when the GPU has less (sm_86 and
// sm_89: 99 KiB, which the HS = 256 kernels exceed). Called by the launchers before every launch; cheap.
template <class Kernel>
void attention_allow_shared_bytes(Kernel kernel, size_t bytes, const char* fn, int hs) {
    if (bytes <= 48 * 1024) return;
    int device = 0, limit = 0;
    cuda_check(cudaGetDevice(&device));
    cuda_check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (bytes > static_cast<size_t>(limit))
        throw std::runtime_error(std::string(fn) + ": head size " + std::to_string(hs) + " needs " +
                                 std::to_string(bytes / 1024) + " KiB of shared memory per block, this GPU allows " +
                                 std::to_string(limit / 1024) +
                                 " KiB; use a model with a smaller head size (more heads) on this GPU");
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

constexpr float attention_log2e = 1.4426950408889634f;  // exp(x) = exp2(x·log2 e); the kernels work in base 2
constexpr float attention_ln2 = 0.6931471805599453f;

// ----------------------------------------------------------------------------
// RoPE: rotary position embedding (rotate-half convention, as HF Llama)
//   For each head of q and of k (v untouched), position p, and i < hs/2, the pair (x_i, x_{i+hs/2}) is
//   rotated by the angle a = p·f_i with f_i = theta^(−2i/hs):
//     forward:  y_i = x_i·cos a − x_{i+hs/2}·sin a,    y_{i+hs/2} = x_{i+hs/2}·cos a + x_i·sin a
//   A rotation R(a) is orthogonal, so the backward (the transpose Rᵀ = R(−a)) rotates the gradient back:
//     backward: dx_i = dy_i·cos a + dy_{i+hs/2}·sin a,  dx_{i+hs/2} = dy_{i+hs/2}·cos a − dy_i·sin a
//   Both are in place (qkv → qkv, dqkv → dqkv). Why it encodes relative position: q_pᵀk_s after rotating
//   q by p·f and k by s·f depends on p − s only (docs/attention.md, "RoPE as a rotation").
//   Precision: f_i is rounded to fp32 and a = fp32(p·f_i), as in HF's fp32 cos/sin cache, so kernel and
//   reference agree on the angle exactly; cos/sin are then within an ulp or two.
//   cost: 6 FLOP + sin/cos per pair, 16 bytes moved per pair: memory-bound.

// The rotation angle of pair i at position `pos` (the same float computation in the kernel and the reference).
__host__ __device__ inline float rope_angle(int pos, int i, int hs, float theta) {
    float inv_freq = static_cast<float>(pow(static_cast<double>(theta), -2.0 * i / hs));
    return static_cast<float>(pos) * inv_freq;
}

// CPU reference. positions (B·T) host array, or nullptr for position t. direction +1 forward, −1 backward.
template <class Real>
void rope_rotate_cpu(Real* qkv /*(B, T, (NH + 2·NKV)·hs)*/, const int* positions /*(B·T) or null*/, int B, int T,
                     int NH, int NKV, int hs, float theta, int direction) {
    int half = hs / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int pos = positions ? positions[b * T + t] : t;
            for (int head = 0; head < NH + NKV; head++) {  // q heads then k heads: contiguous in the row
                Real* x = qkv + qkv_q_offset(b, t, head, T, NH, NKV, hs);
                for (int i = 0; i < half; i++) {
                    Real a = static_cast<Real>(rope_angle(pos, i, hs, theta));
                    Real c = std::cos(a), s = direction * std::sin(a);
                    Real x1 = x[i], x2 = x[i + half];
                    x[i] = x1 * c - x2 * s;
                    x[i + half] = x2 * c + x1 * s;
                }
            }
        }
}
template <class Real>
void rope_forward_cpu(Real* qkv, int B, int T, int NH, int NKV, int hs, float theta) {
    rope_rotate_cpu(qkv, nullptr, B, T, NH, NKV, hs, theta, +1);
}
template <class Real>
void rope_backward_cpu(Real* dqkv, int B, int T, int NH, int NKV, int hs, float theta) {
    rope_rotate_cpu(dqkv, nullptr, B, T, NH, NKV, hs, theta, -1);
}
template <class Real>
void rope_forward_at_cpu(Real* qkv, const int* positions /*(B·T) host*/, int B, int T, int NH, int NKV, int hs,
                         float theta) {
    rope_rotate_cpu(qkv, positions, B, T, NH, NKV, hs, theta, +1);
}

// One thread per rotated pair: (b, t, head of q/k, i). i is fastest, so a warp reads 32 consecutive x_i and
// 32 consecutive x_{i+hs/2}: two coalesced loads, two coalesced stores.
template <class X>
__global__ void rope_kernel(X* qkv, const int* positions, int B, int T, int NH, int NKV, int hs, float theta,
                            int direction) {
    int half = hs / 2;
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    size_t total = static_cast<size_t>(B) * T * (NH + NKV) * half;
    if (idx >= total) return;
    int i = static_cast<int>(idx % half);
    int head = static_cast<int>(idx / half % (NH + NKV));
    int bt = static_cast<int>(idx / half / (NH + NKV));
    int pos = positions ? positions[bt] : bt % T;
    float s, c;
    sincosf(rope_angle(pos, i, hs, theta), &s, &c);
    s *= direction;
    X* x = qkv + qkv_q_offset(bt / T, bt % T, head, T, NH, NKV, hs);
    float x1 = to_fp32(x[i]), x2 = to_fp32(x[i + half]);
    x[i] = from_fp32<X>(x1 * c - x2 * s);
    x[i + half] = from_fp32<X>(x2 * c + x1 * s);
}

template <class X>
void rope_launch(X* qkv, const int* positions, int B, int T, int NH, int NKV, int hs, float theta, int direction,
                 cudaStream_t stream) {
    attention_check_shape("rope", B, T, NH, NKV, hs);
    if (hs % 2 != 0) throw std::runtime_error("rope: head size " + std::to_string(hs) + " is odd; RoPE rotates pairs");
    size_t total = static_cast<size_t>(B) * T * (NH + NKV) * (hs / 2);
    const int block = 256;
    rope_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, block)), block, 0, stream>>>(qkv, positions, B, T, NH,
                                                                                             NKV, hs, theta, direction);
    cuda_check(cudaGetLastError());
}
// Training / prefill: token t is at position t.
template <class X>
void rope_forward(X* qkv /*(B, T, (NH + 2·NKV)·hs), in place*/, int B, int T, int NH, int NKV, int hs, float theta,
                  cudaStream_t stream) {
    rope_launch(qkv, nullptr, B, T, NH, NKV, hs, theta, +1, stream);
}
template <class X>
void rope_backward(X* dqkv /*(B, T, (NH + 2·NKV)·hs), in place*/, int B, int T, int NH, int NKV, int hs, float theta,
                   cudaStream_t stream) {
    rope_launch(dqkv, nullptr, B, T, NH, NKV, hs, theta, -1, stream);
}
// Decoding: token (b, t) is at position positions[b·T + t] (a device array), e.g. the cache length so far.
template <class X>
void rope_forward_at(X* qkv /*(B, T, (NH + 2·NKV)·hs), in place*/, const int* positions /*(B·T) device*/, int B, int T,
                     int NH, int NKV, int hs, float theta, cudaStream_t stream) {
    rope_launch(qkv, positions, B, T, NH, NKV, hs, theta, +1, stream);
}
// op(exec, ...): the kernels or the CPU reference (common.cuh)
GPTCU_OP(rope_forward)
GPTCU_OP(rope_backward)
GPTCU_OP(rope_forward_at)

// ----------------------------------------------------------------------------
// Causal scaled dot-product attention (per batch b and query head h, with kv head g = h / (NH/NKV)):
//   forward:  S = Q·Kᵀ / sqrt(hs)    (T, T), S_ts = −∞ for s > t (causal mask)
//             P = softmax(S) by rows,  O = P·V    (T, hs)
//             lse_t = log Σ_s exp(S_ts)  (so P_ts = exp(S_ts − lse_t): the backward recomputes P from it)
//   backward, given dO:
//             dV = Pᵀ·dO,   dP = dO·Vᵀ
//             softmax Jacobian by rows: dS_ts = P_ts·(dP_ts − Σ_s' P_ts'·dP_ts')
//             the D trick: Σ_s' P_ts'·dP_ts' = Σ_s' P_ts'·(dO_t·V_s') = dO_t·O_t =: D_t, a dot product of two
//             rows of length hs instead of a sum over T.
//             dQ = dS·K / sqrt(hs),   dK = dSᵀ·Q / sqrt(hs)
//   With GQA the NH/NKV query heads of a group share K and V, so dK and dV sum over the heads of the group.
//   cost (causal, per (b, h)): forward 2 matmuls of T²/2·hs multiply-adds = 4·T²·hs/2 FLOP;
//   backward 5 matmuls (S recomputed, dP, dV, dQ, dK) = 2.5× the forward.

// CPU reference forward. Plain loops, explicit max-subtracted softmax.
template <class Real>
void attention_forward_cpu(Real* out /*(B, T, NH·hs)*/, Real* lse /*(B, NH, T)*/,
                           const Real* qkv /*(B, T, (NH+2NKV)·hs)*/, int B, int T, int NH, int NKV, int hs) {
    Real scale = 1 / std::sqrt(static_cast<Real>(hs));
    // (b, h) pairs write disjoint outputs: split them over the cores (the CPU training path runs this)
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            std::vector<Real> p(T);
            for (int t = 0; t < T; t++) {
                const Real* q = qkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                Real m = -std::numeric_limits<Real>::infinity();
                for (int s = 0; s <= t; s++) {
                    const Real* k = qkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                    Real dot = 0;
                    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                    p[s] = dot * scale;
                    m = std::max(m, p[s]);
                }
                Real sum = 0;
                for (int s = 0; s <= t; s++) sum += (p[s] = std::exp(p[s] - m));
                Real* o = out + (static_cast<size_t>(b) * T + t) * NH * hs + static_cast<size_t>(h) * hs;
                for (int i = 0; i < hs; i++) o[i] = 0;
                for (int s = 0; s <= t; s++) {
                    const Real* v = qkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
                    for (int i = 0; i < hs; i++) o[i] += p[s] / sum * v[i];
                }
                lse[(static_cast<size_t>(b) * NH + h) * T + t] = m + std::log(sum);
            }
        }
}

// CPU reference backward, accumulates into dqkv. It recomputes P from scratch and uses the softmax
// Jacobian in its plain form Σ_s' P·dP (not D = dO·O), so `out` and `lse` are not read: the reference is
// independent of what the kernels use. They stay in the signature so it matches attention_backward.
template <class Real>
void attention_backward_cpu(Real* dqkv /*(B, T, (NH+2NKV)·hs), +=*/, const Real* dout /*(B, T, NH·hs)*/,
                            const Real* out, const Real* lse, const Real* qkv, int B, int T, int NH, int NKV, int hs) {
    (void)out;
    (void)lse;
    Real scale = 1 / std::sqrt(static_cast<Real>(hs));
    // heads of one group add into the same dk, dv rows, so only sequences are split over the cores
#pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            std::vector<Real> p(T), dp(T);
            int g = h / (NH / NKV);
            for (int t = 0; t < T; t++) {
                const Real* q = qkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                const Real* dO = dout + (static_cast<size_t>(b) * T + t) * NH * hs + static_cast<size_t>(h) * hs;
                // recompute the softmax row
                Real m = -std::numeric_limits<Real>::infinity();
                for (int s = 0; s <= t; s++) {
                    const Real* k = qkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                    Real dot = 0;
                    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                    p[s] = dot * scale;
                    m = std::max(m, p[s]);
                }
                Real sum = 0;
                for (int s = 0; s <= t; s++) sum += (p[s] = std::exp(p[s] - m));
                for (int s = 0; s <= t; s++) p[s] /= sum;
                // forward was: o[i] += p[s]·v[s][i]; so dv[s][i] += p[s]·dO[i] and dp[s] = Σ_i dO[i]·v[s][i]
                Real pdp = 0;
                for (int s = 0; s <= t; s++) {
                    const Real* v = qkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
                    Real* dv = dqkv + qkv_v_offset(b, s, g, T, NH, NKV, hs);
                    dp[s] = 0;
                    for (int i = 0; i < hs; i++) {
                        dp[s] += dO[i] * v[i];
                        dv[i] += p[s] * dO[i];
                    }
                    pdp += p[s] * dp[s];
                }
                // softmax backward, then forward was s = scale·q·k[s]
                Real* dq = dqkv + qkv_q_offset(b, t, h, T, NH, NKV, hs);
                for (int s = 0; s <= t; s++) {
                    Real ds = p[s] * (dp[s] - pdp) * scale;
                    const Real* k = qkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                    Real* dk = dqkv + qkv_k_offset(b, s, g, T, NH, NKV, hs);
                    for (int i = 0; i < hs; i++) {
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
        }
}

// ----------------------------------------------------------------------------
// The naive CUDA path: materialise S and P (B, NH, T, T).
//   permute qkv → q, k, v (B, NH, T, hs) (K and V of a kv head repeated for each query head of its group,
//   as HF's repeat_kv does) → att = scale·Q·Kᵀ (cuBLAS, strided batched over B·NH) → causal softmax in place
//   → y = att·V (cuBLAS) → unpermute y into out (B, T, NH·hs).
//   Backward: dy = permute(dout); dV = attᵀ·dy; datt = dy·Vᵀ; dS = softmax backward (in place in datt);
//   dQ = scale·dS·K; dK = scale·dSᵀ·Q; then sum dK, dV over each group and add everything into dqkv.
//   With X = bf16, att holds the scaled scores S rounded to bf16 before the softmax reads them (off by up to
//   2^-8·|S|, which exp turns into a relative error of P: the fused paths keep S in fp32).
//   Memory: the caller's att (and datt) are B·NH·T² elements: in fp32 4·12·1024²·4 bytes = 200 MB per
//   layer at GPT-2 small with B=4 (half that in bf16) — the reason for the fused path. The upper triangle
//   of S is computed and thrown away: half the FLOPs of the two forward matmuls are wasted.

// One thread per element of q/k/v (B, NH, T, hs): d fastest, so reads of qkv and writes are coalesced.
template <class X>
__global__ void attention_permute_kernel(X* q, X* k, X* v /*each (B, NH, T, hs)*/, const X* qkv, int B, int T, int NH,
                                         int NKV, int hs) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(B) * NH * T * hs) return;
    int d = static_cast<int>(idx % hs);
    int t = static_cast<int>(idx / hs % T);
    int h = static_cast<int>(idx / hs / T % NH);
    int b = static_cast<int>(idx / hs / T / NH);
    int g = h / (NH / NKV);
    q[idx] = qkv[qkv_q_offset(b, t, h, T, NH, NKV, hs) + d];
    k[idx] = qkv[qkv_k_offset(b, t, g, T, NH, NKV, hs) + d];
    v[idx] = qkv[qkv_v_offset(b, t, g, T, NH, NKV, hs) + d];
}

// Between the heads layout (B, NH, T, hs) and the token layout (B, T, NH·hs): one thread per element,
// d fastest. to_heads = false: dst (B, T, NH·hs) = src (B, NH, T, hs), the forward's unpermute;
// to_heads = true: dst (B, NH, T, hs) = src (B, T, NH·hs), the backward's permute of dout.
template <class X>
__global__ void attention_unpermute_kernel(X* dst, const X* src, int B, int T, int NH, int hs, bool to_heads) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // index in the token layout
    if (idx >= static_cast<size_t>(B) * T * NH * hs) return;
    int d = static_cast<int>(idx % hs);
    int h = static_cast<int>(idx / hs % NH);
    int t = static_cast<int>(idx / hs / NH % T);
    int b = static_cast<int>(idx / hs / NH / T);
    size_t j = ((static_cast<size_t>(b) * NH + h) * T + t) * hs + d;  // index in the heads layout
    if (to_heads) dst[j] = src[idx];
    else dst[idx] = src[j];
}

// Causal softmax in place over rows of att (B·NH·T rows of length T), already scaled by the GEMM.
// One warp per row: lanes stride over the row (coalesced), max and sum by warp shuffles. Entries above the
// diagonal are written as 0 so that the next GEMM (att·V) over full rows is right.
template <class X>
__global__ void attention_softmax_causal_kernel(X* att /*(B, NH, T, T)*/, int rows, int T) {
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * warps + static_cast<int>(threadIdx.x) / 32;
    bool active = row < rows;  // no early return: every lane of the warp must reach the shuffles
    int t = active ? row % T : 0;
    X* a = att + static_cast<size_t>(active ? row : 0) * T;
    float m = -INFINITY;
    for (int s = lane; s <= t; s += 32) m = fmaxf(m, to_fp32(a[s]));
    m = warp_reduce_max(m);
    float sum = 0.0f;
    for (int s = lane; s <= t; s += 32) sum += expf(to_fp32(a[s]) - m);
    sum = warp_reduce_sum(sum);
    if (!active) return;
    for (int s = lane; s < T; s += 32) a[s] = from_fp32<X>(s <= t ? expf(to_fp32(a[s]) - m) / sum : 0.0f);
}

// Softmax backward in place: datt holds dP on entry and dS = P∘(dP − Σ P∘dP) on exit (0 above the diagonal).
// One warp per row, as the forward.
template <class X>
__global__ void attention_softmax_causal_backward_kernel(X* datt /*(B, NH, T, T)*/, const X* att, int rows, int T) {
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * warps + static_cast<int>(threadIdx.x) / 32;
    bool active = row < rows;
    int t = active ? row % T : 0;
    size_t base = static_cast<size_t>(active ? row : 0) * T;
    float pdp = 0.0f;
    for (int s = lane; s <= t; s += 32) pdp += to_fp32(att[base + s]) * to_fp32(datt[base + s]);
    pdp = warp_reduce_sum(pdp);
    if (!active) return;
    for (int s = lane; s < T; s += 32)
        datt[base + s] = from_fp32<X>(s <= t ? to_fp32(att[base + s]) * (to_fp32(datt[base + s]) - pdp) : 0.0f);
}

// dqkv += (dq, Σ_group dk, Σ_group dv): one thread per element of dqkv (coalesced writes); the sum over the
// heads of a group is a loop in one thread, so it is deterministic.
template <class X>
__global__ void attention_permute_backward_kernel(X* dqkv, const X* dq, const X* dk,
                                                  const X* dv /*each (B, NH, T, hs)*/, int B, int T, int NH, int NKV,
                                                  int hs) {
    int W = (NH + 2 * NKV) * hs;
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(B) * T * W) return;
    int d = static_cast<int>(idx % hs);
    int head = static_cast<int>(idx % W / hs);  // 0..NH+2NKV: q heads, then k heads, then v heads
    int t = static_cast<int>(idx / W % T);
    int b = static_cast<int>(idx / W / T);
    auto at = [&](const X* x, int h) { return to_fp32(x[((static_cast<size_t>(b) * NH + h) * T + t) * hs + d]); };
    int group = NH / NKV;
    float sum = 0.0f;
    if (head < NH) sum = at(dq, head);
    else if (head < NH + NKV) for (int j = 0; j < group; j++) sum += at(dk, (head - NH) * group + j);
    else for (int j = 0; j < group; j++) sum += at(dv, (head - NH - NKV) * group + j);
    dqkv[idx] = from_fp32<X>(to_fp32(dqkv[idx]) + sum);
}

// Workspace of the naive path: q, k, v, y (forward) and dq, dk, dv (backward), each (B, NH, T, hs), of type X.
template <class X>
struct AttentionNaiveScratch {
    X *q, *k, *v, *y, *dq, *dk, *dv;
};
template <class X>
AttentionNaiveScratch<X> attention_naive_scratch(int B, int T, int NH, int hs) {
    size_t n = static_cast<size_t>(B) * NH * T * hs;
    WorkspaceCarver count{nullptr};
    for (int i = 0; i < 7; i++) count.take<X>(n);
    WorkspaceCarver carve{attention_workspace().get(count.used)};
    AttentionNaiveScratch<X> s;
    for (X** p : {&s.q, &s.k, &s.v, &s.y, &s.dq, &s.dk, &s.dv}) *p = carve.take<X>(n);
    return s;
}

template <class X>
void attention_forward_naive(X* out /*(B, T, NH·hs)*/, X* att /*(B, NH, T, T) probabilities, kept for backward*/,
                             const X* qkv /*(B, T, (NH+2NKV)·hs)*/, int B, int T, int NH, int NKV, int hs,
                             cudaStream_t stream) {
    attention_check_shape("attention_forward_naive", B, T, NH, NKV, hs);
    AttentionNaiveScratch<X> s = attention_naive_scratch<X>(B, T, NH, hs);
    size_t n = static_cast<size_t>(B) * NH * T * hs;
    const int block = 256;
    unsigned grid = static_cast<unsigned>(ceil_div<size_t>(n, block));
    attention_permute_kernel<<<grid, block, 0, stream>>>(s.q, s.k, s.v, qkv, B, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
    // att = scale·Q·Kᵀ: row-major (T, T) = column-major Sᵀ = K·Qᵀ, with K and Q stored as column-major (hs, T).
    long long sT = static_cast<long long>(T) * hs, sTT = static_cast<long long>(T) * T;
    attention_gemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f / std::sqrt(static_cast<float>(hs)), s.k, hs, sT,
                           s.q, hs, sT, 0.0f, att, T, sTT, B * NH, stream);
    int rows = B * NH * T, warps_per_block = 4;
    attention_softmax_causal_kernel<<<ceil_div(rows, warps_per_block), warps_per_block * 32, 0, stream>>>(att, rows, T);
    cuda_check(cudaGetLastError());
    // y = att·V: column-major yᵀ (hs, T) = Vᵀ (hs, T) · attᵀ (T, T).
    attention_gemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, s.v, hs, sT, att, T, sTT, 0.0f, s.y, hs, sT,
                           B * NH, stream);
    attention_unpermute_kernel<<<grid, block, 0, stream>>>(out, s.y, B, T, NH, hs, false);
    cuda_check(cudaGetLastError());
}

template <class X>
void attention_backward_naive(X* dqkv /*(B, T, (NH+2NKV)·hs), +=*/, X* datt /*(B, NH, T, T) scratch*/,
                              const X* dout /*(B, T, NH·hs)*/, const X* att /*(B, NH, T, T)*/, const X* qkv, int B,
                              int T, int NH, int NKV, int hs, cudaStream_t stream) {
    attention_check_shape("attention_backward_naive", B, T, NH, NKV, hs);
    AttentionNaiveScratch<X> s = attention_naive_scratch<X>(B, T, NH, hs);
    size_t n = static_cast<size_t>(B) * NH * T * hs;
    const int block = 256;
    unsigned grid = static_cast<unsigned>(ceil_div<size_t>(n, block));
    attention_permute_kernel<<<grid, block, 0, stream>>>(s.q, s.k, s.v, qkv, B, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
    attention_unpermute_kernel<<<grid, block, 0, stream>>>(s.y, dout, B, T, NH, hs, true);  // s.y = dy
    cuda_check(cudaGetLastError());
    long long sT = static_cast<long long>(T) * hs, sTT = static_cast<long long>(T) * T;
    float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    // dV = attᵀ·dy: column-major dVᵀ (hs, T) = dyᵀ · att
    attention_gemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, s.y, hs, sT, att, T, sTT, 0.0f, s.dv, hs, sT,
                           B * NH, stream);
    // datt = dy·Vᵀ: column-major dattᵀ (T, T) = V · dyᵀ
    attention_gemm_batched(CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, s.v, hs, sT, s.y, hs, sT, 0.0f, datt, T, sTT,
                           B * NH, stream);
    int rows = B * NH * T, warps_per_block = 4;
    attention_softmax_causal_backward_kernel<<<ceil_div(rows, warps_per_block), warps_per_block * 32, 0, stream>>>(
        datt, att, rows, T);
    cuda_check(cudaGetLastError());
    // dQ = scale·dS·K: column-major dQᵀ = Kᵀ · dSᵀ;  dK = scale·dSᵀ·Q: column-major dKᵀ = Qᵀ · dS
    attention_gemm_batched(CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, scale, s.k, hs, sT, datt, T, sTT, 0.0f, s.dq, hs, sT,
                           B * NH, stream);
    attention_gemm_batched(CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, scale, s.q, hs, sT, datt, T, sTT, 0.0f, s.dk, hs, sT,
                           B * NH, stream);
    size_t total = static_cast<size_t>(B) * T * (NH + 2 * NKV) * hs;
    attention_permute_backward_kernel<<<static_cast<unsigned>(ceil_div<size_t>(total, block)), block, 0, stream>>>(
        dqkv, s.dq, s.dk, s.dv, B, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Head sizes of the fused kernels. The kernels keep hs/8 output columns per thread in registers, so hs is a
// template parameter; they are compiled for a few capacities HS and run any hs <= HS by padding: columns
// d >= hs of the Q, K, V, dO tiles in shared memory are 0, so every dot product over HS columns equals the one
// over hs (adding +0.0 changes no float sum) and only the columns d < hs are written. hs = 80 runs in the
// HS = 96 kernel (83% of its multiply-adds useful), hs = 8 in the HS = 32 one (25%: toy models only).
// Larger hs than 256 would need more registers than a thread has; GPTConfig::validate refuses them for
// both paths, so the CPU and the kernel path accept the same models.
constexpr int attention_flash_max_head_size = 256;
constexpr int attention_flash_capacities[] = {32, 64, 96, 128, 256};

// The capacity the kernels for head size hs are compiled for (the smallest HS >= hs), or 0 if none.
inline int attention_flash_capacity(int hs) {
    for (int cap : attention_flash_capacities)
        if (hs >= 1 && hs <= cap) return cap;
    return 0;
}
// Calls f(std::integral_constant<int, HS>) with hs's capacity, or throws naming what to do.
template <class F>
void attention_flash_dispatch(const char* fn, int hs, F&& f) {
    switch (attention_flash_capacity(hs)) {
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 96: f(std::integral_constant<int, 96>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    case 256: f(std::integral_constant<int, 256>{}); break;
    default:
        throw std::runtime_error(std::string(fn) + ": head size " + std::to_string(hs) + " is outside 1.." +
                                 std::to_string(attention_flash_max_head_size) +
                                 " (the fused kernels keep hs/8 columns per thread in registers); use more heads");
    }
}

// Which fused kernels attention_forward and attention_backward run, chosen at run time as matmul's backend is:
//   flash: the fp32 kernels below (CUDA cores; the default),
//   wmma:  the tensor-core kernels at the end of this file (bf16 products, fp32 sums and statistics).
// Both write the same out, lse and dqkv layouts, so either backward can follow either forward.
enum class AttentionBackend { flash, wmma };
inline AttentionBackend& attention_backend_setting() {
    static AttentionBackend backend = AttentionBackend::flash;
    return backend;
}
inline void set_attention_backend(AttentionBackend b) { attention_backend_setting() = b; }
inline AttentionBackend get_attention_backend() { return attention_backend_setting(); }

// The tensor-core launchers (defined with their kernels at the end of this file).
template <int HS, class X>
void attention_forward_wmma_launch(X* out, float* lse, const X* qkv, int B, int T, int NH, int NKV, int hs,
                                   cudaStream_t stream);
template <int HS, class X>
void attention_backward_wmma_launch(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int B,
                                    int T, int NH, int NKV, int hs, cudaStream_t stream);

// ----------------------------------------------------------------------------
// The fused forward (FlashAttention-2 style), fp32.
//   Block (query tile of BR = 64 rows, head h, batch b), 128 threads as a 16 × 8 grid (ty, tx).
//   Thread (ty, tx) owns query rows r = ty + 16·i (i < 4) and, of a score tile, key columns c = tx + 8·j
//   (j < BC/8); of the output it owns the columns d = tx + 8·j (j < HS/8) of its 4 rows, in registers.
//   For each K/V tile of BC keys (only tiles with some key <= the tile's last query: the causal skip):
//     load K, V tile into shared memory (coalesced: consecutive threads read consecutive d of a row)
//     S = Q·Kᵀ tile in registers (Q prescaled by scale·log2 e, so S is in base-2 units), causal mask
//     online softmax: m_new = max(m, rowmax S) (8 lanes of a row reduce with 3 shuffles),
//       P = exp2(S − m_new), l = l·exp2(m − m_new) + rowsum P, O = O·exp2(m − m_new)
//     P to shared memory; O += P·V (each thread: its 4 rows × its HS/8 columns)
//   At the end O /= l, and lse = (m + log2 l)·ln 2. Nothing of size T×T exists anywhere.
//   Shared memory: Q (BR × HS+1), K (BC × HS+1), V (BC × HS), P (BR × BC+1) floats; the +1 padding puts
//   the rows that the 8 lanes of a row group read at the same time in different banks.
//   HS=64, BC=32: 41.5 KiB; HS=128: 74 KiB; HS=256: 137 KiB (opted in above 48 KiB).
//   Reads: Q once, K and V once per query tile (T/BR times): 2·T²·hs/BR floats per head instead of
//   writing and reading the T×T matrix.

constexpr int attention_flash_threads = 128;

template <int HS, int BR, int BC>
constexpr size_t attention_forward_flash_shared_bytes() {
    return sizeof(float) * (BR * (HS + 1) + BC * (HS + 1) + BC * HS + BR * (BC + 1));
}

template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
    attention_forward_flash_kernel(X* out /*(B, T, NH·hs)*/, float* lse /*(B, NH, T)*/, const X* qkv, int T, int NH,
                                   int NKV, int hs) {
    static_assert(BR == 64 && BC % 8 == 0 && HS % 8 == 0, "thread layout: 16 × 8 threads, 4 rows each");
    constexpr int RPT = BR / 16, CPT = BC / 8, DPT = HS / 8;  // rows, score columns, output columns per thread
    extern __shared__ float flash_smem[];
    float* Qs = flash_smem;               // (BR, HS+1)
    float* Ks = Qs + BR * (HS + 1);       // (BC, HS+1)
    float* Vs = Ks + BC * (HS + 1);       // (BC, HS)
    float* Ps = Vs + BC * HS;             // (BR, BC+1)

    int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the longest (last) query tiles start first: a shorter tail
    const float scale_log2 = attention_log2e / sqrtf(static_cast<float>(hs));

    for (int idx = tid; idx < BR * HS; idx += attention_flash_threads) {
        int r = idx / HS, d = idx % HS, q = q0 + r;
        Qs[r * (HS + 1) + d] =
            q < T && d < hs ? to_fp32(qkv[qkv_q_offset(b, q, h, T, NH, NKV, hs) + d]) * scale_log2 : 0.0f;
    }
    float m[RPT], l[RPT], o[RPT][DPT];
    for (int i = 0; i < RPT; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        for (int j = 0; j < DPT; j++) o[i][j] = 0.0f;
    }
    int q_last = min(q0 + BR, T) - 1;
    for (int k0 = 0; k0 <= q_last; k0 += BC) {
        __syncthreads();  // everyone is done with the previous K, V, P tiles (and Q is loaded, first time)
        // K, then V: one loop each (half the loads in flight per loop) keeps the HS = 32 bf16 kernel from spilling
        // a register on sm_80, where ptxas stopped at 72 registers with both in one loop
        for (int idx = tid; idx < BC * HS; idx += attention_flash_threads) {
            int c = idx / HS, d = idx % HS, key = k0 + c;
            Ks[c * (HS + 1) + d] = key < T && d < hs ? to_fp32(qkv[qkv_k_offset(b, key, g, T, NH, NKV, hs) + d]) : 0.0f;
        }
        for (int idx = tid; idx < BC * HS; idx += attention_flash_threads) {
            int c = idx / HS, d = idx % HS, key = k0 + c;
            Vs[c * HS + d] = key < T && d < hs ? to_fp32(qkv[qkv_v_offset(b, key, g, T, NH, NKV, hs) + d]) : 0.0f;
        }
        __syncthreads();
        float s[RPT][CPT];
        for (int i = 0; i < RPT; i++)
            for (int j = 0; j < CPT; j++) s[i][j] = 0.0f;
        for (int d = 0; d < HS; d++) {
            float qd[RPT], kd[CPT];
            for (int i = 0; i < RPT; i++) qd[i] = Qs[(ty + 16 * i) * (HS + 1) + d];
            for (int j = 0; j < CPT; j++) kd[j] = Ks[(tx + 8 * j) * (HS + 1) + d];
            for (int i = 0; i < RPT; i++)
                for (int j = 0; j < CPT; j++) s[i][j] += qd[i] * kd[j];
        }
        for (int i = 0; i < RPT; i++) {
            int query = q0 + ty + 16 * i, last_key = min(query, T - 1);
            float row_max = -INFINITY;
            for (int j = 0; j < CPT; j++) {
                if (k0 + tx + 8 * j > last_key) s[i][j] = -INFINITY;  // causal mask (and keys past T)
                row_max = fmaxf(row_max, s[i][j]);
            }
            // the 8 threads of a row are 8 consecutive lanes: reduce with xor 1, 2, 4
            for (int offset = 1; offset < 8; offset *= 2)
                row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
            // m_new is finite: the first K tile holds key 0, which every query sees
            float m_new = fmaxf(m[i], row_max);
            float correction = exp2f(m[i] - m_new);  // exp2(−∞) = 0 on the first tile
            float row_sum = 0.0f;
            for (int j = 0; j < CPT; j++) {
                float p = exp2f(s[i][j] - m_new);
                row_sum += p;
                Ps[(ty + 16 * i) * (BC + 1) + tx + 8 * j] = p;
            }
            l[i] = l[i] * correction + row_sum;  // this thread's share of the row sum; summed over tx at the end
            for (int j = 0; j < DPT; j++) o[i][j] *= correction;
            m[i] = m_new;
        }
        __syncthreads();
        for (int c = 0; c < BC; c++) {
            float p[RPT], v[DPT];
            for (int i = 0; i < RPT; i++) p[i] = Ps[(ty + 16 * i) * (BC + 1) + c];
            for (int j = 0; j < DPT; j++) v[j] = Vs[c * HS + tx + 8 * j];
            for (int i = 0; i < RPT; i++)
                for (int j = 0; j < DPT; j++) o[i][j] += p[i] * v[j];
        }
    }
    for (int i = 0; i < RPT; i++) {
        float sum = l[i];
        for (int offset = 1; offset < 8; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        int query = q0 + ty + 16 * i;
        if (query < T) {
            X* dst = out + (static_cast<size_t>(b) * T + query) * NH * hs + static_cast<size_t>(h) * hs;
            for (int j = 0; j < DPT; j++)
                if (tx + 8 * j < hs) dst[tx + 8 * j] = from_fp32<X>(o[i][j] / sum);
            if (tx == 0) lse[(static_cast<size_t>(b) * NH + h) * T + query] = (m[i] + log2f(sum)) * attention_ln2;
        }
    }
}

template <int HS, class X>
void attention_forward_flash_launch(X* out, float* lse, const X* qkv, int B, int T, int NH, int NKV, int hs,
                                    cudaStream_t stream) {
    constexpr int BR = 64, BC = 32;
    constexpr size_t smem = attention_forward_flash_shared_bytes<HS, BR, BC>();
    auto kernel = attention_forward_flash_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(kernel, smem, "attention_forward", hs);
    dim3 grid(ceil_div(T, BR), NH, B);
    kernel<<<grid, attention_flash_threads, smem, stream>>>(out, lse, qkv, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
}

// The fused forward: what the model calls. out and lse are written (not accumulated).
template <class X>
void attention_forward(X* out /*(B, T, NH·hs)*/, float* lse /*(B, NH, T)*/, const X* qkv /*(B, T, (NH+2NKV)·hs)*/,
                       int B, int T, int NH, int NKV, int hs, cudaStream_t stream) {
    attention_check_shape("attention_forward", B, T, NH, NKV, hs);
    attention_flash_dispatch("attention_forward", hs, [&](auto capacity) {
        constexpr int HS = decltype(capacity)::value;
        if (get_attention_backend() == AttentionBackend::wmma)
            attention_forward_wmma_launch<HS>(out, lse, qkv, B, T, NH, NKV, hs, stream);
        else
            attention_forward_flash_launch<HS>(out, lse, qkv, B, T, NH, NKV, hs, stream);
    });
}

// ----------------------------------------------------------------------------
// The fused backward (FlashAttention-2 style), fp32 and deterministic. Three kernels:
//   1. preprocess: D_t = dO_t·O_t for every (b, t, h) (one warp per row; the D trick above).
//   2. dK, dV: a block owns a K/V tile of BC keys of kv head g and loops over the query heads of g's group
//      and over the query tiles at or after the diagonal (the causal skip). Per query tile it recomputes
//      P = exp(S − lse) from the saved lse (no softmax reductions needed), dP = dO·Vᵀ, dS = P∘(dP − D),
//      and accumulates dV += Pᵀ·dO and dK += dSᵀ·Q in registers.
//      Thread (ty, tx) owns kv rows r = ty + 16·i (i < BC/16) and columns tx + 8·j of dK, dV (j < HS/8);
//      in the score tile (transposed, keys × queries) the query columns tx + 8·j (j < BR/8).
//      dK and dV of a key are written by exactly one block, after it summed over the whole group: GQA
//      costs nothing extra.
//   3. dQ: a block owns a query tile of BR rows of head h and loops over the key tiles up to the diagonal,
//      recomputing S and dP (so P and dS, bit for bit the values kernel 2 saw) and accumulating
//      dQ += dS·K in registers; then dqkv's q part += scale·dQ. Thread (ty, tx) owns query rows
//      ty + 16·i (i < BR/16), score columns tx + 8·j (j < BC/8) and dQ columns tx + 8·j (j < HS/8).
//   Determinism: every element of dQ, dK and dV is summed by one thread in a fixed order (no atomics), so
//   two runs give the same bits on any GPU and in the CPU build with any number of threads or thread
//   order. The price: dQ needs every (query, key) pair's dS, which kernel 2 has only one tile at a time;
//   instead of adding partial dQ atomically (FlashAttention-2's fast path), kernel 3 recomputes S and dP:
//   7 tile matmuls instead of 5 (S, dP, dV, dK | S, dP, dQ), 1.4× the backward FLOPs, and K, V are read
//   once more per query tile. docs/attention.md, "Deterministic backward", has the measured cost.
//   Workspace: D (B·NH·T floats): O(T).

template <int HS, int BR, int BC>
constexpr size_t attention_backward_kv_shared_bytes() {
    return sizeof(float) * (2 * BC * (HS + 1) + 2 * BR * (HS + 1) + 2 * BC * (BR + 1) + 2 * BR);
}
template <int HS, int BR, int BC>
constexpr size_t attention_backward_q_shared_bytes() {
    return sizeof(float) * (2 * BR * (HS + 1) + 2 * BC * (HS + 1) + BR * (BC + 1) + 2 * BR);
}

// One warp per (b, t, h) row: lanes over hs (coalesced), a shuffle reduction.
template <class X>
__global__ void attention_backward_preprocess_kernel(float* D /*(B, NH, T)*/, const X* dout, const X* out, int B,
                                                     int T, int NH, int hs) {
    int warps = blockDim.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * warps + static_cast<int>(threadIdx.x) / 32;  // row = (b·T + t)·NH + h
    bool active = row < B * T * NH;
    float sum = 0.0f;
    if (active)
        for (int d = lane; d < hs; d += 32)
            sum += to_fp32(dout[static_cast<size_t>(row) * hs + d]) * to_fp32(out[static_cast<size_t>(row) * hs + d]);
    sum = warp_reduce_sum(sum);
    if (active && lane == 0) {
        int h = row % NH, t = row / NH % T, b = row / NH / T;
        D[(static_cast<size_t>(b) * NH + h) * T + t] = sum;
    }
}

// Loads the query-side tiles of query tile q0 of head h into shared memory: Q and dO (BR, HS+1), zero in
// rows past T and columns d >= hs; lse in base 2 and D (BR). Called by all threads of the block.
template <int HS, int BR, class X>
__device__ void attention_backward_load_queries(float* Qs, float* dOs, float* lse2s, float* Ds, const X* qkv,
                                                const X* dout, const float* lse, const float* D, int b, int h, int q0,
                                                int T, int NH, int NKV, int hs) {
    for (int idx = threadIdx.x; idx < BR * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, q = q0 + r;
        bool in = q < T && d < hs;
        size_t o_row = (static_cast<size_t>(b) * T + q) * NH * hs + static_cast<size_t>(h) * hs;  // dout (B, T, NH·hs)
        Qs[r * (HS + 1) + d] = in ? to_fp32(qkv[qkv_q_offset(b, q, h, T, NH, NKV, hs) + d]) : 0.0f;
        dOs[r * (HS + 1) + d] = in ? to_fp32(dout[o_row + d]) : 0.0f;
    }
    for (int r = threadIdx.x; r < BR; r += blockDim.x) {
        int q = q0 + r;
        size_t row = (static_cast<size_t>(b) * NH + h) * T + q;
        lse2s[r] = q < T ? lse[row] * attention_log2e : 0.0f;
        Ds[r] = q < T ? D[row] : 0.0f;
    }
}
// Loads keys k0.. of kv head g: K and V (BC, HS+1), zero past T and in columns d >= hs.
template <int HS, int BC, class X>
__device__ void attention_backward_load_keys(float* Ks, float* Vs, const X* qkv, int b, int g, int k0, int T, int NH,
                                             int NKV, int hs) {
    for (int idx = threadIdx.x; idx < BC * HS; idx += blockDim.x) {
        int c = idx / HS, d = idx % HS, key = k0 + c;
        bool in = key < T && d < hs;
        Ks[c * (HS + 1) + d] = in ? to_fp32(qkv[qkv_k_offset(b, key, g, T, NH, NKV, hs) + d]) : 0.0f;
        Vs[c * (HS + 1) + d] = in ? to_fp32(qkv[qkv_v_offset(b, key, g, T, NH, NKV, hs) + d]) : 0.0f;
    }
}

template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
attention_backward_kv_kernel(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int T, int NH,
                             int NKV, int hs) {
    static_assert(BR % 8 == 0 && BC % 16 == 0 && HS % 8 == 0, "thread layout: 16 × 8 threads");
    constexpr int KPT = BC / 16, QPT = BR / 8, DPT = HS / 8;
    extern __shared__ float flash_smem[];
    float* Ks = flash_smem;               // (BC, HS+1)
    float* Vs = Ks + BC * (HS + 1);       // (BC, HS+1)
    float* Qs = Vs + BC * (HS + 1);       // (BR, HS+1)
    float* dOs = Qs + BR * (HS + 1);      // (BR, HS+1)
    float* Pt = dOs + BR * (HS + 1);      // (BC, BR+1)  P transposed: keys × queries
    float* dSt = Pt + BC * (BR + 1);      // (BC, BR+1)
    float* lse2s = dSt + BC * (BR + 1);   // (BR) lse in base 2
    float* Ds = lse2s + BR;               // (BR)

    int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
    int b = blockIdx.z, g = blockIdx.y, group = NH / NKV;
    int k0 = (gridDim.x - 1 - blockIdx.x) * BC;  // the first key tiles see the most queries: start them first
    const float scale = 1.0f / sqrtf(static_cast<float>(hs)), scale_log2 = scale * attention_log2e;

    attention_backward_load_keys<HS, BC>(Ks, Vs, qkv, b, g, k0, T, NH, NKV, hs);
    float dk[KPT][DPT], dv[KPT][DPT];
    for (int i = 0; i < KPT; i++)
        for (int j = 0; j < DPT; j++) dk[i][j] = dv[i][j] = 0.0f;

    for (int h = g * group; h < (g + 1) * group; h++)
        for (int q0 = k0 / BR * BR; q0 < T; q0 += BR) {
            __syncthreads();  // the previous tile's readers are done (and K, V are loaded, first time)
            attention_backward_load_queries<HS, BR>(Qs, dOs, lse2s, Ds, qkv, dout, lse, D, b, h, q0, T, NH, NKV, hs);
            __syncthreads();
            // scores (transposed) and dP, both keys × queries, in registers
            float s[KPT][QPT], dp[KPT][QPT];
            for (int i = 0; i < KPT; i++)
                for (int j = 0; j < QPT; j++) s[i][j] = dp[i][j] = 0.0f;
            for (int d = 0; d < HS; d++) {
                float kd[KPT], vd[KPT], qd[QPT], dod[QPT];
                for (int i = 0; i < KPT; i++) {
                    kd[i] = Ks[(ty + 16 * i) * (HS + 1) + d];
                    vd[i] = Vs[(ty + 16 * i) * (HS + 1) + d];
                }
                for (int j = 0; j < QPT; j++) {
                    qd[j] = Qs[(tx + 8 * j) * (HS + 1) + d];
                    dod[j] = dOs[(tx + 8 * j) * (HS + 1) + d];
                }
                for (int i = 0; i < KPT; i++)
                    for (int j = 0; j < QPT; j++) {
                        s[i][j] += qd[j] * kd[i];
                        dp[i][j] += dod[j] * vd[i];
                    }
            }
            for (int i = 0; i < KPT; i++)
                for (int j = 0; j < QPT; j++) {
                    int kr = ty + 16 * i, qc = tx + 8 * j, key = k0 + kr, query = q0 + qc;
                    float p = key <= query && query < T ? exp2f(s[i][j] * scale_log2 - lse2s[qc]) : 0.0f;
                    Pt[kr * (BR + 1) + qc] = p;
                    dSt[kr * (BR + 1) + qc] = p * (dp[i][j] - Ds[qc]);
                }
            __syncthreads();
            // dV += Pᵀ·dO, dK += dSᵀ·Q (scale applied at the end)
            for (int qc = 0; qc < BR; qc++) {
                float pt[KPT], dst[KPT], dod[DPT], qd[DPT];
                for (int i = 0; i < KPT; i++) {
                    pt[i] = Pt[(ty + 16 * i) * (BR + 1) + qc];
                    dst[i] = dSt[(ty + 16 * i) * (BR + 1) + qc];
                }
                for (int j = 0; j < DPT; j++) {
                    dod[j] = dOs[qc * (HS + 1) + tx + 8 * j];
                    qd[j] = Qs[qc * (HS + 1) + tx + 8 * j];
                }
                for (int i = 0; i < KPT; i++)
                    for (int j = 0; j < DPT; j++) {
                        dv[i][j] += pt[i] * dod[j];
                        dk[i][j] += dst[i] * qd[j];
                    }
            }
        }
    for (int i = 0; i < KPT; i++) {
        int key = k0 + ty + 16 * i;
        if (key >= T) continue;
        X* dK = dqkv + qkv_k_offset(b, key, g, T, NH, NKV, hs);
        X* dV = dqkv + qkv_v_offset(b, key, g, T, NH, NKV, hs);
        for (int j = 0; j < DPT; j++) {
            int d = tx + 8 * j;
            if (d >= hs) continue;
            dK[d] = from_fp32<X>(to_fp32(dK[d]) + dk[i][j] * scale);  // one rounding of the fp32 sum
            dV[d] = from_fp32<X>(to_fp32(dV[d]) + dv[i][j]);
        }
    }
}

template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
attention_backward_q_kernel(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int T, int NH,
                            int NKV, int hs) {
    static_assert(BR % 16 == 0 && BC % 8 == 0 && HS % 8 == 0, "thread layout: 16 × 8 threads");
    constexpr int RPT = BR / 16, CPT = BC / 8, DPT = HS / 8;
    extern __shared__ float flash_smem[];
    float* Qs = flash_smem;               // (BR, HS+1)
    float* dOs = Qs + BR * (HS + 1);      // (BR, HS+1)
    float* Ks = dOs + BR * (HS + 1);      // (BC, HS+1)
    float* Vs = Ks + BC * (HS + 1);       // (BC, HS+1)
    float* dSs = Vs + BC * (HS + 1);      // (BR, BC+1)
    float* lse2s = dSs + BR * (BC + 1);   // (BR) lse in base 2
    float* Ds = lse2s + BR;               // (BR)

    int tid = threadIdx.x, tx = tid % 8, ty = tid / 8;
    int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the last query tiles see the most keys: start them first
    const float scale = 1.0f / sqrtf(static_cast<float>(hs)), scale_log2 = scale * attention_log2e;

    attention_backward_load_queries<HS, BR>(Qs, dOs, lse2s, Ds, qkv, dout, lse, D, b, h, q0, T, NH, NKV, hs);
    float dq[RPT][DPT];
    for (int i = 0; i < RPT; i++)
        for (int j = 0; j < DPT; j++) dq[i][j] = 0.0f;
    int q_last = min(q0 + BR, T) - 1;
    for (int k0 = 0; k0 <= q_last; k0 += BC) {
        __syncthreads();  // the previous tile's readers are done (and Q, dO are loaded, first time)
        attention_backward_load_keys<HS, BC>(Ks, Vs, qkv, b, g, k0, T, NH, NKV, hs);
        __syncthreads();
        float s[RPT][CPT], dp[RPT][CPT];
        for (int i = 0; i < RPT; i++)
            for (int j = 0; j < CPT; j++) s[i][j] = dp[i][j] = 0.0f;
        for (int d = 0; d < HS; d++) {
            float qd[RPT], dod[RPT], kd[CPT], vd[CPT];
            for (int i = 0; i < RPT; i++) {
                qd[i] = Qs[(ty + 16 * i) * (HS + 1) + d];
                dod[i] = dOs[(ty + 16 * i) * (HS + 1) + d];
            }
            for (int j = 0; j < CPT; j++) {
                kd[j] = Ks[(tx + 8 * j) * (HS + 1) + d];
                vd[j] = Vs[(tx + 8 * j) * (HS + 1) + d];
            }
            for (int i = 0; i < RPT; i++)
                for (int j = 0; j < CPT; j++) {
                    s[i][j] += qd[i] * kd[j];  // the same products in the same order as kernel 2
                    dp[i][j] += dod[i] * vd[j];
                }
        }
        for (int i = 0; i < RPT; i++)
            for (int j = 0; j < CPT; j++) {
                int qr = ty + 16 * i, kc = tx + 8 * j, query = q0 + qr, key = k0 + kc;
                float p = key <= query && query < T ? exp2f(s[i][j] * scale_log2 - lse2s[qr]) : 0.0f;
                dSs[qr * (BC + 1) + kc] = p * (dp[i][j] - Ds[qr]);
            }
        __syncthreads();
        // dQ += dS·K (scale applied at the end)
        for (int kc = 0; kc < BC; kc++) {
            float ds[RPT], kd[DPT];
            for (int i = 0; i < RPT; i++) ds[i] = dSs[(ty + 16 * i) * (BC + 1) + kc];
            for (int j = 0; j < DPT; j++) kd[j] = Ks[kc * (HS + 1) + tx + 8 * j];
            for (int i = 0; i < RPT; i++)
                for (int j = 0; j < DPT; j++) dq[i][j] += ds[i] * kd[j];
        }
    }
    for (int i = 0; i < RPT; i++) {
        int query = q0 + ty + 16 * i;
        if (query >= T) continue;
        X* dQ = dqkv + qkv_q_offset(b, query, h, T, NH, NKV, hs);
        for (int j = 0; j < DPT; j++) {
            int d = tx + 8 * j;
            if (d < hs) dQ[d] = from_fp32<X>(to_fp32(dQ[d]) + dq[i][j] * scale);
        }
    }
}

template <int HS, class X>
void attention_backward_flash_launch(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int B,
                                     int T, int NH, int NKV, int hs, cudaStream_t stream) {
    constexpr int BR = 32, BC = 32;
    constexpr size_t kv_smem = attention_backward_kv_shared_bytes<HS, BR, BC>();
    auto kv_kernel = attention_backward_kv_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(kv_kernel, kv_smem, "attention_backward", hs);
    kv_kernel<<<dim3(ceil_div(T, BC), NKV, B), attention_flash_threads, kv_smem, stream>>>(
        dqkv, dout, lse, D, qkv, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
    constexpr size_t q_smem = attention_backward_q_shared_bytes<HS, BR, BC>();
    auto q_kernel = attention_backward_q_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(q_kernel, q_smem, "attention_backward", hs);
    q_kernel<<<dim3(ceil_div(T, BR), NH, B), attention_flash_threads, q_smem, stream>>>(
        dqkv, dout, lse, D, qkv, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
}

// The fused backward: what the model calls. Accumulates into dqkv.
template <class X>
void attention_backward(X* dqkv /*(B, T, (NH+2NKV)·hs), +=*/, const X* dout /*(B, T, NH·hs)*/,
                        const X* out /*(B, T, NH·hs)*/, const float* lse /*(B, NH, T)*/,
                        const X* qkv /*(B, T, (NH+2NKV)·hs)*/, int B, int T, int NH, int NKV, int hs,
                        cudaStream_t stream) {
    attention_check_shape("attention_backward", B, T, NH, NKV, hs);
    size_t rows = static_cast<size_t>(B) * T * NH;
    attention_flash_dispatch("attention_backward", hs, [&](auto capacity) {
        float* D = reinterpret_cast<float*>(attention_workspace().get(rows * sizeof(float)));
        const int warps_per_block = 4;
        attention_backward_preprocess_kernel<<<static_cast<unsigned>(ceil_div<size_t>(rows, warps_per_block)),
                                               warps_per_block * 32, 0, stream>>>(D, dout, out, B, T, NH, hs);
        cuda_check(cudaGetLastError());
        constexpr int HS = decltype(capacity)::value;
        if (get_attention_backend() == AttentionBackend::wmma)
            attention_backward_wmma_launch<HS>(dqkv, dout, lse, D, qkv, B, T, NH, NKV, hs, stream);
        else
            attention_backward_flash_launch<HS>(dqkv, dout, lse, D, qkv, B, T, NH, NKV, hs, stream);
    });
}

// ----------------------------------------------------------------------------
// The fused attention on tensor cores: bf16 inputs, fp32 sums, fp32 softmax statistics.
//   The same algorithm as the fp32 kernels above (online softmax forward; D, then a dK/dV kernel and a dQ kernel,
//   deterministic), with every product of two tiles on nvcuda::wmma (layers.cuh's matmul_wmma_kernel explains
//   the instruction: a warp multiplies 16×16 bf16 by 16×16 bf16 and adds a 16×16 fp32 tile):
//     forward   S = Q·Kᵀ, O += P·V
//     backward  S = Q·Kᵀ and dP = dO·Vᵀ (twice: once per kernel, as in fp32), dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K
//   Kept in fp32, on CUDA cores, because bf16 would lose what they carry:
//     - the scores S as the products return them (fp32), the scale 1/sqrt(hs), the running max m, the sums l
//       and the log-sum-exp: exp turns an absolute error of S into a relative one (|Δ exp(S)/exp(S)| ≈ |ΔS|),
//       and an S of magnitude 8 rounded to bf16 is off by up to 2^-8·8 ≈ 0.031: 8× what rounding P costs;
//     - the corrections exp2(m − m_new) and O itself (it is rescaled and added to once per key tile);
//     - D = dO·O (preprocess kernel, shared with fp32) and dP − D: the difference cancels (Σ_s P·(dP − D) = 0).
//   Rounded to bf16, only as inputs of a product: Q, K, V, dO when they are staged in shared memory; P (in
//   [0, 1]) for P·V and Pᵀ·dO; dS for dS·K and dSᵀ·Q. The error bound these roundings allow is derived in
//   test/test_attention.cu, where the tests check it element by element.
//
//   Tiles: one warp per 16 rows of a product (wmma's m = 16). All accumulators live in shared memory in fp32
//   (attention_wmma_warp_product loads one 16×16 accumulator, runs the k-steps, stores it), so a thread holds at
//   most three fragments at any head size: no register pressure up to hs = 256, and the statistics can be
//   applied by row, which a fragment's unspecified layout does not allow in registers.
//   Rows of bf16 tiles are HS + 8 elements (HS + 4 for fp32): a multiple of 16 bytes as wmma requires, and
//   shifted by 4 banks from row to row; every tile starts at a multiple of 32 bytes (wmma's pointer alignment).

constexpr int attention_wmma_warps = attention_flash_threads / 32;  // 4

// C (16 × N, fp32, row-major, ldc) = (accumulate ? C : 0) + A (16 × K) · B (K × N), all in shared memory; A bf16
// row-major (A(i, k) = a[i·lda + k]); B bf16, row_major (B(k, j) = b[k·ldb + j]) or col_major (B(k, j) = b[j·ldb + k]:
// the transpose of a tile stored by rows, as Kᵀ is of K). One warp, every lane calls it; C's elements are written by
// store_matrix_sync in an unspecified lane layout, so a lane that reads them afterwards needs a __syncwarp first.
template <int N, int K, class LayoutB>
__device__ inline void attention_wmma_warp_product(float* c, int ldc, const __nv_bfloat16* a, int lda,
                                                   const __nv_bfloat16* b, int ldb, bool accumulate) {
    namespace wmma = nvcuda::wmma;
    static_assert(N % 16 == 0 && K % 16 == 0, "wmma tiles are 16×16×16");
    for (int j = 0; j < N; j += 16) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        if (accumulate) wmma::load_matrix_sync(acc, c + j, ldc, wmma::mem_row_major);
        else wmma::fill_fragment(acc, 0.0f);
        for (int k = 0; k < K; k += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
            wmma::load_matrix_sync(fa, a + k, lda);
            if constexpr (std::is_same_v<LayoutB, wmma::row_major>)
                wmma::load_matrix_sync(fb, b + static_cast<size_t>(k) * ldb + j, ldb);
            else
                wmma::load_matrix_sync(fb, b + static_cast<size_t>(j) * ldb + k, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(c + j, acc, ldc, wmma::mem_row_major);
    }
}

// Stages rows row0.. (R of them) of one head of qkv, or of dout, in shared memory as bf16: tile[r][d] (row length
// HS + 8), zero for rows >= T and columns d >= hs. `offset(row)` is the element offset of the row's head. Called
// by all threads; d is fastest, so a warp reads consecutive elements of a row (coalesced). An fp32 X is rounded to
// bf16 here (the one rounding of the inputs); a bf16 X is copied as it is.
template <int HS, int R, class X, class Offset>
__device__ inline void attention_wmma_stage(__nv_bfloat16* tile, const X* src, int row0, int T, int hs,
                                            Offset offset) {
    for (int idx = threadIdx.x; idx < R * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, row = row0 + r;
        bool in = row < T && d < hs;
        if constexpr (std::is_same_v<X, __nv_bfloat16>)
            tile[r * (HS + 8) + d] = in ? src[offset(row) + d] : __float2bfloat16_rn(0.0f);
        else
            tile[r * (HS + 8) + d] = __float2bfloat16_rn(in ? src[offset(row) + d] : 0.0f);
    }
}

// Shared memory of the forward, carved in this order (byte offsets; every piece a multiple of 32 bytes):
//   Q (BR, HS+8), K (BC, HS+8), V (BC, HS+8) bf16; then per warp: O (16, HS+4) fp32, S (16, BC+4) fp32,
//   P (16, BC+8) bf16.  HS = 64: 49 KiB; HS = 128: 81 KiB; HS = 256: 145 KiB (opted in above 48 KiB).
template <int HS, int BR, int BC>
struct AttentionWmmaForwardLayout {
    static constexpr int ld = HS + 8, o_ld = HS + 4, s_ld = BC + 4, p_ld = BC + 8;
    static constexpr size_t q = 0, k = q + 2 * BR * ld, v = k + 2 * BC * ld, warps = v + 2 * BC * ld;
    static constexpr size_t o = 0, s = o + 4 * 16 * o_ld, p = s + 4 * 16 * s_ld, per_warp = p + 2 * 16 * p_ld;
    static constexpr size_t bytes = warps + attention_wmma_warps * per_warp;
};

// The forward. Block (query tile of BR = 64 rows, head h, batch b), 4 warps; warp w owns query rows 16w..16w+15
// of the tile: its S tile (16 × BC), its P tile and its O (16 × HS) are its own, in shared memory.
//   For each K/V tile of BC = 32 keys up to the tile's last query (the causal skip):
//     all threads stage K, V (bf16);                                           __syncthreads
//     S = Q_w·Kᵀ on wmma (fp32);                                               __syncwarp
//     lanes 2r and 2r+1 own row r of the warp's 16 (columns c ≡ lane mod 2): scale to base 2, causal mask, row max
//     (one shuffle), m_new, P = exp2(S − m_new) stored as bf16, l = l·exp2(m − m_new) + Σ P (fp32, unrounded P),
//     O's row ·= exp2(m − m_new);                                              __syncwarp
//     O += P·V on wmma (accumulating through shared memory).
//   At the end out = O / l (a warp writes one row at a time, lanes over d: coalesced), lse = (m + log2 l)·ln 2.
template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
attention_forward_wmma_kernel(X* out /*(B, T, NH·hs)*/, float* lse /*(B, NH, T)*/, const X* qkv, int T, int NH, int NKV,
                              int hs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bf16 wmma needs compute capability 8.0 (A100) or newer; the GPU build targets sm_80 and sm_90
#else
    using L = AttentionWmmaForwardLayout<HS, BR, BC>;
    static_assert(BR == 16 * attention_wmma_warps && BC % 32 == 0 && HS % 32 == 0, "one warp per 16 query rows");
    using wmma_col = nvcuda::wmma::col_major;
    using wmma_row = nvcuda::wmma::row_major;
    extern __shared__ __align__(32) unsigned char attention_wmma_smem[];
    unsigned char* smem = attention_wmma_smem;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + L::q);  // (BR, HS+8)
    __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + L::k);  // (BC, HS+8)
    __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + L::v);  // (BC, HS+8)
    unsigned char* mine = smem + L::warps + warp * L::per_warp;
    float* Os = reinterpret_cast<float*>(mine + L::o);                  // (16, HS+4) this warp's output rows
    float* Ss = reinterpret_cast<float*>(mine + L::s);                  // (16, BC+4)
    __nv_bfloat16* Ps = reinterpret_cast<__nv_bfloat16*>(mine + L::p);  // (16, BC+8)

    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the longest (last) query tiles start first
    const float scale_log2 = attention_log2e / sqrtf(static_cast<float>(hs));
    attention_wmma_stage<HS, BR>(Qs, qkv, q0, T, hs, [&](int q) { return qkv_q_offset(b, q, h, T, NH, NKV, hs); });
    for (int idx = lane; idx < 16 * HS; idx += 32) Os[idx / HS * L::o_ld + idx % HS] = 0.0f;

    const int r = lane / 2, half = lane % 2, query = q0 + 16 * warp + r, last_key = min(query, T - 1);
    float m = -INFINITY, l = 0.0f;  // row r's running max (base 2) and this lane's share of its sum
    const int q_last = min(q0 + BR, T) - 1;
    for (int k0 = 0; k0 <= q_last; k0 += BC) {
        __syncthreads();  // every warp is done with the previous K, V (and Q is staged, first time)
        auto k_row = [&](int key) { return qkv_k_offset(b, key, g, T, NH, NKV, hs); };
        auto v_row = [&](int key) { return qkv_v_offset(b, key, g, T, NH, NKV, hs); };
        attention_wmma_stage<HS, BC>(Ks, qkv, k0, T, hs, k_row);
        attention_wmma_stage<HS, BC>(Vs, qkv, k0, T, hs, v_row);
        __syncthreads();
        attention_wmma_warp_product<BC, HS, wmma_col>(Ss, L::s_ld, Qs + 16 * warp * L::ld, L::ld, Ks, L::ld, false);
        __syncwarp();  // the lanes read S elements other lanes' store_matrix_sync wrote (and O, from the last tile)
        float s[BC / 2], row_max = -INFINITY;
        for (int j = 0; j < BC / 2; j++) {
            int c = half + 2 * j;
            s[j] = k0 + c <= last_key ? Ss[r * L::s_ld + c] * scale_log2 : -INFINITY;  // causal mask, keys past T
            row_max = fmaxf(row_max, s[j]);
        }
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
        float m_new = fmaxf(m, row_max);  // finite: the first K tile holds key 0, which every row sees
        float correction = exp2f(m - m_new), row_sum = 0.0f;
        for (int j = 0; j < BC / 2; j++) {
            float p = exp2f(s[j] - m_new);
            row_sum += p;
            Ps[r * L::p_ld + half + 2 * j] = __float2bfloat16_rn(p);
        }
        l = l * correction + row_sum;
        m = m_new;
        for (int d = half; d < HS; d += 2) Os[r * L::o_ld + d] *= correction;
        __syncwarp();  // P and the rescaled O are written before the warp's wmma loads read them
        attention_wmma_warp_product<HS, BC, wmma_row>(Os, L::o_ld, Ps, L::p_ld, Vs, L::ld, true);
    }
    __syncwarp();  // O's last store_matrix_sync is done before the lanes read it
    float sum = l + __shfl_xor_sync(0xffffffffu, l, 1);  // row r's sum, in both of its lanes
    if (half == 0 && query < T) lse[(static_cast<size_t>(b) * NH + h) * T + query] = (m + log2f(sum)) * attention_ln2;
    for (int rr = 0; rr < 16; rr++) {
        float row_sum = __shfl_sync(0xffffffffu, sum, 2 * rr);
        int q = q0 + 16 * warp + rr;
        if (q >= T) break;
        X* dst = out + (static_cast<size_t>(b) * T + q) * NH * hs + static_cast<size_t>(h) * hs;
        for (int d = lane; d < hs; d += 32) dst[d] = from_fp32<X>(Os[rr * L::o_ld + d] / row_sum);
    }
#endif
}

template <int HS, class X>
void attention_forward_wmma_launch(X* out, float* lse, const X* qkv, int B, int T, int NH, int NKV, int hs,
                                   cudaStream_t stream) {
    constexpr int BR = 16 * attention_wmma_warps, BC = 32;
    constexpr size_t smem = AttentionWmmaForwardLayout<HS, BR, BC>::bytes;
    auto kernel = attention_forward_wmma_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(kernel, smem, "attention_forward (wmma)", hs);
    kernel<<<dim3(ceil_div(T, BR), NH, B), attention_flash_threads, smem, stream>>>(out, lse, qkv, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
}

// The backward's two kernels (D comes from attention_backward_preprocess_kernel, as in fp32). Both have 4 warps
// and tiles of BR = 32 queries × BC = 32 keys: two 16-row slabs, each handled by two warps, w = slab + 2·role.
//   dK, dV kernel: a block owns BC keys of kv head g (their dK, dV accumulate in shared memory, fp32) and loops over
//   the heads of g's group and the query tiles at or after the diagonal. Per query tile:
//     stage Q, dO (bf16), lse (base 2), D;                                             __syncthreads
//     role 0: Sᵀ = K_slab·Qᵀ,  role 1: dPᵀ = V_slab·dOᵀ (keys × queries, wmma);        __syncthreads
//     all threads, element-wise in fp32: P = exp2(S·scale·log2 e − lse₂) (0 where masked), dS = P·(dP − D),
//     both stored transposed (keys × queries) as bf16;                                 __syncthreads
//     warp (slab, role): dV[slab, half `role` of the columns] += Pᵀ_slab·dO[:, half],
//                        dK[slab, same half] += dSᵀ_slab·Q[:, half].
//   At the end dqkv's k and v rows += scale·dK and dV. The two roles split S and dP, then the columns of dK and
//   dV, so the four warps do equal work.
//   dQ kernel: a block owns BR queries of head h and loops over the key tiles up to the diagonal: the same S, dP
//   (role 0: S = Q_slab·Kᵀ, role 1: dP = dO_slab·Vᵀ), dS as bf16, then warp (slab, role)
//   dQ[slab, half] += dS·K[:, half].
//   Each element of dQ, dK and dV is summed by one block in a fixed order: deterministic, as the fp32 backward.
//
// Shared memory, in this order (byte offsets below; pieces multiples of 32 bytes):
//   dK, dV kernel: K, V, Q, dO (32, HS+8) bf16; dK, dV (32, HS+4) fp32; Sᵀ, dPᵀ (32, 36) fp32; Pᵀ, dSᵀ (32, 40)
//   bf16; lse₂, D (32) fp32.  dQ kernel: Q, dO, K, V bf16; dQ fp32; S, dP fp32; dS bf16; lse₂, D.
//   HS = 64: 49 / 38 KiB; HS = 128: 81 / 62 KiB; HS = 256: 145 / 110 KiB.
template <int HS, int BR, int BC>
struct AttentionWmmaBackwardLayout {
    static constexpr int ld = HS + 8, acc_ld = HS + 4, s_ld = BR + 4, p_ld = BR + 8;
    static_assert(BR == BC, "square tiles: Sᵀ (keys × queries) and S (queries × keys) share the row lengths");
    static constexpr size_t tile = 2 * 32 * ld, acc = 4 * 32 * acc_ld, score = 4 * 32 * s_ld, prob = 2 * 32 * p_ld;
    // dK, dV kernel
    static constexpr size_t k = 0, v = k + tile, q = v + tile, dout = q + tile, dk = dout + tile, dv = dk + acc,
                            s = dv + acc, dp = s + score, p = dp + score, ds = p + prob, lse2 = ds + prob,
                            d = lse2 + 4 * 32, kv_bytes = d + 4 * 32;
    // dQ kernel (the same names for the same tiles; no dV, no P)
    static constexpr size_t q_q = 0, q_dout = tile, q_k = 2 * tile, q_v = 3 * tile, q_dq = 4 * tile,
                            q_s = q_dq + acc, q_dp = q_s + score, q_ds = q_dp + score, q_lse2 = q_ds + prob,
                            q_d = q_lse2 + 4 * 32, q_bytes = q_d + 4 * 32;
    static_assert(BR == 32 && BC == 32, "the offsets above are for 32-row tiles");
};

// Loads lse (to base 2) and D of the query tile q0 into shared memory (0 past T); all threads.
__device__ inline void attention_wmma_load_row_stats(float* lse2s, float* Ds, const float* lse, const float* D, int b,
                                                     int h, int q0, int T, int NH, int BR) {
    for (int r = threadIdx.x; r < BR; r += blockDim.x) {
        int q = q0 + r;
        size_t row = (static_cast<size_t>(b) * NH + h) * T + q;
        lse2s[r] = q < T ? lse[row] * attention_log2e : 0.0f;
        Ds[r] = q < T ? D[row] : 0.0f;
    }
}

template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
attention_backward_kv_wmma_kernel(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int T, int NH,
                                  int NKV, int hs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bf16 wmma needs compute capability 8.0 (A100) or newer
#else
    using L = AttentionWmmaBackwardLayout<HS, BR, BC>;
    using wmma_col = nvcuda::wmma::col_major;
    using wmma_row = nvcuda::wmma::row_major;
    extern __shared__ __align__(32) unsigned char attention_wmma_smem[];
    unsigned char* smem = attention_wmma_smem;
    auto bf16_at = [&](size_t offset) { return reinterpret_cast<__nv_bfloat16*>(smem + offset); };
    auto f32_at = [&](size_t offset) { return reinterpret_cast<float*>(smem + offset); };
    __nv_bfloat16 *Ks = bf16_at(L::k), *Vs = bf16_at(L::v), *Qs = bf16_at(L::q), *dOs = bf16_at(L::dout);
    __nv_bfloat16 *Pt = bf16_at(L::p), *dSt = bf16_at(L::ds);      // (BC, BR+8) keys × queries
    float *dKs = f32_at(L::dk), *dVs = f32_at(L::dv);               // (BC, HS+4)
    float *St = f32_at(L::s), *dPt = f32_at(L::dp);                 // (BC, BR+4) keys × queries
    float *lse2s = f32_at(L::lse2), *Ds = f32_at(L::d);             // (BR)

    const int tid = threadIdx.x, warp = tid / 32, slab = warp % 2, role = warp / 2;
    const int b = blockIdx.z, g = blockIdx.y, group = NH / NKV;
    const int k0 = (gridDim.x - 1 - blockIdx.x) * BC;  // the first key tiles see the most queries: start them first
    const float scale = 1.0f / sqrtf(static_cast<float>(hs)), scale_log2 = scale * attention_log2e;

    auto k_row = [&](int key) { return qkv_k_offset(b, key, g, T, NH, NKV, hs); };
    auto v_row = [&](int key) { return qkv_v_offset(b, key, g, T, NH, NKV, hs); };
    attention_wmma_stage<HS, BC>(Ks, qkv, k0, T, hs, k_row);
    attention_wmma_stage<HS, BC>(Vs, qkv, k0, T, hs, v_row);
    for (int idx = tid; idx < BC * HS; idx += attention_flash_threads) {
        dKs[idx / HS * L::acc_ld + idx % HS] = 0.0f;
        dVs[idx / HS * L::acc_ld + idx % HS] = 0.0f;
    }
    const int cols = role * (HS / 2);  // this warp's half of the dK, dV columns
    for (int h = g * group; h < (g + 1) * group; h++)
        for (int q0 = k0 / BR * BR; q0 < T; q0 += BR) {
            __syncthreads();  // the previous tile's readers are done (and K, V, dK, dV are ready, first time)
            auto q_row = [&](int q) { return qkv_q_offset(b, q, h, T, NH, NKV, hs); };
            auto o_row = [&](int q) {  // dout (B, T, NH·hs)
                return (static_cast<size_t>(b) * T + q) * NH * hs + static_cast<size_t>(h) * hs;
            };
            attention_wmma_stage<HS, BR>(Qs, qkv, q0, T, hs, q_row);
            attention_wmma_stage<HS, BR>(dOs, dout, q0, T, hs, o_row);
            attention_wmma_load_row_stats(lse2s, Ds, lse, D, b, h, q0, T, NH, BR);
            __syncthreads();
            if (role == 0)  // Sᵀ = K·Qᵀ
                attention_wmma_warp_product<BR, HS, wmma_col>(St + 16 * slab * L::s_ld, L::s_ld,
                                                              Ks + 16 * slab * L::ld, L::ld, Qs, L::ld, false);
            else  // dPᵀ = V·dOᵀ
                attention_wmma_warp_product<BR, HS, wmma_col>(dPt + 16 * slab * L::s_ld, L::s_ld,
                                                              Vs + 16 * slab * L::ld, L::ld, dOs, L::ld, false);
            __syncthreads();
            for (int idx = tid; idx < BC * BR; idx += attention_flash_threads) {
                int kr = idx / BR, qc = idx % BR, key = k0 + kr, query = q0 + qc;
                float p = key <= query && query < T ? exp2f(St[kr * L::s_ld + qc] * scale_log2 - lse2s[qc]) : 0.0f;
                Pt[kr * L::p_ld + qc] = __float2bfloat16_rn(p);
                dSt[kr * L::p_ld + qc] = __float2bfloat16_rn(p * (dPt[kr * L::s_ld + qc] - Ds[qc]));
            }
            __syncthreads();
            // dV += Pᵀ·dO and dK += dSᵀ·Q (scale applied at the end), this warp's slab and half
            attention_wmma_warp_product<HS / 2, BR, wmma_row>(dVs + 16 * slab * L::acc_ld + cols, L::acc_ld,
                                                              Pt + 16 * slab * L::p_ld, L::p_ld, dOs + cols, L::ld,
                                                              true);
            attention_wmma_warp_product<HS / 2, BR, wmma_row>(dKs + 16 * slab * L::acc_ld + cols, L::acc_ld,
                                                              dSt + 16 * slab * L::p_ld, L::p_ld, Qs + cols, L::ld,
                                                              true);
        }
    __syncthreads();  // every warp's last store_matrix_sync is done before other threads read dK, dV
    for (int idx = tid; idx < BC * hs; idx += attention_flash_threads) {
        int kr = idx / hs, d = idx % hs, key = k0 + kr;
        if (key >= T) break;  // idx grows: the rest are past T too
        X* dK = dqkv + qkv_k_offset(b, key, g, T, NH, NKV, hs);
        X* dV = dqkv + qkv_v_offset(b, key, g, T, NH, NKV, hs);
        dK[d] = from_fp32<X>(to_fp32(dK[d]) + dKs[kr * L::acc_ld + d] * scale);
        dV[d] = from_fp32<X>(to_fp32(dV[d]) + dVs[kr * L::acc_ld + d]);
    }
#endif
}

template <int HS, int BR, int BC, class X>
__global__ void __launch_bounds__(attention_flash_threads)
attention_backward_q_wmma_kernel(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int T, int NH,
                                 int NKV, int hs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // bf16 wmma needs compute capability 8.0 (A100) or newer
#else
    using L = AttentionWmmaBackwardLayout<HS, BR, BC>;
    using wmma_col = nvcuda::wmma::col_major;
    using wmma_row = nvcuda::wmma::row_major;
    extern __shared__ __align__(32) unsigned char attention_wmma_smem[];
    unsigned char* smem = attention_wmma_smem;
    auto bf16_at = [&](size_t offset) { return reinterpret_cast<__nv_bfloat16*>(smem + offset); };
    auto f32_at = [&](size_t offset) { return reinterpret_cast<float*>(smem + offset); };
    __nv_bfloat16 *Qs = bf16_at(L::q_q), *dOs = bf16_at(L::q_dout), *Ks = bf16_at(L::q_k), *Vs = bf16_at(L::q_v);
    __nv_bfloat16* dSs = bf16_at(L::q_ds);                  // (BR, BC+8) queries × keys
    float* dQs = f32_at(L::q_dq);                           // (BR, HS+4)
    float *Ss = f32_at(L::q_s), *dPs = f32_at(L::q_dp);     // (BR, BC+4)
    float *lse2s = f32_at(L::q_lse2), *Ds = f32_at(L::q_d); // (BR)

    const int tid = threadIdx.x, warp = tid / 32, slab = warp % 2, role = warp / 2;
    const int b = blockIdx.z, h = blockIdx.y, g = h / (NH / NKV);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // the last query tiles see the most keys: start them first
    const float scale = 1.0f / sqrtf(static_cast<float>(hs)), scale_log2 = scale * attention_log2e;

    attention_wmma_stage<HS, BR>(Qs, qkv, q0, T, hs, [&](int q) { return qkv_q_offset(b, q, h, T, NH, NKV, hs); });
    attention_wmma_stage<HS, BR>(dOs, dout, q0, T, hs, [&](int q) {
        return (static_cast<size_t>(b) * T + q) * NH * hs + static_cast<size_t>(h) * hs;
    });
    attention_wmma_load_row_stats(lse2s, Ds, lse, D, b, h, q0, T, NH, BR);
    for (int idx = tid; idx < BR * HS; idx += attention_flash_threads) dQs[idx / HS * L::acc_ld + idx % HS] = 0.0f;
    const int cols = role * (HS / 2), q_last = min(q0 + BR, T) - 1;
    for (int k0 = 0; k0 <= q_last; k0 += BC) {
        __syncthreads();  // the previous tile's readers are done (and Q, dO, dQ are ready, first time)
        auto k_row = [&](int key) { return qkv_k_offset(b, key, g, T, NH, NKV, hs); };
        auto v_row = [&](int key) { return qkv_v_offset(b, key, g, T, NH, NKV, hs); };
        attention_wmma_stage<HS, BC>(Ks, qkv, k0, T, hs, k_row);
        attention_wmma_stage<HS, BC>(Vs, qkv, k0, T, hs, v_row);
        __syncthreads();
        if (role == 0)  // S = Q·Kᵀ
            attention_wmma_warp_product<BC, HS, wmma_col>(Ss + 16 * slab * L::s_ld, L::s_ld, Qs + 16 * slab * L::ld,
                                                          L::ld, Ks, L::ld, false);
        else  // dP = dO·Vᵀ
            attention_wmma_warp_product<BC, HS, wmma_col>(dPs + 16 * slab * L::s_ld, L::s_ld, dOs + 16 * slab * L::ld,
                                                          L::ld, Vs, L::ld, false);
        __syncthreads();
        for (int idx = tid; idx < BR * BC; idx += attention_flash_threads) {
            int qr = idx / BC, kc = idx % BC, query = q0 + qr, key = k0 + kc;
            float p = key <= query && query < T ? exp2f(Ss[qr * L::s_ld + kc] * scale_log2 - lse2s[qr]) : 0.0f;
            dSs[qr * L::p_ld + kc] = __float2bfloat16_rn(p * (dPs[qr * L::s_ld + kc] - Ds[qr]));
        }
        __syncthreads();
        // dQ += dS·K (scale applied at the end), this warp's slab and half
        attention_wmma_warp_product<HS / 2, BC, wmma_row>(dQs + 16 * slab * L::acc_ld + cols, L::acc_ld,
                                                          dSs + 16 * slab * L::p_ld, L::p_ld, Ks + cols, L::ld, true);
    }
    __syncthreads();  // every warp's last store_matrix_sync is done before other threads read dQ
    for (int idx = tid; idx < BR * hs; idx += attention_flash_threads) {
        int qr = idx / hs, d = idx % hs, query = q0 + qr;
        if (query >= T) break;
        X* dQ = dqkv + qkv_q_offset(b, query, h, T, NH, NKV, hs);
        dQ[d] = from_fp32<X>(to_fp32(dQ[d]) + dQs[qr * L::acc_ld + d] * scale);
    }
#endif
}

template <int HS, class X>
void attention_backward_wmma_launch(X* dqkv, const X* dout, const float* lse, const float* D, const X* qkv, int B,
                                    int T, int NH, int NKV, int hs, cudaStream_t stream) {
    constexpr int BR = 32, BC = 32;
    using L = AttentionWmmaBackwardLayout<HS, BR, BC>;
    auto kv_kernel = attention_backward_kv_wmma_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(kv_kernel, L::kv_bytes, "attention_backward (wmma)", hs);
    kv_kernel<<<dim3(ceil_div(T, BC), NKV, B), attention_flash_threads, L::kv_bytes, stream>>>(
        dqkv, dout, lse, D, qkv, T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
    auto q_kernel = attention_backward_q_wmma_kernel<HS, BR, BC, X>;
    attention_allow_shared_bytes(q_kernel, L::q_bytes, "attention_backward (wmma)", hs);
    q_kernel<<<dim3(ceil_div(T, BR), NH, B), attention_flash_threads, L::q_bytes, stream>>>(dqkv, dout, lse, D, qkv,
                                                                                          T, NH, NKV, hs);
    cuda_check(cudaGetLastError());
}

// GPTCU_OP_WITH(attention_forward, ...): layers_cpu_blas.h (a faster CPU path)
// GPTCU_OP_WITH(attention_backward, ...): layers_cpu_blas.h (a faster CPU path)
