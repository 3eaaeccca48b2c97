// infer.cuh — generation: models in (our checkpoints, Hugging Face GPT-2) and out, a paged KV cache, the
// forward pass over new tokens of many sequences at once, continuous batching, speculative decoding.
// docs/inference.md explains the ideas; this file is read top to bottom:
//
//   1. Models in and out      load_model(path): our checkpoint or an HF directory (config.json +
//                             model.safetensors of a GPT2LMHeadModel or LlamaForCausalLM); export_hf(dir, ...)
//                             writes the HF layout of the model's family back.
//   2. The paged KV cache     BlockAllocator (a free list of fixed-size blocks), block tables, and the
//                             ops that read and write through them: embed_at_positions, paged_kv_append,
//                             paged_attention (CPU reference, kernel, launcher each, as in layers.cuh).
//   3. InferenceEngine<Ops>   one forward over a list of rows (token, position, sequence slot): every row
//                             attends to its own sequence's cache. Prefill (many rows of one sequence),
//                             decode (one row per sequence) and a mix of both are the same call.
//   4. Scheduler              continuous batching: admits waiting requests as blocks free up, mixes prefill
//                             chunks and decode rows in one step, preempts (and later recomputes) the
//                             youngest sequence when the pool runs dry. Host logic only.
//   5. Speculative decoding   a draft engine proposes k tokens, the target checks them in one forward;
//                             sampling.h's speculative_accept keeps the target's distribution exactly.
//
// Like gpt.cuh the model code is written once against Ops (DeviceOps: CUDA kernels; HostOps: CPU
// references), and it uses gpt.cuh's parameter layout, so any GPT<Ops> can generate.
#pragma once
#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpt.cuh"
#include "checkpoint.h"
#include "safetensors.h"
#include "sampling.h"

// ============================================================================
// 1. Models in and out
// ============================================================================
// A model ready to run: its config, its parameters in gpt.cuh's layout, and what is known of its tokenizer.
struct LoadedModel {
    GPTConfig config;
    std::vector<float> params;  // (num_parameters) in param_sizes order
    std::string format;         // "gpt.cu checkpoint", "Hugging Face GPT-2" or "Hugging Face Llama"
    int eot_id = -1;            // end-of-text token, -1 if unknown
    nlohmann::json tokenizer;   // our checkpoints: the TokenizerInfo they were trained with; HF: null
};

// Hugging Face GPT2LMHeadModel / LlamaForCausalLM ↔ gpt.cuh. One table per family gives every HF tensor,
// its shape, and where it lives in our flat parameters, for import and export alike.
// GPT-2: HF's attention and MLP matrices are Conv1D modules that store (in, out); ours are (out, in) like
// nn.Linear, so they are transposed both ways. Llama: nn.Linear, copied as they are, but our fused tensors
// take several HF tensors each: qkvw rows [q_proj | k_proj | v_proj], fcw rows [gate_proj | up_proj].
// (HF's q_proj/k_proj rows are already in rotate-half order, which is our RoPE's: no permutation; see
// docs/llama.md.) HF's embedding and head have V rows; ours have Vp (rows V..Vp-1 zero).
struct HFTensor {
    int index;                 // ParamIndex
    int layer;                 // -1 for tensors outside the blocks
    std::string name;          // without the body's prefix (hf_body_prefix: "transformer." / "model.")
    std::vector<int64_t> shape;// HF's shape
    bool transposed;           // Conv1D weight: HF (in, out) = ours (out, in)ᵀ
    int64_t row = 0;           // first row of our (layer's) tensor it fills: a part of a fused tensor
};
inline std::vector<HFTensor> hf_gpt2_tensors(const GPTConfig& c) {
    int64_t C = c.n_embd, F = c.ffn_hidden;
    std::vector<HFTensor> t = {{WTE, -1, "wte.weight", {c.vocab_size, C}, false}, {WPE, -1, "wpe.weight", {c.max_seq_len, C}, false}};
    for (int l = 0; l < c.n_layer; l++) {
        std::string h = "h." + std::to_string(l) + ".";
        t.push_back({LN1W, l, h + "ln_1.weight", {C}, false});
        t.push_back({LN1B, l, h + "ln_1.bias", {C}, false});
        t.push_back({QKVW, l, h + "attn.c_attn.weight", {C, 3 * C}, true});
        t.push_back({QKVB, l, h + "attn.c_attn.bias", {3 * C}, false});
        t.push_back({ATTPROJW, l, h + "attn.c_proj.weight", {C, C}, true});
        t.push_back({ATTPROJB, l, h + "attn.c_proj.bias", {C}, false});
        t.push_back({LN2W, l, h + "ln_2.weight", {C}, false});
        t.push_back({LN2B, l, h + "ln_2.bias", {C}, false});
        t.push_back({FCW, l, h + "mlp.c_fc.weight", {C, F}, true});
        t.push_back({FCB, l, h + "mlp.c_fc.bias", {F}, false});
        t.push_back({FCPROJW, l, h + "mlp.c_proj.weight", {F, C}, true});
        t.push_back({FCPROJB, l, h + "mlp.c_proj.bias", {C}, false});
    }
    t.push_back({LNFW, -1, "ln_f.weight", {C}, false});
    t.push_back({LNFB, -1, "ln_f.bias", {C}, false});
    if (!c.tied_embeddings) t.push_back({LMHEAD, -1, "lm_head.weight", {c.vocab_size, C}, false});  // outside "transformer."
    return t;
}

inline std::vector<HFTensor> hf_llama_tensors(const GPTConfig& c) {
    int64_t C = c.n_embd, H = c.ffn_hidden, hs = c.head_size(), QC = c.n_head * hs, KVC = c.n_kv_head * hs;
    std::vector<HFTensor> t = {{WTE, -1, "embed_tokens.weight", {c.vocab_size, C}, false}};
    for (int l = 0; l < c.n_layer; l++) {
        std::string h = "layers." + std::to_string(l) + ".";
        t.push_back({LN1W, l, h + "input_layernorm.weight", {C}, false});
        t.push_back({QKVW, l, h + "self_attn.q_proj.weight", {QC, C}, false, 0});
        t.push_back({QKVW, l, h + "self_attn.k_proj.weight", {KVC, C}, false, QC});
        t.push_back({QKVW, l, h + "self_attn.v_proj.weight", {KVC, C}, false, QC + KVC});
        t.push_back({ATTPROJW, l, h + "self_attn.o_proj.weight", {C, C}, false});
        t.push_back({LN2W, l, h + "post_attention_layernorm.weight", {C}, false});
        t.push_back({FCW, l, h + "mlp.gate_proj.weight", {H, C}, false, 0});
        t.push_back({FCW, l, h + "mlp.up_proj.weight", {H, C}, false, H});
        t.push_back({FCPROJW, l, h + "mlp.down_proj.weight", {C, H}, false});
    }
    t.push_back({LNFW, -1, "norm.weight", {C}, false});
    if (!c.tied_embeddings) t.push_back({LMHEAD, -1, "lm_head.weight", {c.vocab_size, C}, false});  // outside "model."
    return t;
}
inline std::vector<HFTensor> hf_tensors(const GPTConfig& c) { return c.is_llama() ? hf_llama_tensors(c) : hf_gpt2_tensors(c); }
// The prefix of every tensor of the transformer body (all but lm_head) in a save_pretrained file.
inline std::string hf_body_prefix(const GPTConfig& c) { return c.is_llama() ? "model." : "transformer."; }

// Where tensor `t` (layer slice and row included) starts in our flat parameter vector.
inline size_t hf_tensor_offset(const GPTConfig& c, const HFTensor& t) {
    auto sizes = param_sizes(c);
    size_t offset = 0;
    for (int i = 0; i < t.index; i++) offset += sizes[i];
    offset += t.layer < 0 ? 0 : static_cast<size_t>(t.layer) * (sizes[t.index] / c.n_layer);
    return offset + static_cast<size_t>(t.row) * static_cast<size_t>(t.shape.back());  // rows of an (out, in) tensor
}

// j[key] if it is there and not null (config.json writes null for "unset"), else `otherwise`.
template <class T>
T json_or(const nlohmann::json& j, const char* key, T otherwise) {
    if (!j.contains(key) || j[key].is_null()) return otherwise;
    return j[key].get<T>();
}

// config.json of a GPT2LMHeadModel → our config; refuses what our ops do not compute.
inline GPTConfig hf_gpt2_config(const nlohmann::json& j, const std::string& where) {
    auto fail = [&](const std::string& m) { throw std::runtime_error(where + ": " + m); };
    if (!j.is_object()) fail("not a JSON object");
    try {
    if (json_or<std::string>(j, "model_type", "gpt2") != "gpt2") fail("model_type '" + json_or<std::string>(j, "model_type", "") + "' is not gpt2 or llama");
    for (const char* key : {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head"})
        if (!j.contains(key) || !j[key].is_number_integer()) fail(std::string("missing integer \"") + key + "\"");
    std::string act = json_or<std::string>(j, "activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
        fail("activation_function '" + act + "': gpt.cu's GELU is the tanh approximation (gelu_new)");
    double eps = json_or(j, "layer_norm_epsilon", 1e-5);
    if (std::abs(eps - layernorm_eps) > 1e-12) fail("layer_norm_epsilon " + std::to_string(eps) + ": gpt.cu's LayerNorm uses 1e-5");
    if (json_or(j, "scale_attn_by_inverse_layer_idx", false)) fail("scale_attn_by_inverse_layer_idx is not supported");
    if (!json_or(j, "scale_attn_weights", true)) fail("scale_attn_weights=false is not supported");
    GPTConfig c;
    c.arch = Arch::gpt2;
    c.vocab_size = j["vocab_size"];
    c.padded_vocab_size = padded_vocab(c.vocab_size);
    c.max_seq_len = j["n_positions"];
    c.n_embd = j["n_embd"];
    c.n_layer = j["n_layer"];
    c.n_head = c.n_kv_head = j["n_head"];
    c.ffn_hidden = j.contains("n_inner") && j["n_inner"].is_number_integer() ? j["n_inner"].get<int>() : 4 * c.n_embd;
    c.tied_embeddings = json_or(j, "tie_word_embeddings", true);
    c.validate();
    return c;
    } catch (const nlohmann::json::exception& e) {
        fail(std::string("a field has the wrong type (") + e.what() + ")");
    }
    return {};
}

// config.json of a LlamaForCausalLM → our config; refuses what our ops do not compute. RoPE's theta is
// "rope_theta" (transformers 4) or "rope_parameters": {"rope_theta", "rope_type"} (transformers 5); only
// plain RoPE is computed here, so a scaled one (rope_type linear, dynamic, yarn, llama3) is refused.
inline GPTConfig hf_llama_config(const nlohmann::json& j, const std::string& where) {
    auto fail = [&](const std::string& m) { throw std::runtime_error(where + ": " + m); };
    if (!j.is_object()) fail("not a JSON object");
    for (const char* key : {"vocab_size", "max_position_embeddings", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads"})
        if (!j.contains(key) || !j[key].is_number_integer()) fail(std::string("missing integer \"") + key + "\"");
    std::string act = json_or<std::string>(j, "hidden_act", "silu");
    if (act != "silu") fail("hidden_act '" + act + "': gpt.cu's SwiGLU gates with silu");
    if (json_or(j, "attention_bias", false) || json_or(j, "mlp_bias", false)) fail("attention_bias / mlp_bias: gpt.cu's Llama has no biases");
    nlohmann::json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"]
                          : j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"]
                                                                                        : nlohmann::json::object();
    std::string rope_type = rope.value("rope_type", rope.value("type", "default"));
    if (rope_type != "default") fail("RoPE scaling '" + rope_type + "' is not implemented (only plain RoPE with rope_theta)");
    GPTConfig c;
    c.arch = Arch::llama;
    c.vocab_size = j["vocab_size"];
    c.padded_vocab_size = padded_vocab(c.vocab_size);
    c.max_seq_len = j["max_position_embeddings"];
    c.n_embd = j["hidden_size"];
    c.n_layer = j["num_hidden_layers"];
    c.n_head = j["num_attention_heads"];
    c.n_kv_head = j.contains("num_key_value_heads") && j["num_key_value_heads"].is_number_integer() ? j["num_key_value_heads"].get<int>() : c.n_head;
    c.ffn_hidden = j["intermediate_size"];
    c.rope_theta = rope.contains("rope_theta") ? rope["rope_theta"].get<float>() : json_or(j, "rope_theta", 10000.0f);
    c.norm_eps = json_or(j, "rms_norm_eps", 1e-6f);  // LlamaConfig's default
    c.tied_embeddings = json_or(j, "tie_word_embeddings", false);
    if (c.n_head > 0 && j.contains("head_dim") && j["head_dim"].is_number_integer() && j["head_dim"].get<int>() != c.n_embd / c.n_head)
        fail("head_dim " + j["head_dim"].dump() + " is not hidden_size / num_attention_heads: gpt.cu's heads split the channels");
    try {
        c.validate();
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return c;
}

// The end-of-text id of an HF config.json: an integer, the first of a list (Llama 3), or none (-1).
inline int hf_eos_id(const nlohmann::json& j) {
    const nlohmann::json* e = j.contains("eos_token_id") ? &j["eos_token_id"] : nullptr;
    if (e && e->is_array() && !e->empty()) e = &(*e)[0];
    return e && e->is_number_integer() ? e->get<int>() : -1;
}

// model.safetensors of a GPT2LMHeadModel or LlamaForCausalLM → our flat parameters. Accepts the names
// save_pretrained writes ("transformer.h.0...", "model.layers.0...") and the bare ones of a body saved
// alone or of the original OpenAI conversion ("h.0..."); ignores what the table does not name (buffers such
// as GPT-2's attn.bias, a tied lm_head.weight); checks every shape.
inline std::vector<float> hf_params(const safetensors::Reader& st, const GPTConfig& c) {
    std::vector<HFTensor> tensors = hf_tensors(c);
    std::string prefix = st.has(hf_body_prefix(c) + tensors[0].name) ? hf_body_prefix(c) : "";
    auto sizes = param_sizes(c);
    size_t total = 0;
    for (size_t s : sizes) total += s;
    std::vector<float> params(total, 0.0f);
    for (const HFTensor& t : tensors) {
        std::string name = t.index == LMHEAD ? t.name : prefix + t.name;
        std::vector<float> v = st.get(name, t.shape);
        float* dst = params.data() + hf_tensor_offset(c, t);
        if (!t.transposed) std::copy(v.begin(), v.end(), dst);
        else {
            int64_t in = t.shape[0], out = t.shape[1];
            for (int64_t i = 0; i < in; i++)
                for (int64_t o = 0; o < out; o++) dst[o * in + i] = v[i * out + o];
        }
    }
    return params;
}

// Our config as the family's HF config.json (the inverse of hf_gpt2_config / hf_llama_config).
inline nlohmann::json hf_config_json(const GPTConfig& c) {
    if (c.is_llama())
        return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", c.vocab_size},
                {"max_position_embeddings", c.max_seq_len}, {"hidden_size", c.n_embd}, {"intermediate_size", c.ffn_hidden},
                {"num_hidden_layers", c.n_layer}, {"num_attention_heads", c.n_head}, {"num_key_value_heads", c.n_kv_head},
                {"head_dim", c.head_size()}, {"hidden_act", "silu"}, {"rms_norm_eps", c.norm_eps}, {"attention_bias", false},
                {"mlp_bias", false}, {"tie_word_embeddings", c.tied_embeddings}, {"torch_dtype", "float32"},
                // both spellings: transformers 4 reads rope_theta, transformers 5 rope_parameters
                {"rope_theta", c.rope_theta}, {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}}};
    return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", c.vocab_size},
            {"n_positions", c.max_seq_len}, {"n_embd", c.n_embd}, {"n_layer", c.n_layer}, {"n_head", c.n_head},
            {"n_inner", c.ffn_hidden}, {"activation_function", "gelu_new"}, {"layer_norm_epsilon", 1e-5},
            {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}, {"tie_word_embeddings", c.tied_embeddings},
            {"torch_dtype", "float32"}};
}

// Writes dir/config.json + dir/model.safetensors so that GPT2LMHeadModel.from_pretrained(dir) (GPT-2) or
// LlamaForCausalLM.from_pretrained(dir) (Llama) loads the model.
inline void export_hf(const std::string& dir, const GPTConfig& c, const std::vector<float>& params, int eot_id) {
    std::filesystem::create_directories(dir);
    std::vector<safetensors::Tensor> out;
    for (const HFTensor& t : hf_tensors(c)) {
        size_t n = 1;
        for (int64_t d : t.shape) n *= static_cast<size_t>(d);
        const float* src = params.data() + hf_tensor_offset(c, t);
        std::vector<float> v(n);
        if (!t.transposed) std::copy(src, src + n, v.begin());
        else {
            int64_t in = t.shape[0], o_n = t.shape[1];
            for (int64_t i = 0; i < in; i++)
                for (int64_t o = 0; o < o_n; o++) v[i * o_n + o] = src[o * in + i];
        }
        out.push_back({t.index == LMHEAD ? t.name : hf_body_prefix(c) + t.name, t.shape, std::move(v)});
    }
    safetensors::save(dir + "/model.safetensors", out, {{"format", "pt"}});
    nlohmann::json config = hf_config_json(c);
    if (eot_id >= 0) config["bos_token_id"] = config["eos_token_id"] = eot_id;
    std::string text = config.dump(2) + "\n";
    write_file_atomically(dir + "/config.json", [&](File& f) { f.write(text.data(), text.size()); });
}

// PATH is a directory with config.json + model.safetensors (Hugging Face), or one of our checkpoints.
inline LoadedModel load_model(const std::string& path) {
    namespace fs = std::filesystem;
    LoadedModel m;
    if (fs::is_directory(path)) {
        std::string cfg = path + "/config.json", weights = path + "/model.safetensors";
        if (!fs::exists(cfg) || !fs::exists(weights))
            throw std::runtime_error("model " + path + ": a directory must hold config.json and model.safetensors (a Hugging Face GPT-2 or Llama)");
        nlohmann::json j;
        try {
            std::ifstream f(cfg);
            j = nlohmann::json::parse(f);
        } catch (const nlohmann::json::exception& e) {
            throw std::runtime_error(cfg + ": not valid JSON (" + e.what() + ")");
        }
        bool llama = j.is_object() && json_or<std::string>(j, "model_type", "") == "llama";
        m.config = llama ? hf_llama_config(j, cfg) : hf_gpt2_config(j, cfg);
        m.params = hf_params(safetensors::Reader::load(weights), m.config);
        m.format = llama ? "Hugging Face Llama" : "Hugging Face GPT-2";
        m.eot_id = hf_eos_id(j);
        return m;
    }
    Checkpoint ck = read_checkpoint(path);
    try {
        m.config = ck.header.at("model").get<GPTConfig>();
        m.config.validate();
        m.tokenizer = ck.header.at("tokenizer");
        m.eot_id = m.tokenizer.value("eot_id", -1);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error("checkpoint " + path + ": malformed model or tokenizer header (" + e.what() + ")");
    }
    size_t expected = 0;
    for (size_t s : param_sizes(m.config)) expected += s;
    if (ck.params.size() != expected)
        throw std::runtime_error("checkpoint " + path + ": holds " + std::to_string(ck.params.size()) + " parameters but its model config needs " +
                                 std::to_string(expected));
    m.params = std::move(ck.params);
    m.format = "gpt.cu checkpoint";
    return m;
}

// ============================================================================
// 2. The paged KV cache
// ============================================================================
// Memory: every layer keeps, for every token of every live sequence, a key and a value of NKV·hs floats:
//   bytes per token = 2 · L · NKV · hs · sizeof(floatX)   (GPT-2 124M: 2·12·12·64·4 = 73,728 B = 72 KiB)
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
            if (b < 0 || b >= num_blocks() || !in_use_[b]) throw std::logic_error("BlockAllocator: block " + std::to_string(b) + " freed twice or never allocated");
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
//   cost: N·C adds; reads 2·N·C, writes N·C floats: memory-bound.
template <class Real>
void embed_at_positions_cpu(Real* out /*(N, C)*/, const int* tokens, const int* positions /*(N) host*/, const Real* wte /*(Vp, C)*/,
                            const Real* wpe /*(maxT, C) or null*/, int N, int C) {
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            out[static_cast<size_t>(i) * C + c] =
                wte[static_cast<size_t>(tokens[i]) * C + c] + (wpe ? wpe[static_cast<size_t>(positions[i]) * C + c] : Real(0));
}
// One thread per (row, channel), channel fastest: coalesced reads of both embedding rows and of the write.
__global__ void embed_at_positions_kernel(floatX* out, const int* tokens, const int* positions, const floatX* wte, const floatX* wpe,
                                          int N, int C) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(N) * C) return;
    int i = static_cast<int>(idx / C), c = static_cast<int>(idx % C);
    float x = wte[static_cast<size_t>(tokens[i]) * C + c];
    if (wpe) x += wpe[static_cast<size_t>(positions[i]) * C + c];
    out[idx] = x;
}
inline void embed_at_positions(floatX* out, const int* tokens, const int* positions /*(N) device*/, const floatX* wte, const floatX* wpe,
                               int N, int C, cudaStream_t stream) {
    const int block = 256;
    embed_at_positions_kernel<<<static_cast<unsigned>(ceil_div<size_t>(static_cast<size_t>(N) * C, block)), block, 0, stream>>>(
        out, tokens, positions, wte, wpe, N, C);
    cuda_check(cudaGetLastError());
}

// paged_kv_append: the K and V of row i go to position pos_i of sequence s_i's blocks.
//   tables: (max_seqs, max_blocks) block ids; row i uses tables[s_i]. Cost: 2·N·NKV·hs floats copied.
template <class Real>
void paged_kv_append_cpu(Real* k_pool, Real* v_pool /*(num_blocks, NKV, block_size, hs)*/, const Real* qkv /*(N, (NH+2NKV)·hs)*/,
                         const int* tables, const int* slots, const int* positions /*(N) host*/, int N, int NH, int NKV, int hs,
                         int block_size, int max_blocks) {
    for (int i = 0; i < N; i++)
        for (int g = 0; g < NKV; g++) {
            size_t row = paged_kv_row(tables + static_cast<size_t>(slots[i]) * max_blocks, positions[i], g, NKV, block_size, hs);
            for (int d = 0; d < hs; d++) {
                k_pool[row + d] = qkv[qkv_k_offset(0, i, g, N, NH, NKV, hs) + d];
                v_pool[row + d] = qkv[qkv_v_offset(0, i, g, N, NH, NKV, hs) + d];
            }
        }
}
// One thread per (row, kv head, d), d fastest: a warp copies consecutive floats of one K row and one V row.
__global__ void paged_kv_append_kernel(floatX* k_pool, floatX* v_pool, const floatX* qkv, const int* tables, const int* slots,
                                       const int* positions, int N, int NH, int NKV, int hs, int block_size, int max_blocks) {
    size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<size_t>(N) * NKV * hs) return;
    int d = static_cast<int>(idx % hs), g = static_cast<int>(idx / hs % NKV), i = static_cast<int>(idx / hs / NKV);
    size_t row = paged_kv_row(tables + static_cast<size_t>(slots[i]) * max_blocks, positions[i], g, NKV, block_size, hs);
    k_pool[row + d] = qkv[qkv_k_offset(0, i, g, N, NH, NKV, hs) + d];
    v_pool[row + d] = qkv[qkv_v_offset(0, i, g, N, NH, NKV, hs) + d];
}
inline void paged_kv_append(floatX* k_pool, floatX* v_pool, const floatX* qkv, const int* tables, const int* slots, const int* positions,
                            int N, int NH, int NKV, int hs, int block_size, int max_blocks, cudaStream_t stream) {
    const int block = 256;
    paged_kv_append_kernel<<<static_cast<unsigned>(ceil_div<size_t>(static_cast<size_t>(N) * NKV * hs, block)), block, 0, stream>>>(
        k_pool, v_pool, qkv, tables, slots, positions, N, NH, NKV, hs, block_size, max_blocks);
    cuda_check(cudaGetLastError());
}

// paged_attention: row i's query (head h) attends to positions 0..pos_i of its own sequence, read through
// the block table (causality is "only up to my own position"; rows of the same sequence in one step see
// each other because their K/V were appended first).
//   s_t = q·k_t / sqrt(hs),  p_t = exp(s_t − max s) / Σ exp(s − max s),  out = Σ_t p_t·v_t
//   cost per (row, head): 4·len·hs FLOP, and len·2·hs floats of cache read: memory-bound (decode reads the
//   whole cache once per step; that is the roofline of docs/inference.md).
template <class Real>
void paged_attention_cpu(Real* out /*(N, NH·hs)*/, const Real* qkv /*(N, (NH+2NKV)·hs)*/, const Real* k_pool, const Real* v_pool,
                         const int* tables, const int* slots, const int* positions /*(N) host*/, int N, int NH, int NKV, int hs,
                         int block_size, int max_blocks) {
    Real scale = 1 / std::sqrt(static_cast<Real>(hs));
    for (int i = 0; i < N; i++) {
        const int* table = tables + static_cast<size_t>(slots[i]) * max_blocks;
        int len = positions[i] + 1;
        std::vector<Real> p(len);
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV);
            const Real* q = qkv + qkv_q_offset(0, i, h, N, NH, NKV, hs);
            Real m = -std::numeric_limits<Real>::infinity(), sum = 0;
            for (int t = 0; t < len; t++) {
                const Real* k = k_pool + paged_kv_row(table, t, g, NKV, block_size, hs);
                Real dot = 0;
                for (int d = 0; d < hs; d++) dot += q[d] * k[d];
                m = std::max(m, p[t] = dot * scale);
            }
            for (int t = 0; t < len; t++) sum += (p[t] = std::exp(p[t] - m));
            Real* o = out + (static_cast<size_t>(i) * NH + h) * hs;
            for (int d = 0; d < hs; d++) {
                Real acc = 0;
                for (int t = 0; t < len; t++) acc += p[t] * v_pool[paged_kv_row(table, t, g, NKV, block_size, hs) + d];
                o[d] = acc / sum;
            }
        }
    }
}

constexpr int paged_attention_threads = 128;

// Max or sum over the block (paged_attention_threads threads): warp shuffles, then one value per warp
// through shared memory. Every thread must call it (full-mask shuffles, barriers).
template <bool IS_MAX>
__device__ inline float paged_block_reduce(float v, float* partial /*(threads / 32) shared*/) {
    for (int o = 16; o > 0; o /= 2) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    int tid = threadIdx.x;
    if (tid % 32 == 0) partial[tid / 32] = v;
    __syncthreads();
    float r = partial[0];
    for (int w = 1; w < paged_attention_threads / 32; w++) r = IS_MAX ? fmaxf(r, partial[w]) : r + partial[w];
    __syncthreads();  // all have read `partial` before the next reduction writes it
    return r;
}

// Block (h, i): 128 threads. q (pre-scaled) goes to shared memory; thread j scores positions j, j+128, …
// (each thread walks its own K row: hs consecutive floats, which L1 turns into full-line reads) and keeps
// them in shared memory; block max, exponentials, block sum; then thread d < hs accumulates
// o_d = Σ_t p_t·v_t[d] / Σ p (a warp reads consecutive d of one V row: coalesced).
// Shared memory: (hs + max_len) floats, max_len = the longest context of the step.
__global__ void __launch_bounds__(paged_attention_threads)
paged_attention_kernel(floatX* out, const floatX* qkv, const floatX* k_pool, const floatX* v_pool, const int* tables, const int* slots,
                       const int* positions, int N, int NH, int NKV, int hs, int block_size, int max_blocks) {
    extern __shared__ float paged_smem[];
    __shared__ float partial[paged_attention_threads / 32];
    float* qs = paged_smem;      // (hs)
    float* ps = paged_smem + hs; // (len) scores, then probabilities
    int tid = threadIdx.x, h = blockIdx.x, i = blockIdx.y;
    int g = h / (NH / NKV), len = positions[i] + 1;
    const int* table = tables + static_cast<size_t>(slots[i]) * max_blocks;
    const float scale = 1.0f / sqrtf(static_cast<float>(hs));
    for (int d = tid; d < hs; d += paged_attention_threads) qs[d] = static_cast<float>(qkv[qkv_q_offset(0, i, h, N, NH, NKV, hs) + d]) * scale;
    __syncthreads();
    float m = -INFINITY;
    for (int t = tid; t < len; t += paged_attention_threads) {
        const floatX* k = k_pool + paged_kv_row(table, t, g, NKV, block_size, hs);
        float s = 0.0f;
        for (int d = 0; d < hs; d++) s += qs[d] * static_cast<float>(k[d]);
        ps[t] = s;
        m = fmaxf(m, s);
    }
    m = paged_block_reduce<true>(m, partial);
    float l = 0.0f;
    for (int t = tid; t < len; t += paged_attention_threads) l += (ps[t] = expf(ps[t] - m));
    l = paged_block_reduce<false>(l, partial);  // its barriers also publish ps to every thread
    for (int d = tid; d < hs; d += paged_attention_threads) {
        float acc = 0.0f;
        for (int t = 0; t < len; t++) acc += ps[t] * static_cast<float>(v_pool[paged_kv_row(table, t, g, NKV, block_size, hs) + d]);
        out[(static_cast<size_t>(i) * NH + h) * hs + d] = static_cast<floatX>(acc / l);
    }
}
inline void paged_attention(floatX* out /*(N, NH·hs)*/, const floatX* qkv /*(N, (NH+2NKV)·hs)*/, const floatX* k_pool, const floatX* v_pool,
                            const int* tables, const int* slots, const int* positions /*(N) device*/, int max_len, int N, int NH, int NKV,
                            int hs, int block_size, int max_blocks, cudaStream_t stream) {
    size_t smem = sizeof(float) * (static_cast<size_t>(hs) + max_len);
    if (smem > 48 * 1024)
        throw std::runtime_error("paged_attention: a context of " + std::to_string(max_len) + " tokens needs " + std::to_string(smem) +
                                 " bytes of shared memory (limit 48 KiB)");
    paged_attention_kernel<<<dim3(NH, N), paged_attention_threads, smem, stream>>>(out, qkv, k_pool, v_pool, tables, slots, positions, N, NH,
                                                                                   NKV, hs, block_size, max_blocks);
    cuda_check(cudaGetLastError());
}

// The three ops (and RoPE at given positions, for Llama) on each backend; the engine calls InferOps<Ops>::x.
// Host-side copies of the small index arrays are passed along for the CPU references.
template <class Ops> struct InferOps;
template <> struct InferOps<DeviceOps> {
    static void embed(floatX* out, const int* tok, const int*, const int* pos, const int*, const floatX* wte, const floatX* wpe, int N, int C) {
        embed_at_positions(out, tok, pos, wte, wpe, N, C, 0);
    }
    static void rope(floatX* qkv, const int* pos, const int*, int N, int NH, int NKV, int hs, float theta) {
        rope_forward_at(qkv, pos, 1, N, NH, NKV, hs, theta, 0);
    }
    static void append(floatX* k, floatX* v, const floatX* qkv, const int* tables, const int*, const int* slots, const int*, const int* pos,
                       const int*, int N, int NH, int NKV, int hs, int bs, int mb) {
        paged_kv_append(k, v, qkv, tables, slots, pos, N, NH, NKV, hs, bs, mb, 0);
    }
    static void attention(floatX* out, const floatX* qkv, const floatX* k, const floatX* v, const int* tables, const int*, const int* slots,
                          const int*, const int* pos, const int*, int max_len, int N, int NH, int NKV, int hs, int bs, int mb) {
        paged_attention(out, qkv, k, v, tables, slots, pos, max_len, N, NH, NKV, hs, bs, mb, 0);
    }
};
template <> struct InferOps<HostOps> {
    static void embed(floatX* out, const int*, const int* tok_h, const int*, const int* pos_h, const floatX* wte, const floatX* wpe, int N, int C) {
        embed_at_positions_cpu(out, tok_h, pos_h, wte, wpe, N, C);
    }
    static void rope(floatX* qkv, const int*, const int* pos_h, int N, int NH, int NKV, int hs, float theta) {
        rope_forward_at_cpu(qkv, pos_h, 1, N, NH, NKV, hs, theta);
    }
    static void append(floatX* k, floatX* v, const floatX* qkv, const int*, const int* tables_h, const int*, const int* slots_h, const int*,
                       const int* pos_h, int N, int NH, int NKV, int hs, int bs, int mb) {
        paged_kv_append_cpu(k, v, qkv, tables_h, slots_h, pos_h, N, NH, NKV, hs, bs, mb);
    }
    static void attention(floatX* out, const floatX* qkv, const floatX* k, const floatX* v, const int*, const int* tables_h, const int*,
                          const int* slots_h, const int*, const int* pos_h, int, int N, int NH, int NKV, int hs, int bs, int mb) {
        paged_attention_cpu(out, qkv, k, v, tables_h, slots_h, pos_h, N, NH, NKV, hs, bs, mb);
    }
};

// ============================================================================
// 3. The engine: one forward over the rows of a step
// ============================================================================
struct StepRow {
    int token;
    int position;     // 0-based position of the token in its sequence
    int slot;         // the sequence's row in the block tables
    bool want_logits; // sample after this row (the last new row of a sequence, or every row when verifying a draft)
};

struct EngineLimits {
    int max_seqs = 8;      // sequences that can be live at once (rows of the block tables)
    int max_rows = 256;    // new tokens per step (prefill chunks + decode rows)
    int block_size = 16;   // tokens per KV block
    int num_blocks = 0;    // KV blocks in the pool; 0 = enough for max_seqs full contexts
};

template <class Ops>
struct InferenceEngine {
    const GPTConfig config;
    const ParameterTensors params;
    int max_seqs, max_rows, block_size, num_blocks, max_blocks;  // max_blocks: per sequence = ceil(maxT / block_size)
    floatX *k_pool = nullptr, *v_pool = nullptr;                 // (L, num_blocks, NKV, block_size, hs)
    std::vector<int> tables;                                     // (max_seqs, max_blocks) host copy, uploaded each step
    // activations for up to max_rows rows
    floatX *x = nullptr, *ln = nullptr, *qkv = nullptr, *atty = nullptr, *proj = nullptr, *fch = nullptr, *fch_act = nullptr, *logits = nullptr;
    float *mean = nullptr, *rstd = nullptr;
    int *d_tokens = nullptr, *d_positions = nullptr, *d_slots = nullptr, *d_tables = nullptr, *d_unused = nullptr;
    std::vector<void*> owned;

    InferenceEngine(const GPT<Ops>& model, const EngineLimits& lim)
        : config(model.config), params(model.params), max_seqs(lim.max_seqs), max_rows(lim.max_rows), block_size(lim.block_size) {
        if (max_seqs < 1 || max_rows < 1 || block_size < 1) throw std::runtime_error("engine limits must be positive");
        max_blocks = blocks_for(config.max_seq_len, block_size);
        num_blocks = lim.num_blocks > 0 ? lim.num_blocks : max_seqs * max_blocks;
        if (num_blocks < max_blocks)
            throw std::runtime_error("a KV pool of " + std::to_string(num_blocks) + " blocks cannot hold one full context (" +
                                     std::to_string(max_blocks) + " blocks of " + std::to_string(block_size) + " tokens)");
        const size_t L = config.n_layer, C = config.n_embd, N = max_rows;
        size_t pool = L * num_blocks * config.n_kv_head * block_size * config.head_size();
        k_pool = take<floatX>(pool);
        v_pool = take<floatX>(pool);
        x = take<floatX>(N * C);
        ln = take<floatX>(N * C);
        qkv = take<floatX>(N * config.qkv_channels());
        atty = take<floatX>(N * C);
        proj = take<floatX>(N * C);
        fch = take<floatX>(N * config.fc_channels());
        fch_act = take<floatX>(N * config.ffn_hidden);
        logits = take<floatX>(N * config.padded_vocab_size);
        mean = take<float>(N);
        rstd = take<float>(N);
        d_tokens = take<int>(N);
        d_positions = take<int>(N);
        d_slots = take<int>(N);
        d_tables = take<int>(static_cast<size_t>(max_seqs) * max_blocks);
        tables.assign(static_cast<size_t>(max_seqs) * max_blocks, 0);
    }
    InferenceEngine(const InferenceEngine&) = delete;
    InferenceEngine& operator=(const InferenceEngine&) = delete;
    ~InferenceEngine() {
        for (void* p : owned) Ops::release(p);
    }
    size_t kv_bytes_per_token() const { return 2ull * config.n_layer * config.n_kv_head * config.head_size() * sizeof(floatX); }
    size_t kv_pool_bytes() const { return kv_bytes_per_token() * static_cast<size_t>(num_blocks) * block_size; }

    // Points slot's block table at `blocks` (the scheduler calls this whenever a sequence's blocks change).
    void set_blocks(int slot, const std::vector<int>& blocks) {
        if (slot < 0 || slot >= max_seqs || static_cast<int>(blocks.size()) > max_blocks) throw std::logic_error("set_blocks: bad slot or table");
        std::copy(blocks.begin(), blocks.end(), tables.begin() + static_cast<size_t>(slot) * max_blocks);
    }

    // Runs the model over `rows`: appends each row's K/V to its sequence's cache and returns, for each row
    // with want_logits (in order), Vp logits. Every row's position must be covered by its slot's blocks.
    std::vector<float> forward(const std::vector<StepRow>& rows) {
        const GPTConfig& c = config;
        const int N = static_cast<int>(rows.size()), C = c.n_embd, NH = c.n_head, NKV = c.n_kv_head, hs = c.head_size(),
                  QKV = c.qkv_channels(), F = c.fc_channels(), H = c.ffn_hidden, Vp = c.padded_vocab_size;
        if (N < 1 || N > max_rows) throw std::runtime_error("engine: a step has " + std::to_string(N) + " rows (1.." + std::to_string(max_rows) + ")");
        std::vector<int> tok(N), pos(N), slot(N), want;
        int max_len = 0;
        for (int i = 0; i < N; i++) {
            const StepRow& r = rows[i];
            if (r.token < 0 || r.token >= c.vocab_size) throw std::runtime_error("engine: token " + std::to_string(r.token) + " outside the vocabulary");
            if (r.position < 0 || r.position >= c.max_seq_len)
                throw std::runtime_error("engine: position " + std::to_string(r.position) + " outside the context (max_seq_len " +
                                         std::to_string(c.max_seq_len) + ")");
            if (r.slot < 0 || r.slot >= max_seqs) throw std::runtime_error("engine: slot " + std::to_string(r.slot) + " out of range");
            tok[i] = r.token;
            pos[i] = r.position;
            slot[i] = r.slot;
            max_len = std::max(max_len, r.position + 1);
            if (r.want_logits) want.push_back(i);
        }
        Ops::to_backend(d_tokens, tok.data(), N * sizeof(int));
        Ops::to_backend(d_positions, pos.data(), N * sizeof(int));
        Ops::to_backend(d_slots, slot.data(), N * sizeof(int));
        Ops::to_backend(d_tables, tables.data(), tables.size() * sizeof(int));
        using IO = InferOps<Ops>;
        const ParameterTensors& p = params;
        const size_t pool_layer = static_cast<size_t>(num_blocks) * NKV * block_size * hs;
        IO::embed(x, d_tokens, tok.data(), d_positions, pos.data(), p[WTE], p[WPE], N, C);
        for (int l = 0; l < c.n_layer; l++) {
            floatX* k_l = k_pool + l * pool_layer;
            floatX* v_l = v_pool + l * pool_layer;
            // x = x + attn(norm_1(x)), attention through the paged cache
            norm(ln, x, layer(p[LN1W], l, C), layer(p[LN1B], l, C), N);
            Ops::matmul_forward(qkv, ln, layer(p[QKVW], l, static_cast<size_t>(QKV) * C), layer(p[QKVB], l, QKV), N, C, QKV);
            if (c.is_llama()) IO::rope(qkv, d_positions, pos.data(), N, NH, NKV, hs, c.rope_theta);
            IO::append(k_l, v_l, qkv, d_tables, tables.data(), d_slots, slot.data(), d_positions, pos.data(), N, NH, NKV, hs, block_size, max_blocks);
            IO::attention(atty, qkv, k_l, v_l, d_tables, tables.data(), d_slots, slot.data(), d_positions, pos.data(), max_len, N, NH, NKV, hs,
                          block_size, max_blocks);
            Ops::matmul_forward(proj, atty, layer(p[ATTPROJW], l, static_cast<size_t>(C) * C), layer(p[ATTPROJB], l, C), N, C, C);
            Ops::residual_forward(x, x, proj, N * C);
            // x = x + mlp(norm_2(x))
            norm(ln, x, layer(p[LN2W], l, C), layer(p[LN2B], l, C), N);
            Ops::matmul_forward(fch, ln, layer(p[FCW], l, static_cast<size_t>(F) * C), layer(p[FCB], l, F), N, C, F);
            if (c.is_llama()) Ops::swiglu_forward(fch_act, fch, N, H);
            else Ops::gelu_forward(fch_act, fch, N * H);
            Ops::matmul_forward(proj, fch_act, layer(p[FCPROJW], l, static_cast<size_t>(C) * H), layer(p[FCPROJB], l, C), N, H, C);
            Ops::residual_forward(x, x, proj, N * C);
        }
        // the classifier only for the rows that sample: gather them to the front of ln, then one matmul
        const int M = static_cast<int>(want.size());
        if (M == 0) return {};
        norm(ln, x, p[LNFW], p[LNFB], N);
        for (int j = 0; j < M; j++)
            if (want[j] != j) Ops::copy(ln + static_cast<size_t>(j) * C, ln + static_cast<size_t>(want[j]) * C, C * sizeof(floatX));
        Ops::matmul_forward(logits, ln, c.tied_embeddings ? p[WTE] : p[LMHEAD], nullptr, M, C, Vp);
        std::vector<float> out(static_cast<size_t>(M) * Vp);
        Ops::to_host(out.data(), logits, out.size() * sizeof(float));
        return out;
    }

private:
    template <class T>
    T* take(size_t n) {
        void* ptr = Ops::alloc(std::max<size_t>(n, 1) * sizeof(T));
        owned.push_back(ptr);
        return static_cast<T*>(ptr);
    }
    static floatX* layer(floatX* base, int l, size_t per_layer) { return base ? base + static_cast<size_t>(l) * per_layer : nullptr; }
    void norm(floatX* out, const floatX* inp, const floatX* w, const floatX* b, int N) {
        if (config.is_llama()) Ops::rmsnorm_forward(out, rstd, inp, w, N, config.n_embd, config.norm_eps);
        else Ops::layernorm_forward(out, mean, rstd, inp, w, b, N, config.n_embd);
    }
};

// ============================================================================
// 4. Continuous batching
// ============================================================================
struct Request {
    std::string id;                  // echoed in the result
    std::vector<int> prompt;         // token ids (at least one)
    int max_tokens = 64;             // new tokens at most
    SamplingSettings sampling;
    uint64_t seed = 1337;            // each request samples with its own Rng: results do not depend on batching
    std::string error;               // set by the caller when the request could not be parsed: reported, never run
};
struct Result {
    std::string id;
    std::vector<int> tokens;         // generated tokens (without a final end-of-text)
    std::string finish_reason;       // "stop" (end-of-text), "length" (max_tokens), "context" (max_seq_len), "error"
    std::string error;
    int prompt_tokens = 0;
    double ttft_ms = 0, latency_ms = 0;  // from the start of serving to the first token / to the last
};

// The host side of continuous batching. Each step:
//   1. every running sequence gets its next rows: one row (decode) or a chunk of its pending prompt (prefill);
//      a sequence that needs a block when none is free preempts the youngest running sequence, whose blocks
//      return to the pool and which waits again at the front of the queue (its prompt and generated tokens
//      are recomputed when it is readmitted: "recompute" preemption; its own Rng makes that invisible);
//   2. waiting requests are admitted, oldest first, while a slot, row budget and blocks for their first chunk remain.
// Rows of one step are at most max_rows. The caller runs the engine on plan().rows and hands the logits to commit().
class Scheduler {
public:
    struct Stats {
        long steps = 0, rows = 0, prefill_rows = 0, decode_rows = 0, preemptions = 0;
        int max_running = 0;
    };

    Scheduler(int max_seqs, int max_rows, int block_size, int num_blocks, int max_seq_len, int vocab_size, int eot_id)
        : alloc_(num_blocks), max_seqs_(max_seqs), max_rows_(max_rows), block_size_(block_size), max_seq_len_(max_seq_len),
          vocab_size_(vocab_size), eot_id_(eot_id), slot_free_(max_seqs, 1), start_() {}

    // Invalid requests finish at once with an error; the others wait. Results come back in `finished`.
    void submit(Request r) {
        auto seq = std::make_unique<Sequence>();
        seq->result.id = r.id;
        seq->result.prompt_tokens = static_cast<int>(r.prompt.size());
        std::string err = r.error;
        if (err.empty()) {
            try {
                r.sampling.validate();
            } catch (const std::exception& e) {
                err = e.what();
            }
        }
        if (err.empty() && r.prompt.empty()) err = "the prompt is empty";
        if (err.empty() && static_cast<int>(r.prompt.size()) >= max_seq_len_)
            err = "the prompt has " + std::to_string(r.prompt.size()) + " tokens; the model's context is " + std::to_string(max_seq_len_) +
                  " (at most " + std::to_string(max_seq_len_ - 1) + " leave room for one new token)";
        if (err.empty() && r.max_tokens < 1) err = "max_tokens " + std::to_string(r.max_tokens) + " must be >= 1";
        for (int t : r.prompt)
            if (err.empty() && (t < 0 || t >= vocab_size_)) err = "prompt token " + std::to_string(t) + " is outside the vocabulary";
        if (!err.empty()) {
            seq->result.finish_reason = "error";
            seq->result.error = err;
            finished.push_back(std::move(seq->result));
            return;
        }
        seq->tokens = std::move(r.prompt);
        seq->max_tokens = r.max_tokens;
        seq->sampling = r.sampling;
        seq->rng.reseed(r.seed);
        waiting_.push_back(std::move(seq));
    }

    // Ends request `id` now, waiting or running: a running one's blocks and slot return to the pool at
    // once; its result (finish_reason "cancelled", the tokens so far) goes to `finished`. Call between
    // steps, never between plan() and commit(). False when no such request is live.
    bool cancel(const std::string& id) {
        auto end = [&](std::unique_ptr<Sequence>& s) {
            if (s->slot >= 0) release(*s);  // waiting sequences (preempted ones too) hold no blocks
            s->result.finish_reason = "cancelled";
            finished.push_back(std::move(s->result));
        };
        for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
            if ((*it)->result.id == id) {
                end(*it);
                waiting_.erase(it);
                return true;
            }
        for (auto it = running_.begin(); it != running_.end(); ++it)
            if ((*it)->result.id == id) {
                end(*it);
                running_.erase(it);
                return true;
            }
        return false;
    }

    bool done() const { return waiting_.empty() && running_.empty(); }
    int running() const { return static_cast<int>(running_.size()); }
    int waiting() const { return static_cast<int>(waiting_.size()); }
    const BlockAllocator& allocator() const { return alloc_; }
    const Stats& stats() const { return stats_; }

    // Called for every generated token (streaming): (request id, token, its logits row (Vp)).
    std::function<void(const std::string&, int, const float*)> on_token;
    // Called when a sequence's block table changes: (slot, blocks). The engine mirrors the tables.
    std::function<void(int, const std::vector<int>&)> on_blocks;

    std::vector<Result> finished;

    struct Plan {
        std::vector<StepRow> rows;
        std::vector<int> sampling;  // per want_logits row: index into running (at plan time)
    };

    Plan plan() {
        Plan plan;
        int budget = max_rows_;
        // 1. running sequences, oldest first; preemption takes from the back, which is not planned yet
        for (size_t i = 0; i < running_.size() && budget > 0; i++) {
            Sequence& s = *running_[i];
            int pending = static_cast<int>(s.tokens.size()) - s.cached;
            int n = std::min(pending, budget);
            while (!grow(s, s.cached + n)) {
                preempt_youngest();
                if (i >= running_.size()) break;  // s itself was the youngest: preempted
            }
            if (i >= running_.size()) break;
            add_rows(plan, s, static_cast<int>(i), n);
            budget -= n;
        }
        // 2. admissions
        while (!waiting_.empty() && budget > 0) {
            int slot = free_slot();
            if (slot < 0) break;
            Sequence& s = *waiting_.front();
            int n = std::min(static_cast<int>(s.tokens.size()), budget);
            if (!alloc_.allocate(blocks_for(n, block_size_), s.blocks)) break;
            s.slot = slot;
            slot_free_[slot] = 0;
            if (on_blocks) on_blocks(slot, s.blocks);
            running_.push_back(std::move(waiting_.front()));
            waiting_.pop_front();
            add_rows(plan, s, static_cast<int>(running_.size()) - 1, n);
            budget -= n;
        }
        if (!plan.rows.empty()) {
            stats_.steps++;
            stats_.rows += static_cast<long>(plan.rows.size());
            stats_.max_running = std::max(stats_.max_running, running());
        } else if (!done())
            throw std::logic_error("scheduler: nothing can run (a request larger than the KV pool?)");
        return plan;
    }

    // The engine ran plan.rows and returned `logits` (one Vp row per sampling row, in order).
    void commit(const Plan& plan, const std::vector<float>& logits, int Vp) {
        double now = start_.elapsed_ms();
        for (const StepRow& r : plan.rows) running_at_slot(r.slot).cached++;
        for (size_t j = 0; j < plan.sampling.size(); j++) {
            Sequence& s = *running_[plan.sampling[j]];
            const float* row = logits.data() + j * Vp;
            int tok = sample_token(row, vocab_size_, s.sampling, s.rng);
            if (s.result.tokens.empty()) s.result.ttft_ms = now;
            bool stop = tok == eot_id_;
            if (!stop) {
                s.tokens.push_back(tok);
                s.result.tokens.push_back(tok);
                if (on_token) on_token(s.result.id, tok, row);
            }
            if (stop) s.result.finish_reason = "stop";
            else if (static_cast<int>(s.result.tokens.size()) >= s.max_tokens) s.result.finish_reason = "length";
            else if (static_cast<int>(s.tokens.size()) >= max_seq_len_) s.result.finish_reason = "context";
        }
        // retire finished sequences (back to front keeps the indices of the others valid until the end)
        for (size_t i = running_.size(); i-- > 0;) {
            Sequence& s = *running_[i];
            if (s.result.finish_reason.empty()) continue;
            s.result.latency_ms = now;
            release(s);
            finished.push_back(std::move(s.result));
            running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }

private:
    struct Sequence {
        std::vector<int> tokens;     // prompt + generated
        int cached = 0;              // tokens whose K/V are in the cache
        std::vector<int> blocks;     // the block table
        int slot = -1;
        int max_tokens = 0;
        SamplingSettings sampling;
        Rng rng;
        Result result;
    };
    BlockAllocator alloc_;
    int max_seqs_, max_rows_, block_size_, max_seq_len_, vocab_size_, eot_id_;
    std::vector<char> slot_free_;
    std::deque<std::unique_ptr<Sequence>> waiting_;
    std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
    Stats stats_;
    Timer start_;

    int free_slot() const {
        for (int i = 0; i < max_seqs_; i++)
            if (slot_free_[i]) return i;
        return -1;
    }
    Sequence& running_at_slot(int slot) {
        for (auto& s : running_)
            if (s->slot == slot) return *s;
        throw std::logic_error("scheduler: no sequence in slot " + std::to_string(slot));
    }
    // Blocks to hold `tokens` positions; false when the pool is short.
    bool grow(Sequence& s, int tokens) {
        int need = blocks_for(tokens, block_size_) - static_cast<int>(s.blocks.size());
        if (need <= 0) return true;
        if (!alloc_.allocate(need, s.blocks)) return false;
        if (on_blocks) on_blocks(s.slot, s.blocks);
        return true;
    }
    void release(Sequence& s) {
        alloc_.release(s.blocks);
        slot_free_[s.slot] = 1;
        s.slot = -1;
    }
    void preempt_youngest() {
        std::unique_ptr<Sequence> s = std::move(running_.back());
        running_.pop_back();
        release(*s);
        s->cached = 0;  // its K/V are gone: prompt + generated tokens are recomputed on readmission
        stats_.preemptions++;
        waiting_.push_front(std::move(s));
    }
    void add_rows(Plan& plan, Sequence& s, int index, int n) {
        int total = static_cast<int>(s.tokens.size());
        for (int k = 0; k < n; k++) {
            int p = s.cached + k;
            bool last = p == total - 1;
            plan.rows.push_back({s.tokens[p], p, s.slot, last});
            if (last) plan.sampling.push_back(index);
        }
        (n == 1 && s.cached == total - 1 ? stats_.decode_rows : stats_.prefill_rows) += n;
    }
};

// Serves `requests` on `engine` to completion; results in request order of completion.
template <class Ops>
std::vector<Result> serve(InferenceEngine<Ops>& engine, std::vector<Request> requests, int eot_id, Scheduler::Stats* stats = nullptr,
                          std::function<void(const std::string&, int, const float*)> on_token = nullptr) {
    Scheduler sched(engine.max_seqs, engine.max_rows, engine.block_size, engine.num_blocks, engine.config.max_seq_len, engine.config.vocab_size,
                    eot_id);
    sched.on_blocks = [&](int slot, const std::vector<int>& blocks) { engine.set_blocks(slot, blocks); };
    sched.on_token = std::move(on_token);
    for (Request& r : requests) sched.submit(std::move(r));
    while (!sched.done()) {
        Scheduler::Plan plan = sched.plan();
        sched.commit(plan, engine.forward(plan.rows), engine.config.padded_vocab_size);
    }
    if (stats) *stats = sched.stats();
    return std::move(sched.finished);
}

// ============================================================================
// 5. Speculative decoding (one sequence)
// ============================================================================
// One sequence on one engine, slot 0, with its own blocks: feed(tokens) runs the rows past `cached` and
// returns their logits; rewind(n) forgets everything from position n on (the cache rows stay, unread,
// and are overwritten later: attention only reads positions < its own).
template <class Ops>
struct SoloSequence {
    InferenceEngine<Ops>& engine;
    BlockAllocator alloc;
    std::vector<int> blocks;
    int cached = 0;
    explicit SoloSequence(InferenceEngine<Ops>& e) : engine(e), alloc(e.num_blocks) {}
    // Runs tokens[cached..end) at positions cached..; returns Vp logits for each of the last `want` rows.
    std::vector<float> feed(const std::vector<int>& tokens, int want) {
        int end = static_cast<int>(tokens.size());
        if (end > engine.config.max_seq_len) throw std::runtime_error("speculative decoding ran past the context");
        int need = blocks_for(end, engine.block_size) - static_cast<int>(blocks.size());
        if (need > 0) {
            if (!alloc.allocate(need, blocks)) throw std::runtime_error("speculative decoding: KV pool too small");
            engine.set_blocks(0, blocks);
        }
        std::vector<float> out;
        while (cached < end) {
            int n = std::min(end - cached, engine.max_rows);
            std::vector<StepRow> rows;
            for (int p = cached; p < cached + n; p++) rows.push_back({tokens[p], p, 0, p >= end - want});
            std::vector<float> l = engine.forward(rows);
            out.insert(out.end(), l.begin(), l.end());
            cached += n;
        }
        return out;
    }
    void rewind(int n) { cached = std::min(cached, n); }
};

struct SpeculativeStats {
    long proposed = 0, accepted = 0, target_forwards = 0, draft_forwards = 0;
    double acceptance_rate() const { return proposed ? static_cast<double>(accepted) / proposed : 0.0; }
};

// Generates up to max_tokens after `prompt`: each round the draft proposes k tokens (sampling from its
// distribution q), the target runs [last token, proposals] in one forward and gets p at every position,
// then sampling.h's speculative_accept keeps each proposal with probability min(1, p/q) until the first
// rejection, which is replaced by a draw from the residual; when all k pass, one more token comes free
// from the target's last distribution. Both models must share the tokenizer (same vocab_size).
template <class Ops>
std::vector<int> generate_speculative(InferenceEngine<Ops>& target, InferenceEngine<Ops>& draft, const std::vector<int>& prompt, int max_tokens,
                                      int k, const SamplingSettings& s, uint64_t seed, int eot_id, SpeculativeStats* stats = nullptr,
                                      const std::function<void(int)>& on_token = nullptr) {
    const int V = target.config.vocab_size, Vp = target.config.padded_vocab_size;
    if (draft.config.vocab_size != V)
        throw std::runtime_error("the draft model's vocabulary (" + std::to_string(draft.config.vocab_size) + ") differs from the target's (" +
                                 std::to_string(V) + "): they must share a tokenizer");
    if (k < 1) throw std::runtime_error("--speculate must be >= 1");
    const int maxT = std::min(target.config.max_seq_len, draft.config.max_seq_len);
    if (prompt.empty() || static_cast<int>(prompt.size()) >= maxT) throw std::runtime_error("the prompt must have 1 to maxT-1 tokens");
    s.validate();
    Rng rng(seed);
    SoloSequence<Ops> tseq(target), dseq(draft);
    std::vector<int> tokens = prompt, out;  // invariant: both caches hold at most tokens[0 .. n-1), n = tokens.size()
    SpeculativeStats st;
    auto emit = [&](int tok) {  // false when generation ends
        if (tok == eot_id) return false;
        tokens.push_back(tok);
        out.push_back(tok);
        if (on_token) on_token(tok);
        return static_cast<int>(out.size()) < max_tokens && static_cast<int>(tokens.size()) < maxT;
    };
    for (bool go = true; go;) {
        const int n = static_cast<int>(tokens.size());
        // kk proposals + the target's bonus token must fit the context and the token budget
        const int kk = std::max(0, std::min({k, maxT - 1 - n, max_tokens - static_cast<int>(out.size()) - 1}));
        // the draft proposes x_1..x_kk, one forward each (its cache makes each a one-row decode)
        std::vector<int> proposal = tokens;
        std::vector<std::vector<double>> q;
        for (int i = 0; i < kk; i++) {
            std::vector<float> dl = dseq.feed(proposal, 1);
            st.draft_forwards++;
            q.push_back(sampling_distribution(dl.data(), V, s));
            proposal.push_back(draw(q.back(), rng));
        }
        // one target forward over [t_{n-1}, x_1, …, x_kk]: row i gives p_i, the distribution after x_i (x_0 = t_{n-1})
        std::vector<float> pl = tseq.feed(proposal, kk + 1);
        st.target_forwards++;
        st.proposed += kk;
        int i = 0;
        for (; i < kk && go; i++) {
            std::vector<double> p = sampling_distribution(pl.data() + static_cast<size_t>(i) * Vp, V, s);
            SpeculativeVerdict v = speculative_accept(proposal[n + i], p, q[i], rng);
            if (!v.accepted) {
                go = emit(v.token);  // the residual's token ends the round
                break;
            }
            st.accepted++;
            go = emit(v.token);
        }
        if (go && i == kk) go = emit(draw(sampling_distribution(pl.data() + static_cast<size_t>(kk) * Vp, V, s), rng));  // all passed: a free token
        // keep only the cache rows of accepted tokens; the newest token is fed next round
        tseq.rewind(static_cast<int>(tokens.size()) - 1);
        dseq.rewind(static_cast<int>(tokens.size()) - 1);
    }
    if (stats) *stats = st;
    return out;
}
