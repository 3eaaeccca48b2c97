// hf.h — models in and out: load_model(path) reads our checkpoint or a Hugging Face directory (config.json +
// model.safetensors of a GPT2LMHeadModel or LlamaForCausalLM) into gpt.cuh's parameter layout; export_hf(dir,
// ...) writes the HF layout of the model's family back, so transformers can load what gpt.cu trained.
// docs/inference.md and docs/llama.md explain the mapping; tests are in test/test_infer.cu and test/test_llama.cu.
#pragma once
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpt.cuh"
#include "checkpoint.h"
#include "safetensors.h"

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
    std::vector<HFTensor> t = {{WTE, -1, "wte.weight", {c.vocab_size, C}, false},
                               {WPE, -1, "wpe.weight", {c.max_seq_len, C}, false}};
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
    if (!c.tied_embeddings)
        t.push_back({LMHEAD, -1, "lm_head.weight", {c.vocab_size, C}, false});  // outside "transformer."
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
inline std::vector<HFTensor> hf_tensors(const GPTConfig& c) {
    return c.is_llama() ? hf_llama_tensors(c) : hf_gpt2_tensors(c);
}
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
        if (json_or<std::string>(j, "model_type", "gpt2") != "gpt2")
            fail("model_type '" + json_or<std::string>(j, "model_type", "") + "' is not gpt2 or llama");
        for (const char* key : {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head"})
            if (!j.contains(key) || !j[key].is_number_integer()) fail(std::string("missing integer \"") + key + "\"");
        std::string act = json_or<std::string>(j, "activation_function", "gelu_new");
        if (act != "gelu_new" && act != "gelu_pytorch_tanh")
            fail("activation_function '" + act + "': gpt.cu's GELU is the tanh approximation (gelu_new)");
        double eps = json_or(j, "layer_norm_epsilon", 1e-5);
        if (std::abs(eps - layernorm_eps) > 1e-12)
            fail("layer_norm_epsilon " + std::to_string(eps) + ": gpt.cu's LayerNorm uses 1e-5");
        if (json_or(j, "scale_attn_by_inverse_layer_idx", false))
            fail("scale_attn_by_inverse_layer_idx is not supported");
        if (!json_or(j, "scale_attn_weights", true)) fail("scale_attn_weights=false is not supported");
        GPTConfig c;
        c.arch = Arch::gpt2;
        c.vocab_size = j["vocab_size"];
        c.padded_vocab_size = padded_vocab(c.vocab_size);
        c.max_seq_len = j["n_positions"];
        c.n_embd = j["n_embd"];
        c.n_layer = j["n_layer"];
        c.n_head = c.n_kv_head = j["n_head"];
        c.ffn_hidden =
            j.contains("n_inner") && j["n_inner"].is_number_integer() ? j["n_inner"].get<int>() : 4 * c.n_embd;
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
    for (const char* key : {"vocab_size", "max_position_embeddings", "hidden_size", "intermediate_size",
                            "num_hidden_layers", "num_attention_heads"})
        if (!j.contains(key) || !j[key].is_number_integer()) fail(std::string("missing integer \"") + key + "\"");
    std::string act = json_or<std::string>(j, "hidden_act", "silu");
    if (act != "silu") fail("hidden_act '" + act + "': gpt.cu's SwiGLU gates with silu");
    if (json_or(j, "attention_bias", false) || json_or(j, "mlp_bias", false))
        fail("attention_bias / mlp_bias: gpt.cu's Llama has no biases");
    nlohmann::json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"]
                          : j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"]
                                                                                        : nlohmann::json::object();
    std::string rope_type = rope.value("rope_type", rope.value("type", "default"));
    if (rope_type != "default")
        fail("RoPE scaling '" + rope_type + "' is not implemented (only plain RoPE with rope_theta)");
    GPTConfig c;
    c.arch = Arch::llama;
    c.vocab_size = j["vocab_size"];
    c.padded_vocab_size = padded_vocab(c.vocab_size);
    c.max_seq_len = j["max_position_embeddings"];
    c.n_embd = j["hidden_size"];
    c.n_layer = j["num_hidden_layers"];
    c.n_head = j["num_attention_heads"];
    c.n_kv_head = j.contains("num_key_value_heads") && j["num_key_value_heads"].is_number_integer()
                      ? j["num_key_value_heads"].get<int>()
                      : c.n_head;
    c.ffn_hidden = j["intermediate_size"];
    c.rope_theta = rope.contains("rope_theta") ? rope["rope_theta"].get<float>() : json_or(j, "rope_theta", 10000.0f);
    c.norm_eps = json_or(j, "rms_norm_eps", 1e-6f);  // LlamaConfig's default
    c.tied_embeddings = json_or(j, "tie_word_embeddings", false);
    if (c.n_head > 0 && j.contains("head_dim") && j["head_dim"].is_number_integer() &&
        j["head_dim"].get<int>() != c.n_embd / c.n_head)
        fail("head_dim " + j["head_dim"].dump() +
             " is not hidden_size / num_attention_heads: gpt.cu's heads split the channels");
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
        return {{"architectures", {"LlamaForCausalLM"}},
                {"model_type", "llama"},
                {"vocab_size", c.vocab_size},
                {"max_position_embeddings", c.max_seq_len},
                {"hidden_size", c.n_embd},
                {"intermediate_size", c.ffn_hidden},
                {"num_hidden_layers", c.n_layer},
                {"num_attention_heads", c.n_head},
                {"num_key_value_heads", c.n_kv_head},
                {"head_dim", c.head_size()},
                {"hidden_act", "silu"},
                {"rms_norm_eps", c.norm_eps},
                {"attention_bias", false},
                {"mlp_bias", false},
                {"tie_word_embeddings", c.tied_embeddings},
                {"torch_dtype", "float32"},
                // both spellings: transformers 4 reads rope_theta, transformers 5 rope_parameters
                {"rope_theta", c.rope_theta},
                {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", c.rope_theta}}}};
    return {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"}, {"vocab_size", c.vocab_size},
            {"n_positions", c.max_seq_len}, {"n_embd", c.n_embd}, {"n_layer", c.n_layer}, {"n_head", c.n_head},
            {"n_inner", c.ffn_hidden}, {"activation_function", "gelu_new"}, {"layer_norm_epsilon", 1e-5},
            {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}, {"tie_word_embeddings", c.tied_embeddings},
            {"torch_dtype", "float32"}};
}

// Writes dir/config.json + dir/model.safetensors so that GPT2LMHeadModel.from_pretrained(dir) (GPT-2) or
// LlamaForCausalLM.from_pretrained(dir) (Llama) loads the model.
// dtype: F32, or BF16 (each weight rounded to the nearest bf16; config.json says torch_dtype bfloat16).
inline void export_hf(const std::string& dir, const GPTConfig& c, const std::vector<float>& params, int eot_id,
                      safetensors::DType dtype = safetensors::DType::F32) {
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
    safetensors::save(dir + "/model.safetensors", out, {{"format", "pt"}}, dtype);
    nlohmann::json config = hf_config_json(c);
    if (dtype == safetensors::DType::BF16) config["torch_dtype"] = "bfloat16";
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
            throw std::runtime_error(
                "model " + path +
                ": a directory must hold config.json and model.safetensors (a Hugging Face GPT-2 or Llama)");
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
        throw std::runtime_error("checkpoint " + path + ": holds " + std::to_string(ck.params.size()) +
                                 " parameters but its model config needs " + std::to_string(expected));
    m.params = std::move(ck.params);
    m.format = "gpt.cu checkpoint";
    return m;
}

// The tokenizer of a loaded model, one rule for every program: `dir` (a --tokenizer flag) if given, else the one the
// checkpoint recorded, else GPT-2's (../shared/data/gpt2); a checkpoint's fingerprint must match. When none is found,
// or it has more tokens than the model, that is an error if `needed`, else std::nullopt (token ids in, ids out).
inline std::optional<bpe::Tokenizer> open_model_tokenizer(std::string dir, const LoadedModel& m, bool needed) {
    if (dir.empty() && m.tokenizer.is_object()) dir = m.tokenizer.value("dir", "");
    if (dir.empty()) dir = "../shared/data/gpt2";
    if (!std::filesystem::exists(dir + "/encoder.json")) {
        if (needed)
            throw std::runtime_error("tokenizer " + dir +
                                     ": no encoder.json there; pass --tokenizer DIR (or token ids)");
        return std::nullopt;
    }
    bpe::Tokenizer tok = bpe::Tokenizer::load(dir);
    // (an empty fingerprint: the model was fine-tuned from a Hugging Face model with token ids, no tokenizer known)
    if (m.tokenizer.is_object() && m.tokenizer.value("fingerprint", "") != "" &&
        tokenizer_info(dir, tok).fingerprint != m.tokenizer["fingerprint"])
        throw std::runtime_error("tokenizer " + dir + " is not the one the model was trained with (" +
                                 m.tokenizer.dump() + "); pass that one with --tokenizer");
    if (tok.vocab_size() > m.config.vocab_size) {
        if (needed)
            throw std::runtime_error("tokenizer " + dir + " has " + std::to_string(tok.vocab_size()) +
                                     " tokens but the model only " + std::to_string(m.config.vocab_size) +
                                     "; pass the model's with --tokenizer");
        std::fprintf(stderr, "note: tokenizer %s does not fit this model's vocabulary; using token ids\n", dir.c_str());
        return std::nullopt;
    }
    return tok;
}
