// infer_gpt.cu — generate text with a GPT: from a checkpoint of train_gpt or a Hugging Face GPT-2 directory.
//
//   ./infer_gpt_cpu --model out/shakespeare_cpu/checkpoint.bin --prompt "ROMEO:" --max-tokens 100
//   ./infer_gpt --model path/to/gpt2 --prompt "Hello" --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1
//   ./infer_gpt --model M --requests in.jsonl --out results.jsonl      continuous batching over a request file
//   ./infer_gpt --model M --draft D --speculate 4 --prompt "..."        speculative decoding
//   ./infer_gpt --model M --prompt-ids 5,17,3 --max-tokens 1 --dump-logits last.f32
//   ./infer_gpt --model out/x/checkpoint.bin --export-hf out/x_hf      write config.json + model.safetensors
//   ./infer_gpt --model M --serve --port 8000                          OpenAI-compatible HTTP server (server.h)
//
// Request lines: {"id": any, "prompt": "text", "max_tokens": N, "temperature": T, "top_k": K, "top_p": P, "seed": S}
// (every key but prompt optional; defaults from the flags). A line that cannot be parsed gets an error
// result naming the line and the problem; the other requests are still served.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "hf.h"
#include "engine.cuh"
#include "server.h"
#include "tokenizer/bpe.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

struct InferOptions {
    std::string model, draft, tokenizer, prompt, prompt_ids, requests, out, dump_logits, export_hf, device = "auto",
                precision = "auto";
    int max_tokens = 128, top_k = 0, speculate = 4, max_seqs = 16, block_size = 16, kv_blocks = 0,
        max_step_tokens = 256;
    float temperature = 1.0f, top_p = 1.0f;
    uint64_t seed = 1337;
    // ---- --serve
    bool serve = false;
    std::string host = "127.0.0.1", model_name;
    int port = 8000, max_queue = 64;
};

static void print_help() {
    std::printf(
        "usage: infer_gpt --model PATH [options]\n"
        "  --model PATH            gpt.cu checkpoint (train_gpt's checkpoint.bin) or a directory with config.json +\n"
        "                          model.safetensors (Hugging Face GPT-2)\n"
        "  --tokenizer DIR         encoder.json + vocab.bpe (default: the checkpoint's; for HF models "
        "../shared/data/gpt2)\n"
        "  --prompt TEXT           text to continue (default: <|endoftext|>)\n"
        "  --prompt-ids 1,2,3      token ids to continue instead of text (no tokenizer needed)\n"
        "  --max-tokens N          new tokens at most (default 128); generation also stops at <|endoftext|>\n"
        "  --temperature T         0 = greedy (default 1)\n"
        "  --top-k K               sample from the K most likely tokens (0 = all, default)\n"
        "  --top-p P               sample from the smallest set of tokens with probability >= P (default 1)\n"
        "  --seed S                sampling seed (default 1337)\n"
        "  --requests FILE.jsonl   serve every request of the file with continuous batching ...\n"
        "  --out FILE.jsonl        ... and write one result per request here (default: stdout)\n"
        "  --max-seqs N            sequences decoded together (default 16)\n"
        "  --block-size N          tokens per KV-cache block (default 16)\n"
        "  --kv-blocks N           KV-cache blocks (default: max-seqs full contexts)\n"
        "  --max-step-tokens N     new tokens per forward (prefill chunks + decode rows, default 256)\n"
        "  --draft PATH            draft model for speculative decoding (same tokenizer) ...\n"
        "  --speculate K           ... proposing K tokens per target forward (default 4)\n"
        "  --dump-logits FILE      write the raw float32 logits (V values) that chose the last generated token\n"
        "  --export-hf DIR         write the model as Hugging Face GPT-2 or Llama (config.json + model.safetensors) "
        "and exit\n"
        "  --device auto|cpu|cuda  auto: cuda on a GPU, else the CPU reference ops\n"
        "  --precision auto|fp32|bf16  bf16: weights, activations and KV cache in bf16 on tensor cores (the CUDA\n"
        "                          kernels only); auto: bf16 on a GPU, else fp32. With --export-hf: the file's dtype\n"
        "                          (auto: fp32)\n"
        "  --serve                 serve the OpenAI completions API over HTTP (docs/serving.md) until SIGTERM/SIGINT:\n"
        "                          POST /v1/completions, GET /v1/models /health /metrics; --max-seqs, --kv-blocks,\n"
        "                          --max-step-tokens size the batch; --max-tokens, --temperature, ... are the "
        "defaults\n"
        "  --host ADDR             address to listen on (default 127.0.0.1: this machine only)\n"
        "  --port N                port (default 8000; 0 = any free port, printed)\n"
        "  --max-queue N           requests waiting beyond the --max-seqs running; more get 429 (default 64)\n"
        "  --model-name NAME       the name clients pass as \"model\" (default: the --model path's last component)\n");
}

static InferOptions parse_options(int argc, char** argv) {
    InferOptions o;
    std::map<std::string, std::function<void(const std::string&)>> flags;
    auto str = [&](std::string& f) { return [&f](const std::string& v) { f = v; }; };
    auto integer = [](int& f, const char* name) {
        return [&f, name](const std::string& v) {
            size_t used = 0;
            try { f = std::stoi(v, &used); } catch (const std::exception&) { used = 0; }
            if (used != v.size() || v.empty())
                throw std::runtime_error(std::string(name) + " needs an integer, got '" + v + "'");
        };
    };
    auto real = [](float& f, const char* name) {
        return [&f, name](const std::string& v) {
            size_t used = 0;
            try { f = std::stof(v, &used); } catch (const std::exception&) { used = 0; }
            if (used != v.size() || v.empty())
                throw std::runtime_error(std::string(name) + " needs a number, got '" + v + "'");
        };
    };
    flags["--model"] = str(o.model);
    flags["--draft"] = str(o.draft);
    flags["--tokenizer"] = str(o.tokenizer);
    flags["--prompt"] = str(o.prompt);
    flags["--prompt-ids"] = str(o.prompt_ids);
    flags["--requests"] = str(o.requests);
    flags["--out"] = str(o.out);
    flags["--dump-logits"] = str(o.dump_logits);
    flags["--export-hf"] = str(o.export_hf);
    flags["--device"] = str(o.device);
    flags["--precision"] = str(o.precision);
    flags["--host"] = str(o.host);
    flags["--model-name"] = str(o.model_name);
    flags["--port"] = integer(o.port, "--port");
    flags["--max-queue"] = integer(o.max_queue, "--max-queue");
    flags["--max-tokens"] = integer(o.max_tokens, "--max-tokens");
    flags["--top-k"] = integer(o.top_k, "--top-k");
    flags["--speculate"] = integer(o.speculate, "--speculate");
    flags["--max-seqs"] = integer(o.max_seqs, "--max-seqs");
    flags["--block-size"] = integer(o.block_size, "--block-size");
    flags["--kv-blocks"] = integer(o.kv_blocks, "--kv-blocks");
    flags["--max-step-tokens"] = integer(o.max_step_tokens, "--max-step-tokens");
    flags["--temperature"] = real(o.temperature, "--temperature");
    flags["--top-p"] = real(o.top_p, "--top-p");
    flags["--seed"] = [&o](const std::string& v) {
        try {
            o.seed = std::stoull(v);
        } catch (const std::exception&) {
            throw std::runtime_error("--seed needs a non-negative integer, got '" + v + "'");
        }
    };
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            print_help();
            std::exit(0);
        }
        if (a == "--serve") {  // the one flag without a value
            o.serve = true;
            continue;
        }
        auto f = flags.find(a);
        if (f == flags.end()) throw std::runtime_error("unknown flag '" + a + "' (see --help)");
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        f->second(argv[++i]);
    }
    if (o.model.empty()) throw std::runtime_error("--model PATH is required (see --help)");
    if (o.port < 0 || o.port > 65535)
        throw std::runtime_error("--port " + std::to_string(o.port) + " is not a port (0..65535)");
    if (o.max_queue < 0) throw std::runtime_error("--max-queue " + std::to_string(o.max_queue) + " must be >= 0");
    return o;
}

// The tokenizer to use: --tokenizer, else the one the checkpoint recorded, else GPT-2's. A checkpoint's
// fingerprint must match: another tokenizer's ids would mean other words.

static std::vector<int> parse_ids(const std::string& s) {
    std::vector<int> ids;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        int v = 0;
        try { v = std::stoi(item, &used); } catch (const std::exception&) { used = 0; }
        if (used == 0) throw std::runtime_error("--prompt-ids: '" + item + "' is not a token id");
        ids.push_back(v);
    }
    return ids;
}

// Token ids → text that is always valid UTF-8 (JSON needs it): bytes that never form UTF-8 become U+FFFD.
static std::string valid_utf8_text(const bpe::Tokenizer& tok, const std::vector<int>& ids) {
    bpe::StreamDecoder d(tok);
    std::string s;
    for (int id : ids) s += d.push(id);
    return s + d.flush();
}

// One JSONL line → a request (or a request carrying the error that makes it unservable).
static Request parse_request(const std::string& line, int lineno, const InferOptions& o,
                             const std::optional<bpe::Tokenizer>& tok, int eot) {
    Request r;
    r.id = "line " + std::to_string(lineno);
    r.max_tokens = o.max_tokens;
    r.sampling = {o.temperature, o.top_k, o.top_p};
    r.seed = o.seed + static_cast<uint64_t>(lineno);
    try {
        json j = json::parse(line);
        if (!j.is_object()) throw std::runtime_error("not a JSON object");
        if (j.contains("id")) r.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
        if (!j.contains("prompt") || !j["prompt"].is_string()) throw std::runtime_error("needs a string \"prompt\"");
        r.max_tokens = j.value("max_tokens", r.max_tokens);
        r.sampling.temperature = j.value("temperature", r.sampling.temperature);
        r.sampling.top_k = j.value("top_k", r.sampling.top_k);
        r.sampling.top_p = j.value("top_p", r.sampling.top_p);
        r.seed = j.value("seed", r.seed);
        std::string text = j["prompt"];
        if (!tok) throw std::runtime_error("no tokenizer to encode the prompt (pass --tokenizer)");
        r.prompt = text.empty() ? std::vector<int>{eot >= 0 ? eot : 0} : tok->encode_ordinary(text);
    } catch (const std::exception& e) {
        r.error = "line " + std::to_string(lineno) + ": " + e.what();
    }
    return r;
}

template <class Ops, class FloatX>
static int run(const InferOptions& o, const std::string& device_name) {
    Timer load_timer;
    LoadedModel m = load_model(o.model);
    std::fprintf(stderr, "model: %s (%s), %d layers, %d heads, C=%d, vocab %d, context %d; device %s (%s)\n",
                 o.model.c_str(), m.format.c_str(), m.config.n_layer, m.config.n_head, m.config.n_embd,
                 m.config.vocab_size, m.config.max_seq_len, Ops::name, device_name.c_str());
    std::fprintf(stderr, "%s\n", kv_cache_summary(m.config, m.config.max_seq_len, sizeof(FloatX)).c_str());
    if (!o.export_hf.empty()) {
        export_hf(o.export_hf, m.config, m.params, m.eot_id,
                  o.precision == "bf16" ? safetensors::DType::BF16 : safetensors::DType::F32);
        std::fprintf(stderr, "wrote %s/config.json and %s/model.safetensors\n", o.export_hf.c_str(),
                     o.export_hf.c_str());
        return 0;
    }
    bool need_tok = o.prompt_ids.empty();
    std::optional<bpe::Tokenizer> tok = open_model_tokenizer(o.tokenizer, m, need_tok && o.requests.empty());
    int eot = m.eot_id >= 0 ? m.eot_id : (tok ? tok->eot_id() : -1);
    GPT<Ops, FloatX> model(m.config);
    model.set_parameters(m.params);
    m.params.clear();
    m.params.shrink_to_fit();
    SamplingSettings sampling{o.temperature, o.top_k, o.top_p};
    sampling.validate();

    // ---- --serve: the HTTP server owns this thread until SIGTERM / SIGINT
    if (o.serve) {
        InferenceEngine<Ops, FloatX> engine(model, {o.max_seqs, o.max_step_tokens, o.block_size, o.kv_blocks});
        std::fprintf(stderr, "KV cache: %d blocks of %d tokens, %.1f MB; up to %d sequences per step, %d waiting\n",
                     engine.num_blocks, engine.block_size, engine.kv_pool_bytes() / 1e6, engine.max_seqs, o.max_queue);
        serving::CompletionDefaults d{o.model_name, o.max_tokens, sampling, o.seed};
        if (d.model_name.empty()) d.model_name = fs::path(o.model).filename().string();
        if (d.model_name.empty()) d.model_name = fs::path(o.model).parent_path().filename().string();  // "dir/"
        serving::CompletionServer server({o.host, o.port, o.max_queue}, d, *tok, m.config, eot, o.max_seqs);
        return server.run(engine);
    }
    // ---- end --serve

    if (!o.requests.empty()) {  // ---- continuous batching over a request file
        std::ifstream in(o.requests);
        if (!in) throw std::runtime_error("requests " + o.requests + ": cannot open");
        std::vector<Request> reqs;
        std::string line;
        for (int lineno = 1; std::getline(in, line); lineno++)
            if (line.find_first_not_of(" \t\r") != std::string::npos)
                reqs.push_back(parse_request(line, lineno, o, tok, eot));
        std::vector<std::string> order;
        std::map<std::string, std::string> prompts;
        for (const Request& r : reqs) order.push_back(r.id);
        InferenceEngine<Ops, FloatX> engine(model, {o.max_seqs, o.max_step_tokens, o.block_size, o.kv_blocks});
        std::fprintf(stderr, "KV cache: %d blocks of %d tokens, %.1f MB (%zu bytes per token); %zu requests\n",
                     engine.num_blocks, engine.block_size, engine.kv_pool_bytes() / 1e6, engine.kv_bytes_per_token(),
                     reqs.size());
        Timer t;
        Scheduler::Stats st;
        std::vector<Result> results = serve(engine, std::move(reqs), eot, &st);
        double ms = t.elapsed_ms();
        std::map<std::string, const Result*> by_id;
        long generated = 0;
        for (const Result& r : results) { by_id[r.id] = &r; generated += static_cast<long>(r.tokens.size()); }
        std::ofstream file;
        if (!o.out.empty()) {
            file.open(o.out);
            if (!file) throw std::runtime_error("--out " + o.out + ": cannot open for writing");
        }
        std::ostream& out = o.out.empty() ? std::cout : file;
        int errors = 0;
        for (const std::string& id : order) {
            const Result& r = *by_id.at(id);
            json j = {{"id", r.id}};
            if (!r.error.empty()) {
                j["error"] = r.error;
                errors++;
            } else {
                j["text"] = tok ? valid_utf8_text(*tok, r.tokens) : "";
                j["tokens"] = r.tokens;
                j["finish_reason"] = r.finish_reason;
                j["prompt_tokens"] = r.prompt_tokens;
                j["ttft_ms"] = r.ttft_ms;
                j["latency_ms"] = r.latency_ms;
            }
            out << j.dump() << "\n";
        }
        std::fprintf(stderr,
                     "served %zu requests (%d errors): %ld tokens generated in %.0f ms = %.1f tok/s; %ld steps, %ld "
                     "prefill + %ld decode rows, "
                     "%ld preemptions, at most %d running\n",
                     results.size(), errors, generated, ms, generated / (ms / 1000), st.steps, st.prefill_rows,
                     st.decode_rows, st.preemptions, st.max_running);
        return 0;
    }

    // ---- one prompt, streamed
    std::vector<int> prompt = !o.prompt_ids.empty() ? parse_ids(o.prompt_ids)
                              : o.prompt.empty()    ? std::vector<int>{eot >= 0 ? eot : 0}
                                                    : tok->encode_ordinary(o.prompt);
    if (static_cast<int>(prompt.size()) >= m.config.max_seq_len)
        throw std::runtime_error("the prompt has " + std::to_string(prompt.size()) +
                                 " tokens but the model's context is " + std::to_string(m.config.max_seq_len) +
                                 "; shorten it");
    std::optional<bpe::StreamDecoder> decoder;
    if (tok) decoder.emplace(*tok);
    std::vector<float> last_logits;
    if (tok && o.prompt_ids.empty()) std::cout << o.prompt << std::flush;
    auto print = [&](int token) {
        if (decoder && o.prompt_ids.empty()) std::cout << decoder->push(token) << std::flush;
        else std::cout << token << " " << std::flush;
    };
    Timer t;
    std::vector<int> generated;
    if (!o.draft.empty()) {  // ---- speculative decoding
        LoadedModel dm = load_model(o.draft);
        GPT<Ops, FloatX> draft(dm.config);
        draft.set_parameters(dm.params);
        InferenceEngine<Ops, FloatX> te(model, {1, o.max_step_tokens, o.block_size, 0}),
            de(draft, {1, o.max_step_tokens, o.block_size, 0});
        SpeculativeStats st;
        generated = generate_speculative(te, de, prompt, o.max_tokens, o.speculate, sampling, o.seed, eot, &st, print);
        std::fprintf(stderr,
                     "\nspeculative: %ld of %ld proposals accepted (%.1f%%), %ld target forwards for %zu tokens, %ld "
                     "draft forwards\n",
                     st.accepted, st.proposed, 100 * st.acceptance_rate(), st.target_forwards, generated.size(),
                     st.draft_forwards);
        if (!o.dump_logits.empty()) std::fprintf(stderr, "--dump-logits is not supported with --draft (ignored)\n");
    } else {
        InferenceEngine<Ops, FloatX> engine(model, {1, o.max_step_tokens, o.block_size, 0});
        Request r{"prompt", prompt, o.max_tokens, sampling, o.seed, ""};
        std::vector<Result> res =
            serve(engine, {r}, eot, nullptr, [&](const std::string&, int token, const float* row) {
                print(token);
                if (!o.dump_logits.empty()) last_logits.assign(row, row + m.config.vocab_size);
            });
        if (!res.at(0).error.empty()) throw std::runtime_error(res[0].error);
        generated = res[0].tokens;
        std::fprintf(
            stderr, "\n[%zu prompt tokens, %zu generated (%s), first token after %.0f ms, %.1f tok/s after it]\n",
            prompt.size(), generated.size(), res[0].finish_reason.c_str(), res[0].ttft_ms,
            generated.size() > 1 ? (generated.size() - 1) / ((res[0].latency_ms - res[0].ttft_ms) / 1000) : 0.0);
    }
    if (decoder && o.prompt_ids.empty()) std::cout << decoder->flush();
    std::cout << std::endl;
    if (!o.dump_logits.empty() && !last_logits.empty()) {
        write_file_atomically(o.dump_logits,
                              [&](File& f) { f.write(last_logits.data(), last_logits.size() * sizeof(float)); });
        std::fprintf(stderr, "wrote %zu float32 logits to %s\n", last_logits.size(), o.dump_logits.c_str());
    }
    (void)t;
    return 0;
}

int main(int argc, char** argv) {
    try {
        InferOptions o = parse_options(argc, argv);
        if (!o.export_hf.empty()) return run<HostOps, float>(o, "none: a file conversion");  // --precision: dtype
        return with_device_ops(o.device, [&](auto ops, const std::string& backend) {
            using Ops = decltype(ops);
            return with_precision<Ops>(o.precision, [&](auto x) { return run<Ops, decltype(x)>(o, backend); });
        });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "infer_gpt: error: %s\n", e.what());
        return 1;
    }
}
