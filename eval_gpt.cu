// eval_gpt.cu — evaluate a GPT (train_gpt's checkpoint, or a Hugging Face GPT-2 / Llama directory): multiple-choice
// accuracy (HellaSwag format), loss / perplexity / bits per byte of a text, golden greedy continuations, and a
// regression gate against a baseline report. docs/evaluation.md explains the measures.
//
//   ./eval_gpt_cpu --model out/shakespeare_cpu/checkpoint.bin --multiple-choice data/shakespeare_choices.jsonl
//   ./eval_gpt --model gpt2_dir --multiple-choice hellaswag_val.jsonl --per-item items.jsonl --report r.json
//   ./eval_gpt_cpu --model M --text val.txt --stride 64                   loss, perplexity, bits per byte
//   ./eval_gpt_cpu --model M --golden golden.jsonl                        which greedy continuations changed
//   ./eval_gpt_cpu --model M ... --report new.json --baseline old.json --max-regression 0.01
//   ./eval_gpt_cpu --model M --pairs pairs.jsonl --ref-model REF          DPO / IPO losses, reward accuracy, margin
//
// Exit status: 0 all good; 1 an error (bad input names FILE:LINE; no report is written); 3 a check failed
// (a metric regressed past --max-regression, or a golden continuation changed; the report is written).
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "hf.h"
#include "engine.cuh"
#include "eval.h"
#include "preference.cuh"
#include "tokenizer/bpe.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

struct EvalOptions {
    std::string model, tokenizer, device = "auto", text, multiple_choice, per_item, report, baseline, golden,
                                  write_golden;
    int context = 0, stride = 0, batch_size = 4, max_items = 0;
    double max_regression = 0.0;
    std::string pairs, ref_model;  // preference pairs (preference.cuh)
    double beta = 0.1;
};

static void print_help() {
    std::printf(
        "usage: eval_gpt --model PATH [--multiple-choice FILE] [--text FILE] [--golden FILE] [options]\n"
        "  --model PATH              gpt.cu checkpoint, or a directory with config.json + model.safetensors (HF GPT-2 "
        "/ Llama)\n"
        "  --tokenizer DIR           encoder.json + vocab.bpe (default: the checkpoint's; for HF models "
        "../shared/data/gpt2)\n"
        "  --device auto|cpu|cuda    auto: cuda on a GPU, else the CPU reference ops\n"
        "  --multiple-choice FILE    JSONL items, HellaSwag {ctx, endings, label} or {context, choices, label}: acc, "
        "acc_norm\n"
        "  --max-items N             score only the first N items (default 0: all)\n"
        "  --per-item OUT.jsonl      per item: label, predictions, each choice's summed log-prob and token count\n"
        "  --text FILE               mean loss, perplexity and bits per byte of the file's text ...\n"
        "  --context N               ... in windows of N tokens (default: the model's context) ...\n"
        "  --stride N                ... each scoring N new tokens (default: half the window)\n"
        "  --batch-size N            text windows per forward (default 4)\n"
        "  --golden FILE             JSONL {prompt, expected[, max_tokens]}: report prompts whose greedy continuation "
        "changed\n"
        "  --write-golden OUT.jsonl  write the golden file's prompts with this model's greedy continuations (to make "
        "one)\n"
        "  --pairs FILE              JSONL {prompt, chosen, rejected}: DPO and IPO losses, reward accuracy, mean "
        "margin ...\n"
        "  --ref-model PATH          ... against this frozen reference model (the policy's starting point) ...\n"
        "  --beta B                  ... with this beta (default 0.1); pairs go --batch-size at a time\n"
        "  --report OUT.json         write every metric as JSON (only after everything ran without error)\n"
        "  --baseline OLD.json       a report to compare with ...\n"
        "  --max-regression X        ... exit 3 naming each metric worse than the baseline by more than X (default 0)\n"
        "exit status: 0 ok, 1 error, 3 a regression or a changed golden continuation\n");
}

static EvalOptions parse_options(int argc, char** argv) {
    EvalOptions o;
    std::map<std::string, std::function<void(const std::string&)>> flags;
    auto str = [](std::string& f) { return [&f](const std::string& v) { f = v; }; };
    auto integer = [](int& f, const char* name) {
        return [&f, name](const std::string& v) {
            size_t used = 0;
            try { f = std::stoi(v, &used); } catch (const std::exception&) { used = 0; }
            if (used != v.size() || v.empty() || f < 0)
                throw std::runtime_error(std::string(name) + " needs a non-negative integer, got '" + v + "'");
        };
    };
    flags["--model"] = str(o.model);
    flags["--tokenizer"] = str(o.tokenizer);
    flags["--device"] = str(o.device);
    flags["--text"] = str(o.text);
    flags["--multiple-choice"] = str(o.multiple_choice);
    flags["--per-item"] = str(o.per_item);
    flags["--report"] = str(o.report);
    flags["--baseline"] = str(o.baseline);
    flags["--golden"] = str(o.golden);
    flags["--pairs"] = str(o.pairs);
    flags["--ref-model"] = str(o.ref_model);
    flags["--beta"] = [&o](const std::string& v) {
        size_t used = 0;
        try { o.beta = std::stod(v, &used); } catch (const std::exception&) { used = 0; }
        if (used != v.size() || v.empty() || !(o.beta > 0))
            throw std::runtime_error("--beta needs a number > 0, got '" + v + "'");
    };
    flags["--write-golden"] = str(o.write_golden);
    flags["--context"] = integer(o.context, "--context");
    flags["--stride"] = integer(o.stride, "--stride");
    flags["--batch-size"] = integer(o.batch_size, "--batch-size");
    flags["--max-items"] = integer(o.max_items, "--max-items");
    flags["--max-regression"] = [&o](const std::string& v) {
        size_t used = 0;
        try { o.max_regression = std::stod(v, &used); } catch (const std::exception&) { used = 0; }
        if (used != v.size() || v.empty() || !(o.max_regression >= 0))
            throw std::runtime_error("--max-regression needs a number >= 0, got '" + v + "'");
    };
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            print_help();
            std::exit(0);
        }
        auto f = flags.find(a);
        if (f == flags.end()) throw std::runtime_error("unknown flag '" + a + "' (see --help)");
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        f->second(argv[++i]);
    }
    if (o.model.empty()) throw std::runtime_error("--model PATH is required (see --help)");
    if (o.multiple_choice.empty() && o.text.empty() && o.golden.empty() && o.pairs.empty())
        throw std::runtime_error(
            "nothing to evaluate: pass --multiple-choice FILE, --text FILE, --golden FILE and/or --pairs FILE (see "
            "--help)");
    if (!o.pairs.empty() && o.ref_model.empty())
        throw std::runtime_error(
            "--pairs needs --ref-model PATH: the rewards are log-ratios against a reference model");
    if (o.batch_size < 1) throw std::runtime_error("--batch-size must be >= 1");
    if (!o.write_golden.empty() && o.golden.empty())
        throw std::runtime_error("--write-golden needs --golden FILE (the prompts)");
    return o;
}


static std::string read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Writes `text` to PATH all at once (PATH.tmp, then rename): a failed run never leaves half a file.
static void write_text(const std::string& path, const std::string& text) {
    write_file_atomically(path, [&](File& f) { f.write(text.data(), text.size()); });
}

// A golden prompt: its text, the expected greedy continuation (as text, and as token ids when --write-golden
// recorded it: ids are compared when present, since bytes that are not UTF-8 text can only be stored replaced).
struct GoldenPrompt {
    int line;
    std::string prompt, expected;
    int max_tokens;
    std::vector<int> expected_tokens;
};
static std::vector<GoldenPrompt> read_golden(const std::string& path, const bpe::Tokenizer& tok) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::vector<GoldenPrompt> out;
    std::string line;
    for (int lineno = 1; std::getline(in, line); lineno++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        auto fail = [&](const std::string& m) {
            throw std::runtime_error(path + ":" + std::to_string(lineno) + ": " + m);
        };
        if (size_t bad = utf8_invalid_at(line); bad != std::string::npos)
            fail("invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line");
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception& e) { fail(std::string("not JSON (") + e.what() + ")"); }
        if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
            j["prompt"].get<std::string>().empty())
            fail("needs a non-empty string \"prompt\" (and \"expected\": the greedy continuation)");
        GoldenPrompt g{lineno, j["prompt"], j.value("expected", std::string()), 0, {}};
        if (j.contains("max_tokens") && (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int>() < 1))
            fail("\"max_tokens\" must be an integer >= 1");
        g.max_tokens =
            j.value("max_tokens", std::max<int>(1, static_cast<int>(tok.encode_ordinary(g.expected).size())));
        try {
            g.expected_tokens = j.value("expected_tokens", std::vector<int>());
        } catch (const json::exception&) {
            fail("\"expected_tokens\" must be a list of token ids");
        }
        out.push_back(std::move(g));
    }
    if (out.empty()) throw std::runtime_error(path + ": no prompts");
    return out;
}

template <class Ops>
static int run(const EvalOptions& o, const std::string& device_name) {
    LoadedModel m = load_model(o.model);
    std::fprintf(stderr, "model: %s (%s), %d layers, C=%d, vocab %d, context %d; device %s (%s)\n", o.model.c_str(),
                 m.format.c_str(), m.config.n_layer, m.config.n_embd, m.config.vocab_size, m.config.max_seq_len,
                 Ops::name, device_name.c_str());
    std::optional<bpe::Tokenizer> tok = open_model_tokenizer(o.tokenizer, m, !o.text.empty() || !o.golden.empty());
    const int eot = m.eot_id >= 0 ? m.eot_id : (tok ? tok->eot_id() : -1);
    // read and check every input before any scoring: a bad line fails fast and nothing is written
    std::vector<ChoiceItem> items;
    if (!o.multiple_choice.empty()) {
        items = read_choice_file(o.multiple_choice, tok ? &*tok : nullptr, m.config.vocab_size);
        if (o.max_items > 0 && static_cast<int>(items.size()) > o.max_items) items.resize(o.max_items);
        check_choices_fit(items, m.config.max_seq_len, o.multiple_choice);
    }
    std::vector<GoldenPrompt> golden;
    if (!o.golden.empty()) golden = read_golden(o.golden, *tok);
    std::vector<PairExample> pairs;
    std::vector<CompletionExample> unused;
    std::optional<LoadedModel> ref;
    if (!o.pairs.empty()) {
        read_finetune_file(o.pairs, tok ? &*tok : nullptr, m.config.vocab_size, m.config.max_seq_len, true, false,
                           pairs, unused);
        ref = load_model(o.ref_model);
        check_same_vocabulary(m.config, m.tokenizer, ref->config, ref->tokenizer, o.ref_model);
    }
    json baseline;
    if (!o.baseline.empty()) {
        try {
            baseline = json::parse(read_all(o.baseline));
            if (!baseline.contains("metrics") || !baseline["metrics"].is_object())
                throw std::runtime_error("no \"metrics\" object");
        } catch (const std::exception& e) {
            throw std::runtime_error("--baseline " + o.baseline + ": not an eval_gpt report (" + e.what() + ")");
        }
    }

    GPT<Ops> model(m.config);
    model.set_parameters(m.params);
    m.params.clear();
    m.params.shrink_to_fit();
    json report = {{"model", o.model},
                   {"format", m.format},
                   {"device", std::string(Ops::name) + " (" + device_name + ")"},
                   {"metrics", json::object()}};
    json& metrics = report["metrics"];
    std::string per_item_text;

    if (!items.empty()) {  // ---- multiple choice
        ChoiceTotals totals;
        Progress progress("multiple choice", "items");
        for (size_t i = 0; i < items.size(); i++) {
            ChoiceScore s = score_choices(model, items[i]);
            totals.add(items[i], s);
            if (!o.per_item.empty())
                per_item_text += json{{"line", items[i].line},    {"label", items[i].label},      {"pred", s.pred},
                                      {"pred_norm", s.pred_norm}, {"sum_logprob", s.sum_logprob}, {"tokens", s.tokens}}
                                     .dump() +
                                 "\n";
            progress.update(static_cast<long>(i + 1), static_cast<long>(items.size()));
        }
        double se = ChoiceTotals::standard_error(totals.acc(), totals.count),
               se_norm = ChoiceTotals::standard_error(totals.acc_norm(), totals.count);
        std::printf("multiple choice %s: %ld items | acc %.4f ± %.4f | acc_norm %.4f ± %.4f (± one standard error)\n",
                    o.multiple_choice.c_str(), totals.count, totals.acc(), se, totals.acc_norm(), se_norm);
        metrics["count"] = totals.count;
        metrics["acc"] = totals.acc();
        metrics["acc_norm"] = totals.acc_norm();
        metrics["acc_stderr"] = se;
        metrics["acc_norm_stderr"] = se_norm;
        report["multiple_choice"] = o.multiple_choice;
    }

    if (!pairs.empty()) {  // ---- preference pairs: the policy against a frozen reference, no training
        GPT<Ops> reference(ref->config);
        reference.set_parameters(ref->params);
        PreferenceBuffers<Ops> buffers;
        PreferenceSettings settings{Objective::dpo, static_cast<float>(o.beta)};
        PreferenceMetrics total;
        double ipo = 0;
        Progress progress("pairs", "pairs");
        for (size_t b = 0; b < pairs.size(); b += o.batch_size) {
            std::vector<PairExample> batch(pairs.begin() + b, pairs.begin() + std::min(pairs.size(), b + o.batch_size));
            double ipo_batch = 0;
            PreferenceMetrics mb = preference_step(model, reference, buffers, settings, batch, {}, false, &ipo_batch);
            ipo += ipo_batch * mb.count;
            total += mb;
            progress.update(static_cast<long>(std::min(pairs.size(), b + o.batch_size)),
                            static_cast<long>(pairs.size()));
        }
        ipo /= total.count;
        std::printf(
            "pairs %s: %ld pairs, beta %g, reference %s | DPO loss %.4f | IPO loss %.4f | reward accuracy %.4f | "
            "margin %.4f "
            "| chosen %.4f | rejected %.4f | kl %.4f\n",
            o.pairs.c_str(), total.count, o.beta, o.ref_model.c_str(), total.loss, ipo, total.accuracy, total.margin,
            total.chosen_reward, total.rejected_reward, total.kl);
        metrics["pair_count"] = total.count;
        metrics["dpo_loss"] = total.loss;
        metrics["ipo_loss"] = ipo;
        metrics["reward_accuracy"] = total.accuracy;
        metrics["reward_margin"] = total.margin;
        metrics["chosen_reward"] = total.chosen_reward;
        metrics["rejected_reward"] = total.rejected_reward;
        metrics["kl"] = total.kl;
        report["pairs"] = {{"file", o.pairs}, {"ref_model", o.ref_model}, {"beta", o.beta}};
    }

    if (!o.text.empty()) {  // ---- loss, perplexity, bits per byte
        std::string text = read_all(o.text);
        if (text.empty()) throw std::runtime_error(o.text + ": empty");
        std::vector<int> tokens = tok->encode_ordinary(text);
        size_t bytes = text.size();
        if (eot >= 0) tokens.insert(tokens.begin(), eot);   // every token of the text is then predicted
        else bytes -= tok->token_bytes(tokens[0]).size();  // no start token: the first is context only
        const int T = o.context > 0 ? std::min(o.context, m.config.max_seq_len) : m.config.max_seq_len;
        const int stride = o.stride > 0 ? o.stride : std::max(1, T / 2);
        Progress progress("text", "windows");
        TextScore s =
            score_text(model, tokens, bytes, T, stride, o.batch_size, [&](long d, long n) { progress.update(d, n); });
        std::printf(
            "text %s: %ld tokens, %zu bytes, window %d, stride %d | loss %.4f | perplexity %.3f | bits per byte %.4f\n",
            o.text.c_str(), s.tokens, s.bytes, T, stride, s.loss(), s.perplexity(), s.bits_per_byte());
        metrics["loss"] = s.loss();
        metrics["perplexity"] = s.perplexity();
        metrics["bits_per_byte"] = s.bits_per_byte();
        metrics["text_tokens"] = s.tokens;
        metrics["text_bytes"] = s.bytes;
        report["text"] = {{"file", o.text}, {"context", T}, {"stride", stride}};
    }

    int changed = 0;
    std::string golden_text;
    if (!golden.empty()) {  // ---- greedy continuations, through engine.cuh's batched generation
        InferenceEngine<Ops> engine(model, {8, 256, 16, 0});
        std::vector<Request> reqs;
        for (size_t i = 0; i < golden.size(); i++)
            reqs.push_back({std::to_string(i),
                            tok->encode_ordinary(golden[i].prompt),
                            golden[i].max_tokens,
                            {0.0f, 0, 1.0f},
                            0,
                            ""});
        std::vector<Result> results = serve(engine, std::move(reqs), eot);
        std::vector<std::string> got(golden.size());  // as valid UTF-8: bytes that never form a character become U+FFFD
        std::vector<std::vector<int>> got_tokens(golden.size());
        for (const Result& r : results) {
            size_t i = std::stoul(r.id);
            if (!r.error.empty())
                throw std::runtime_error(o.golden + ":" + std::to_string(golden[i].line) + ": " + r.error);
            bpe::StreamDecoder d(*tok);
            for (int t : r.tokens) got[i] += d.push(t);
            got[i] += d.flush();
            got_tokens[i] = r.tokens;
        }
        json changed_lines = json::array();
        for (size_t i = 0; i < golden.size(); i++) {
            const GoldenPrompt& g = golden[i];
            golden_text += json{{"prompt", g.prompt},
                                {"expected", got[i]},
                                {"expected_tokens", got_tokens[i]},
                                {"max_tokens", g.max_tokens}}
                               .dump() +
                           "\n";
            if (g.expected_tokens.empty() ? got[i] == g.expected : got_tokens[i] == g.expected_tokens) continue;
            changed++;
            changed_lines.push_back(g.line);
            std::printf("golden %s:%d changed\n  prompt:   %s\n  expected: %s %s\n  got:      %s %s\n",
                        o.golden.c_str(), g.line, json(g.prompt).dump().c_str(), json(g.expected).dump().c_str(),
                        json(g.expected_tokens).dump().c_str(), json(got[i]).dump().c_str(),
                        json(got_tokens[i]).dump().c_str());
        }
        std::printf("golden %s: %d of %zu continuations changed\n", o.golden.c_str(), changed, golden.size());
        metrics["golden_prompts"] = golden.size();
        metrics["golden_changed"] = changed;
        report["golden"] = {{"file", o.golden}, {"changed_lines", changed_lines}};
    }

    std::vector<std::string> failures;
    if (!o.baseline.empty()) {
        failures = regressions(report, baseline, o.max_regression);
        for (const std::string& f : failures) std::printf("REGRESSION vs %s: %s\n", o.baseline.c_str(), f.c_str());
        if (failures.empty())
            std::printf("no metric worse than baseline %s by more than %g\n", o.baseline.c_str(), o.max_regression);
        report["baseline"] = o.baseline;
        report["regressions"] = failures;
    }
    // outputs only now: every input was good and every score computed
    if (!o.per_item.empty()) write_text(o.per_item, per_item_text);
    if (!o.write_golden.empty()) write_text(o.write_golden, golden_text);
    if (!o.report.empty()) write_text(o.report, report.dump(2) + "\n");
    // recording a golden file (--write-golden) is not checking one
    return failures.empty() && (changed == 0 || !o.write_golden.empty()) ? 0 : 3;
}

int main(int argc, char** argv) {
    try {
        EvalOptions o = parse_options(argc, argv);
        return with_device_ops(o.device,
                               [&](auto ops, const std::string& backend) { return run<decltype(ops)>(o, backend); });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "eval_gpt: error: %s\n", e.what());
        return 1;
    }
}
