// train_gpt.cu — train a GPT (GPT-2 or Llama family) on token shards, on a GPU or on the CPU.
//
//   ./train_gpt_cpu --config configs/shakespeare_cpu.json      CPU build (reference ops + OpenBLAS)
//   ./train_gpt     --config configs/shakespeare_gpu.json      GPU build (CUDA kernels)
//   any key of the config file is also a flag: --batch-size 16 --max-steps 500 --learning-rate 1e-3 ...
//   the model's sizes too, overriding those keys of --model: --arch llama --n-kv-head 2 --rope-theta 5e5 ...
//   ./train_gpt_cpu --help                                     every flag with its default
//
// The loop, per step: load micro-batches until grad_accum_tokens tokens were seen (forward with the
// fused classifier, backward, gradients accumulate); clip the gradient norm; AdamW with linear
// warmup and cosine decay; now and then: val loss, a text sample, a checkpoint. Checkpoints hold
// weights, AdamW moments, the data position and the RNGs, so --resume continues bit for bit.
#include <cinttypes>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>

#include "gpt.cuh"
#include "checkpoint.h"
#include "distributed.cuh"  // data parallel
#include "eval.h"
#include "hf.h"
#include "preference.cuh"
#include "sampling.h"
#include "tokenizer/bpe.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

// ----------------------------------------------------------------------------
// Options: one table gives each option its JSON key, its flag and its help, so the config file and the
// command line can never disagree. Flags are the keys with '-' for '_'.
struct TrainOptions {
    json model = {{"arch", "gpt2"}, {"n_layer", 4}, {"n_head", 4}, {"n_embd", 128}, {"max_seq_len", 128}};
    std::string train_data = "data/shakespeare/train_*.bin";
    std::string val_data = "data/shakespeare/val_*.bin";
    std::string tokenizer = "../shared/data/gpt2";
    std::string out_dir = "out/shakespeare";
    std::string device = "auto";       // auto | cpu | cuda
    std::string precision = "auto";    // auto | fp32 | bf16 (auto: bf16 on a GPU, else fp32)
    std::string matmul = "cublas";     // cublas | tiled | wmma (the CUDA path's matmul)
    int batch_size = 16;
    int seq_len = 128;
    long grad_accum_tokens = 0;        // tokens per optimizer step; 0 = one micro-batch (B·T)
    int max_steps = 1000;
    double learning_rate = 1e-3;
    int warmup_steps = 50;
    double min_lr_fraction = 0.1;
    double weight_decay = 0.1;
    double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
    double grad_clip = 1.0;            // 0 = no clipping
    int val_every = 100;
    int val_batches = 10;
    int eval_every = 0;                      // multiple-choice accuracy: steps between evaluations
    std::string eval_multiple_choice = "";   // HellaSwag-format JSONL (eval.h)
    int sample_every = 500;            // 0 = only at the end
    int sample_tokens = 96;
    double temperature = 0.9;
    int top_k = 40;
    std::string sample_prompt = "";    // empty: start from <|endoftext|>
    int checkpoint_every = 200;
    bool resume = false;
    uint64_t seed = 1337;
    bool print_config = false;
    int zero_stage = 0;                // data parallel: 0 DDP, 1-3 ZeRO (docs/distributed.md)
    // ---- fine-tuning (preference.cuh)
    std::string objective = "lm";      // lm (pretraining) | sft | dpo | ipo | kto
    std::string init_from = "";        // the pretrained model to start from (checkpoint or HF directory)
    std::string sft_data = "";         // SFT: JSONL {prompt, completion}
    std::string pairs = "";  // DPO/IPO: JSONL {prompt, chosen, rejected}; KTO: {prompt, completion, label} or pairs
    std::string ref_model = "";        // the frozen reference (default: init_from)
    double beta = 0.1;
    double kto_desirable_weight = 1.0, kto_undesirable_weight = 1.0;
    // ---- end fine-tuning
};

struct OptionInfo {
    const char* key;
    const char* help;
    std::function<void(TrainOptions&, const json&)> set;
    std::function<json(const TrainOptions&)> get;
    bool in_model = false;  // a key of the model JSON (MODEL_OPTION), applied after `model` itself
};

#define OPTION(field, help)                                                      \
    OptionInfo{#field, help, [](TrainOptions& o, const json& v) { v.get_to(o.field); }, \
               [](const TrainOptions& o) { return json(o.field); }}
// A key of the model JSON as a flag of its own: --n-kv-head 2 sets o.model["n_kv_head"]. Reading it gives
// the value the model will have (GPTConfig's default when the JSON lacks the key), so --help shows it.
static json model_value(const json& model, const char* key) {
    try {
        return json(model.get<GPTConfig>()).at(key);
    } catch (const std::exception&) {  // an incomplete model JSON: only what it says
        return model.value(key, json());
    }
}
#define MODEL_OPTION(key, help)                                                                    \
    OptionInfo{key, help,                                                                          \
               [](TrainOptions& o, const json& v) {                                                \
                   if (v.is_null()) o.model.erase(key);                                            \
                   else o.model[key] = v;                                                          \
               },                                                                                  \
               [](const TrainOptions& o) { return model_value(o.model, key); }, true}
static const std::vector<OptionInfo>& option_table() {
    static const std::vector<OptionInfo> table = {
        OPTION(model,
               "the model: JSON object {arch, n_layer, n_head, n_kv_head, n_embd, ffn_hidden, max_seq_len, vocab_size, "
               "...}"),
        MODEL_OPTION("arch", "model family: gpt2 | llama (RMSNorm, SwiGLU, RoPE, GQA, no biases; docs/llama.md)"),
        MODEL_OPTION("n_layer", "L: transformer blocks"),
        MODEL_OPTION("n_head", "NH: query heads (head size = n_embd / n_head)"),
        MODEL_OPTION("n_kv_head", "NKV: key/value heads, dividing n_head (< n_head: GQA, llama only); default n_head"),
        MODEL_OPTION("n_embd", "C: channels of the residual stream"),
        MODEL_OPTION("ffn_hidden", "H: MLP hidden width; default gpt2 4*C, llama 8/3*C rounded up to 32"),
        MODEL_OPTION("rope_theta", "RoPE base (llama)"),
        MODEL_OPTION("max_seq_len", "positions the model has (gpt2: rows of wpe; llama: longest RoPE context trained)"),
        MODEL_OPTION("tied_embeddings", "lm_head shares wte; default true for gpt2, false for llama"),
        OPTION(train_data, "glob of training shards (.bin from `tokenizer/tok prepare`)"),
        OPTION(val_data, "glob of validation shards"),
        OPTION(tokenizer, "directory with encoder.json + vocab.bpe (for samples; recorded in the checkpoint)"),
        OPTION(out_dir, "where checkpoint.bin, log.jsonl and loss.svg go"),
        OPTION(device, "auto | cpu | cuda (auto: cuda on a GPU, else the CPU reference path)"),
        OPTION(precision,
               "auto | fp32 | bf16: bf16 weights and activations on tensor cores, fp32 master weights "
               "(docs/mixed-precision.md; the CUDA kernels only). auto: bf16 on a GPU, else fp32"),
        OPTION(matmul, "cublas | tiled | wmma: which matmul the CUDA path uses (wmma: hand-written, tensor cores)"),
        OPTION(batch_size, "B: sequences per micro-batch"), OPTION(seq_len, "T: tokens per sequence"),
        OPTION(grad_accum_tokens, "tokens per optimizer step (a multiple of B*T); 0 = B*T"),
        OPTION(max_steps, "optimizer steps"), OPTION(learning_rate, "peak learning rate"),
        OPTION(warmup_steps, "linear warmup steps"),
        OPTION(min_lr_fraction, "cosine decay ends at learning_rate * this"),
        OPTION(weight_decay, "AdamW decoupled weight decay (matrices and embeddings only)"),
        OPTION(beta1, "AdamW beta1"), OPTION(beta2, "AdamW beta2"), OPTION(adam_eps, "AdamW epsilon"),
        OPTION(grad_clip, "clip the global gradient norm to this (0 = off)"),
        OPTION(val_every, "steps between validation losses (0 = never)"),
        OPTION(val_batches, "micro-batches per validation loss"),
        OPTION(eval_every, "steps between multiple-choice evaluations of eval_multiple_choice (0 = never)"),
        OPTION(eval_multiple_choice,
               "HellaSwag-format JSONL ({ctx, endings, label} per line): acc and acc_norm go to log.jsonl"),
        OPTION(sample_every, "steps between text samples (0 = only at the end)"),
        OPTION(sample_tokens, "tokens per sample"), OPTION(temperature, "sampling temperature"),
        OPTION(top_k, "sample from the k most likely tokens (0 = all)"),
        OPTION(sample_prompt, "text the samples start from (empty: <|endoftext|>)"),
        OPTION(checkpoint_every, "steps between checkpoints (0 = only at the end)"),
        OPTION(resume, "continue from out_dir/checkpoint.bin"),
        OPTION(seed, "seed of initialisation, data order and sampling"),
        OPTION(print_config, "print the resolved options as JSON and exit"),
        OPTION(zero_stage,
               "under mpirun: 0 = DDP, 1 = shard AdamW state, 2 = + gradients, 3 = + parameters (docs/distributed.md)"),
        // ---- fine-tuning (preference.cuh, docs/preference.md)
        OPTION(objective, "lm (pretraining on shards) | sft | dpo | ipo | kto (fine-tuning from --init-from)"),
        OPTION(init_from, "fine-tuning: the pretrained model (checkpoint.bin or a Hugging Face directory)"),
        OPTION(sft_data, "sft: JSONL {prompt, completion} per line; loss on completion tokens only"),
        OPTION(pairs,
               "dpo/ipo: JSONL {prompt, chosen, rejected}; kto: {prompt, completion, label: true|false} or pairs"),
        OPTION(ref_model, "dpo/ipo/kto: the frozen reference model (default: --init-from)"),
        OPTION(beta, "dpo/ipo/kto: beta, the strength of the KL regularisation (IPO's target margin is 1/(2 beta))"),
        OPTION(kto_desirable_weight, "kto: lambda_D, the weight of desirable examples"),
        OPTION(kto_undesirable_weight, "kto: lambda_U, the weight of undesirable examples"),
        // ---- end fine-tuning
    };
    return table;
}
#undef OPTION
#undef MODEL_OPTION

static std::string flag_of(const std::string& key) {
    std::string f = "--" + key;
    for (char& c : f) if (c == '_') c = '-';
    return f;
}

static void print_help() {
    TrainOptions defaults;
    std::printf("usage: train_gpt [--config FILE.json] [--FLAG VALUE]...\n"
                "Flags override the config file, which overrides the defaults below.\n\n");
    for (const auto& o : option_table())
        std::printf("  %-22s %s (default: %s)\n", flag_of(o.key).c_str(), o.help, o.get(defaults).dump().c_str());
}

// Applies `--config FILE` first, then every other flag. Values are parsed as JSON when they parse
// (numbers, true/false, objects), else taken as strings.
static TrainOptions parse_options(int argc, char** argv) {
    TrainOptions o;
    std::map<std::string, const OptionInfo*> by_flag;
    for (const auto& info : option_table()) by_flag[flag_of(info.key)] = &info;
    auto apply = [&](const OptionInfo& info, const json& value, const std::string& where) {
        try {
            info.set(o, value);
        } catch (const json::exception& e) {
            throw std::runtime_error(where + ": " + info.key + " = " + value.dump() + " has the wrong type (" +
                                     e.what() + ")");
        }
    };
    for (int i = 1; i < argc; i++)
        if (std::string(argv[i]) == "--config") {
            if (i + 1 >= argc) throw std::runtime_error("--config needs a file");
            std::ifstream f(argv[i + 1]);
            if (!f) throw std::runtime_error(std::string("config ") + argv[i + 1] + ": cannot open");
            json j;
            try { j = json::parse(f); } catch (const json::exception& e) {
                throw std::runtime_error(std::string("config ") + argv[i + 1] + ": not valid JSON (" + e.what() + ")");
            }
            for (bool model_keys : {false, true})  // "n_kv_head": 2 overrides that key of "model", in any order
                for (auto it = j.begin(); it != j.end(); ++it) {
                    auto found = by_flag.find(flag_of(it.key()));
                    if (found == by_flag.end())
                        throw std::runtime_error(std::string("config ") + argv[i + 1] + ": unknown key '" + it.key() +
                                                 "'");
                    if (found->second->in_model == model_keys)
                        apply(*found->second, it.value(), std::string("config ") + argv[i + 1]);
                }
        }
    std::vector<std::pair<const OptionInfo*, json>>
        model_flags;  // applied last: --arch llama --model {...} keeps llama
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--config") { i++; continue; }
        if (a == "--help" || a == "-h") { print_help(); std::exit(0); }
        auto found = by_flag.find(a);
        if (found == by_flag.end()) throw std::runtime_error("unknown flag " + a + " (see --help)");
        bool is_bool = found->second->get(o).is_boolean();
        std::string v = is_bool && (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0) ? "true" : "";
        if (v.empty()) {
            if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
            v = argv[++i];
        }
        json value;
        try { value = json::parse(v); } catch (const json::exception&) { value = v; }
        if (found->second->get(o).is_string() && !value.is_string()) value = v;  // "--out-dir 123" is a string
        if (found->second->in_model) model_flags.emplace_back(found->second, value);
        else apply(*found->second, value, a);
    }
    for (const auto& [info, value] : model_flags) apply(*info, value, flag_of(info->key));
    return o;
}

// ----------------------------------------------------------------------------
// Data: token shards, deterministically shuffled. Each shard is cut into windows of B·T+1 tokens
// (inputs are the first B·T, targets the last B·T); every epoch visits the shards in an order drawn
// from (seed, epoch) and each shard's windows in an order drawn from (seed, epoch, shard). The
// position (epoch, shard, window) is all a checkpoint needs to continue the same sequence.
struct DataLoader {
    std::vector<std::string> files;
    int B = 0, T = 0;
    bool shuffle = true;
    uint64_t seed = 0;
    int epoch = 0;
    size_t shard_pos = 0, window_pos = 0;
    std::vector<size_t> shard_order, window_order;
    std::vector<int> tokens;  // the current shard
    int loaded = -1;

    DataLoader(const std::string& pattern, int b, int t, bool shuffled, uint64_t s)
        : B(b), T(t), shuffle(shuffled), seed(s) {
        files = glob_files(pattern);
        if (files.empty())
            throw std::runtime_error("no data matches '" + pattern +
                                     "': run `make data` (tokenizes Tiny Shakespeare) or pass --train-data/--val-data");
        begin_epoch(0);
    }
    static std::vector<std::string> glob_files(const std::string& pattern) {
        fs::path p(pattern);
        fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
        std::string name = p.filename().string();
        std::vector<std::string> out;
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) return out;
        for (const auto& e : fs::directory_iterator(dir, ec))
            if (wildcard_match(name.c_str(), e.path().filename().string().c_str())) out.push_back(e.path().string());
        std::sort(out.begin(), out.end());
        return out;
    }
    static bool wildcard_match(const char* pat, const char* s) {
        if (!*pat) return !*s;
        if (*pat == '*') return wildcard_match(pat + 1, s) || (*s && wildcard_match(pat, s + 1));
        return *s && (*pat == '?' || *pat == *s) && wildcard_match(pat + 1, s + 1);
    }
    size_t windows_in_current() const { return (tokens.size() - 1) / (static_cast<size_t>(B) * T); }
    static void permute(std::vector<size_t>& v, uint64_t s) {  // Fisher-Yates with the project RNG
        Rng rng(s);
        for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[rng.below(static_cast<uint32_t>(i))]);
    }
    void begin_epoch(int e) {
        epoch = e;
        shard_order.resize(files.size());
        std::iota(shard_order.begin(), shard_order.end(), 0);
        if (shuffle) permute(shard_order, seed * 1000003u + e);
        shard_pos = 0;
        begin_shard(0);
    }
    void begin_shard(size_t pos) {
        shard_pos = pos;
        int index = static_cast<int>(shard_order[pos]);
        if (index != loaded) {
            tokens = bpe::read_shard(files[index]);
            loaded = index;
            size_t need = static_cast<size_t>(B) * T + 1;
            if (tokens.size() < need)
                throw std::runtime_error("shard " + files[index] + " has " + std::to_string(tokens.size()) +
                                         " tokens, but one batch needs B*T+1 = " + std::to_string(need) +
                                         ": use a smaller --batch-size or --seq-len");
        }
        window_order.resize(windows_in_current());
        std::iota(window_order.begin(), window_order.end(), 0);
        if (shuffle) permute(window_order, (seed * 1000003u + epoch) * 7919u + index);
        window_pos = 0;
    }
    // The next (inputs, targets), each B·T tokens.
    void next(std::vector<int>& x, std::vector<int>& y) {
        if (window_pos >= window_order.size()) {
            if (shard_pos + 1 < shard_order.size()) begin_shard(shard_pos + 1);
            else begin_epoch(epoch + 1);
        }
        size_t n = static_cast<size_t>(B) * T, start = window_order[window_pos++] * n;
        x.assign(tokens.begin() + start, tokens.begin() + start + n);
        y.assign(tokens.begin() + start + 1, tokens.begin() + start + n + 1);
    }
    void reset() { begin_epoch(0); }
    json state() const { return {{"epoch", epoch}, {"shard_pos", shard_pos}, {"window_pos", window_pos}}; }
    void restore(const json& s) {
        begin_epoch(s.at("epoch"));
        begin_shard(s.at("shard_pos"));
        window_pos = s.at("window_pos");
    }
};

// ----------------------------------------------------------------------------
// Generates text by recomputing the whole window each token (no KV cache: that is infer_gpt's job).
template <class Ops, class FloatX>
static std::string generate(GPT<Ops, FloatX>& model, const bpe::Tokenizer& tok, const TrainOptions& o, Rng& rng) {
    std::vector<int> ids = o.sample_prompt.empty() ? std::vector<int>{tok.eot_id() >= 0 ? tok.eot_id() : 0}
                                                   : tok.encode_ordinary(o.sample_prompt);
    size_t prompt = ids.size();
    int maxT = std::min(model.config.max_seq_len, model.max_T > 0 ? std::max(model.max_T, o.seq_len) : o.seq_len);
    bpe::StreamDecoder decoder(tok);
    std::string text = o.sample_prompt;
    for (int i = 0; i < o.sample_tokens; i++) {
        size_t start = ids.size() > static_cast<size_t>(maxT) ? ids.size() - maxT : 0;
        int t = static_cast<int>(ids.size() - start);
        model.forward(ids.data() + start, nullptr, 1, t);
        SamplingSettings settings{static_cast<float>(o.temperature), o.top_k, 1.0f};
        int next = sample_token(model.logits_at(0, t - 1).data(), model.config.vocab_size, settings, rng);
        if (next == tok.eot_id()) break;
        ids.push_back(next);
        text += decoder.push(next);
    }
    (void)prompt;
    return text + decoder.flush();
}

// ----------------------------------------------------------------------------
static double lr_at(const TrainOptions& o, int step) {
    if (step < o.warmup_steps) return o.learning_rate * (step + 1) / o.warmup_steps;
    double span = std::max(1, o.max_steps - o.warmup_steps);
    double ratio = std::min(1.0, (step - o.warmup_steps) / span);
    double min_lr = o.learning_rate * o.min_lr_fraction;
    return min_lr + 0.5 * (1.0 + std::cos(M_PI * ratio)) * (o.learning_rate - min_lr);
}

static std::string format_duration(double seconds) {
    char buf[32];
    int s = static_cast<int>(seconds);
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", s / 3600, s / 60 % 60);
    else std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
    return buf;
}

// Peak FLOP/s of common cards, for MFU: fp32 on CUDA cores (this trainer's fp32 runs without TF32), and bf16 on
// tensor cores with fp32 accumulation (dense, no sparsity), from the vendors' data sheets. 0: unknown card.
static double peak_flops(const std::string& gpu, bool bf16) {
    struct Card { const char* name; double fp32, bf16; };
    static const Card cards[] = {{"H100 PCIe", 51e12, 756e12}, {"H200 PCIe", 51e12, 756e12}, {"H100", 67e12, 989e12},
                                 {"H200", 67e12, 989e12},      {"A100", 19.5e12, 312e12},    {"L4", 30.3e12, 121e12},
                                 {"4090", 82.6e12, 165e12}};
    auto has = [&](const std::string& words) {  // "H100 PCIe": every word of it in the device name
        std::istringstream in(words);
        for (std::string w; in >> w;)
            if (gpu.find(w) == std::string::npos) return false;
        return true;
    };
    for (const Card& c : cards)
        if (has(c.name)) return bf16 ? c.bf16 : c.fp32;
    return 0;
}

template <class Ops, class FloatX>
static int train(const TrainOptions& o, const std::string& device_name, Comm& comm) {
    GPTConfig config = o.model.get<GPTConfig>();
    bpe::Tokenizer tok = bpe::Tokenizer::load(o.tokenizer);
    if (!o.model.contains("vocab_size")) {
        config.vocab_size = tok.vocab_size();
        config.padded_vocab_size = padded_vocab(config.vocab_size);
    }
    if (config.vocab_size < tok.vocab_size())
        throw std::runtime_error("the model's vocab_size " + std::to_string(config.vocab_size) +
                                 " is smaller than the tokenizer's " + std::to_string(tok.vocab_size()));
    if (o.seq_len > config.max_seq_len)
        throw std::runtime_error("--seq-len " + std::to_string(o.seq_len) + " exceeds the model's max_seq_len " +
                                 std::to_string(config.max_seq_len));
    const long tokens_per_micro = static_cast<long>(o.batch_size) * o.seq_len;
    const long accum_tokens = o.grad_accum_tokens > 0 ? o.grad_accum_tokens : tokens_per_micro;
    if (accum_tokens % tokens_per_micro)
        throw std::runtime_error("--grad-accum-tokens " + std::to_string(accum_tokens) +
                                 " is not a multiple of B*T = " + std::to_string(tokens_per_micro));
    const int micro_steps = static_cast<int>(accum_tokens / tokens_per_micro);
    // ---- data parallel: the global batch's micro-batches are dealt out to the ranks
    if (micro_steps % comm.size)
        throw std::runtime_error("--grad-accum-tokens " + std::to_string(accum_tokens) + " is " +
                                 std::to_string(micro_steps) + " micro-batches of B*T, not a multiple of the " +
                                 std::to_string(comm.size) + " ranks: each rank takes every N-th micro-batch");
    // ---- end data parallel

    GPT<Ops, FloatX> model(config);
    DataLoader train_data(o.train_data, o.batch_size, o.seq_len, true, o.seed);
    DataLoader val_data(o.val_data, o.batch_size, o.seq_len, false, o.seed);
    Rng sample_rng(o.seed + 1);
    fs::create_directories(o.out_dir);
    const std::string ckpt_path = o.out_dir + "/checkpoint.bin";
    const std::string log_path = comm.rank == 0 ? o.out_dir + "/log.jsonl" : "/dev/null";  // rank 0 logs
    TokenizerInfo tok_info = tokenizer_info(o.tokenizer, tok);
    // ---- data parallel: every rank must have the same options and see the same files
    if (comm.size > 1) {
        json same;
        for (const auto& info : option_table()) same[info.key] = info.get(o);
        for (const DataLoader* d : {&train_data, &val_data})
            for (const std::string& f : d->files) same["file " + f] = fs::file_size(f);
        require_same_on_every_rank(comm, same);
    }
    // ---- end data parallel

    int start_step = 0;
    int last_checkpoint_step = -1;
    if (o.resume) {
        Checkpoint ck = read_checkpoint(ckpt_path);
        check_compatible(ck, config, tok_info, ckpt_path);
        model.set_parameters(ck.params);
        if (ck.m.empty())
            throw std::runtime_error("checkpoint " + ckpt_path + " has no optimizer state: it cannot be resumed");
        model.ensure_optimizer_state();
        Ops::to_backend(model.m_memory, ck.m.data(), ck.m.size() * sizeof(float));
        Ops::to_backend(model.v_memory, ck.v.data(), ck.v.size() * sizeof(float));
        start_step = ck.meta.at("step");
        train_data.restore(ck.meta.at("data"));
        rng_from_json(sample_rng, ck.meta.at("sample_rng"));
        last_checkpoint_step = start_step;
        std::printf("resumed from %s at step %d\n", ckpt_path.c_str(), start_step);
    } else {
        model.init_random(o.seed);
        std::ofstream(log_path, std::ios::trunc);  // a fresh run starts a fresh log
    }
    std::ofstream log(log_path, std::ios::app);
    DataParallel<Ops, FloatX> dp(comm, model, o.zero_stage);  // takes over the model's buffers (distributed.cuh)

    std::printf("model: %s, %d layers, %d heads (%d kv), C=%d, vocab %d (padded %d), %zu parameters (%.1f MB fp32)\n",
                config.is_llama() ? "llama" : "gpt2", config.n_layer, config.n_head, config.n_kv_head, config.n_embd,
                config.vocab_size, config.padded_vocab_size, model.num_parameters, model.num_parameters * 4 / 1e6);
    std::printf("%s\n", kv_cache_summary(config, config.max_seq_len, sizeof(FloatX)).c_str());
    std::printf("precision: %s\n", precision_summary<FloatX>().c_str());
    std::printf("device: %s (%s); batch %d x %d, %d micro-steps = %ld tokens/step; %zu train shards\n", Ops::name,
                device_name.c_str(), o.batch_size, o.seq_len, micro_steps, accum_tokens, train_data.files.size());
    if (comm.size > 1 || o.zero_stage > 0)
        std::printf("data parallel: %d ranks x %d micro-steps\n%s\n", comm.size, micro_steps / comm.size,
                    dp.memory_report(o.batch_size, o.seq_len).c_str());

    // Training stops at the first non-finite value, naming the step, what was not finite, and the last
    // checkpoint (which holds only finite numbers: write_checkpoint refuses anything else).
    auto stop = [&](int step, const std::string& what) {
        std::string where = "none written yet";
        if (last_checkpoint_step >= 0) where = ckpt_path + " (step " + std::to_string(last_checkpoint_step) + ")";
        throw std::runtime_error("step " + std::to_string(step) + ": " + what +
                                 "; training stopped. Last good checkpoint: " + where +
                                 ". Try a lower --learning-rate.");
    };
    auto save = [&](int step) {
        json meta = {{"step", step}, {"data", train_data.state()}, {"sample_rng", rng_to_json(sample_rng)}};
        try {  // straight from the model's buffers, in chunks: no host copy of the weights or moments
            CheckpointArrays arrays = dp.checkpoint_arrays();  // gathered from every rank, rank 0 writes
            if (comm.rank == 0) write_checkpoint(ckpt_path, config, tok_info, meta, arrays);
            dp.release_checkpoint_buffers();
        } catch (const NonFiniteError& e) {
            stop(step, std::string("after the update ") + e.what() + ", so the checkpoint was not written");
        }
        last_checkpoint_step = step;
    };
    auto val_loss = [&]() {
        val_data.reset();
        std::vector<int> x, y;
        double sum = 0;
        int n = std::max(1, std::min<int>(o.val_batches, static_cast<int>(val_data.windows_in_current())));
        for (int i = 0; i < n; i++) {
            val_data.next(x, y);
            sum += model.forward(x.data(), y.data(), o.batch_size, o.seq_len, 0.0f);
        }
        return sum / n;
    };
    // ---- multiple-choice accuracy (eval.h): items read and checked once, before training
    std::vector<ChoiceItem> mc_items;
    if (o.eval_every > 0 && !o.eval_multiple_choice.empty()) {
        mc_items = read_choice_file(o.eval_multiple_choice, &tok, config.vocab_size);
        check_choices_fit(mc_items, config.max_seq_len, o.eval_multiple_choice);
    }
    auto eval_choices = [&](int step) {
        if (mc_items.empty() || (step % o.eval_every != 0 && step != o.max_steps)) return;  // and after the last step
        ChoiceTotals totals;
        for (const ChoiceItem& it : mc_items) totals.add(it, score_choices(model, it));
        std::printf("step %5d | multiple choice acc %.4f | acc_norm %.4f | %ld items\n", step, totals.acc(),
                    totals.acc_norm(), totals.count);
        log << json{{"step", step},
                    {"mc_acc", totals.acc()},
                    {"mc_acc_norm", totals.acc_norm()},
                    {"mc_count", totals.count}}
                   .dump()
            << "\n"
            << std::flush;
    };
    // ---- end multiple-choice accuracy
    auto print_sample = [&](int step) {
        std::printf("--- sample at step %d ---\n%s\n---\n", step, generate(model, tok, o, sample_rng).c_str());
        std::fflush(stdout);
    };

    const double peak = peak_flops(device_name, GPT<Ops, FloatX>::mixed);
    std::vector<int> x, y, skipped_x, skipped_y;  // skipped: the other ranks' micro-batches
    Timer run_timer;
    double ms_sum = 0;
    int timed_steps = 0;
    for (int step = start_step; step < o.max_steps; step++) {
        if (o.val_every > 0 && step % o.val_every == 0) {
            double v = val_loss();
            std::printf("step %5d | val loss %.4f\n", step, v);
            log << json{{"step", step}, {"val_loss", v}}.dump() << "\n" << std::flush;
        }
        eval_choices(step);
        // step > 0, not step > start_step: a resumed run prints the sample of its first step again, as the
        // interrupted run did after writing the checkpoint, so the sampling RNG goes on in step with it.
        if (o.sample_every > 0 && step > 0 && step % o.sample_every == 0) print_sample(step);

        Timer step_timer;
        double comm_seconds = comm.seconds, comm_bytes = comm.sent.total();  // this step's communication
        // ---- data parallel: rank r takes micro-batches r, r+N, ... of the one-rank order; the loss is
        // scaled by the global token count, so the gradients summed over ranks are the one-rank gradients
        dp.begin_step();
        double loss = 0;
        for (int micro = 0, count = micro_steps / comm.size; micro < count; micro++) {
            for (int r = 0; r < comm.size; r++)
                if (r == comm.rank) train_data.next(x, y);
                else train_data.next(skipped_x, skipped_y);
            dp.begin_micro_batch(micro == count - 1);  // stages 0-1 send gradients in the last one's backward
            loss += model.forward(x.data(), y.data(), o.batch_size, o.seq_len, 1.0f / static_cast<float>(accum_tokens));
            model.backward();
        }
        dp.finish_gradients();
        loss = comm.sum(loss) / micro_steps;
        // ---- end data parallel
        // Both checked before the update touches the weights. A NaN norm would also skip clipping silently
        // (norm > grad_clip is false for NaN) and an infinite one would zero the update.
        auto str = [](double x) { char b[32]; std::snprintf(b, sizeof b, "%g", x); return std::string(b); };
        if (!std::isfinite(loss)) stop(step + 1, "the loss is " + str(loss) + ", before the update");
        float norm = dp.grad_norm();  // across shards
        if (!std::isfinite(norm))
            stop(step + 1, "the gradient norm is " + str(norm) + " (loss " + str(loss) + "), before the update");
        float scale = o.grad_clip > 0 && norm > o.grad_clip ? static_cast<float>(o.grad_clip / norm) : 1.0f;
        double lr = lr_at(o, step);
        dp.update(static_cast<float>(lr), static_cast<float>(o.beta1), static_cast<float>(o.beta2),
                  static_cast<float>(o.adam_eps), static_cast<float>(o.weight_decay), step + 1, scale);
        Ops::synchronize();
        double ms = step_timer.elapsed_ms();
        if (step > start_step) { ms_sum += ms; timed_steps++; }  // the first step warms caches up
        double mean_ms = timed_steps ? ms_sum / timed_steps : ms;
        double tok_s = accum_tokens / (ms / 1000.0);
        double model_flops = 6.0 * model.num_parameters * tok_s;
        char mfu[48] = "";
        if (peak > 0) std::snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100.0 * model_flops / peak);
        else std::snprintf(mfu, sizeof mfu, " | %.1f GFLOP/s", model_flops / 1e9);
        std::printf("step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.1f ms | %.0f tok/s%s | ETA %s\n", step + 1,
                    o.max_steps, loss, lr, norm, ms, tok_s, mfu,
                    format_duration(mean_ms * (o.max_steps - step - 1) / 1000.0).c_str());
        std::fflush(stdout);
        log << json{{"step", step + 1}, {"loss", loss}, {"lr", lr}, {"norm", norm}, {"ms", ms}, {"tok_per_s", tok_s}}
                   .dump()
            << "\n"
            << std::flush;
        if (comm.size > 1)  // time in collectives, and the bytes this rank sent (distributed.cuh, Comm)
            log << json{{"step", step + 1},
                        {"comm_ms", 1000 * (comm.seconds - comm_seconds)},
                        {"comm_bytes", comm.sent.total() - comm_bytes},
                        {"formula_bytes", dp.formula_step_bytes(micro_steps / comm.size)},
                        {"zero_stage", o.zero_stage},
                        {"ranks", comm.size}}
                       .dump()
                << "\n"
                << std::flush;
        if (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0 && step + 1 < o.max_steps) save(step + 1);
    }
    if (o.max_steps > start_step) {
        double v = val_loss();
        std::printf("step %5d | val loss %.4f | %s total\n", o.max_steps, v,
                    format_duration(run_timer.elapsed_ms() / 1000).c_str());
        log << json{{"step", o.max_steps}, {"val_loss", v}}.dump() << "\n" << std::flush;
        eval_choices(o.max_steps);
        save(o.max_steps);
        std::printf("checkpoint: %s\n", ckpt_path.c_str());
    }
    print_sample(o.max_steps);
    return 0;
}

// ---- fine-tuning: SFT, DPO, IPO, KTO from a pretrained model (preference.cuh, docs/preference.md)
// Per step: --batch-size examples (SFT, KTO) or pairs (DPO, IPO) in an order drawn per epoch from the seed; the
// loss's gradient, clipping and AdamW as in pretraining. The reference model (DPO, IPO, KTO) is a second model,
// forward only. Before the first step and after the last: the metrics over the first --val-batches batches of
// the training data (forward only) and a sample from --sample-prompt; the checkpoint goes to --out-dir.
template <class Ops, class FloatX>
static int finetune(const TrainOptions& o, const std::string& device_name) {
    const Objective objective = parse_objective(o.objective);
    const bool preference = objective != Objective::sft;
    if (o.init_from.empty())
        throw std::runtime_error("--objective " + o.objective +
                                 " fine-tunes a pretrained model: pass --init-from CHECKPOINT (e.g. " +
                                 "out/shakespeare_cpu/checkpoint.bin after `make train`)");
    if (o.resume)
        throw std::runtime_error("--resume continues pretraining only; a fine-tuning run restarts from --init-from");
    const std::string& data_path = preference ? o.pairs : o.sft_data;
    if (data_path.empty())
        throw std::runtime_error(std::string("--objective ") + o.objective + " needs " +
                                 (preference ? "--pairs FILE.jsonl" : "--sft-data FILE.jsonl"));
    if (preference && !(o.beta > 0))
        throw std::runtime_error("--beta must be > 0 (got " + std::to_string(o.beta) + ")");
    LoadedModel init = load_model(o.init_from);
    const GPTConfig& config = init.config;
    // --tokenizer when given, else the one the checkpoint recorded (open_model_tokenizer's rule)
    const std::string default_tokenizer = TrainOptions().tokenizer;
    std::optional<bpe::Tokenizer> tok =
        open_model_tokenizer(o.tokenizer == default_tokenizer ? "" : o.tokenizer, init, false);
    std::vector<PairExample> pairs;
    std::vector<CompletionExample> examples;
    read_finetune_file(data_path, tok ? &*tok : nullptr, config.vocab_size, config.max_seq_len,
                       objective == Objective::dpo || objective == Objective::ipo, objective == Objective::kto, pairs,
                       examples);
    GPT<Ops, FloatX> model(config);
    model.set_parameters(init.params);
    std::unique_ptr<GPT<Ops, FloatX>> reference;
    const std::string ref_path = o.ref_model.empty() ? o.init_from : o.ref_model;
    if (preference) {
        LoadedModel ref = load_model(ref_path);
        check_same_vocabulary(config, init.tokenizer, ref.config, ref.tokenizer, ref_path);
        reference = std::make_unique<GPT<Ops, FloatX>>(ref.config);
        reference->set_parameters(ref.params);
    }
    PreferenceSettings settings{objective, static_cast<float>(o.beta), static_cast<float>(o.kto_desirable_weight),
                                static_cast<float>(o.kto_undesirable_weight)};
    PreferenceBuffers<Ops> buffers;
    const size_t count = objective == Objective::dpo || objective == Objective::ipo ? pairs.size() : examples.size();
    const char* unit = objective == Objective::dpo || objective == Objective::ipo ? "pairs" : "examples";
    std::printf("fine-tuning (%s) %s: %s, %zu parameters; %zu %s from %s; %s%s\n", o.objective.c_str(),
                o.init_from.c_str(), init.format.c_str(), model.num_parameters, count, unit, data_path.c_str(),
                preference ? ("reference " + ref_path + ", ").c_str() : "", device_name.c_str());

    // batches: a permutation of the examples per epoch (the project RNG, from the seed)
    std::vector<size_t> order(count);
    Rng order_rng(o.seed);
    size_t next = count;  // start of the next batch in `order`; count: draw a new epoch first
    auto batch_at = [&](const std::vector<size_t>& idx, size_t begin, auto& out_pairs, auto& out_examples) {
        out_pairs.clear();
        out_examples.clear();
        for (size_t i = begin; i < std::min(idx.size(), begin + o.batch_size); i++) {
            if (objective == Objective::dpo || objective == Objective::ipo) out_pairs.push_back(pairs[idx[i]]);
            else out_examples.push_back(examples[idx[i]]);
        }
    };
    std::vector<PairExample> batch_pairs;
    std::vector<CompletionExample> batch_examples;
    // forward only, over the first val_batches batches in file order
    auto evaluate = [&](int step) {
        std::vector<size_t> idx(count);
        std::iota(idx.begin(), idx.end(), 0);
        PreferenceMetrics total;
        double sft_loss = 0;
        int n = 0;
        for (size_t b = 0; b < count && n < std::max(1, o.val_batches); b += o.batch_size, n++) {
            batch_at(idx, b, batch_pairs, batch_examples);
            if (preference)
                total += preference_step(model, *reference, buffers, settings, batch_pairs, batch_examples, false);
            else {
                ScoreBatch s = make_score_batch(completion_requests(batch_examples), config.max_seq_len);
                sft_loss += model.forward(s.inputs.data(), s.targets.data(), s.B, s.T, 0.0f);
            }
        }
        json line = {{"step", step}};
        if (preference) {
            std::printf(
                "step %5d | eval on %ld training %s: loss %.4f | reward accuracy %.3f | chosen %.3f | rejected %.3f | "
                "margin %.3f | kl %.3f\n",
                step, total.count, unit, total.loss, total.accuracy, total.chosen_reward, total.rejected_reward,
                total.margin, total.kl);
            line.update(total.to_json("eval_"));
        } else {
            std::printf("step %5d | eval loss on completions %.4f (%d batches)\n", step, sft_loss / n, n);
            line["eval_loss"] = sft_loss / n;
        }
        return line;
    };
    auto sample = [&](const char* when) {  // the same random stream before and after: only the model differs
        if (!tok || o.sample_tokens <= 0) return;
        Rng sample_rng(o.seed + 1);
        std::printf("--- sample %s ---\n%s\n---\n", when, generate(model, *tok, o, sample_rng).c_str());
        std::fflush(stdout);
    };

    fs::create_directories(o.out_dir);
    const std::string ckpt_path = o.out_dir + "/checkpoint.bin";
    std::ofstream log(o.out_dir + "/log.jsonl", std::ios::trunc);
    sample("before fine-tuning");
    log << evaluate(0).dump() << "\n" << std::flush;
    auto str = [](double x) { char b[32]; std::snprintf(b, sizeof b, "%g", x); return std::string(b); };
    for (int step = 0; step < o.max_steps; step++) {
        if (next >= count) {  // a new epoch: Fisher-Yates with the project RNG
            std::iota(order.begin(), order.end(), 0);
            for (size_t i = count; i > 1; i--)
                std::swap(order[i - 1], order[order_rng.below(static_cast<uint32_t>(i))]);
            next = 0;
        }
        batch_at(order, next, batch_pairs, batch_examples);
        next += o.batch_size;
        Timer step_timer;
        model.zero_grad();
        PreferenceMetrics m;
        if (preference) m = preference_step(model, *reference, buffers, settings, batch_pairs, batch_examples, true);
        else m.loss = sft_step(model, batch_examples);
        float norm = model.grad_norm();
        if (!std::isfinite(m.loss) || !std::isfinite(norm))
            throw std::runtime_error(
                "step " + std::to_string(step + 1) + ": loss " + str(m.loss) + ", gradient norm " + str(norm) +
                " before the update; fine-tuning stopped (no checkpoint written). Try a lower --learning-rate.");
        float scale = o.grad_clip > 0 && norm > o.grad_clip ? static_cast<float>(o.grad_clip / norm) : 1.0f;
        double lr = lr_at(o, step);
        model.update(static_cast<float>(lr), static_cast<float>(o.beta1), static_cast<float>(o.beta2),
                     static_cast<float>(o.adam_eps), static_cast<float>(o.weight_decay), step + 1, scale);
        Ops::synchronize();
        double ms = step_timer.elapsed_ms();
        json line = {{"step", step + 1}, {"loss", m.loss}, {"lr", lr}, {"norm", norm}, {"ms", ms}};
        if (preference) {
            std::printf(
                "step %5d/%d | loss %.4f | reward acc %.3f | chosen %.3f | rejected %.3f | margin %.3f | kl %.3f | lr "
                "%.2e | norm %.3f | %.0f ms\n",
                step + 1, o.max_steps, m.loss, m.accuracy, m.chosen_reward, m.rejected_reward, m.margin, m.kl, lr, norm,
                ms);
            line.update(m.to_json());
        } else {
            std::printf("step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f ms\n", step + 1, o.max_steps, m.loss, lr,
                        norm, ms);
        }
        std::fflush(stdout);
        log << line.dump() << "\n" << std::flush;
    }
    log << evaluate(o.max_steps).dump() << "\n" << std::flush;
    // the checkpoint records the tokenizer the policy came with (its own, or the one the data was read with)
    TokenizerInfo tok_info{"", config.vocab_size, init.eot_id, ""};
    if (init.tokenizer.is_object())
        tok_info = {init.tokenizer.value("dir", ""), init.tokenizer.value("vocab_size", config.vocab_size),
                    init.tokenizer.value("eot_id", -1), init.tokenizer.value("fingerprint", "")};
    else if (tok)
        tok_info = tokenizer_info(o.tokenizer, *tok);
    json meta = {{"step", o.max_steps}, {"objective", o.objective}, {"init_from", o.init_from}, {"data", data_path}};
    if (preference) meta["ref_model"] = ref_path, meta["beta"] = o.beta;
    CheckpointArrays arrays{model.num_parameters, model.params_memory, nullptr, nullptr, Ops::to_host};
    write_checkpoint(ckpt_path, config, tok_info, meta, arrays);
    std::printf("checkpoint: %s\n", ckpt_path.c_str());
    sample("after fine-tuning");
    return 0;
}
// ---- end fine-tuning

int main(int argc, char** argv) {
    restart_with_passive_openmp(argv);  // the CPU path's OpenMP threads must not spin against OpenBLAS's
    Comm comm;  // under mpirun, one rank of N; else rank 0 of 1 without MPI
    comm.init(&argc, &argv);
    if (comm.rank > 0 && !std::freopen("/dev/null", "w", stdout)) comm.abort(1);  // rank 0 speaks for all
    try {
        TrainOptions o = parse_options(argc, argv);
        if (o.print_config) {
            json j;
            for (const auto& info : option_table()) j[info.key] = info.get(o);
            std::printf("%s\n", j.dump(2).c_str());
            comm.finalize();
            return 0;
        }
        set_matmul_backend(parse_matmul_backend(o.matmul));
        int rc = with_device_ops(o.device, [&](auto ops, const std::string& backend) {
            using Ops = decltype(ops);
            return with_precision<Ops>(o.precision, [&](auto x) {
                using FloatX = decltype(x);
                if (o.objective == "lm") return train<Ops, FloatX>(o, backend, comm);
                if (comm.size > 1)
                    throw std::runtime_error("fine-tuning (--objective " + o.objective + ") runs on one rank");
                return finetune<Ops, FloatX>(o, backend);
            });
        });
        comm.finalize();
        return rc;
    } catch (const std::exception& e) {
        if (comm.size > 1)
            std::fprintf(stderr, "train_gpt: rank %d of %d: error: %s\n", comm.rank, comm.size, e.what());
        else std::fprintf(stderr, "train_gpt: error: %s\n", e.what());
        comm.abort(1);  // the other ranks may be waiting for this one in a collective
    }
}
