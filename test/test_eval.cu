// Evaluation: target log-probabilities and multiple-choice predictions against transformers on the
// Hugging Face fixture models (test/fixtures/eval_hf.json, written by dev/reference_eval.py), the tokenization
// rule, bits per byte against a hand-computed value, the sliding window against token-by-token scoring, kernels
// against the CPU reference ops, the regression gate; then eval_gpt_cpu and train_gpt_cpu run as a user runs them:
// bad input, reports, golden continuations, the Tiny Shakespeare set of dev/make_choice_set.sh.
#include "test/test_util.h"
#include "hf.h"
#include "engine.cuh"
#include "eval.h"

#include <unistd.h>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using json = nlohmann::json;

// Per token, relative (absolute below 1): transformers and we compute in fp32 through a few layers, summing in
// different orders. The Llama fixture's weights are large (initializer_range 0.4), its logits too: −8.38883 vs
// −8.38894 is 1.4e-5 relative; 1e-4 is the issue's bound.
constexpr double tolerance_logprob = 1e-4;
static bool logprob_close(double a, double ref) {
    return std::abs(a - ref) <= tolerance_logprob * std::max(1.0, std::abs(ref));
}
static const std::string tokenizer_small = "test/fixtures/tokenizer_small";

static json read_json(const std::string& path) {
    std::ifstream f(path);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    return json::parse(f);
}
static json read_jsonl(const std::string& path) {
    std::ifstream f(path);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    json lines = json::array();
    for (std::string line; std::getline(f, line);) lines.push_back(json::parse(line));
    return lines;
}
static void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}

// A scratch directory, removed at the end of the test.
struct Scratch {
    std::string dir;
    explicit Scratch(const std::string& name) {
        dir = (fs::temp_directory_path() / ("gptcu_test_eval_" + name + "_" + std::to_string(getpid()))).string();
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    ~Scratch() { fs::remove_all(dir); }
    std::string operator/(const std::string& f) const { return dir + "/" + f; }
};

static GPTConfig tiny_config(Arch arch, int V, int maxT) {
    GPTConfig c;
    c.arch = arch;
    c.vocab_size = V;
    c.padded_vocab_size = padded_vocab(V);
    c.max_seq_len = maxT;
    c.n_layer = 2;
    c.n_embd = 64;
    c.n_head = 2;  // hs = 32: the fused attention kernels are compiled for 32/64/128
    c.n_kv_head = arch == Arch::llama ? 1 : 2;
    c.ffn_hidden = arch == Arch::llama ? 96 : 256;
    c.tied_embeddings = arch == Arch::gpt2;
    c.validate();
    return c;
}
// Parameters large enough that predictions differ clearly between tokens (init_random's 0.02 gives ~uniform ones).
static std::vector<float> random_parameters(const GPTConfig& c, uint64_t seed) {
    size_t n = 0;
    for (size_t s : param_sizes(c)) n += s;
    Rng rng(seed);
    return random_vector(n, rng, 0.3f);
}
// A train_gpt-style checkpoint with the small fixture tokenizer (320 tokens), for running the programs.
static void write_model(const std::string& path, const GPTConfig& c, const std::vector<float>& params) {
    bpe::Tokenizer tok = bpe::Tokenizer::load(tokenizer_small);
    write_checkpoint(path, c, tokenizer_info(tokenizer_small, tok), json::object(), params, {}, {});
}

// ----------------------------------------------------------------------------
// Against transformers
template <class Ops>
static void check_against_transformers(const json& mcase) {
    LoadedModel m = load_model(mcase.at("dir"));
    GPT<Ops> model(m.config);
    model.set_parameters(m.params);
    for (size_t i = 0; i < mcase.at("items").size(); i++) {
        const json& x = mcase["items"][i];
        CAPTURE(i);
        ChoiceItem item{0, x.at("context").get<std::vector<int>>(),
                        x.at("choices").get<std::vector<std::vector<int>>>(), x.at("label")};
        std::vector<ScoreRequest> batch;
        for (const auto& c : item.choices) batch.push_back({item.context, c});
        std::vector<std::vector<float>> lp = target_logprobs(model, batch);  // every choice in one forward, padded
        REQUIRE(lp.size() == item.choices.size());
        for (size_t c = 0; c < lp.size(); c++) {
            const json& ref = mcase["logprobs"][i][c];
            REQUIRE(lp[c].size() == ref.size());
            for (size_t k = 0; k < ref.size(); k++) {
                INFO("choice " << c << " token " << k << ": " << lp[c][k] << " vs transformers "
                               << ref[k].get<double>());
                CHECK(logprob_close(lp[c][k], ref[k].get<double>()));
            }
        }
        ChoiceScore s = score_choices(model, item);
        CHECK(s.pred == mcase["pred"][i].get<int>());
        CHECK(s.pred_norm == mcase["pred_norm"][i].get<int>());
    }
}

TEST_CASE("multiple choice: per-token log-probs and chosen indices equal transformers' (HF GPT-2 and Llama fixtures)") {
    json fix = read_json("test/fixtures/eval_hf.json");
    for (const json& mcase : fix.at("models")) {
        CAPTURE(mcase.at("dir").get<std::string>());
        SUBCASE("CPU reference ops") { check_against_transformers<HostOps>(mcase); }
        SUBCASE("kernels") {
            check_against_transformers<DeviceOps>(mcase);
        }  // Llama's hs = 32; GPT-2's hs = 8 has no kernel
    }
}

TEST_CASE(
    "multiple choice: tokens of the context, then of \" \" + ending (llm.c's rule), equal transformers' "
    "GPT2Tokenizer's") {
    json fix = read_json("test/fixtures/eval_hf.json").at("tokenization");
    bpe::Tokenizer tok = bpe::Tokenizer::load(fix.at("dir"));
    Scratch s("tokens");
    std::string lines;
    for (const json& c : fix.at("cases"))
        lines += json{{"ctx", c["ctx"]}, {"endings", {c["ending"], "x"}}, {"label", 1}}.dump() + "\n";
    write_text(s / "items.jsonl", lines);
    std::vector<ChoiceItem> items = read_choice_file(s / "items.jsonl", &tok, tok.vocab_size());
    REQUIRE(items.size() == fix["cases"].size());
    for (size_t i = 0; i < items.size(); i++) {
        CAPTURE(fix["cases"][i].dump());
        CHECK(items[i].context == fix["cases"][i]["ctx_ids"].get<std::vector<int>>());
        CHECK(items[i].choices[0] == fix["cases"][i]["ending_ids"].get<std::vector<int>>());
        CHECK(items[i].label == 1);
        CHECK(items[i].line == static_cast<int>(i) + 1);
    }
}

// ----------------------------------------------------------------------------
// Text
TEST_CASE("text: bits per byte of a uniform model is the hand-computed 0.4 * log2(320) = 3.3287712") {
    // All parameters zero: the embeddings are 0, LayerNorm of 0 is its bias (0), every block adds 0, so every
    // logit is 0 and each of the V = 320 tokens has probability 1/320: ln 320 = 5.7683210 nats per token.
    // 41 tokens (a start token and 40 scored ones) standing for 100 bytes of text:
    //   bits per byte = 40 · ln 320 / (100 · ln 2) = 0.4 · log2 320 = 0.4 · 8.3219281 = 3.3287712.
    GPTConfig c = tiny_config(Arch::gpt2, 320, 16);
    GPT<HostOps> model(c);
    model.set_parameters(std::vector<float>(model.num_parameters, 0.0f));
    Rng rng(3);
    std::vector<int> tokens(41);
    for (int& t : tokens) t = static_cast<int>(rng.below(320));
    for (int stride : {1, 5, 16}) {
        CAPTURE(stride);
        TextScore s = score_text(model, tokens, 100, 16, stride, 3);
        CHECK(s.tokens == 40);
        CHECK(s.loss() == doctest::Approx(5.768320995793772).epsilon(1e-6));
        CHECK(s.perplexity() == doctest::Approx(320.0).epsilon(1e-5));
        CHECK(s.bits_per_byte() == doctest::Approx(3.328771237954945).epsilon(1e-6));
    }
}

TEST_CASE(
    "text: sliding windows score every token once with at least T - stride tokens before it; stride 1 = token by "
    "token") {
    for (auto [N, T, stride] :
         {std::array<int, 3>{2, 4, 4}, {10, 4, 1}, {37, 8, 3}, {37, 8, 8}, {9, 8, 5}, {100, 16, 7}}) {
        CAPTURE(N); CAPTURE(T); CAPTURE(stride);
        std::vector<int> seen(N, 0);
        for (const TextWindow& w : sliding_windows(N, T, stride)) {
            CHECK(w.end - w.begin <= T + 1);  // T inputs
            CHECK(w.begin < w.first);
            for (int j = w.first; j < w.end; j++) {
                seen[j]++;
                CHECK(j - w.begin >= std::min(j, T - stride));  // context seen by token j
            }
        }
        CHECK(seen[0] == 0);
        for (int j = 1; j < N; j++) CHECK(seen[j] == 1);
    }
    CHECK_THROWS_WITH(sliding_windows(10, 8, 9), doctest::Contains("stride 9"));
    // stride 1: token j is predicted from the T tokens before it; the reference runs one forward per token
    // and takes log-softmax of its last logits row itself, in double
    GPTConfig c = tiny_config(Arch::gpt2, 50, 8);
    GPT<HostOps> model(c);
    model.set_parameters(random_parameters(c, 4));
    Rng rng(5);
    std::vector<int> tokens(30);
    for (int& t : tokens) t = static_cast<int>(rng.below(50));
    double nats = 0;
    for (int j = 1; j < 30; j++) {
        int begin = std::max(0, j - 8), len = j - begin;
        model.forward(tokens.data() + begin, nullptr, 1, len);
        std::vector<float> row = model.logits_at(0, len - 1);
        double m = *std::max_element(row.begin(), row.begin() + 50), sum = 0;
        for (int v = 0; v < 50; v++) sum += std::exp(row[v] - m);
        nats -= row[tokens[j]] - m - std::log(sum);
    }
    TextScore s = score_text(model, tokens, 1000, 8, 1, 4);
    CHECK(s.tokens == 29);
    CHECK(s.nats == doctest::Approx(nats).epsilon(1e-5));
}

// ----------------------------------------------------------------------------
// Kernels against the CPU reference ops: multiple choice and text, GPT-2 and Llama
TEST_CASE("kernel path equals CPU path: per-token log-probs of choices and of a text") {
    for (Arch arch : {Arch::gpt2, Arch::llama}) {
        CAPTURE(arch == Arch::gpt2 ? "gpt2" : "llama");
        GPTConfig c = tiny_config(arch, 70, 24);
        std::vector<float> params = random_parameters(c, 9);
        GPT<HostOps> host(c);
        GPT<DeviceOps> device(c);
        host.set_parameters(params);
        device.set_parameters(params);
        Rng rng(10);
        auto random_tokens = [&](int n) {
            std::vector<int> t(n);
            for (int& x : t) x = static_cast<int>(rng.below(70));
            return t;
        };
        std::vector<ScoreRequest> batch = {{random_tokens(7), random_tokens(3)},
                                           {random_tokens(7), random_tokens(11)},
                                           {random_tokens(1), random_tokens(1)},
                                           {random_tokens(13), random_tokens(10)}};
        std::vector<std::vector<float>> a = target_logprobs(host, batch), b = target_logprobs(device, batch);
        std::vector<float> flat_a, flat_b;
        for (size_t i = 0; i < a.size(); i++) {
            REQUIRE(a[i].size() == batch[i].target.size());
            REQUIRE(b[i].size() == batch[i].target.size());
            flat_a.insert(flat_a.end(), a[i].begin(), a[i].end());
            flat_b.insert(flat_b.end(), b[i].begin(), b[i].end());
        }
        check_close("log-probs, kernels vs CPU", flat_b, flat_a, tolerance_fp32);
        std::vector<int> text = random_tokens(60);
        TextScore th = score_text(host, text, 200, 24, 10, 3), td = score_text(device, text, 200, 24, 10, 3);
        CHECK(td.tokens == th.tokens);
        CHECK(td.nats == doctest::Approx(th.nats).epsilon(tolerance_fp32));
    }
}

// ----------------------------------------------------------------------------
TEST_CASE("regression gate: fails naming the metric when worse than the baseline by more than X, passes otherwise") {
    const json base = {
        {"metrics", {{"acc", 0.50}, {"acc_norm", 0.40}, {"loss", 3.0}, {"bits_per_byte", 1.5}, {"count", 200}}}};
    auto with = [&](const char* key, double v) {
        json r = base;
        r["metrics"][key] = v;
        return r;
    };
    auto starts = [](const std::vector<std::string>& f, const std::string& s) {
        return f.size() == 1 && f[0].rfind(s, 0) == 0;
    };
    CHECK(regressions(base, base, 0.0).empty());
    CHECK(starts(regressions(with("acc", 0.48), base, 0.01), "acc regressed: 0.48 vs baseline 0.5"));
    CHECK(regressions(with("acc", 0.48), base, 0.03).empty());
    CHECK(regressions(with("acc", 0.90), base, 0.0).empty());  // better is never a regression
    CHECK(starts(regressions(with("acc_norm", 0.30), base, 0.05), "acc_norm regressed"));
    CHECK(starts(regressions(with("loss", 3.05), base, 0.01), "loss regressed: 3.05 vs baseline 3 (higher by"));
    CHECK(regressions(with("loss", 2.0), base, 0.0).empty());
    CHECK(starts(regressions(with("bits_per_byte", 1.7), base, 0.1), "bits_per_byte regressed"));
    CHECK(regressions(with("bits_per_byte", 1.55), base, 0.1).empty());
    json two = with("acc", 0.1);
    two["metrics"]["loss"] = 4.0;
    CHECK(regressions(two, base, 0.01).size() == 2);
    CHECK_THROWS_WITH(regressions(with("count", 100), base, 0.5), doctest::Contains("different data"));
}

// ----------------------------------------------------------------------------
// The programs, as a user runs them (CPU build)
static CommandResult eval_gpt(const std::string& args) {
    return run_command(program_path("eval_gpt_cpu") + " --device cpu " + args);
}

TEST_CASE("eval_gpt: per-item choices of an HF GPT-2 directory equal transformers' on the same file") {
    const json mcase = read_json("test/fixtures/eval_hf.json").at("models").at(0);
    REQUIRE(mcase.at("dir") == "test/fixtures/hf_gpt2_tiny");
    Scratch s("hf");
    std::string lines;
    for (const json& x : mcase.at("items"))
        lines += x.dump() + "\n";  // generic layout, token ids: the model has 97 tokens
    write_text(s / "items.jsonl", lines);
    CommandResult r = eval_gpt("--model test/fixtures/hf_gpt2_tiny --multiple-choice " + (s / "items.jsonl") +
                               " --per-item " + (s / "items_out.jsonl") + " --report " + (s / "report.json"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    json per = read_jsonl(s / "items_out.jsonl");
    REQUIRE(per.size() == mcase["items"].size());
    int correct = 0;
    for (size_t i = 0; i < per.size(); i++) {
        CAPTURE(i);
        CHECK(per[i]["line"] == i + 1);
        CHECK(per[i]["pred"] == mcase["pred"][i]);
        CHECK(per[i]["pred_norm"] == mcase["pred_norm"][i]);
        for (size_t c = 0; c < mcase["sum_logprob"][i].size(); c++) {
            CHECK(logprob_close(per[i]["sum_logprob"][c].get<double>(), mcase["sum_logprob"][i][c].get<double>()));
            CHECK(per[i]["tokens"][c] == mcase["items"][i]["choices"][c].size());
        }
        correct += mcase["pred"][i] == mcase["items"][i]["label"];
    }
    json report = read_json(s / "report.json");
    CHECK(report["metrics"]["count"] == per.size());
    CHECK(report["metrics"]["acc"].get<double>() == doctest::Approx(static_cast<double>(correct) / per.size()));
}

TEST_CASE("eval_gpt: bad input names the file and line, and no report is written") {
    Scratch s("bad");
    write_model(s / "model.bin", tiny_config(Arch::gpt2, 320, 32),
                random_parameters(tiny_config(Arch::gpt2, 320, 32), 1));
    const std::string good = R"({"ctx": "To be, or not", "endings": ["to be", "a cat"], "label": 0})";
    struct Case {
        std::string line, message;
    };
    for (const Case& c : std::vector<Case>{
             {R"({"ctx": "To be", "endings": ["a", "b"], "label": 0)", ":2: not JSON"},
             {R"({"ctx": "To be", "label": 0})", ":2: missing field \"endings\""},
             {R"({"context": "To be", "choices": ["a", "b"]})", ":2: missing field \"label\""},
             {R"({"ctx": "To be", "endings": ["a", "b"], "label": 2})",
              ":2: label 2 is out of range: there are 2 endings"},
             {R"({"ctx": "To be", "endings": ["a", "b"], "label": -1})", ":2: label -1 is out of range"},
             {R"({"ctx": "To be", "endings": ["a", "b"], "label": "first"})", ":2: \"label\" must be an integer"},
             {R"({"ctx": "To be", "endings": ["a", ""], "label": 0})", ":2: endings[1] is empty"},
             {R"({"ctx": "", "endings": ["a", "b"], "label": 0})", ":2: \"ctx\" is empty"},
             {R"({"ctx": "To be", "endings": ["a"], "label": 0})", ":2: \"endings\" must be a list of at least two"},
             {"{\"ctx\": \"To be \xff\", \"endings\": [\"a\", \"b\"], \"label\": 0}", ":2: invalid UTF-8 at byte 16"},
             {"[1, 2]", ":2: not a JSON object"},
             {R"({"context": [1, 400], "choices": [[1], [2]], "label": 0})",
              ":2: \"context\": token 400 is outside the model's vocabulary"},
         }) {
        CAPTURE(c.line);
        write_text(s / "items.jsonl", good + "\n" + c.line + "\n" + good + "\n");
        CommandResult r = eval_gpt("--model " + (s / "model.bin") + " --multiple-choice " + (s / "items.jsonl") +
                                   " --report " + (s / "report.json") + " --per-item " + (s / "per.jsonl"));
        INFO(r.output);
        CHECK(r.exit_code == 1);
        CHECK(r.output.find(s / "items.jsonl" + c.message) != std::string::npos);
        CHECK(!fs::exists(s / "report.json"));
        CHECK(!fs::exists(s / "per.jsonl"));
    }
    // an item longer than the model's context (32)
    write_text(s / "items.jsonl",
               R"({"ctx": ")" + std::string(60, 'z') + R"(", "endings": ["a", "b"], "label": 0})" + "\n");
    CommandResult r = eval_gpt("--model " + (s / "model.bin") + " --multiple-choice " + (s / "items.jsonl"));
    CHECK(r.exit_code == 1);
    CHECK(r.output.find(":1: context + ending is") != std::string::npos);
    // flags
    CHECK(eval_gpt("--model " + (s / "model.bin")).output.find("nothing to evaluate") != std::string::npos);
    CHECK(eval_gpt("--model " + (s / "model.bin") + " --text x --stride z").output.find("--stride needs") !=
          std::string::npos);
    CHECK(eval_gpt("--model " + (s / "model.bin") + " --text " + (s / "missing.txt"))
              .output.find("missing.txt: cannot open") != std::string::npos);
    CHECK(eval_gpt("--help").output.find("--multiple-choice") != std::string::npos);
}

TEST_CASE("eval_gpt: --text bits per byte by hand, golden continuations, the regression gate through the program") {
    Scratch s("run");
    bpe::Tokenizer tok = bpe::Tokenizer::load(tokenizer_small);
    GPTConfig c = tiny_config(Arch::gpt2, tok.vocab_size(), 32);
    // --text on the all-zero model: ln 320 nats for each token of the text (<|endoftext|> goes first, so all
    // of them are predicted), hence bits per byte = tokens · log2 320 / bytes
    write_model(s / "zero.bin", c, std::vector<float>(random_parameters(c, 0).size(), 0.0f));
    const std::string text =
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n";
    write_text(s / "text.txt", text);
    const double n = static_cast<double>(tok.encode_ordinary(text).size());
    CommandResult r = eval_gpt("--model " + (s / "zero.bin") + " --text " + (s / "text.txt") +
                               " --context 32 --stride 12 --report " + (s / "text.json"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    json m = read_json(s / "text.json")["metrics"];
    CHECK(m["text_tokens"].get<double>() == n);
    CHECK(m["text_bytes"] == text.size());
    CHECK(m["bits_per_byte"].get<double>() == doctest::Approx(n * std::log2(320.0) / text.size()).epsilon(1e-6));
    CHECK(m["loss"].get<double>() == doctest::Approx(std::log(320.0)).epsilon(1e-6));

    // golden: record a random model's greedy continuations, check them, then change one
    write_model(s / "model.bin", c, random_parameters(c, 2));
    write_text(s / "prompts.jsonl", R"({"prompt": "To be", "max_tokens": 6})"
                                    "\n"
                                    R"({"prompt": "ROMEO:", "max_tokens": 4})"
                                    "\n");
    r = eval_gpt("--model " + (s / "model.bin") + " --golden " + (s / "prompts.jsonl") + " --write-golden " +
                 (s / "golden.jsonl"));
    REQUIRE(r.exit_code == 0);
    json golden = read_jsonl(s / "golden.jsonl");
    REQUIRE(golden.size() == 2);
    CHECK(golden[1]["max_tokens"] == 4);
    CHECK(golden[1]["expected_tokens"].size() <= 4);
    r = eval_gpt("--model " + (s / "model.bin") + " --golden " + (s / "golden.jsonl"));
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("0 of 2 continuations changed") != std::string::npos);
    golden[1]["expected_tokens"][0] = (golden[1]["expected_tokens"][0].get<int>() + 1) % 320;
    write_text(s / "golden.jsonl", golden[0].dump() + "\n" + golden[1].dump() + "\n");
    r = eval_gpt("--model " + (s / "model.bin") + " --golden " + (s / "golden.jsonl") + " --report " +
                 (s / "golden.json"));
    CHECK(r.exit_code == 3);
    CHECK(r.output.find(s / "golden.jsonl:2 changed") != std::string::npos);
    CHECK(r.output.find("1 of 2 continuations changed") != std::string::npos);
    CHECK(read_json(s / "golden.json")["metrics"]["golden_changed"] == 1);
    // a hand-written golden file, text only: the all-zero model's logits all tie, and greedy takes the lowest
    // id, token 0 = "!"; max_tokens defaults to the expected text's token count
    write_text(s / "hand.jsonl", R"({"prompt": "To be", "expected": "!!!"})"
                                 "\n"
                                 R"({"prompt": "To be", "expected": "?!"})"
                                 "\n");
    r = eval_gpt("--model " + (s / "zero.bin") + " --golden " + (s / "hand.jsonl"));
    CHECK(r.exit_code == 3);
    CHECK(r.output.find(s / "hand.jsonl:1 changed") == std::string::npos);
    CHECK(r.output.find(s / "hand.jsonl:2 changed") != std::string::npos);

    // the gate: a report, then the same run against it, then against a better baseline
    write_text(s / "items.jsonl", R"({"ctx": "To be, or not", "endings": ["to be", "a cat", "the sea"], "label": 0})"
                                  "\n"
                                  R"({"context": "Whether 'tis", "choices": ["nobler", "in the mind"], "label": 1})"
                                  "\n");
    const std::string args =
        "--model " + (s / "model.bin") + " --multiple-choice " + (s / "items.jsonl") + " --text " + (s / "text.txt");
    r = eval_gpt(args + " --report " + (s / "base.json"));
    REQUIRE(r.exit_code == 0);
    r = eval_gpt(args + " --baseline " + (s / "base.json") + " --report " + (s / "again.json"));
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("no metric worse than baseline") != std::string::npos);
    json better = read_json(s / "base.json");
    better["metrics"]["acc"] = better["metrics"]["acc"].get<double>() + 0.5;
    better["metrics"]["loss"] = better["metrics"]["loss"].get<double>() - 0.25;
    write_text(s / "better.json", better.dump());
    r = eval_gpt(args + " --baseline " + (s / "better.json") + " --max-regression 0.1 --report " + (s / "worse.json"));
    CHECK(r.exit_code == 3);
    CHECK(r.output.find("REGRESSION vs " + (s / "better.json") + ": acc regressed") != std::string::npos);
    CHECK(r.output.find("loss regressed") != std::string::npos);
    CHECK(read_json(s / "worse.json")["regressions"].size() == 2);
    r = eval_gpt(args + " --baseline " + (s / "better.json") + " --max-regression 0.6");
    CHECK(r.exit_code == 0);
    write_text(s / "broken.json", "{\"acc\": 1}");
    r = eval_gpt(args + " --baseline " + (s / "broken.json"));
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("not an eval_gpt report") != std::string::npos);
}

TEST_CASE(
    "dev/make_choice_set.sh: a deterministic HellaSwag-format set from Tiny Shakespeare's val split, read by "
    "eval_gpt") {
    Scratch s("shakespeare");
    CommandResult r = run_command("bash dev/make_choice_set.sh " + (s / "a.jsonl") + " '' 40 7");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    REQUIRE(run_command("bash dev/make_choice_set.sh " + (s / "b.jsonl") + " '' 40 7").exit_code == 0);
    std::ifstream a(s / "a.jsonl"), b(s / "b.jsonl");
    std::string ta((std::istreambuf_iterator<char>(a)), {}), tb((std::istreambuf_iterator<char>(b)), {});
    CHECK(ta == tb);
    json items = read_jsonl(s / "a.jsonl");
    REQUIRE(items.size() == 40);
    std::vector<int> labels(4, 0);
    for (const json& it : items) {
        CHECK(!it["ctx"].get<std::string>().empty());
        REQUIRE(it["endings"].size() == 4);
        labels[it["label"].get<int>()]++;
        for (int i = 0; i < 4; i++) CHECK(it["endings"][i].get<std::string>().size() >= 12);
    }
    for (int l : labels) CHECK(l > 0);  // the true ending is not always in one place
    bpe::Tokenizer tok = bpe::Tokenizer::load(tokenizer_small);
    GPTConfig c = tiny_config(Arch::gpt2, tok.vocab_size(), 256);
    write_model(s / "model.bin", c, random_parameters(c, 3));
    r = eval_gpt("--model " + (s / "model.bin") + " --multiple-choice " + (s / "a.jsonl") + " --max-items 8");
    CHECK(r.exit_code == 0);
    CHECK(r.output.find("8 items | acc") != std::string::npos);
}

TEST_CASE("train_gpt --eval-every N --eval-multiple-choice FILE logs accuracy to log.jsonl") {
    Scratch s("train");
    Rng rng(7);
    std::vector<int> train(4000), val(600);
    for (auto& t : train) t = static_cast<int>(rng.below(50257));
    for (auto& t : val) t = static_cast<int>(rng.below(50257));
    bpe::write_shard(s / "train_000.bin", train, 50257);
    bpe::write_shard(s / "val_000.bin", val, 50257);
    write_text(s / "items.jsonl", R"({"ctx": "To be, or not", "endings": ["to be", "a cat", "the sea"], "label": 0})"
                                  "\n"
                                  R"({"ctx": "Whether 'tis", "endings": ["nobler", "in the mind"], "label": 1})"
                                  "\n");
    const std::string args =
        program_path("train_gpt_cpu") +
        " --model '{\"arch\":\"gpt2\",\"n_layer\":1,\"n_head\":2,\"n_embd\":16,\"max_seq_len\":16}' --device cpu "
        "--batch-size 2 --seq-len 8 --val-every 2 --val-batches 1 --sample-every 0 --sample-tokens 2 --warmup-steps 1 "
        "--max-steps 5 --eval-every 2 --train-data " +
        (s / "train_*.bin") + " --val-data " + (s / "val_*.bin") + " --out-dir " + (s / "out");
    CommandResult r = run_command(args + " --eval-multiple-choice " + (s / "items.jsonl"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::vector<int> steps;
    for (const json& j : read_jsonl(s / "out/log.jsonl"))
        if (j.contains("mc_acc")) {
            steps.push_back(j["step"]);
            CHECK(j["mc_count"] == 2);
            CHECK(j["mc_acc"].get<double>() >= 0.0);
            CHECK(j["mc_acc_norm"].get<double>() <= 1.0);
        }
    CHECK(steps == std::vector<int>{0, 2, 4, 5});  // every 2 steps and after the last
    write_text(s / "bad.jsonl", R"({"ctx": "To be", "endings": ["x", "y"], "label": 5})" "\n");
    r = run_command(args + " --eval-multiple-choice " + (s / "bad.jsonl"));
    CHECK(r.exit_code == 1);
    CHECK(r.output.find(s / "bad.jsonl:1: label 5 is out of range") != std::string::npos);
}
