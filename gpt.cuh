// gpt.cuh — the model: one description of a GPT (GPT-2 or Llama family) that runs on two backends.
//
//   DeviceOps: the CUDA kernels of layers.cuh and attention.cuh (on a GPU; emulated by cudasim in the CPU build)
//   HostOps:   the CPU ops: the _cpu references, and for what dominates a training step their fast
//              versions (layers_cpu_blas.h: OpenBLAS, OpenMP, SIMD), the fast path of the CPU build
//
// The transformer block is one function, block_forward (with its backward, block_backward), used by
// training (GPT::forward, causal attention over the batch) and by inference (engine.cuh, attention through
// the paged KV cache); the differences between GPT-2 and Llama sit in one section above it. `GPT<Ops>`
// holds one contiguous buffer each for parameters, gradients and AdamW's two moments (so a data-parallel
// all-reduce or a ZeRO shard is one pointer and a length), an activation buffer sized from the config and
// the largest (B, T), and forward/backward/update. Every op is called as op(exec, ...) (common.cuh).
//
// PyTorch equivalents, block by block (GPT-2; Llama swaps the marked lines):
//   x = wte[idx] + wpe[pos]                          (Llama: x = wte[idx]; positions enter through RoPE)
//   for each layer:
//     x = x + attn_proj(attention(qkv(ln_1(x))))    (Llama: rmsnorm, rope(q, k) inside, GQA)
//     x = x + mlp_proj(gelu(fc(ln_2(x))))           (Llama: down(silu(gate(x)) * up(x)))
//   logits = ln_f(x) @ wteᵀ                          (Llama: untied lm_head)
//   loss = cross_entropy(logits, targets)
#pragma once
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include <sys/mman.h>

#include <nlohmann/json.hpp>

#include "common.cuh"
#include "layers.cuh"
#include "attention.cuh"
#include "layers_cpu_blas.h"

// ----------------------------------------------------------------------------
// Configuration
enum class Arch : int { gpt2 = 0, llama = 1 };

// Vp: the vocabulary rounded up to a multiple of 128, so the classifier matmul tiles well (llm.c's rule).
constexpr int padded_vocab(int V) { return (V + 127) / 128 * 128; }

struct GPTConfig {
    Arch arch = Arch::gpt2;
    int max_seq_len = 1024;           // maxT: positions the model has (GPT-2: rows of wpe)
    int vocab_size = 50257;           // V: tokens of the tokenizer
    int padded_vocab_size = 50304;    // Vp: V rounded up (to 128) so the classifier matmul tiles well
    int n_layer = 12;                 // L
    int n_head = 12;                  // NH
    int n_kv_head = 12;               // NKV: GQA when < NH, MQA when 1 (GPT-2: NKV == NH)
    int n_embd = 768;                 // C
    int ffn_hidden = 3072;            // H: GPT-2's MLP width 4C; Llama's SwiGLU hidden size
    float rope_theta = 10000.0f;      // Llama only
    float norm_eps = 1e-5f;           // LayerNorm / RMSNorm epsilon
    bool tied_embeddings = true;      // logits = ln_f(x) · wteᵀ; Llama: a separate lm_head

    int head_size() const { return n_embd / n_head; }                                   // hs
    // What generation keeps per token: K and V, of every layer, for NKV heads of hs values. GQA divides it
    // by NH / NKV (the attention reads the same bytes per query head group instead of per head).
    // element_bytes: 4 for an fp32 cache, 2 for bf16.
    size_t kv_cache_bytes_per_token(size_t element_bytes = sizeof(float)) const {
        return 2 * static_cast<size_t>(n_layer) * n_kv_head * head_size() * element_bytes;
    }
    int qkv_channels() const { return (n_head + 2 * n_kv_head) * head_size(); }         // c_attn's output width
    int fc_channels() const { return arch == Arch::gpt2 ? ffn_hidden : 2 * ffn_hidden; } // c_fc's output width
    bool is_llama() const { return arch == Arch::llama; }

    // Every rule the ops rely on, checked once, with a message that says what to change.
    void validate() const {
        auto fail = [](const std::string& m) { throw std::runtime_error("model config: " + m); };
        if (n_layer < 1 || n_head < 1 || n_embd < 1 || vocab_size < 1 || max_seq_len < 1 || ffn_hidden < 1)
            fail("n_layer, n_head, n_embd, vocab_size, max_seq_len and ffn_hidden must be positive");
        if (n_embd % n_head)
            fail("n_embd (" + std::to_string(n_embd) + ") must be divisible by n_head (" + std::to_string(n_head) +
                 ")");
        if (n_kv_head < 1 || n_head % n_kv_head)
            fail("n_kv_head must divide n_head (got " + std::to_string(n_kv_head) + ")");
        if (arch == Arch::gpt2 && n_kv_head != n_head) fail("GPT-2 has n_kv_head == n_head; use arch llama for GQA");
        if (padded_vocab_size < vocab_size) fail("padded_vocab_size must be >= vocab_size");
        if (is_llama() && head_size() % 2) fail("RoPE needs an even head size");
        if (head_size() > attention_flash_max_head_size)  // both paths refuse it, so both accept the same models
            fail("head size n_embd / n_head = " + std::to_string(head_size()) + " exceeds the fused attention's " +
                 std::to_string(attention_flash_max_head_size) + "; use more heads");
    }
};

inline void to_json(nlohmann::json& j, const GPTConfig& c) {
    j = {{"arch", c.arch == Arch::gpt2 ? "gpt2" : "llama"},
         {"max_seq_len", c.max_seq_len},
         {"vocab_size", c.vocab_size},
         {"padded_vocab_size", c.padded_vocab_size},
         {"n_layer", c.n_layer},
         {"n_head", c.n_head},
         {"n_kv_head", c.n_kv_head},
         {"n_embd", c.n_embd},
         {"ffn_hidden", c.ffn_hidden},
         {"rope_theta", c.rope_theta},
         {"norm_eps", c.norm_eps},
         {"tied_embeddings", c.tied_embeddings}};
}
inline void from_json(const nlohmann::json& j, GPTConfig& c) {
    std::string arch = j.value("arch", "gpt2");
    if (arch != "gpt2" && arch != "llama")
        throw std::runtime_error("model config: arch '" + arch + "' is not gpt2 or llama");
    c.arch = arch == "gpt2" ? Arch::gpt2 : Arch::llama;
    c.max_seq_len = j.at("max_seq_len");
    c.vocab_size = j.value("vocab_size", 50257);  // GPT-2's; train_gpt takes the tokenizer's when absent
    c.padded_vocab_size = j.value("padded_vocab_size", padded_vocab(c.vocab_size));
    c.n_layer = j.at("n_layer");
    c.n_head = j.at("n_head");
    c.n_kv_head = j.value("n_kv_head", c.n_head);
    c.n_embd = j.at("n_embd");
    // Default MLP width. GPT-2: 4·C. Llama: SwiGLU has three C×H matrices instead of two, so H = 8/3·C keeps
    // the MLP's parameters and FLOPs at GPT-2's 8·C²; rounded up to a multiple of 32 (Meta rounds to 256).
    c.ffn_hidden = j.value("ffn_hidden", c.arch == Arch::gpt2 ? 4 * c.n_embd : (8 * c.n_embd + 95) / 96 * 32);
    c.rope_theta = j.value("rope_theta", 10000.0f);
    c.norm_eps = j.value("norm_eps", 1e-5f);
    c.tied_embeddings = j.value("tied_embeddings", c.arch == Arch::gpt2);
}

// One line for a program's start-up: the KV cache per token and for `context` tokens, against what
// the same model would need with n_kv_head = n_head (the saving of GQA / MQA).
inline std::string kv_cache_summary(const GPTConfig& c, int context, size_t element_bytes = sizeof(float)) {
    auto human = [](double bytes) {
        char buf[32];
        if (bytes >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1 << 30));
        else if (bytes >= 1 << 20) std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1 << 20));
        else std::snprintf(buf, sizeof buf, "%.1f KiB", bytes / 1024);
        return std::string(buf);
    };
    size_t per_token = c.kv_cache_bytes_per_token(element_bytes), mha = per_token / c.n_kv_head * c.n_head;
    std::string s = "KV cache: " + human(per_token) + "/token = 2 (K, V) x " + std::to_string(c.n_layer) +
                    " layers x " + std::to_string(c.n_kv_head) + " kv heads x " + std::to_string(c.head_size()) +
                    " x " + std::to_string(element_bytes) + " bytes; " +
                    human(static_cast<double>(per_token) * context) + " for " + std::to_string(context) + " tokens";
    if (c.n_kv_head < c.n_head)
        s += " (with n_kv_head = n_head = " + std::to_string(c.n_head) + ": " +
             human(static_cast<double>(mha) * context) + ", " + std::to_string(c.n_head / c.n_kv_head) + "x more)";
    return s;
}

// ----------------------------------------------------------------------------
// Parameters: one contiguous buffer, tensor after tensor in this order. A tensor the architecture
// does not have has size 0 (GPT-2 has no lm_head when tied; Llama has no wpe, no biases).
enum ParamIndex {
    WTE, WPE, LN1W, LN1B, QKVW, QKVB, ATTPROJW, ATTPROJB, LN2W, LN2B, FCW, FCB, FCPROJW, FCPROJB, LNFW, LNFB, LMHEAD,
    NUM_PARAM_TENSORS
};
// name, and whether AdamW decays it: matrices and embeddings decay; biases and norm gains do not.
inline const char* param_name(int i) {
    static const char* names[] = {"wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
                                  "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "lm_head"};
    return names[i];
}
inline bool param_decays(int i) {
    return i == WTE || i == WPE || i == QKVW || i == ATTPROJW || i == FCW || i == FCPROJW || i == LMHEAD;
}

inline std::array<size_t, NUM_PARAM_TENSORS> param_sizes(const GPTConfig& c) {
    size_t Vp = c.padded_vocab_size, C = c.n_embd, L = c.n_layer, QKVC = c.qkv_channels(), F = c.fc_channels(),
           H = c.ffn_hidden;
    bool g = !c.is_llama();
    return {
        Vp * C,                   // wte      (Vp, C)  token embedding; rows V..Vp-1 stay zero
        g ? c.max_seq_len * C : 0,// wpe      (maxT, C) learned positions (GPT-2)
        L * C,                    // ln1w     (L, C)
        g ? L * C : 0,            // ln1b     (L, C)
        L * QKVC * C,              // qkvw     (L, QKVC, C)  rows: [q heads | k heads | v heads]
        g ? L * QKVC : 0,          // qkvb     (L, QKVC)
        L * C * C,                // attprojw (L, C, C)
        g ? L * C : 0,            // attprojb (L, C)
        L * C,                    // ln2w     (L, C)
        g ? L * C : 0,            // ln2b     (L, C)
        L * F * C,                // fcw      (L, F, C)  GPT-2: F = 4C; Llama: F = 2H, rows [gate | up]
        g ? L * F : 0,            // fcb      (L, F)
        L * C * H,                // fcprojw  (L, C, H)
        g ? L * C : 0,            // fcprojb  (L, C)
        C,                        // lnfw     (C)
        g ? C : 0,                // lnfb     (C)
        c.tied_embeddings ? 0 : Vp * C,  // lm_head (Vp, C) when not tied
    };
}

// Pointers to each tensor of a parameter-layout buffer of element type T: the weights the ops read (T), or the
// fp32 master weights and their gradients (the rule at the top of layers.cuh).
template <class T>
struct ParameterTensors {
    std::array<T*, NUM_PARAM_TENSORS> t{};
    T* operator[](int i) const { return t[i]; }
};
template <class T>
ParameterTensors<T> point_parameters(T* base, const std::array<size_t, NUM_PARAM_TENSORS>& sizes) {
    ParameterTensors<T> p;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        p.t[i] = sizes[i] ? base : nullptr;
        base += sizes[i];
    }
    return p;
}

// ----------------------------------------------------------------------------
// Activations kept from forward for backward, laid out for the largest (B, T); a smaller batch uses
// the front of each tensor. Per-layer tensors are (L, ...) and layer l's slice starts at l·B·T·(width).
enum ActIndex {
    ENCODED, LN1, LN1_MEAN, LN1_RSTD, QKV, ATTY, ATT_LSE, ATTPROJ, RESIDUAL2, LN2, LN2_MEAN, LN2_RSTD, FCH, FCH_ACT,
    FCPROJ, RESIDUAL3, LNF, LNF_MEAN, LNF_RSTD, LOGITS, LOSSES,
    // gradient scratch for backward (one layer at a time)
    DRESIDUAL, DLN, DQKV, DATTY, DFCH, DFCH_ACT,
    NUM_ACT_TENSORS
};
inline std::array<size_t, NUM_ACT_TENSORS> activation_sizes(const GPTConfig& c, size_t B, size_t T) {
    size_t N = B * T, C = c.n_embd, L = c.n_layer, NH = c.n_head, QKVC = c.qkv_channels(), F = c.fc_channels(),
           G = c.ffn_hidden, Vp = c.padded_vocab_size;
    return {
        N * C,                                  // encoded   (B, T, C)
        L * N * C, L * N, L * N,                // ln1 (L, B, T, C), ln1_mean, ln1_rstd (L, B, T)
        L * N * QKVC,                            // qkv       (L, B, T, QKVC)  after RoPE for Llama
        L * N * C,                              // atty      (L, B, T, C)
        L * B * NH * T,                         // att_lse   (L, B, NH, T)
        L * N * C,                              // attproj   (L, B, T, C)
        L * N * C,                              // residual2 (L, B, T, C)
        L * N * C, L * N, L * N,                // ln2, ln2_mean, ln2_rstd
        L * N * F,                              // fch       (L, B, T, F)
        L * N * G,                              // fch_act   (L, B, T, H)  gelu(fch) or swiglu(fch)
        L * N * C,                              // fcproj    (L, B, T, C)
        L * N * C,                              // residual3 (L, B, T, C)
        N * C, N, N,                            // lnf (B, T, C), lnf_mean, lnf_rstd (B, T)
        N * Vp,                                 // logits    (B, T, Vp); dlogits in place after the loss
        N,                                      // losses    (B, T)
        N * C, N * C, N * QKVC, N * C, N * F, N * G,  // dresidual, dln, dqkv, datty, dfch, dfch_act
    };
}

// Which activations are fp32 whatever the model's element type is: the norms' statistics, attention's log-sum-exp,
// the losses.
inline bool activation_is_fp32(int i) {
    return i == LN1_MEAN || i == LN1_RSTD || i == ATT_LSE || i == LN2_MEAN || i == LN2_RSTD || i == LNF_MEAN ||
           i == LNF_RSTD || i == LOSSES;
}

// ----------------------------------------------------------------------------
// The two backends: where the model's memory lives, and so which implementation of every op runs
// (common.cuh's Exec: the kernels on the device, the CPU references on the host). A backend has memory
// operations only; the model calls every op as op(exec, ...), which dispatches itself (GPTCU_OP).
//   DeviceOps: cudaMalloc'd memory and the CUDA kernels (on a GPU; emulated by cudasim in the CPU build)
//   HostOps:   host memory and the plain CPU references (OpenBLAS for the matmuls): the CPU build's fast path
struct DeviceOps {
    static constexpr const char* name = "cuda";
    static constexpr bool on_device = true;
    static void* alloc(size_t bytes) {
        void* p = nullptr;
        cuda_check(cudaMalloc(&p, bytes));
        return p;
    }
    static void release(void* p) { cuda_check(cudaFree(p)); }
    static void to_backend(void* dst, const void* src, size_t bytes) {
        cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    }
    static void to_host(void* dst, const void* src, size_t bytes) {
        cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    }
    static void copy(void* dst, const void* src, size_t bytes) {
        cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    }
    static void synchronize() { cuda_check(cudaDeviceSynchronize()); }
};

struct HostOps {
    static constexpr const char* name = "cpu";
    static constexpr bool on_device = false;
    // Buffers of 4 MiB and more (weights, optimizer state, activations) go on 2 MiB pages where the kernel allows
    // it (transparent huge pages in "madvise" mode): a decode step streams every weight once, and on 4 KiB pages
    // that is a TLB miss, and a restart of the hardware prefetcher, every 1024 floats.
    static void* alloc(size_t bytes) {
        void* p = nullptr;
        const size_t align = bytes >= (size_t{4} << 20) ? size_t{2} << 20 : 64;
        if (posix_memalign(&p, align, bytes ? bytes : 64) != 0)
            throw std::runtime_error("out of host memory allocating " + std::to_string(bytes) + " bytes");
        if (align > 64) madvise(p, bytes, MADV_HUGEPAGE);  // advice only: where THP is off, nothing changes
        return p;
    }
    static void release(void* p) { std::free(p); }
    static void to_backend(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
    static void to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
    static void copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
    static void synchronize() {}
};

// The programs' --device flag: "auto" picks the kernels on a real GPU and the CPU reference ops otherwise.
// Calls body(DeviceOps{} or HostOps{}, description of the backend) and returns what it returns.
template <class Body>
int with_device_ops(const std::string& device_flag, Body&& body) {
    std::string gpu;
    bool real_gpu = have_real_gpu(gpu);
    std::string device = device_flag == "auto" ? (real_gpu ? "cuda" : "cpu") : device_flag;
    if (device == "cuda") return body(DeviceOps{}, gpu);
    if (device == "cpu") return body(HostOps{}, std::string("CPU reference ops + OpenBLAS"));
    throw std::runtime_error("--device must be auto, cpu or cuda (got '" + device_flag + "')");
}

// The programs' --precision flag: fp32, or bf16 (mixed precision: bf16 weights and activations, fp32 master
// weights, the rule at the top of layers.cuh); "auto" is bf16 on a real GPU and fp32 otherwise (the CPU build's
// kernels run on cudasim, where bf16 is no faster). bf16 needs the kernels: the CPU reference path is fp32 only.
// bf16 also switches attention to its tensor-core kernels (AttentionBackend::wmma); the matmul follows --matmul
// (cuBLAS runs bf16 on tensor cores too). Calls body(float{} or __nv_bfloat16{}) and returns what it returns.
template <class Ops, class Body>
int with_precision(const std::string& flag, Body&& body) {
    std::string gpu;
    const std::string p = flag == "auto" ? (Ops::on_device && have_real_gpu(gpu) ? "bf16" : "fp32") : flag;
    if (p == "fp32") return body(float{});
    if (p != "bf16") throw std::runtime_error("--precision must be auto, fp32 or bf16 (got '" + flag + "')");
    if constexpr (!Ops::on_device)
        throw std::runtime_error("--precision bf16 runs on the CUDA kernels (--device cuda; in the CPU build they run "
                                 "on cudasim): the CPU reference path computes in fp32");
    else {
        set_attention_backend(AttentionBackend::wmma);
        return body(__nv_bfloat16{});
    }
}
// One line for a program's start-up: which buffers have which type.
template <class FloatX>
std::string precision_summary() {
    if (std::is_same_v<FloatX, float>) return "fp32 (weights, activations, gradients, AdamW state)";
    return "bf16 weights and activations on tensor cores; fp32 master weights, gradients, AdamW state, norm "
           "statistics and softmax";
}

// ----------------------------------------------------------------------------
// GPT-2 vs Llama: every difference between the two families, in one place.
//              GPT-2                                  | Llama                            | where
//   norm       LayerNorm: (x − mean)·rstd·w + b       | RMSNorm: x·rstd·w                | norm_forward/_backward
//   positions  learned wpe, added by the encoder      | RoPE on q and k in attention     | uses_rope
//   MLP        GELU over fc's F = 4C outputs          | SwiGLU over [gate | up], F = 2H  | mlp_up_forward,
//                                                                                         mlp_activation_backward
//   tensors    biases, wpe, lm_head tied to wte       | no biases, no wpe, own lm_head   | param_sizes
// (An absent tensor is a null pointer, which every op skips.)
inline bool uses_rope(const GPTConfig& c) { return c.is_llama(); }

template <class T>
void norm_forward(const Exec& ex, const GPTConfig& c, T* out /*(N, C)*/, float* mean, float* rstd /*(N)*/,
                  const T* inp /*(N, C)*/, const T* w, const T* b /*(C)*/, int N) {
    if (c.is_llama()) rmsnorm_forward(ex, out, rstd, inp, w, N, c.n_embd, c.norm_eps);
    else layernorm_forward(ex, out, mean, rstd, inp, w, b, N, c.n_embd);
}
template <class T>
void norm_backward(const Exec& ex, const GPTConfig& c, T* dinp /*(N, C), +=*/, float* dw, float* db /*(C), +=*/,
                   const T* dout, const T* inp /*(N, C)*/, const T* w, const float* mean, const float* rstd, int N) {
    if (c.is_llama()) rmsnorm_backward(ex, dinp, dw, dout, inp, w, rstd, N, c.n_embd);
    else layernorm_backward(ex, dinp, dw, db, dout, inp, w, mean, rstd, N, c.n_embd);
}
// fch = inp·Wᵀ + b (c_fc), then the activation. GPT-2's GELU is one call with the matmul (cuBLASLt fuses it into
// the GEMM's epilogue); SwiGLU needs both halves of fch first.
template <class T>
void mlp_up_forward(const Exec& ex, const GPTConfig& c, T* out /*(N, H)*/, T* fch /*(N, F)*/, const T* inp /*(N, C)*/,
                    const T* w /*(F, C)*/, const T* b /*(F) or null*/, int N) {
    if (c.is_llama()) {
        matmul_forward(ex, fch, inp, w, b, N, c.n_embd, c.fc_channels());
        swiglu_forward(ex, out, static_cast<const T*>(fch), N, c.ffn_hidden);
    } else {
        matmul_gelu_forward(ex, out, fch, inp, w, b, N, c.n_embd, c.ffn_hidden);
    }
}
template <class T>
void mlp_activation_backward(const Exec& ex, const GPTConfig& c, T* dfch /*(N, F), +=*/, const T* fch,
                             const T* dout /*(N, H)*/, int N) {
    if (c.is_llama()) swiglu_backward(ex, dfch, fch, dout, N, c.ffn_hidden);
    else gelu_backward(ex, dfch, fch, dout, N * c.ffn_hidden);
}

// ----------------------------------------------------------------------------
// The transformer block.
//
// One layer's activations: what block_forward writes and block_backward reads. Training points them at layer
// l's slices of the activations it keeps for the backward; the engine at buffers it reuses for every layer
// (residual = residual2 = residual3 = x, updated in place; ln1 = ln2, attproj = fcproj; no lse).
template <class T>
struct BlockActivations {
    T* residual;                 // (N, C) the block's input (T: the model's element type)
    T* ln1;                      // (N, C)
    float *ln1_mean, *ln1_rstd;  // (N)
    T* qkv;                      // (N, QKVC) after RoPE for Llama
    T* atty;                     // (N, C) attention output, heads side by side
    float* lse;                  // (B, NH, T) softmax log-sum-exp (training's attention saves it)
    T* attproj;                  // (N, C)
    T* residual2;                // (N, C) residual + attproj
    T* ln2;                      // (N, C)
    float *ln2_mean, *ln2_rstd;  // (N)
    T* fch;                      // (N, F)
    T* fch_act;                  // (N, H) gelu(fch) or swiglu(fch)
    T* fcproj;                   // (N, C)
    T* residual3;                // (N, C) the block's output: residual2 + fcproj
};

// Layer l's slice of an (L, per_layer) parameter tensor; nullptr stays nullptr (a tensor the arch lacks).
template <class X>
X* layer_slice(X* base, int l, size_t per_layer) {
    return base ? base + static_cast<size_t>(l) * per_layer : nullptr;
}
// Layer l's weights (or gradients) of a parameter-layout buffer: the per-layer tensors LN1W..FCPROJB point at
// their layer-l slices, the others are nullptr. block_forward/block_backward read p[QKVW] etc. through such a view,
// so a layer's tensors may live anywhere (distributed.cuh gathers one layer at a time into a buffer of its own).
template <class T>
ParameterTensors<T> layer_view(const ParameterTensors<T>& p, const GPTConfig& c, int l) {
    const std::array<size_t, NUM_PARAM_TENSORS> sizes = param_sizes(c);
    ParameterTensors<T> v;
    for (int i = LN1W; i <= FCPROJB; i++) v.t[i] = layer_slice(p[i], l, sizes[i] / c.n_layer);
    return v;
}

// One block over N rows, as PyTorch writes it (GPT-2; Llama's differences are the section above):
//   x = x + attn_proj(attention(qkv(norm_1(x))))
//   x = x + mlp_proj(act(fc(norm_2(x))))
// `attention` is the one step training and inference do differently, so it is passed in: CausalAttention
// (below: each sequence of a (B, T) batch, fused kernels) or engine.cuh's PagedAttention (each row against
// its sequence's paged KV cache). It has rope(exec, qkv) (rotate q and k at the rows' positions) and
// forward(exec, atty, lse, qkv, layer). p holds layer l's weights (layer_view), l picks the layer's KV cache.
template <class T, class Attention>
void block_forward(const Exec& ex, const GPTConfig& c, const ParameterTensors<T>& p, int l,
                   const BlockActivations<T>& a, int N, Attention& attention) {
    const int C = c.n_embd, QKVC = c.qkv_channels(), H = c.ffn_hidden;
    // x + attn(norm_1(x))
    norm_forward(ex, c, a.ln1, a.ln1_mean, a.ln1_rstd, a.residual, p[LN1W], p[LN1B], N);
    matmul_forward(ex, a.qkv, a.ln1, p[QKVW], p[QKVB], N, C, QKVC);
    if (uses_rope(c)) attention.rope(ex, a.qkv);
    attention.forward(ex, a.atty, a.lse, a.qkv, l);
    matmul_forward(ex, a.attproj, a.atty, p[ATTPROJW], p[ATTPROJB], N, C, C);
    residual_forward(ex, a.residual2, a.residual, a.attproj, N * C);
    // x + mlp(norm_2(x))
    norm_forward(ex, c, a.ln2, a.ln2_mean, a.ln2_rstd, a.residual2, p[LN2W], p[LN2B], N);
    mlp_up_forward(ex, c, a.fch_act, a.fch, a.ln2, p[FCW], p[FCB], N);
    matmul_forward(ex, a.fcproj, a.fch_act, p[FCPROJW], p[FCPROJB], N, H, C);
    residual_forward(ex, a.residual3, a.residual2, a.fcproj, N * C);
}

// Training's attention step: causal attention over each sequence of the (B, T) batch, token t at position t
// (attention.cuh's fused kernels, or the CPU reference); lse is saved for the backward.
struct CausalAttention {
    const GPTConfig& c;
    int B, T;
    template <class X>
    void rope(const Exec& ex, X* qkv) const {
        rope_forward(ex, qkv, B, T, c.n_head, c.n_kv_head, c.head_size(), c.rope_theta);
    }
    template <class X>
    void forward(const Exec& ex, X* atty, float* lse, const X* qkv, int /*layer*/) const {
        attention_forward(ex, atty, lse, qkv, B, T, c.n_head, c.n_kv_head, c.head_size());
    }
    template <class X>
    void rope_backward(const Exec& ex, X* dqkv) const {
        ::rope_backward(ex, dqkv, B, T, c.n_head, c.n_kv_head, c.head_size(), c.rope_theta);
    }
    template <class X>
    void backward(const Exec& ex, X* dqkv, const X* datty, const X* atty, const float* lse, const X* qkv) const {
        attention_backward(ex, dqkv, datty, atty, lse, qkv, B, T, c.n_head, c.n_kv_head, c.head_size());
    }
};

// The gradient scratch of one block's backward (reused by every layer).
template <class T>
struct BlockGradients {
    T* dresidual;  // (N, C) in: d loss / d residual3 (the block's output); out: d loss / d residual (its input)
    T* dln;        // (N, C)
    T* dqkv;       // (N, QKVC)
    T* datty;      // (N, C)
    T* dfch;       // (N, F)
    T* dfch_act;   // (N, H)
};

// The backward of block_forward (training only), in reverse order; parameter gradients accumulate into g
// (the layer's, a layer_view as p is).
template <class T, class Attention>
void block_backward(const Exec& ex, const GPTConfig& c, const ParameterTensors<T>& p, const ParameterTensors<float>& g,
                    const BlockActivations<T>& a, const BlockGradients<T>& d, int N, const Attention& attention) {
    const int C = c.n_embd, QKVC = c.qkv_channels(), F = c.fc_channels(), H = c.ffn_hidden;
    auto zero = [&](T* x, size_t n) { zero_memory(ex, x, n * sizeof(T)); };
    // forward was: residual3 = residual2 + fcproj(fch_act); d.dresidual holds d residual3, which is also
    // d residual2 (the skip) and d fcproj (the branch)
    zero(d.dfch_act, static_cast<size_t>(N) * H);
    matmul_backward(ex, d.dfch_act, g[FCPROJW], g[FCPROJB], d.dresidual, a.fch_act, p[FCPROJW], N, H, C);
    zero(d.dfch, static_cast<size_t>(N) * F);
    mlp_activation_backward(ex, c, d.dfch, a.fch, d.dfch_act, N);
    zero(d.dln, static_cast<size_t>(N) * C);
    matmul_backward(ex, d.dln, g[FCW], g[FCB], d.dfch, a.ln2, p[FCW], N, C, F);
    norm_backward(ex, c, d.dresidual, g[LN2W], g[LN2B], d.dln, a.residual2, p[LN2W], a.ln2_mean, a.ln2_rstd, N);
    // forward was: residual2 = residual + attproj(atty); d.dresidual now holds d residual2
    zero(d.datty, static_cast<size_t>(N) * C);
    matmul_backward(ex, d.datty, g[ATTPROJW], g[ATTPROJB], d.dresidual, a.atty, p[ATTPROJW], N, C, C);
    zero(d.dqkv, static_cast<size_t>(N) * QKVC);
    attention.backward(ex, d.dqkv, d.datty, a.atty, a.lse, a.qkv);
    if (uses_rope(c)) attention.rope_backward(ex, d.dqkv);
    zero(d.dln, static_cast<size_t>(N) * C);
    matmul_backward(ex, d.dln, g[QKVW], g[QKVB], d.dqkv, a.ln1, p[QKVW], N, C, QKVC);
    norm_backward(ex, c, d.dresidual, g[LN1W], g[LN1B], d.dln, a.residual, p[LN1W], a.ln1_mean, a.ln1_rstd, N);
}

// ----------------------------------------------------------------------------
// Where the weights and gradients of each part of the model are while it runs. Unit l < L is layer l; unit L is the
// rest (wte, wpe, lnf, lm_head). By default the model's own buffers; distributed.cuh's ZeRO stages set one that
// gathers a unit's weights from the ranks' shards just before the unit runs and frees them after (stage 3), and
// sends a unit's gradients to the other ranks as soon as its backward is done (overlapping the layers below).
template <class FloatX>
struct ParameterHome {
    virtual ~ParameterHome() = default;
    // before the unit's forward, and again before its backward; `next`: the unit the model asks for after this
    // one (-1: none), which may be fetched meanwhile
    virtual ParameterTensors<FloatX> weights(int unit, int next) = 0;
    virtual ParameterTensors<float> gradients(int unit) = 0;  // before its backward: where its gradients add up
    virtual void done(int unit, bool backward) = 0;           // after its forward or its backward
};

// ----------------------------------------------------------------------------
// The model, in element type FloatX: float, or __nv_bfloat16 for mixed-precision training (the kernels only).
// The buffers follow the rule at the top of layers.cuh:
//   params_memory  fp32 master weights: what AdamW updates, checkpoints save and get_parameters() returns
//   params_X       the FloatX copy the forward and backward read (bf16: refreshed from the master after every
//                  update; fp32: the master itself, no copy)
//   grads_memory   fp32 weight gradients (sums over tokens and micro-batches)
//   m, v           fp32 AdamW moments
//   activations    FloatX, except the norms' statistics, the attention's lse and the losses (activation_is_fp32)
template <class Ops, class FloatX = float>
struct GPT {
    static constexpr bool mixed = !std::is_same_v<FloatX, float>;
    GPTConfig config;
    Exec exec{Ops::on_device, 0};  // every op runs here; set exec.stream to run the model on another stream
    std::array<size_t, NUM_PARAM_TENSORS> sizes{};
    size_t num_parameters = 0;
    float* params_memory = nullptr;   // (num_parameters) fp32 master weights
    FloatX* params_X = nullptr;       // (num_parameters) the copy the ops read; == params_memory in fp32
    float* grads_memory = nullptr;    // (num_parameters)
    float* m_memory = nullptr;        // (num_parameters) AdamW first moment
    float* v_memory = nullptr;        // (num_parameters) AdamW second moment
    ParameterTensors<FloatX> params;  // into params_X
    ParameterTensors<float> grads;    // into grads_memory
    ParameterHome<FloatX>* home = nullptr;  // data parallel (distributed.cuh); null: the buffers above
    // Activations for up to (max_B, max_T).
    int max_B = 0, max_T = 0;
    std::array<size_t, NUM_ACT_TENSORS> act_sizes{};
    void* acts_memory = nullptr;
    std::array<void*, NUM_ACT_TENSORS> acts{};
    int* inputs = nullptr;   // (B, T) on the backend
    int* targets = nullptr;  // (B, T) on the backend
    int B = 0, T = 0;        // the shape of the last forward
    std::vector<float> losses_host;

    explicit GPT(const GPTConfig& c) : config(c) {
        config.validate();
        if (mixed && !Ops::on_device)
            throw std::runtime_error("bf16 runs on the CUDA kernels only (--device cuda); the CPU reference path "
                                     "computes in fp32");
        sizes = param_sizes(config);
        for (size_t s : sizes) num_parameters += s;
        params_memory = static_cast<float*>(Ops::alloc(num_parameters * sizeof(float)));
        if constexpr (mixed) params_X = static_cast<FloatX*>(Ops::alloc(num_parameters * sizeof(FloatX)));
        else params_X = params_memory;
        params = point_parameters(params_X, sizes);
    }
    GPT(const GPT&) = delete;
    GPT& operator=(const GPT&) = delete;
    ~GPT() {
        if (static_cast<void*>(params_X) != static_cast<void*>(params_memory)) Ops::release(params_X);
        for (void* p :
             {static_cast<void*>(params_memory), static_cast<void*>(grads_memory), static_cast<void*>(m_memory),
              static_cast<void*>(v_memory), acts_memory, static_cast<void*>(inputs), static_cast<void*>(targets)})
            if (p) Ops::release(p);
    }

    template <class A = FloatX> A* act(int i) const { return static_cast<A*>(acts[i]); }

    // GPT-2 initialisation: N(0, 0.02) for matrices and embeddings, residual projections scaled by
    // 1/sqrt(2L) (two of them add into the residual stream per layer: attention's and the MLP's), norms 1,
    // biases 0.
    void init_random(uint64_t seed) {
        Rng rng(seed);
        std::vector<float> host(num_parameters, 0.0f);
        size_t offset = 0;
        const float residual_std = 0.02f / std::sqrt(2.0f * config.n_layer);
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            float* p = host.data() + offset;
            if (sizes[i] == 0) continue;  // a tensor this architecture does not have
            if (i == LN1W || i == LN2W || i == LNFW) for (size_t k = 0; k < sizes[i]; k++) p[k] = 1.0f;
            else if (param_decays(i)) {
                float stdev = (i == ATTPROJW || i == FCPROJW) ? residual_std : 0.02f;
                // rows V..Vp-1 of the vocabulary are padding: zero, and they never receive a gradient
                size_t count =
                    (i == WTE || i == LMHEAD) ? static_cast<size_t>(config.vocab_size) * config.n_embd : sizes[i];
                for (size_t k = 0; k < count; k++) p[k] = stdev * rng.normal();
            }
            offset += sizes[i];
        }
        set_parameters(host);
    }

    // Backend memory to the host and back, element type unchanged (AdamW's moments, raw tensors).
    template <class X>
    std::vector<X> get(const X* p, size_t n) const {
        std::vector<X> host(n);
        Ops::to_host(host.data(), p, n * sizeof(X));
        return host;
    }
    // A FloatX buffer (logits) as fp32 on the host.
    std::vector<float> get_fp32(const FloatX* p, size_t n) const {
        if constexpr (!mixed) return get(p, n);
        else {
            std::vector<FloatX> x = get(p, n);
            return std::vector<float>(x.begin(), x.end());
        }
    }
    // The fp32 master weights (checkpoints, Hugging Face files and tests read and write these); setting them
    // refreshes the FloatX copy.
    void set_parameters(const std::vector<float>& host) {
        if (host.size() != num_parameters)
            throw std::runtime_error("set_parameters: expected " + std::to_string(num_parameters) + " values, got " +
                                     std::to_string(host.size()));
        Ops::to_backend(params_memory, host.data(), num_parameters * sizeof(float));
        refresh_params_X();
    }
    std::vector<float> get_parameters() const { return get(params_memory, num_parameters); }
    std::vector<float> get_gradients() const { return get(grads_memory, num_parameters); }
    // params_X = round(params_memory): after anything writes the master weights (set_parameters, update, a
    // data-parallel all-gather). One rounding to nearest per weight; nothing to do in fp32.
    void refresh_params_X() {
        if constexpr (mixed) convert(exec, params_X, static_cast<const float*>(params_memory), num_parameters);
    }

    void ensure_activations(int b, int t) {
        if (t > config.max_seq_len)
            throw std::runtime_error("sequence length " + std::to_string(t) + " exceeds the model's max_seq_len " +
                                     std::to_string(config.max_seq_len));
        if (acts_memory && b <= max_B && t <= max_T) return;
        if (acts_memory) { Ops::release(acts_memory); Ops::release(inputs); Ops::release(targets); }
        max_B = std::max(b, max_B);
        max_T = std::max(t, max_T);
        act_sizes = activation_sizes(config, max_B, max_T);
        // each tensor in its own element type, starting on a 256-byte boundary (vector loads)
        std::array<size_t, NUM_ACT_TENSORS> bytes{};
        size_t total = 0;
        for (int i = 0; i < NUM_ACT_TENSORS; i++) {
            bytes[i] = (act_sizes[i] * (activation_is_fp32(i) ? sizeof(float) : sizeof(FloatX)) + 255) / 256 * 256;
            total += bytes[i];
        }
        acts_memory = Ops::alloc(total);
        char* base = static_cast<char*>(acts_memory);
        for (int i = 0; i < NUM_ACT_TENSORS; i++) {
            acts[i] = base;
            base += bytes[i];
        }
        inputs = static_cast<int*>(Ops::alloc(static_cast<size_t>(max_B) * max_T * sizeof(int)));
        targets = static_cast<int*>(Ops::alloc(static_cast<size_t>(max_B) * max_T * sizeof(int)));
    }

    // Layer l's slices of the kept activations, for the current (B, T). `residual` is the layer's input:
    // the embeddings for layer 0, else the previous layer's residual3.
    BlockActivations<FloatX> layer_activations(int l) const {
        const size_t N = static_cast<size_t>(B) * T, C = config.n_embd, at = static_cast<size_t>(l);
        const size_t QKVC = config.qkv_channels(), F = config.fc_channels(), H = config.ffn_hidden, NH = config.n_head;
        BlockActivations<FloatX> a;
        a.residual = l == 0 ? act(ENCODED) : act(RESIDUAL3) + (at - 1) * N * C;
        a.ln1 = act(LN1) + at * N * C;
        a.ln1_mean = act<float>(LN1_MEAN) + at * N;
        a.ln1_rstd = act<float>(LN1_RSTD) + at * N;
        a.qkv = act(QKV) + at * N * QKVC;
        a.atty = act(ATTY) + at * N * C;
        a.lse = act<float>(ATT_LSE) + at * N * NH;
        a.attproj = act(ATTPROJ) + at * N * C;
        a.residual2 = act(RESIDUAL2) + at * N * C;
        a.ln2 = act(LN2) + at * N * C;
        a.ln2_mean = act<float>(LN2_MEAN) + at * N;
        a.ln2_rstd = act<float>(LN2_RSTD) + at * N;
        a.fch = act(FCH) + at * N * F;
        a.fch_act = act(FCH_ACT) + at * N * H;
        a.fcproj = act(FCPROJ) + at * N * C;
        a.residual3 = act(RESIDUAL3) + at * N * C;
        return a;
    }

    // Forward over tokens (B, T). With targets: returns the mean loss over targets != -1 and, when
    // dloss > 0, leaves dlogits = dloss·(softmax − onehot) in the logits buffer, ready for backward()
    // (the fused classifier computes both in one pass). Without targets: logits only, returns -1.
    float forward(const int* tokens, const int* target_tokens, int b, int t, float dloss = 0.0f) {
        ensure_activations(b, t);
        B = b;
        T = t;
        const GPTConfig& c = config;
        const int N = B * T, C = c.n_embd, L = c.n_layer, Vp = c.padded_vocab_size, V = c.vocab_size;
        for (int i = 0; i < N; i++)
            if (tokens[i] < 0 || tokens[i] >= V)
                throw std::runtime_error("token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                         " is outside the vocabulary [0, " + std::to_string(V) + ")");
        Ops::to_backend(inputs, tokens, N * sizeof(int));
        const ParameterTensors<FloatX> top = weights(L, 0);  // wte, wpe, lnf, lm_head
        encoder_forward(exec, act(ENCODED), inputs, top[WTE], top[WPE], B, T, C);
        CausalAttention attention{c, B, T};
        for (int l = 0; l < L; l++) {
            block_forward(exec, c, weights(l, l + 1 < L ? l + 1 : -1), l, layer_activations(l), N, attention);
            done(l, false);
        }
        FloatX* last = act(RESIDUAL3) + static_cast<size_t>(L - 1) * N * C;
        norm_forward(exec, c, act(LNF), act<float>(LNF_MEAN), act<float>(LNF_RSTD), last, top[LNFW], top[LNFB], N);
        matmul_forward(exec, act(LOGITS), act(LNF), c.tied_embeddings ? top[WTE] : top[LMHEAD], nullptr, N, C, Vp);
        done(L, false);
        if (!target_tokens) return -1.0f;
        int valid = 0;
        for (int i = 0; i < N; i++) {
            if (target_tokens[i] < -1 || target_tokens[i] >= V)
                throw std::runtime_error("target " + std::to_string(target_tokens[i]) + " is outside the vocabulary");
            valid += target_tokens[i] != -1;
        }
        Ops::to_backend(targets, target_tokens, N * sizeof(int));
        fused_classifier(exec, act(LOGITS), act<float>(LOSSES), targets, dloss, N, V, Vp, dloss > 0.0f);
        losses_host.resize(N);
        Ops::to_host(losses_host.data(), act<float>(LOSSES), N * sizeof(float));
        double sum = 0;
        for (float x : losses_host) sum += x;
        return valid ? static_cast<float>(sum / valid) : 0.0f;
    }

    // The logits of row (b, t) of the last forward without targets: Vp values, the first V meaningful.
    std::vector<float> logits_at(int b, int t) const {
        const size_t Vp = config.padded_vocab_size;
        return get_fp32(act(LOGITS) + (static_cast<size_t>(b) * T + t) * Vp, Vp);
    }

    void zero_grad() {
        if (!grads_memory) {
            grads_memory = static_cast<float*>(Ops::alloc(num_parameters * sizeof(float)));
            grads = point_parameters(grads_memory, sizes);
        }
        zero_memory(exec, grads_memory, num_parameters * sizeof(float));
    }

    // Backward of the last forward (which must have had targets and dloss > 0). Gradients accumulate
    // into grads_memory, so micro-batches add up; call zero_grad() once per optimizer step.
    void backward() {
        if (!home && !grads_memory) zero_grad();
        const GPTConfig& c = config;
        const int N = B * T, C = c.n_embd, L = c.n_layer, Vp = c.padded_vocab_size;
        const ParameterTensors<FloatX> p = weights(L, L - 1);  // wte, wpe, lnf, lm_head and their gradients
        const ParameterTensors<float> g = gradients(L);
        // d(loss)/d(residual stream) in dresidual, carried down through the layers
        BlockGradients<FloatX> d{act(DRESIDUAL), act(DLN), act(DQKV), act(DATTY), act(DFCH), act(DFCH_ACT)};
        // logits = lnf · wteᵀ: the classifier left dlogits in place
        zero_memory(exec, d.dln, static_cast<size_t>(N) * C * sizeof(FloatX));
        matmul_backward(exec, d.dln, c.tied_embeddings ? g[WTE] : g[LMHEAD], nullptr, act(LOGITS), act(LNF),
                        c.tied_embeddings ? p[WTE] : p[LMHEAD], N, C, Vp);
        zero_memory(exec, d.dresidual, static_cast<size_t>(N) * C * sizeof(FloatX));
        FloatX* last = act(RESIDUAL3) + static_cast<size_t>(L - 1) * N * C;
        norm_backward(exec, c, d.dresidual, g[LNFW], g[LNFB], d.dln, last, p[LNFW], act<float>(LNF_MEAN),
                      act<float>(LNF_RSTD), N);
        CausalAttention attention{c, B, T};
        for (int l = L - 1; l >= 0; l--) {
            const ParameterTensors<FloatX> pl = weights(l, l - 1);
            block_backward(exec, c, pl, gradients(l), layer_activations(l), d, N, attention);
            done(l, true);
        }
        encoder_backward(exec, g[WTE], g[WPE], d.dresidual, inputs, B, T, C);
        done(L, true);
    }

    // Unit u's weights and gradients (ParameterHome): layer u < L, or the rest (u = L); done() after it ran.
    ParameterTensors<FloatX> weights(int u, int next) { return home ? home->weights(u, next) : own_weights(u); }
    ParameterTensors<FloatX> own_weights(int u) { return u < config.n_layer ? layer_view(params, config, u) : params; }
    ParameterTensors<float> gradients(int u) {
        if (home) return home->gradients(u);
        return u < config.n_layer ? layer_view(grads, config, u) : grads;
    }
    void done(int u, bool backward) {
        if (home) home->done(u, backward);
    }

    // AdamW's moments start at zero; a resumed run overwrites them with the checkpoint's.
    void ensure_optimizer_state() {
        if (m_memory) return;
        m_memory = static_cast<float*>(Ops::alloc(num_parameters * sizeof(float)));
        v_memory = static_cast<float*>(Ops::alloc(num_parameters * sizeof(float)));
        zero_memory(exec, m_memory, num_parameters * sizeof(float));
        zero_memory(exec, v_memory, num_parameters * sizeof(float));
    }

    // ‖grads‖₂ over all parameters.
    float grad_norm() const { return std::sqrt(global_norm_squared(exec, grads_memory, num_parameters)); }

    // One AdamW step on every tensor; decay only where param_decays(). grad_scale multiplies the
    // gradients first (clipping: max_norm / norm when the norm exceeds max_norm).
    void update(float lr, float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
        ensure_optimizer_state();
        size_t offset = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (sizes[i])
                adamw_update(exec, params_memory + offset, grads_memory + offset, m_memory + offset, v_memory + offset,
                             sizes[i], lr, beta1, beta2, eps, param_decays(i) ? weight_decay : 0.0f, step, grad_scale);
            offset += sizes[i];
        }
        refresh_params_X();
    }
};
