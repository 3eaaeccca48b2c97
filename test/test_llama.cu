// The Llama family against Hugging Face: test/fixtures/llama_tiny.bin, written by dev/reference_llama.py
// from transformers' LlamaForCausalLM (random init, fixed seed; GQA with 4 query heads over 2 kv heads,
// head size 32, RMSNorm, SwiGLU, RoPE theta 10000, untied lm_head). Both backends: the CPU reference ops
// (HostOps) and the CUDA kernels (DeviceOps: on a GPU, or emulated by cudasim in the CPU build), both
// matmul backends. The same GPT<Ops> that test/test_gpt.cu checks as GPT-2; only the config differs.
// Then Hugging Face interop (hf.h): test/fixtures/hf_llama_tiny, a save_pretrained directory, loads and
// generates transformers' greedy tokens through the inference engine; export and reload are the identity.
#include "test/fixture.h"
#include "hf.h"
#include "engine.cuh"
#include "tokenizer/bpe.h"

#include <sys/wait.h>
#include <filesystem>

#include <nlohmann/json.hpp>

TEST_CASE(
    "Llama matches Hugging Face (logits, greedy tokens, loss, every gradient, 10 AdamW steps): CPU reference path") {
    Fixture x = load_fixture("test/fixtures/llama_tiny.bin");
    REQUIRE(x.config.is_llama());
    check_against_huggingface<HostOps>(x);
}

TEST_CASE("Llama matches Hugging Face (logits, greedy tokens, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    for (MatmulBackend backend : {MatmulBackend::cublas, MatmulBackend::tiled, MatmulBackend::cublaslt}) {
        CAPTURE(static_cast<int>(backend));  // MatmulBackend: cublas, tiled, wmma, cublaslt
        set_matmul_backend(backend);
        check_against_huggingface<DeviceOps>(load_fixture("test/fixtures/llama_tiny.bin"));
    }
    set_matmul_backend(MatmulBackend::cublas);
}

// Mixed precision: test/fixtures/llama_tiny_bf16.bin (dev/reference_llama.py --bf16: n_embd 64, 2 query heads
// over 1 kv head of 32, no greedy continuation); tolerances derived in test/fixture.h.
TEST_CASE("Llama in bf16 matches PyTorch's bf16 run (logits, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    check_against_pytorch_bf16("test/fixtures/llama_tiny_bf16.bin");
}

TEST_CASE("Llama parameter layout: no biases, no wpe, fused [gate | up], GQA-sized qkv, untied lm_head") {
    GPTConfig c = nlohmann::json{{"arch", "llama"}, {"n_layer", 3}, {"n_head", 8}, {"n_kv_head", 2}, {"n_embd", 256},
                                 {"ffn_hidden", 640}, {"max_seq_len", 64}, {"vocab_size", 1000}}.get<GPTConfig>();
    auto s = param_sizes(c);
    const size_t L = 3, C = 256, hs = 32, H = 640, Vp = 1024;
    CHECK(c.padded_vocab_size == 1024);
    CHECK_FALSE(c.tied_embeddings);  // Llama's default
    for (int i : {WPE, LN1B, QKVB, ATTPROJB, LN2B, FCB, FCPROJB, LNFB}) CHECK(s[i] == 0);
    CHECK(s[QKVW] == L * (8 + 2 * 2) * hs * C);
    CHECK(s[FCW] == L * 2 * H * C);
    CHECK(s[FCPROJW] == L * C * H);
    CHECK(s[LMHEAD] == Vp * C);
}

TEST_CASE("Llama's default ffn_hidden is 8/3·C rounded up to a multiple of 32") {
    auto hidden = [](int C) {
        return nlohmann::json{{"arch", "llama"}, {"n_layer", 1}, {"n_head", 1}, {"n_embd", C}, {"max_seq_len", 8}}
            .get<GPTConfig>()
            .ffn_hidden;
    };
    CHECK(hidden(64) == 192);     // 170.7 → 192
    CHECK(hidden(96) == 256);     // 256 exactly
    CHECK(hidden(128) == 352);    // 341.3 → 352
    CHECK(hidden(4096) == 10944); // 10922.7 → 10944 (Llama-2-7B rounds to a multiple of 256 instead: 11008)
    // GPT-2 keeps 4·C
    CHECK(
        nlohmann::json{{"n_layer", 1}, {"n_head", 1}, {"n_embd", 64}, {"max_seq_len", 8}}.get<GPTConfig>().ffn_hidden ==
        256);
}

TEST_CASE("KV cache per token: 2·L·NKV·hs values; GQA divides it by NH/NKV") {
    // Llama-2-7B (32 layers, 32 heads of 128, MHA) and the same with 8 kv heads (as Llama-2-70B / Llama-3 do)
    GPTConfig mha = nlohmann::json{{"arch", "llama"},     {"n_layer", 32},       {"n_head", 32},       {"n_embd", 4096},
                                   {"max_seq_len", 4096}, {"ffn_hidden", 11008}, {"vocab_size", 32000}}
                        .get<GPTConfig>();
    GPTConfig gqa = mha;
    gqa.n_kv_head = 8;
    CHECK(mha.kv_cache_bytes_per_token() == 2u * 32 * 32 * 128 * 4);  // 1 MiB in fp32
    CHECK(mha.kv_cache_bytes_per_token(2) == 2u * 32 * 32 * 128 * 2);  // 0.5 MiB in bf16
    CHECK(gqa.kv_cache_bytes_per_token() * 4 == mha.kv_cache_bytes_per_token());
    std::string line = kv_cache_summary(gqa, 4096);
    CHECK(line.find("8 kv heads") != std::string::npos);
    CHECK(line.find("4x more") != std::string::npos);
    CHECK(kv_cache_summary(mha, 4096).find("more") == std::string::npos);  // nothing to compare without GQA
}

// ./train_gpt_cpu as a user runs it (as in test/test_train.cu): exit code and everything it printed.
static std::pair<int, std::string> run_train_gpt(const std::string& args) {
    CommandResult r = run_command(program_path("train_gpt_cpu") + " " + args);
    return {r.exit_code, r.output};
}

TEST_CASE("train_gpt --arch llama: model flags override the model JSON, it trains, and prints the KV-cache saving") {
    namespace fs = std::filesystem;
    std::string dir = (fs::temp_directory_path() / ("gptcu_test_llama_" + std::to_string(getpid()))).string();
    fs::create_directories(dir);
    Rng rng(7);
    std::vector<int> train(2000), val(200);
    for (auto& t : train) t = static_cast<int>(rng.below(50257));
    for (auto& t : val) t = static_cast<int>(rng.below(50257));
    bpe::write_shard(dir + "/train_000.bin", train, 50257);
    bpe::write_shard(dir + "/val_000.bin", val, 50257);
    // a GPT-2 model JSON turned into a GQA Llama by flags, given before and after --model
    const std::string args =
        "--arch llama --n-kv-head 2 --model '{\"arch\":\"gpt2\",\"n_layer\":1,\"n_head\":2,\"n_embd\":32,"
        "\"max_seq_len\":16}' --n-head 4 --device cpu --batch-size 2 --seq-len 8 --max-steps 3 --val-every 0 "
        "--sample-every 0 --sample-tokens 2 --warmup-steps 1 --train-data " +
        dir + "/train_*.bin --val-data " + dir + "/val_*.bin --out-dir " + dir + "/out";
    auto [code, out] = run_train_gpt(args + " --print-config");
    REQUIRE(code == 0);
    nlohmann::json resolved = nlohmann::json::parse(out);
    CHECK(resolved.at("model").at("arch") == "llama");
    CHECK(resolved.at("model").at("n_head") == 4);
    CHECK(resolved.at("ffn_hidden") == 96);  // the Llama default for C = 32: 85.3 → 96
    CHECK(resolved.at("tied_embeddings") == false);
    std::tie(code, out) = run_train_gpt(args);
    INFO(out);
    CHECK(code == 0);
    CHECK(out.find("model: llama, 1 layers, 4 heads (2 kv)") != std::string::npos);
    CHECK(out.find("KV cache: 0.1 KiB/token = 2 (K, V) x 1 layers x 2 kv heads x 8 x 4 bytes") != std::string::npos);
    CHECK(out.find("2x more") != std::string::npos);
    // its checkpoint is not a GPT-2's
    std::tie(code, out) = run_train_gpt(args + " --arch gpt2 --n-kv-head 4 --resume");
    CHECK(code == 1);
    CHECK(out.find("another model config") != std::string::npos);
    fs::remove_all(dir);
}

// ----------------------------------------------------------------------------
// Hugging Face interop: a LlamaForCausalLM directory (config.json + model.safetensors, as save_pretrained
// writes it; dev/reference_llama.py --hf). Other choices than llama_tiny.bin on purpose: MQA (1 kv head),
// tied embeddings, rope_theta 500000, rms_norm_eps 1e-6, vocab 100 (padded to 128 here), bf16 weights.
static const std::string hf_llama_dir = "test/fixtures/hf_llama_tiny";

TEST_CASE("HF Llama: config.json maps to our config; export and reload give the same config and parameters") {
    LoadedModel m = load_model(hf_llama_dir);
    CHECK(m.format == "Hugging Face Llama");
    const GPTConfig& c = m.config;
    CHECK(c.is_llama());
    CHECK(c.vocab_size == 100);
    CHECK(c.padded_vocab_size == 128);
    CHECK(c.n_layer == 2);
    CHECK(c.n_head == 4);
    CHECK(c.n_kv_head == 1);
    CHECK(c.n_embd == 128);
    CHECK(c.ffn_hidden == 96);
    CHECK(c.max_seq_len == 64);
    CHECK(c.rope_theta == 500000.0f);
    CHECK(c.norm_eps == 1e-6f);
    CHECK(c.tied_embeddings);
    CHECK(m.eot_id == 99);
    for (size_t i = static_cast<size_t>(100) * c.n_embd; i < static_cast<size_t>(128) * c.n_embd; i++)
        REQUIRE(m.params[i] == 0.0f);
    namespace fs = std::filesystem;
    std::string out = (fs::temp_directory_path() / ("gptcu_test_export_hf_llama_" + std::to_string(getpid()))).string();
    fs::remove_all(out);
    export_hf(out, c, m.params, m.eot_id);
    LoadedModel back = load_model(out);
    CHECK(back.format == "Hugging Face Llama");
    CHECK(nlohmann::json(back.config) == nlohmann::json(c));
    CHECK(back.params == m.params);
    CHECK(back.eot_id == m.eot_id);
    fs::remove_all(out);
}

TEST_CASE("HF Llama: configs our ops would compute differently are refused with a message") {
    nlohmann::json j = {{"model_type", "llama"},    {"vocab_size", 100},       {"max_position_embeddings", 64},
                        {"hidden_size", 128},       {"intermediate_size", 96}, {"num_hidden_layers", 2},
                        {"num_attention_heads", 4}, {"num_key_value_heads", 1}};
    CHECK(hf_llama_config(j, "c").n_kv_head == 1);
    CHECK(hf_llama_config(j, "c").rope_theta == 10000.0f);  // neither spelling: LlamaConfig's default
    auto refused = [&](nlohmann::json bad, const char* what) {
        CHECK_THROWS_WITH(hf_llama_config(bad, "config.json"), doctest::Contains(what));
    };
    nlohmann::json bad = j;
    bad["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
    refused(bad, "RoPE scaling 'llama3'");
    bad = j;
    bad["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}};
    refused(bad, "RoPE scaling 'yarn'");
    bad = j;
    bad["attention_bias"] = true;
    refused(bad, "no biases");
    bad = j;
    bad["hidden_act"] = "gelu";
    refused(bad, "silu");
    bad = j;
    bad["head_dim"] = 64;
    refused(bad, "head_dim");
    bad = j;
    bad["num_key_value_heads"] = 3;
    refused(bad, "n_kv_head must divide n_head");
    bad = j;
    bad.erase("intermediate_size");
    refused(bad, "intermediate_size");
    j["rope_theta"] = 1e6;  // transformers 4's spelling
    CHECK(hf_llama_config(j, "c").rope_theta == 1e6f);
}

// transformers' greedy tokens (generate(), with its KV cache) and the logits that chose them, against our
// inference engine (paged KV cache, RoPE at each row's position) on the loaded weights.
template <class Ops>
static void check_hf_llama_generation() {
    std::ifstream f(hf_llama_dir + "/generation.json");
    REQUIRE(f.good());
    nlohmann::json g = nlohmann::json::parse(f);
    std::vector<int> prompt = g.at("prompt"), greedy = g.at("greedy");
    std::vector<std::vector<float>> ref = g.at("logits");
    LoadedModel m = load_model(hf_llama_dir);
    GPT<Ops> model(m.config);
    model.set_parameters(m.params);
    InferenceEngine<Ops> engine(model, {1, 32, 8, 0});
    Request r{"hf", prompt, static_cast<int>(greedy.size()), {0.0f, 0, 1.0f}, 1, ""};
    std::vector<std::vector<float>> seen;
    auto results = serve(engine, {r}, -1, nullptr, [&](const std::string&, int, const float* row) {
        seen.emplace_back(row, row + m.config.vocab_size);
    });
    REQUIRE(results.size() == 1);
    CHECK(results[0].tokens == greedy);
    REQUIRE(seen.size() == ref.size());
    for (size_t i = 0; i < seen.size(); i++) {
        CAPTURE(i);
        check_close("logits vs transformers", seen[i], ref[i], tolerance_model);
    }
    // and by full recomputation through GPT<Ops>::forward, as the training-side test does
    CHECK(greedy_tokens(model, prompt, static_cast<int>(greedy.size())) == greedy);
}
TEST_CASE("HF Llama fixture: greedy tokens exact, logits within 1e-4 of transformers (CPU reference ops)") {
    check_hf_llama_generation<HostOps>();
}
TEST_CASE("HF Llama fixture: greedy tokens exact, logits within 1e-4 of transformers (kernels)") {
    check_hf_llama_generation<DeviceOps>();
}
