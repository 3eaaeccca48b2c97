// paged_kv.cuh — the paged KV cache of inference (vLLM's PagedAttention): its layout, the free list of
// blocks, and the ops that read and write through block tables, each as in layers.cuh (math, CPU reference,
// kernel, launcher, op(exec, ...) dispatch):
//   embed_at_positions   x_i = wte[token_i] + wpe[pos_i] for rows that are not a (B, T) rectangle
//   paged_kv_append      row i's K and V to position pos_i of its sequence's blocks
//   paged_attention      row i's query against positions 0..pos_i of its sequence: split-K ("flash decoding")
// This is gpt.cu's one attention-against-a-cache path: decode (one row per sequence), prefill (many rows of
// one sequence) and a mix of both. A contiguous cache is the special case of one block table per sequence.
// docs/inference.md explains it; tests are in test/test_infer.cu (and the decode tests of test_attention.cu).
// Precision: as attention.cuh, every kernel and launcher is one template on the element type X (float or
// __nv_bfloat16) of the activations (qkv, out, the embeddings) and the KV pools; the split-K partial results and
// all arithmetic are fp32, and each X stored is rounded once.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.cuh"
#include "attention.cuh"

// ----------------------------------------------------------------------------
// Memory: every layer keeps, for every token of every live sequence, a key and a value of NKV·hs elements:
//   bytes per token = 2 · L · NKV · hs · sizeof(X)   (GPT-2 124M in fp32: 2·12·12·64·4 = 73,728 B = 72 KiB)
// A contiguous cache reserves max_seq_len of them per sequence; most sequences are shorter, so most of
// it is wasted. A paged cache (vLLM's PagedAttention) cuts it into blocks of block_size tokens:
//   k_pool, v_pool: (L, num_blocks, NKV, block_size, hs)
// and gives each sequence a block table: position p of the sequence lives in block table[p / block_size],
// slot p % block_size. Blocks come from a free list when a sequence grows past its last block and return
// to it when the sequence finishes, so waste is under one block per sequence.
//
// The one place that knows the layout: the row of (layer's pool, sequence's table, position p, kv head g).
__host__ __device__ inline size_t paged_kv_row(const int* table, int p, int g, int NKV, int block_size, int hs) {
    return ((static_cast<size_t>(table[p / block_size]) * NKV + g) * block_size + p % block_size) * hs;
}

// The free list: a stack of block ids (the most recently freed block is reused first: it is warm in L2).
class BlockAllocator {
public:
    explicit BlockAllocator(int num_blocks) : in_use_(num_blocks, 0) {
        if (num_blocks < 1) throw std::runtime_error("the KV cache needs at least one block");
        for (int b = num_blocks - 1; b >= 0; b--) free_.push_back(b);
    }
    int num_blocks() const { return static_cast<int>(in_use_.size()); }
    int free_blocks() const { return static_cast<int>(free_.size()); }
    // Appends n blocks to `blocks`, or none at all (returns false) when fewer than n are free.
    bool allocate(int n, std::vector<int>& blocks) {
        if (n > free_blocks()) return false;
        for (int i = 0; i < n; i++) {
            int b = free_.back();
            free_.pop_back();
            in_use_[b] = 1;
            blocks.push_back(b);
        }
        return true;
    }
    void release(std::vector<int>& blocks) {
        for (int b : blocks) {
            if (b < 0 || b >= num_blocks() || !in_use_[b])
                throw std::logic_error("BlockAllocator: block " + std::to_string(b) +
                                       " freed twice or never allocated");
            in_use_[b] = 0;
            free_.push_back(b);
        }
        blocks.clear();
    }

private:
    std::vector<int> free_;
    std::vector<char> in_use_;
};

inline int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

// ----------------------------------------------------------------------------
// The new tokens of a step are N rows, row i = (token, position pos_i, sequence slot s_i). Three ops
// differ from training because rows are not a (B, T) rectangle:
//
// embed_at_positions: out_i = wte[token_i] + wpe[pos_i]   (wpe null for RoPE models)
//   cost: N·C adds; reads 2·N·C, writes N·C elements: memory-bound.
template <class Real>
void embed_at_positions_cpu(Real* out /*(N, C)*/, const int* tokens, const int* positions /*(N)*/,
                            const Real* wte /*(Vp, C)*/, const Real* wpe /*(maxT, C) or null*/, int N, int C) {
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            out[static_cast<size_t>(i) * C + c] = wte[static_cast<size_t>(tokens[i]) * C + c] +
                                                  (wpe ? wpe[static_cast<size_t>(positions[i]) * C + c] : Real(0));
}
// One thread per (row, channel), channel fastest: coalesced reads of both embedding rows and of the write.
template <class X>
__global__ void embed_at_positions_kernel(X* out, const int* tokens, const int* positions, const X* wte, const X* wpe,
                                          int N, int C) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(N) * C) return;
    int i = static_cast<int>(idx / C), c = static_cast<int>(idx % C);
    float x = to_fp32(wte[static_cast<size_t>(tokens[i]) * C + c]);
    if (wpe) x += to_fp32(wpe[static_cast<size_t>(positions[i]) * C + c]);
    out[idx] = from_fp32<X>(x);
}
template <class X>
void embed_at_positions(X* out /*(N, C)*/, const int* tokens, const int* positions /*(N)*/, const X* wte /*(Vp, C)*/,
                        const std::type_identity_t<X>* wpe /*(maxT, C) or nullptr*/, int N, int C,
                        cudaStream_t stream) {
    const int block = 256;
    embed_at_positions_kernel<<<static_cast<unsigned>(ceil_div<size_t>(static_cast<size_t>(N) * C, block)), block, 0,
                                stream>>>(out, tokens, positions, wte, wpe, N, C);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(embed_at_positions)  // op(exec, ...): the kernel or the CPU reference (common.cuh)

// paged_kv_append: the K and V of row i go to position pos_i of sequence s_i's blocks.
//   tables: (max_seqs, max_blocks) block ids; row i uses tables[s_i]. Cost: 2·N·NKV·hs elements copied.
template <class Real>
void paged_kv_append_cpu(Real* k_pool, Real* v_pool /*(num_blocks, NKV, block_size, hs)*/,
                         const Real* qkv /*(N, (NH+2NKV)·hs)*/, const int* tables, const int* slots,
                         const int* positions /*(N)*/, int N, int NH, int NKV, int hs, int block_size, int max_blocks) {
    for (int i = 0; i < N; i++)
        for (int g = 0; g < NKV; g++) {
            size_t row =
                paged_kv_row(tables + static_cast<size_t>(slots[i]) * max_blocks, positions[i], g, NKV, block_size, hs);
            for (int d = 0; d < hs; d++) {
                k_pool[row + d] = qkv[qkv_k_offset(0, i, g, N, NH, NKV, hs) + d];
                v_pool[row + d] = qkv[qkv_v_offset(0, i, g, N, NH, NKV, hs) + d];
            }
        }
}
// One thread per (row, kv head, d), d fastest: a warp copies consecutive elements of one K row and one V row.
template <class X>
__global__ void paged_kv_append_kernel(X* k_pool, X* v_pool, const X* qkv, const int* tables, const int* slots,
                                       const int* positions, int N, int NH, int NKV, int hs, int block_size,
                                       int max_blocks) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(N) * NKV * hs) return;
    int d = static_cast<int>(idx % hs), g = static_cast<int>(idx / hs % NKV), i = static_cast<int>(idx / hs / NKV);
    size_t row =
        paged_kv_row(tables + static_cast<size_t>(slots[i]) * max_blocks, positions[i], g, NKV, block_size, hs);
    k_pool[row + d] = qkv[qkv_k_offset(0, i, g, N, NH, NKV, hs) + d];
    v_pool[row + d] = qkv[qkv_v_offset(0, i, g, N, NH, NKV, hs) + d];
}
template <class X>
void paged_kv_append(X* k_pool, X* v_pool /*(num_blocks, NKV, block_size, hs)*/, const X* qkv /*(N, (NH+2NKV)·hs)*/,
                     const int* tables, const int* slots, const int* positions /*(N)*/, int N, int NH, int NKV, int hs,
                     int block_size, int max_blocks, cudaStream_t stream) {
    const int block = 256;
    paged_kv_append_kernel<<<static_cast<unsigned>(ceil_div<size_t>(static_cast<size_t>(N) * NKV * hs, block)), block,
                             0, stream>>>(k_pool, v_pool, qkv, tables, slots, positions, N, NH, NKV, hs, block_size,
                                          max_blocks);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(paged_kv_append)

// paged_attention: row i's query (head h) attends to positions 0..pos_i of its own sequence, read through
// the block table (causality is "only up to my own position"; rows of the same sequence in one step see
// each other because their K/V were appended first).
//   s_t = q·k_t / sqrt(hs),  p_t = exp(s_t − max s) / Σ exp(s − max s),  out = Σ_t p_t·v_t
//   cost per (row, head): 4·len·hs FLOP, and len·2·hs elements of cache read: memory-bound (decode reads the
//   whole cache once per step; that is the roofline of docs/inference.md).
// max_len: at least every pos_i + 1 (the host knows the longest context of the step; it sizes the kernel's
// grid and the reference's scratch).
template <class Real>
void paged_attention_cpu(Real* out /*(N, NH·hs)*/, const Real* qkv /*(N, (NH+2NKV)·hs)*/, const Real* k_pool,
                         const Real* v_pool, const int* tables, const int* slots, const int* positions /*(N)*/,
                         int max_len, int N, int NH, int NKV, int hs, int block_size, int max_blocks) {
    Real scale = 1 / std::sqrt(static_cast<Real>(hs));
    for (int i = 0; i < N; i++)
        if (positions[i] + 1 > max_len)
            throw std::runtime_error("paged_attention_cpu: row " + std::to_string(i) + " is at position " +
                                     std::to_string(positions[i]) + ", past max_len " + std::to_string(max_len));
    // (row, head) pairs are independent: split over the cores (a decode step has one row, so rows alone would
    // leave all but one core waiting). Within a pair the sums run in a fixed order: the same bits on any thread count.
#pragma omp parallel for schedule(dynamic)
    for (int ih = 0; ih < N * NH; ih++) {
        const int i = ih / NH, h = ih % NH, g = h / (NH / NKV);
        const int* table = tables + static_cast<size_t>(slots[i]) * max_blocks;
        const int len = positions[i] + 1;
        std::vector<Real> p(len);
        const Real* q = qkv + qkv_q_offset(0, i, h, N, NH, NKV, hs);
        Real m = -std::numeric_limits<Real>::infinity(), sum = 0;
        for (int t = 0; t < len; t++) {
            const Real* k = k_pool + paged_kv_row(table, t, g, NKV, block_size, hs);
            Real dot = 0;
#pragma omp simd reduction(+ : dot)  // SIMD partial sums: the order is fixed by the build, not by the run
            for (int d = 0; d < hs; d++) dot += q[d] * k[d];
            m = std::max(m, p[t] = dot * scale);
        }
        for (int t = 0; t < len; t++) sum += (p[t] = std::exp(p[t] - m));
        // out = Σ_t p_t·v_t / sum, walking the cache row by row (each v_t read once, contiguously)
        Real* o = out + (static_cast<size_t>(i) * NH + h) * hs;
        std::fill(o, o + hs, Real(0));
        for (int t = 0; t < len; t++) {
            const Real* v = v_pool + paged_kv_row(table, t, g, NKV, block_size, hs);
            for (int d = 0; d < hs; d++) o[d] += p[t] * v[d];
        }
        for (int d = 0; d < hs; d++) o[d] /= sum;
    }
}

// The kernels split each row's context into chunks of 128 keys (split-K, "flash decoding"), so a long
// context is read by many blocks at once and no block holds more than 128 scores, whatever the length:
//   pass 1, block (chunk c, head h, row i): over its keys, m_c = max s, l_c = Σ exp(s − m_c),
//           o_c = Σ exp(s − m_c)·v  (unnormalised), written to the attention workspace;
//   pass 2, block (h, i): M = max_c m_c,  out = Σ_c exp(m_c − M)·o_c / Σ_c exp(m_c − M)·l_c
// (the log-sum-exp merge of the online softmax, docs/attention.md). Both work in base 2: exp(x) = 2^(x·log2 e),
// with log2 e folded into the query scale. Shared memory is static and fixed (hs + 128 floats): no
// context length needs more, so there is no shared-memory limit on the context (the old one-block-per-row
// kernel kept every score of a row in shared memory and stopped near 12k tokens at hs = 64).
// Workspace (attention_workspace()): N·NH·ceil(max_len/128)·(hs + 2) floats.
constexpr int paged_attention_chunk = 128;   // keys per pass-1 block = its threads
constexpr int paged_attention_max_hs = 256;  // the query held in shared memory

// Pass 1. Thread j scores key start + j (q in shared memory; each thread walks its own K row, hs
// consecutive floats, which L1 turns into full-line reads); block max and sum (common.cuh); then thread
// d < hs accumulates o_d = Σ_j p_j·v_j[d] (a warp reads consecutive d of one V row: coalesced). Chunks past
// the row's length leave at once (a step's rows have different lengths; the grid is sized for the longest).
template <class X>
__global__ void __launch_bounds__(paged_attention_chunk)
paged_attention_partial_kernel(float* partial_o /*(N, NH, chunks, hs)*/, float* partial_ml /*(N, NH, chunks, 2)*/,
                               const X* qkv, const X* k_pool, const X* v_pool, const int* tables, const int* slots,
                               const int* positions, int N, int NH, int NKV, int hs, int block_size, int max_blocks) {
    __shared__ float qs[paged_attention_max_hs];  // q · log2(e) / sqrt(hs)
    __shared__ float ps[paged_attention_chunk];   // this chunk's exp2(s − m)
    int tid = threadIdx.x, chunk = blockIdx.x, h = blockIdx.y, i = blockIdx.z, chunks = gridDim.x;
    int len = positions[i] + 1, start = chunk * paged_attention_chunk;
    if (start >= len) return;  // the whole block leaves together
    int n = min(paged_attention_chunk, len - start), g = h / (NH / NKV);
    const int* table = tables + static_cast<size_t>(slots[i]) * max_blocks;
    const float scale_log2 = attention_log2e / sqrtf(static_cast<float>(hs));
    const X* q = qkv + qkv_q_offset(0, i, h, N, NH, NKV, hs);
    for (int d = tid; d < hs; d += blockDim.x) qs[d] = to_fp32(q[d]) * scale_log2;
    __syncthreads();
    float s = -INFINITY;
    if (tid < n) {
        const X* k = k_pool + paged_kv_row(table, start + tid, g, NKV, block_size, hs);
        s = 0.0f;
        for (int d = 0; d < hs; d++) s += qs[d] * to_fp32(k[d]);
    }
    float m = block_reduce_max(s);  // finite: the chunk has at least one key
    float p = tid < n ? exp2f(s - m) : 0.0f;
    ps[tid] = p;
    float l = block_reduce_sum(p);  // its barriers also publish ps to the whole block
    size_t part = (static_cast<size_t>(i) * NH + h) * chunks + chunk;
    if (tid == 0) {
        partial_ml[2 * part] = m;
        partial_ml[2 * part + 1] = l;
    }
    for (int d = tid; d < hs; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++)
            acc += ps[j] * to_fp32(v_pool[paged_kv_row(table, start + j, g, NKV, block_size, hs) + d]);
        partial_o[part * hs + d] = acc;
    }
}

// Pass 2. Block (h, i): thread d merges the chunks' partial results for output column d, chunks in order.
template <class X>
__global__ void paged_attention_combine_kernel(X* out /*(N, NH·hs)*/, const float* partial_o, const float* partial_ml,
                                               const int* positions, int NH, int hs, int chunks) {
    int h = blockIdx.x, i = blockIdx.y;
    int used = min(chunks, positions[i] / paged_attention_chunk + 1);  // the chunks pass 1 wrote: ceil(len / 128)
    size_t part0 = (static_cast<size_t>(i) * NH + h) * chunks;
    float M = -INFINITY;
    for (int c = 0; c < used; c++) M = fmaxf(M, partial_ml[2 * (part0 + c)]);
    for (int d = threadIdx.x; d < hs; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int c = 0; c < used; c++) {
            float w = exp2f(partial_ml[2 * (part0 + c)] - M);
            num += w * partial_o[(part0 + c) * hs + d];
            den += w * partial_ml[2 * (part0 + c) + 1];
        }
        out[(static_cast<size_t>(i) * NH + h) * hs + d] = from_fp32<X>(num / den);
    }
}

template <class X>
void paged_attention(X* out /*(N, NH·hs)*/, const X* qkv /*(N, (NH+2NKV)·hs)*/, const X* k_pool,
                     const X* v_pool /*(num_blocks, NKV, block_size, hs)*/, const int* tables, const int* slots,
                     const int* positions /*(N)*/, int max_len, int N, int NH, int NKV, int hs, int block_size,
                     int max_blocks, cudaStream_t stream) {
    attention_check_shape("paged_attention", 1, N, NH, NKV, hs);
    if (hs > paged_attention_max_hs)
        throw std::runtime_error("paged_attention: head size " + std::to_string(hs) + " is above the " +
                                 std::to_string(paged_attention_max_hs) +
                                 " the kernel holds in shared memory; raise paged_attention_max_hs");
    if (N > 65535)
        throw std::runtime_error("paged_attention: " + std::to_string(N) + " rows in one step (at most 65535: grid.z)");
    if (max_len < 1) throw std::runtime_error("paged_attention: max_len " + std::to_string(max_len) + " must be >= 1");
    int chunks = ceil_div(max_len, paged_attention_chunk);
    size_t parts = static_cast<size_t>(N) * NH * chunks;
    WorkspaceCarver count{nullptr};
    count.take<float>(parts * hs);
    count.take<float>(parts * 2);
    WorkspaceCarver carve{attention_workspace().get(count.used)};
    float* partial_o = carve.take<float>(parts * hs);
    float* partial_ml = carve.take<float>(parts * 2);
    paged_attention_partial_kernel<<<dim3(chunks, NH, N), paged_attention_chunk, 0, stream>>>(
        partial_o, partial_ml, qkv, k_pool, v_pool, tables, slots, positions, N, NH, NKV, hs, block_size, max_blocks);
    cuda_check(cudaGetLastError());
    paged_attention_combine_kernel<<<dim3(NH, N), 128, 0, stream>>>(out, partial_o, partial_ml, positions, NH, hs,
                                                                     chunks);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(paged_attention)
