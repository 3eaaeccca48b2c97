// eval.h — evaluation of a language model: how probable it finds given text. docs/evaluation.md explains
// the measures; this file is read top to bottom:
//
//   1. Scoring              target_logprobs: log p(target tokens | context) for a batch of requests, one
//                           forward; the one primitive the rest (and preference training) is built on.
//   2. Multiple choice      HellaSwag-format files (ctx/endings/label, or context/choices/label) read with
//                           every error named by file and line; each item's choices scored as one batch;
//                           acc (summed log-prob) and acc_norm (mean log-prob per token), as llm.c does.
//   3. Text                 mean loss, perplexity and bits per byte over a text longer than the context,
//                           with a sliding window.
//   4. Reports              metrics as JSON and the regression gate against a baseline report.
//
// Written against GPT<Ops>'s public interface only (forward with targets fills losses_host), so it runs on
// the CUDA kernels (DeviceOps) and the CPU reference ops (HostOps) alike.
#pragma once
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "gpt.cuh"
#include "tokenizer/bpe.h"

// ============================================================================
// 1. Scoring
// ============================================================================
// One request: the model reads `context` and then `target`; we want log p(target_k | context, target_<k)
// for every k. Both must be non-empty (the first target token needs something to be predicted from).
struct ScoreRequest {
    std::vector<int> context;
    std::vector<int> target;
};

// A batch of requests laid out as the rows of one forward (the layout every scoring and fine-tuning forward
// uses: target_logprobs here, SFT and the preference losses in preference.cuh).
//   Row b holds seq = context + target, cut to its first |seq| − 1 tokens as input; the target of input
//   position t is seq[t + 1], kept only where seq[t + 1] is a target token (t ≥ |context| − 1), −1 elsewhere
//   (the fused classifier skips −1 rows and writes loss 0). Rows are padded to the longest with token 0 and
//   target −1: attention is causal, so padding after a row's tokens cannot change them.
struct ScoreBatch {
    int B = 0, T = 0;
    std::vector<int> inputs, targets;  // (B, T) each
};
inline ScoreBatch make_score_batch(const std::vector<ScoreRequest>& batch, int max_seq_len) {
    ScoreBatch s;
    s.B = static_cast<int>(batch.size());
    for (const ScoreRequest& r : batch) {
        if (r.context.empty() || r.target.empty())
            throw std::runtime_error("target_logprobs: context and target must be non-empty");
        s.T = std::max(s.T, static_cast<int>(r.context.size() + r.target.size()) - 1);
    }
    if (s.T > max_seq_len)
        throw std::runtime_error("context + target is " + std::to_string(s.T + 1) +
                                 " tokens; the model reads at most " + std::to_string(max_seq_len) + " (+1 predicted)");
    s.inputs.assign(static_cast<size_t>(s.B) * s.T, 0);
    s.targets.assign(static_cast<size_t>(s.B) * s.T, -1);
    for (int b = 0; b < s.B; b++) {
        const ScoreRequest& r = batch[b];
        const int nc = static_cast<int>(r.context.size()), n = nc + static_cast<int>(r.target.size());
        auto token = [&](int i) { return i < nc ? r.context[i] : r.target[i - nc]; };
        for (int t = 0; t + 1 < n; t++) {
            s.inputs[static_cast<size_t>(b) * s.T + t] = token(t);
            if (t + 1 >= nc) s.targets[static_cast<size_t>(b) * s.T + t] = token(t + 1);
        }
    }
    return s;
}

// The log-probabilities of every request's target tokens, in one forward of B = batch.size() rows laid out
// by make_score_batch. log p(target_k) = −loss at position |context| − 1 + k: the fused classifier's
// per-position loss is −log softmax(logits)[target], so only B·T floats come back to the host, never the
// (B, T, Vp) logits. (The sum over a row, on the backend and with its backward, is preference.cuh's
// sequence_logprob_forward.)
// Returns (B) vectors of |target| log-probabilities. Throws when a request does not fit the model's context.
template <class Ops, class FloatX>
std::vector<std::vector<float>> target_logprobs(GPT<Ops, FloatX>& model, const std::vector<ScoreRequest>& batch) {
    if (batch.empty()) return {};
    const ScoreBatch s = make_score_batch(batch, model.config.max_seq_len);
    model.forward(s.inputs.data(), s.targets.data(), s.B, s.T, 0.0f);  // dloss 0: losses only, logits untouched
    std::vector<std::vector<float>> out(s.B);
    for (int b = 0; b < s.B; b++) {
        const int nc = static_cast<int>(batch[b].context.size());
        for (size_t k = 0; k < batch[b].target.size(); k++)
            out[b].push_back(-model.losses_host[static_cast<size_t>(b) * s.T + nc - 1 + k]);
    }
    return out;
}

// ============================================================================
// 2. Multiple choice
// ============================================================================
// An item: a context and its possible endings, one of them right. Tokens as llm.c's HellaSwag evaluation
// makes them: the context's tokens, then for each ending the tokens of " " + ending (so a word-initial
// BPE token, as in running text). `line` is the item's line in its file, for messages.
struct ChoiceItem {
    int line = 0;
    std::vector<int> context;
    std::vector<std::vector<int>> choices;
    int label = 0;
};

// Per choice: Σ_k log p(ending_k | context, ending_<k) and the number of ending tokens. The prediction by
// sum ("acc") prefers short endings (every token adds a negative term); by mean per token ("acc_norm",
// llm.c's normalisation) it does not. Ties go to the lowest index (llm.c's argmin).
struct ChoiceScore {
    std::vector<double> sum_logprob;
    std::vector<int> tokens;
    int pred = 0, pred_norm = 0;
};

template <class Ops, class FloatX>
ChoiceScore score_choices(GPT<Ops, FloatX>& model, const ChoiceItem& item) {
    std::vector<ScoreRequest> batch;
    for (const auto& c : item.choices) batch.push_back({item.context, c});
    std::vector<std::vector<float>> lp = target_logprobs(model, batch);  // all choices: one forward
    ChoiceScore s;
    for (const auto& row : lp) {
        double sum = 0;
        for (float x : row) sum += x;
        s.sum_logprob.push_back(sum);
        s.tokens.push_back(static_cast<int>(row.size()));
    }
    for (size_t i = 1; i < lp.size(); i++) {
        if (s.sum_logprob[i] > s.sum_logprob[s.pred]) s.pred = static_cast<int>(i);
        if (s.sum_logprob[i] / s.tokens[i] > s.sum_logprob[s.pred_norm] / s.tokens[s.pred_norm])
            s.pred_norm = static_cast<int>(i);
    }
    return s;
}

// Accuracy over n items with its standard error sqrt(p(1 − p)/n) (a binomial proportion): the noise a
// re-draw of the items would add. docs/evaluation.md: 200 items at p = 0.3 give ±0.032.
struct ChoiceTotals {
    long count = 0, correct = 0, correct_norm = 0;
    void add(const ChoiceItem& item, const ChoiceScore& s) {
        count++;
        correct += s.pred == item.label;
        correct_norm += s.pred_norm == item.label;
    }
    double acc() const { return count ? static_cast<double>(correct) / count : 0.0; }
    double acc_norm() const { return count ? static_cast<double>(correct_norm) / count : 0.0; }
    static double standard_error(double p, long n) { return n ? std::sqrt(p * (1 - p) / n) : 0.0; }
};

// Offset of the first byte of `s` that is not part of valid UTF-8 (overlong forms, surrogates and code points
// above U+10FFFF included), or npos when all of it is valid.
inline size_t utf8_invalid_at(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return i;
        uint32_t cp = n == 1 ? c : c & (0x7f >> n);
        for (int k = 1; k < n; k++) {
            unsigned char d = static_cast<unsigned char>(s[i + k]);
            if ((d >> 6) != 2) return i;
            cp = cp << 6 | (d & 0x3f);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += n;
    }
    return std::string_view::npos;
}

// One line of a JSONL file being read: its number, and a failure that names FILE:LINE.
struct JsonlLine {
    const std::string& path;
    int number;
    [[noreturn]] void fail(const std::string& m) const {
        throw std::runtime_error(path + ":" + std::to_string(number) + ": " + m);
    }
};

// Calls each(object, line) for every line of a JSONL file that is not blank, in order. A line that is not UTF-8
// or not a JSON object fails with FILE:LINE; so does whatever `each` rejects through line.fail.
template <class Each>
void read_jsonl_objects(const std::string& path, Each&& each) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    std::string text;
    for (int number = 1; std::getline(in, text); number++) {
        if (!text.empty() && text.back() == '\r') text.pop_back();
        if (text.find_first_not_of(" \t") == std::string::npos) continue;
        JsonlLine line{path, number};
        if (size_t bad = utf8_invalid_at(text); bad != std::string::npos)
            line.fail("invalid UTF-8 at byte " + std::to_string(bad + 1) +
                      " of the line (the file must be UTF-8 text)");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(text);
        } catch (const nlohmann::json::exception& e) {
            line.fail(std::string("not JSON (") + e.what() + ")");
        }
        if (!j.is_object()) line.fail("not a JSON object");
        each(j, line);
    }
}

// Reads a multiple-choice JSONL file: one item per line, blank lines skipped. Two layouts:
//   HellaSwag:  {"ctx": "...", "endings": ["...", ...], "label": k}       (other keys are ignored)
//   generic:    {"context": ..., "choices": [...], "label": k}
// In the generic layout context and choices may also be token ids ([5, 17, 3]) instead of text, to score
// models without a tokenizer of their own (the Hugging Face test fixtures); text then needs no tokenizer.
// Every problem throws "FILE:LINE: what is wrong"; nothing is returned partially.
inline std::vector<ChoiceItem> read_choice_file(const std::string& path, const bpe::Tokenizer* tok, int vocab_size) {
    std::vector<ChoiceItem> items;
    read_jsonl_objects(path, [&](nlohmann::json& j, const JsonlLine& at) {
        const int lineno = at.number;
        auto fail = [&](const std::string& m) { at.fail(m); };
        bool hellaswag = j.contains("ctx");
        const char* ctx_key = hellaswag ? "ctx" : "context";
        const char* choices_key = hellaswag ? "endings" : "choices";
        for (const char* key : {ctx_key, choices_key, "label"})
            if (!j.contains(key))
                fail(std::string("missing field \"") + key +
                     "\" (HellaSwag: ctx, endings, label; generic: context, choices, label)");
        // text → tokens (context: as is; an ending: " " + ending); token ids → checked against the vocabulary
        auto tokens = [&](const nlohmann::json& v, const std::string& what, bool ending) {
            std::vector<int> ids;
            if (v.is_string()) {
                std::string text = v.get<std::string>();
                if (text.empty()) fail(what + " is empty");
                if (!tok) fail(what + " is text but there is no tokenizer (pass --tokenizer DIR, or give token ids)");
                ids = tok->encode_ordinary(ending ? " " + text : text);
            } else if (v.is_array() && !hellaswag) {
                for (const auto& x : v) {
                    if (!x.is_number_integer()) fail(what + " must be text or a list of token ids");
                    ids.push_back(x.get<int>());
                }
                if (ids.empty()) fail(what + " is empty");
            } else {
                fail(what + " must be " + (hellaswag ? "a string" : "a string or a list of token ids"));
            }
            for (int id : ids)
                if (id < 0 || id >= vocab_size)
                    fail(what + ": token " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                         std::to_string(vocab_size) + ")");
            return ids;
        };
        ChoiceItem item;
        item.line = lineno;
        item.context = tokens(j[ctx_key], std::string("\"") + ctx_key + "\"", false);
        const auto& ch = j[choices_key];
        if (!ch.is_array() || ch.size() < 2)
            fail(std::string("\"") + choices_key + "\" must be a list of at least two endings");
        for (size_t i = 0; i < ch.size(); i++)
            item.choices.push_back(tokens(ch[i], std::string(choices_key) + "[" + std::to_string(i) + "]", true));
        const auto& label = j["label"];
        // the public HellaSwag file writes the label as a number; some copies write "3"
        if (label.is_number_integer()) item.label = label.get<int>();
        else if (label.is_string() && !label.get<std::string>().empty() &&
                 label.get<std::string>().find_first_not_of("0123456789") == std::string::npos)
            item.label = std::stoi(label.get<std::string>());
        else fail("\"label\" must be an integer, got " + label.dump());
        if (item.label < 0 || item.label >= static_cast<int>(ch.size()))
            fail("label " + std::to_string(item.label) + " is out of range: there are " + std::to_string(ch.size()) +
                 " endings (0-based)");
        items.push_back(std::move(item));
    });
    if (items.empty()) throw std::runtime_error(path + ": no items");
    return items;
}

// Every item's context + longest ending must fit the model's context (input: all but the last token).
inline void check_choices_fit(const std::vector<ChoiceItem>& items, int max_seq_len, const std::string& path) {
    for (const ChoiceItem& it : items)
        for (const auto& c : it.choices)
            if (static_cast<int>(it.context.size() + c.size()) - 1 > max_seq_len)
                throw std::runtime_error(path + ":" + std::to_string(it.line) + ": context + ending is " +
                                         std::to_string(it.context.size() + c.size()) +
                                         " tokens; the model reads at most " + std::to_string(max_seq_len) +
                                         " (+1 predicted): shorten the item");
}

// ============================================================================
// 3. Text: loss, perplexity, bits per byte
// ============================================================================
// A text of N tokens is longer than the context T, so it is scored in windows of at most T + 1 tokens
// (T inputs predict T targets). The first window scores tokens 1..T; each next one moves its end by
// `stride` tokens and scores only the new ones, each seeing at least T − stride tokens before it:
//   window w: tokens [begin, end), scores [first, end), begin = max(0, end − T − 1), first = previous end.
// stride = T: no overlap, cheapest, but the first tokens of each window see little context; stride 1:
// every token sees T − 1 tokens (the model at its best), at T times the cost. (Hugging Face's
// "perplexity of fixed-length models" does the same.)
struct TextWindow {
    int begin, first, end;
};
inline std::vector<TextWindow> sliding_windows(int n_tokens, int T, int stride) {
    if (T < 1 || stride < 1 || stride > T)
        throw std::runtime_error("sliding window: stride " + std::to_string(stride) + " must be in [1, context " +
                                 std::to_string(T) + "]");
    std::vector<TextWindow> w;
    if (n_tokens < 2) return w;
    int end = std::min(n_tokens, T + 1);
    w.push_back({0, 1, end});
    while (end < n_tokens) {
        int next = std::min(n_tokens, end + stride);
        w.push_back({std::max(0, next - T - 1), end, next});
        end = next;
    }
    return w;
}

// Sums over the scored tokens. Cross-entropy per token depends on the tokenizer (a larger vocabulary
// has fewer, harder tokens); per byte of UTF-8 text it does not, so models with different tokenizers
// compare:  loss = nats / tokens,  perplexity = e^loss,  bits per byte = nats / (bytes · ln 2).
struct TextScore {
    double nats = 0;
    long tokens = 0;
    size_t bytes = 0;
    double loss() const { return tokens ? nats / tokens : 0.0; }
    double perplexity() const { return std::exp(loss()); }
    double bits_per_byte() const { return bytes ? nats / (static_cast<double>(bytes) * std::log(2.0)) : 0.0; }
};

// Scores tokens[1..] (tokens[0] is the start: <|endoftext|> before the text, so every token of the text
// is scored), `batch` windows per forward. `bytes` is the UTF-8 length of the scored text.
// progress(done, total) is called after each forward.
template <class Ops, class FloatX>
TextScore score_text(GPT<Ops, FloatX>& model, const std::vector<int>& tokens, size_t bytes, int T, int stride,
                     int batch, const std::function<void(long, long)>& progress = nullptr) {
    std::vector<TextWindow> windows = sliding_windows(static_cast<int>(tokens.size()), T, stride);
    TextScore s;
    s.bytes = bytes;
    for (size_t w0 = 0; w0 < windows.size(); w0 += batch) {
        std::vector<ScoreRequest> reqs;
        for (size_t w = w0; w < std::min(windows.size(), w0 + batch); w++) {
            const TextWindow& x = windows[w];
            reqs.push_back({{tokens.begin() + x.begin, tokens.begin() + x.first},
                            {tokens.begin() + x.first, tokens.begin() + x.end}});
        }
        for (const auto& row : target_logprobs(model, reqs))
            for (float lp : row) {
                s.nats -= lp;
                s.tokens++;
            }
        if (progress)
            progress(static_cast<long>(std::min(windows.size(), w0 + batch)), static_cast<long>(windows.size()));
    }
    return s;
}

// ============================================================================
// 4. Reports and the regression gate
// ============================================================================
// The metrics a report may hold and which way is better. Perplexity is e^loss: gating loss gates it.
struct MetricRule {
    const char* key;
    bool higher_is_better;
};
inline const std::vector<MetricRule>& gated_metrics() {
    static const std::vector<MetricRule> rules = {
        {"acc", true}, {"acc_norm", true}, {"loss", false}, {"bits_per_byte", false}, {"golden_changed", false},
        {"reward_accuracy", true}};
    return rules;
}

// Every gated metric present in both reports' "metrics" that is worse than the baseline's by more than
// max_regression (in the metric's own units: 0.01 = one accuracy point, or 0.01 nats / bits): one message
// each, naming the metric and both values. Empty: the gate passes. Reports measured on different data
// (another item count) are not comparable: that throws.
inline std::vector<std::string> regressions(const nlohmann::json& report, const nlohmann::json& baseline,
                                            double max_regression) {
    const nlohmann::json& now = report.at("metrics");
    const nlohmann::json& before = baseline.at("metrics");
    for (const char* key : {"count", "text_tokens", "golden_prompts", "pair_count"})
        if (now.contains(key) && before.contains(key) && now[key] != before[key])
            throw std::runtime_error(std::string("the baseline's ") + key + " is " + before[key].dump() +
                                     ", this run's " + now[key].dump() +
                                     ": they were measured on different data and cannot be compared");
    std::vector<std::string> out;
    for (const MetricRule& r : gated_metrics()) {
        if (!now.contains(r.key) || !before.contains(r.key)) continue;
        double a = now[r.key].get<double>(), b = before[r.key].get<double>();
        double worse_by = r.higher_is_better ? b - a : a - b;
        if (worse_by > max_regression) {
            char buf[256];
            std::snprintf(buf, sizeof buf, "%s regressed: %.6g vs baseline %.6g (%s by %.6g > --max-regression %g)",
                          r.key, a, b, r.higher_is_better ? "lower" : "higher", worse_by, max_regression);
            out.push_back(buf);
        }
    }
    return out;
}

// Progress of a long run on stderr: a line every `every_s` seconds with the rate and the time left.
struct Progress {
    std::string what, unit;
    Timer timer;
    double last_ms = 0, every_ms;
    explicit Progress(std::string w, std::string u, double every_s = 5.0)
        : what(std::move(w)), unit(std::move(u)), every_ms(every_s * 1000) {}
    void update(long done, long total) {
        double ms = timer.elapsed_ms();
        if (done < total && ms - last_ms < every_ms) return;
        last_ms = ms;
        double rate = done / std::max(ms / 1000, 1e-9), eta = rate > 0 ? (total - done) / rate : 0;
        std::fprintf(stderr, "%s: %ld/%ld %s, %.1f %s/s, ETA %dm%02ds\n", what.c_str(), done, total, unit.c_str(), rate,
                     unit.c_str(), static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
    }
};
