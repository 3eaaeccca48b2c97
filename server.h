// server.h — `infer_gpt --serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of the
// continuous-batching engine of engine.cuh. docs/serving.md tells the story; this file is read top to bottom:
//
//   1. The API's requests      parse_completion(body): the JSON of POST /v1/completions, checked field by field,
//                              into CompletionParams, or an ApiError with OpenAI's error shape and an HTTP status.
//   2. Metrics                 Histogram (Prometheus buckets) and the counters /metrics prints.
//   3. Live requests           LiveRequest: what an HTTP thread and the engine thread share about one request
//                              (the pieces of text made so far, the finish), under its own mutex.
//   4. CompletionServer        the HTTP routes (httplib's thread pool: one thread per connection) and
//                              run_engine(): the one thread that owns the model, the KV cache and the Scheduler.
//
// The request's path: an HTTP thread parses and tokenizes, then hands a LiveRequest to the engine's inbox
// (or answers 429 when max_seqs + max_queue requests are already live). The engine thread, between two
// steps, submits what arrived (it joins the batch at the next plan(): continuous batching, chunked prefill)
// and applies cancellations (a client that went away, a stop string); each step's tokens become text
// (bpe::StreamDecoder), are checked against the stop strings and pushed to their LiveRequest, whose HTTP
// thread writes them out: one server-sent event per token, or one JSON body at the end.
#pragma once
#include <csignal>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "engine.cuh"
#include "tokenizer/bpe.h"

namespace serving {
using json = nlohmann::json;

// ============================================================================
// 1. The API's requests
// ============================================================================
// An error as the OpenAI API reports it: HTTP status + {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
    int status;
    std::string type, param, code;
    ApiError(int status_, const std::string& message, const std::string& param_ = "",
             const std::string& type_ = "invalid_request_error", const std::string& code_ = "")
        : std::runtime_error(message), status(status_), type(type_), param(param_), code(code_) {}
    std::string dump() const { return body().dump(-1, ' ', false, json::error_handler_t::replace); }
    json body() const {
        auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
        return {{"error", {{"message", what()}, {"type", type}, {"param", or_null(param)}, {"code", or_null(code)}}}};
    }
};

// What the server fills in when a request leaves a field out (infer_gpt's flags).
struct CompletionDefaults {
    std::string model_name;
    int max_tokens = 128;
    SamplingSettings sampling;
    uint64_t seed = 1337;  // a request without "seed" samples with seed + its serial number
};

// One POST /v1/completions, checked. The prompt is text or token ids, not yet tokenized.
struct CompletionParams {
    bool prompt_is_text = true;
    std::string prompt_text;
    std::vector<int> prompt_ids;
    int max_tokens = -1;               // -1: not given (the default is capped by the context)
    SamplingSettings sampling;
    bool has_seed = false;
    uint64_t seed = 0;
    std::vector<std::string> stop;     // up to 4 strings; the text ends before the first one found
    bool stream = false, include_usage = false;
    int logprobs = -1;                 // -1: none; k >= 0: the chosen token's log-probability and the top k
};

// Parses and checks the body of POST /v1/completions. Refuses what OpenAI refuses (unknown fields, wrong
// types, out-of-range values) and what this server does not implement (n > 1, echo, penalties, logit_bias)
// rather than silently ignoring it: a client must not believe it got what it asked for.
inline CompletionParams parse_completion(const std::string& body, const CompletionDefaults& d) {
    json j;
    try {
        j = json::parse(body);  // also refuses invalid UTF-8 and lone surrogates in strings
    } catch (const json::parse_error& e) {
        throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
    }
    if (!j.is_object()) throw ApiError(400, "the body must be a JSON object, got " + std::string(j.type_name()));
    CompletionParams p;
    p.sampling = d.sampling;
    auto type_error = [](const std::string& key, const char* want, const json& v) {
        return ApiError(400, "'" + key + "' must be " + want + ", got " + std::string(v.type_name()) + " " + v.dump(),
                        key);
    };
    auto number = [&](const std::string& key, const json& v) {
        if (!v.is_number()) throw type_error(key, "a number", v);
        return v.get<double>();
    };
    auto integer = [&](const std::string& key, const json& v) {
        if (!v.is_number_integer()) throw type_error(key, "an integer", v);
        if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
            throw ApiError(400, "'" + key + "' is out of range: " + v.dump(), key);
        return v.get<int64_t>();
    };
    auto boolean = [&](const std::string& key, const json& v) {
        if (!v.is_boolean()) throw type_error(key, "true or false", v);
        return v.get<bool>();
    };
    auto unsupported = [](const std::string& key, const std::string& what) {
        return ApiError(400, "'" + key + "': " + what + " is not supported by this server", key);
    };
    bool have_prompt = false;
    for (auto& [key, v] : j.items()) {
        if (v.is_null() && key != "prompt") continue;  // null = the default, as OpenAI treats it
        if (key == "model") {
            if (!v.is_string()) throw type_error(key, "a string", v);
            if (v.get<std::string>() != d.model_name)
                throw ApiError(404,
                               "The model '" + v.get<std::string>() + "' does not exist (this server serves '" +
                                   d.model_name + "')",
                               key, "invalid_request_error", "model_not_found");
        } else if (key == "prompt") {
            have_prompt = true;
            const json* x = &v;
            if (x->is_array() && x->size() == 1 && ((*x)[0].is_string() || (*x)[0].is_array()))
                x = &(*x)[0];  // a batch of one
            if (x->is_string()) {
                p.prompt_text = x->get<std::string>();
            } else if (x->is_array() && !x->empty()) {
                p.prompt_is_text = false;
                for (const json& t : *x) {
                    if (!t.is_number_integer()) {
                        if (t.is_string() || t.is_array())
                            throw ApiError(
                                400,
                                "'prompt': one prompt per request (got a batch of " + std::to_string(x->size()) + ")",
                                key);
                        throw type_error("prompt", "a string or an array of token ids", t);
                    }
                    int64_t id = t.get<int64_t>();
                    if (id < 0 || id > INT32_MAX)
                        throw ApiError(400, "'prompt': token id " + t.dump() + " is outside the vocabulary", key);
                    p.prompt_ids.push_back(static_cast<int>(id));
                }
            } else if (x->is_array()) {
                throw ApiError(400, "'prompt' is an empty array", key);
            } else {
                throw type_error(key, "a string or an array of token ids", v);
            }
        } else if (key == "max_tokens") {
            int64_t n = integer(key, v);
            if (n < 1 || n > INT32_MAX) throw ApiError(400, "'max_tokens' must be >= 1, got " + v.dump(), key);
            p.max_tokens = static_cast<int>(n);
        } else if (key == "temperature") {
            double t = number(key, v);
            if (!(t >= 0 && t <= 2))
                throw ApiError(400, "'temperature' must be in [0, 2] (0 = greedy), got " + v.dump(), key);
            p.sampling.temperature = static_cast<float>(t);
        } else if (key == "top_p") {
            double t = number(key, v);
            if (!(t > 0 && t <= 1)) throw ApiError(400, "'top_p' must be in (0, 1], got " + v.dump(), key);
            p.sampling.top_p = static_cast<float>(t);
        } else if (key == "top_k") {  // an extension (vLLM's): -1 or 0 = all tokens
            int64_t k = integer(key, v);
            if (k < -1 || k > INT32_MAX)
                throw ApiError(400, "'top_k' must be >= 0 (0 or -1 = all tokens), got " + v.dump(), key);
            p.sampling.top_k = static_cast<int>(std::max<int64_t>(k, 0));
        } else if (key == "seed") {
            p.has_seed = true;
            p.seed = static_cast<uint64_t>(integer(key, v));
        } else if (key == "stop") {
            json list = v.is_string() ? json::array({v}) : v;
            if (!list.is_array()) throw type_error(key, "a string or an array of strings", v);
            if (list.size() > 4)
                throw ApiError(400, "'stop' takes at most 4 strings, got " + std::to_string(list.size()), key);
            for (const json& s : list) {
                if (!s.is_string()) throw type_error(key, "a string or an array of strings", s);
                if (s.get<std::string>().empty()) throw ApiError(400, "'stop' strings must not be empty", key);
                p.stop.push_back(s.get<std::string>());
            }
        } else if (key == "stream") {
            p.stream = boolean(key, v);
        } else if (key == "stream_options") {
            if (!v.is_object()) throw type_error(key, "an object", v);
            for (auto& [k2, v2] : v.items()) {
                if (k2 != "include_usage")
                    throw ApiError(400, "Unrecognized request argument supplied: stream_options." + k2, key);
                p.include_usage = boolean("stream_options.include_usage", v2);
            }
        } else if (key == "logprobs") {
            int64_t k = integer(key, v);
            if (k < 0 || k > 20) throw ApiError(400, "'logprobs' must be in [0, 20], got " + v.dump(), key);
            p.logprobs = static_cast<int>(k);
        } else if (key == "n" || key == "best_of") {
            if (integer(key, v) != 1) throw unsupported(key, "more than one completion per request");
        } else if (key == "echo") {
            if (boolean(key, v)) throw unsupported(key, "echo");
        } else if (key == "presence_penalty" || key == "frequency_penalty") {
            if (number(key, v) != 0) throw unsupported(key, "a penalty");
        } else if (key == "logit_bias") {
            if (!v.is_object()) throw type_error(key, "an object", v);
            if (!v.empty()) throw unsupported(key, "logit_bias");
        } else if (key == "suffix") {
            throw unsupported(key, "suffix");
        } else if (key == "user") {
            if (!v.is_string()) throw type_error(key, "a string", v);
        } else {
            throw ApiError(400, "Unrecognized request argument supplied: " + key, key);
        }
    }
    if (!have_prompt) throw ApiError(400, "'prompt' is required (a string or an array of token ids)", "prompt");
    if (p.include_usage && !p.stream)
        throw ApiError(400, "'stream_options' is only allowed with 'stream': true", "stream_options");
    return p;
}

// ============================================================================
// 2. Metrics
// ============================================================================
// A Prometheus histogram: cumulative counts of observations <= each bound (seconds), their sum and count.
struct Histogram {
    std::vector<double> bounds;
    std::vector<long> counts;  // (bounds + 1): the last is +Inf
    double sum = 0;
    long count = 0;
    explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
    void observe(double x) {
        size_t i = std::lower_bound(bounds.begin(), bounds.end(), x) - bounds.begin();  // first bound >= x
        counts[i]++;
        sum += x;
        count++;
    }
    std::string prometheus(const std::string& name, const std::string& help) const {
        std::string s = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
        long cumulative = 0;
        for (size_t i = 0; i <= bounds.size(); i++) {
            cumulative += counts[i];
            std::string le = i < bounds.size() ? json(bounds[i]).dump() : "+Inf";
            s += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
        }
        return s + name + "_sum " + json(sum).dump() + "\n" + name + "_count " + std::to_string(count) + "\n";
    }
};

struct Metrics {
    // gauges, written by the engine thread after every step
    int running = 0, waiting = 0, kv_blocks_used = 0, kv_blocks_free = 0;
    // counters
    long prompt_tokens = 0, generated_tokens = 0, steps = 0, preemptions = 0;
    std::map<std::string, long> finished;   // by finish: stop, length, cancelled, error
    std::map<int, long> rejected;           // HTTP errors answered, by status
    Histogram ttft{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
    Histogram itl{{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};

    std::string prometheus(int inbox) const {
        auto gauge = [](const std::string& n, const std::string& help, long v, const char* type = "gauge") {
            return "# HELP " + n + " " + help + "\n# TYPE " + n + " " + type + "\n" + n + " " + std::to_string(v) +
                   "\n";
        };
        std::string s =
            gauge("gptcu_requests_running", "Requests in the running batch.", running) +
            gauge("gptcu_requests_waiting", "Requests queued for admission (preempted ones included).",
                  waiting + inbox) +
            gauge("gptcu_kv_blocks_used", "KV-cache blocks held by running requests.", kv_blocks_used) +
            gauge("gptcu_kv_blocks_free", "KV-cache blocks on the free list.", kv_blocks_free) +
            gauge("gptcu_prompt_tokens_total", "Prompt tokens of admitted requests.", prompt_tokens, "counter") +
            gauge("gptcu_generation_tokens_total", "Tokens generated.", generated_tokens, "counter") +
            gauge("gptcu_engine_steps_total", "Engine forwards (steps of the batch).", steps, "counter") +
            gauge("gptcu_preemptions_total", "Sequences preempted for KV blocks (recomputed later).", preemptions,
                  "counter");
        s += "# HELP gptcu_requests_finished_total Requests ended, by how.\n# TYPE gptcu_requests_finished_total "
             "counter\n";
        for (const char* r : {"stop", "length", "cancelled", "error"}) {
            auto it = finished.find(r);
            s += std::string("gptcu_requests_finished_total{finish=\"") + r + "\"} " +
                 std::to_string(it == finished.end() ? 0 : it->second) + "\n";
        }
        s += "# HELP gptcu_http_errors_total Requests answered with an error status.\n# TYPE gptcu_http_errors_total "
             "counter\n";
        for (auto& [status, n] : rejected)
            s += "gptcu_http_errors_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(n) + "\n";
        return s +
               ttft.prometheus("gptcu_time_to_first_token_seconds", "From the request's arrival to its first token.") +
               itl.prometheus("gptcu_inter_token_latency_seconds", "Between two consecutive tokens of a request.");
    }
};

// ============================================================================
// 3. Live requests
// ============================================================================
using Clock = std::chrono::steady_clock;

// One token's worth of output, as the engine thread hands it to the HTTP thread.
struct Piece {
    std::string text;  // new text to show (may be empty: held back, or part of a character)
    bool has_token = false;                         // false for the final piece (the rest of the held-back text)
    std::string token_text;                         // this token's own text (logprobs' "tokens")
    size_t text_offset = 0;                         // where the token's text starts in the completion
    float logprob = 0;                              // log p(token) under the model (temperature 1, no top-k/p)
    std::vector<std::pair<std::string, float>> top; // the `logprobs` most likely tokens and their log p
};

struct LiveRequest {
    // set by the HTTP thread before submission, read-only afterwards
    std::string id;
    CompletionParams params;
    std::vector<int> prompt;
    int max_tokens = 0;
    uint64_t seed = 0;
    Clock::time_point arrival = Clock::now();
    // engine thread only
    std::optional<bpe::StreamDecoder> decoder;
    std::string text;      // all text decoded so far
    size_t shown = 0;      // text[0, shown) has been handed out
    int tokens = 0;
    Clock::time_point last_token;
    // shared: under mu
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Piece> pieces;
    bool finished = false;
    std::string finish_reason;  // "stop" | "length"; or error set
    std::string error;
    int error_status = 503;
    int completion_tokens = 0;
};

// Signals: the first SIGTERM / SIGINT drains (stop accepting, finish what is live), a second cancels all.
inline std::atomic<int> g_stop_signals{0};
inline void count_stop_signal(int) { g_stop_signals.fetch_add(1); }

// httplib's stop() also ends the responses being streamed (its chunked writer checks for it); draining
// needs only the listening socket shut, after which listen() returns once its threads have finished.
// Debian's library listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled in): 64 clients
// connecting at once overflow it, and under load the kernel drops connections it cannot queue. listen()
// again on the bound socket raises the backlog.
class HttpServer : public httplib::Server {
public:
    void stop_accepting() { ::shutdown(svr_sock_, SHUT_RDWR); }
    bool set_backlog(int n) { return ::listen(svr_sock_, n) == 0; }
};

struct ServerOptions {
    std::string host = "127.0.0.1";
    int port = 8000;                    // 0: any free port (printed)
    int max_queue = 64;                 // requests waiting beyond the max_seqs running; more get 429
    size_t max_body_bytes = 1 << 20;    // larger bodies get 413
};

// ============================================================================
// 4. The server
// ============================================================================
class CompletionServer {
public:
    CompletionServer(const ServerOptions& o, const CompletionDefaults& d, const bpe::Tokenizer& tok, const GPTConfig& c,
                     int eot_id, int max_seqs)
        : opt_(o), defaults_(d), tok_(tok), config_(c), eot_(eot_id), max_live_(max_seqs + o.max_queue) {}

    // Binds, serves HTTP on a thread of its own and runs the engine loop on this one until a SIGTERM or
    // SIGINT has been handled: then it stops accepting, finishes what is live (a second signal cancels
    // it), waits for the HTTP threads and returns 0.
    template <class Engine>
    int run(Engine& engine) {
        setup_routes();
        svr_.new_task_queue = [n = max_live_ + 8] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
        svr_.set_payload_max_length(opt_.max_body_bytes);
        svr_.set_tcp_nodelay(true);
        int port = opt_.port;
        if (port == 0) port = svr_.bind_to_any_port(opt_.host);
        else if (!svr_.bind_to_port(opt_.host, port)) port = -1;
        if (port > 0 && !svr_.set_backlog(1024)) port = -1;
        if (port <= 0)
            throw std::runtime_error("--serve: cannot listen on " + opt_.host + ":" + std::to_string(opt_.port) +
                                     " (in use, or not an address of this machine?); pick another --port or --host");
        struct sigaction sa = {};
        sa.sa_handler = count_stop_signal;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGTERM, &sa, nullptr);
        sigaction(SIGINT, &sa, nullptr);
        std::signal(SIGPIPE, SIG_IGN);  // a client gone mid-write must fail the write, not kill the server
        std::fprintf(
            stderr, "infer_gpt: serving '%s' on http://%s:%d (POST /v1/completions; GET /v1/models /health /metrics)\n",
            defaults_.model_name.c_str(), opt_.host.c_str(), port);
        std::thread http([this] { svr_.listen_after_bind(); });
        for (int i = 0; i < 5000 && !svr_.is_running(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        try {
            run_engine(engine);
        } catch (...) {  // the engine failed (a CUDA error, ...): the live requests were answered; stop serving
            svr_.stop_accepting();
            http.join();
            throw;
        }
        http.join();  // listening stopped when draining began; the pool's threads finish what they write
        std::fprintf(stderr, "infer_gpt: stopped; %ld tokens generated\n", metrics_.generated_tokens);
        return 0;
    }

private:
    ServerOptions opt_;
    CompletionDefaults defaults_;
    const bpe::Tokenizer& tok_;
    GPTConfig config_;
    int eot_, max_live_;
    HttpServer svr_;
    // shared between the HTTP threads and the engine thread: under mu_
    std::mutex mu_;
    std::condition_variable inbox_cv_;
    std::deque<std::shared_ptr<LiveRequest>> inbox_;
    std::vector<std::string> cancels_;
    int live_ = 0;          // submitted and not finished
    bool draining_ = false;
    long serial_ = 0;
    Metrics metrics_;

    // ---- the engine thread ---------------------------------------------------------------------------
    template <class Engine>
    void run_engine(Engine& engine) {
        Scheduler sched(engine.max_seqs, engine.max_rows, engine.block_size, engine.num_blocks, config_.max_seq_len,
                        config_.vocab_size, eot_);
        sched.on_blocks = [&](int slot, const std::vector<int>& blocks) { engine.set_blocks(slot, blocks); };
        std::unordered_map<std::string, std::shared_ptr<LiveRequest>> live;
        std::vector<std::string> stopped;  // hit a stop string this step: cancelled after commit()
        sched.on_token = [&](const std::string& id, int token, const float* row) {
            auto it = live.find(id);
            if (it != live.end() && on_token(*it->second, token, row)) stopped.push_back(id);
        };
        auto retire = [&] {  // results of finished sequences → their LiveRequests
            for (Result& r : sched.finished) {
                auto it = live.find(r.id);
                if (it == live.end()) continue;
                finish(*it->second, r);
                live.erase(it);
            }
            sched.finished.clear();
        };
        int signals_seen = 0;
        try {
            engine_loop(engine, sched, live, stopped, retire, signals_seen);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "infer_gpt: the engine failed: %s\n", e.what());
            {
                std::lock_guard<std::mutex> lk(mu_);
                draining_ = true;  // no new submissions; what was handed over is failed with the live ones
                for (auto& l : inbox_) live[l->id] = l;
                inbox_.clear();
            }
            for (auto& [id, l] : live) {
                Result r;
                r.finish_reason = "error";
                r.error = std::string("the engine failed: ") + e.what();
                finish(*l, r, 500);
            }
            throw;
        }
    }

    template <class Engine, class Live, class Retire>
    void engine_loop(Engine& engine, Scheduler& sched, Live& live, std::vector<std::string>& stopped,
                     Retire& retire, int& signals_seen) {
        for (;;) {
            std::deque<std::shared_ptr<LiveRequest>> fresh;
            std::vector<std::string> cancels;
            {
                std::unique_lock<std::mutex> lk(mu_);
                if (sched.done() && inbox_.empty() && cancels_.empty()) {
                    if (draining_) break;
                    inbox_cv_.wait_for(lk, std::chrono::milliseconds(50),
                                       [&] { return !inbox_.empty() || g_stop_signals.load() > signals_seen; });
                }
                fresh.swap(inbox_);
                cancels.swap(cancels_);
            }
            int sig = g_stop_signals.load();
            if (sig > signals_seen) {
                if (signals_seen == 0) {
                    std::fprintf(
                        stderr,
                        "infer_gpt: stopping: no new requests; finishing %zu live ones (signal again to cancel them)\n",
                        live.size() + fresh.size());
                    {
                        std::lock_guard<std::mutex> lk(mu_);
                        draining_ = true;
                    }
                    svr_.stop_accepting();  // new connections are refused; requests on open ones get 503
                }
                if (sig >= 2)
                    for (auto& [id, l] : live) cancels.push_back(id);
                signals_seen = sig;
            }
            for (auto& l : fresh) {
                live[l->id] = l;
                sched.submit({l->id, l->prompt, l->max_tokens, l->params.sampling, l->seed, ""});
                if (sig >= 2) cancels.push_back(l->id);
            }
            for (const std::string& id : cancels) sched.cancel(id);
            retire();
            if (!sched.done()) {
                Scheduler::Plan plan = sched.plan();
                sched.commit(plan, engine.forward(plan.rows), config_.padded_vocab_size);
                for (const std::string& id : stopped) sched.cancel(id);
                stopped.clear();
                retire();
            }
            std::lock_guard<std::mutex> lk(mu_);
            metrics_.running = sched.running();
            metrics_.waiting = sched.waiting();
            metrics_.kv_blocks_free = sched.allocator().free_blocks();
            metrics_.kv_blocks_used = sched.allocator().num_blocks() - metrics_.kv_blocks_free;
            metrics_.steps = sched.stats().steps;
            metrics_.preemptions = sched.stats().preemptions;
        }
    }

    // A new token of `l` (engine thread): its text, the stop strings, the log-probabilities → a Piece.
    // True when a stop string ended the request (the caller cancels its sequence).
    bool on_token(LiveRequest& l, int token, const float* row /*(Vp) logits*/) {
        Clock::time_point now = Clock::now();
        {
            std::lock_guard<std::mutex> lk(mu_);
            metrics_.generated_tokens++;
            if (l.tokens == 0) metrics_.ttft.observe(std::chrono::duration<double>(now - l.arrival).count());
            else metrics_.itl.observe(std::chrono::duration<double>(now - l.last_token).count());
        }
        l.tokens++;
        l.last_token = now;
        Piece piece;
        piece.has_token = true;
        piece.text_offset = l.text.size();
        l.text += l.decoder->push(token);
        if (l.params.logprobs >= 0) log_probabilities(piece, token, row, l.params.logprobs);
        // stop strings: the text ends before the first occurrence; text that may be the start of one is
        // held back until it is not (a stop string can span tokens)
        size_t longest = 0, hit = std::string::npos;
        for (const std::string& s : l.params.stop) {
            longest = std::max(longest, s.size());
            size_t from = l.shown >= s.size() ? l.shown - s.size() + 1 : 0;  // new matches end after `shown`
            size_t at = l.text.find(s, from);
            if (at != std::string::npos) hit = std::min(hit, at);
        }
        bool stop = hit != std::string::npos;
        size_t show = stop ? std::max(hit, l.shown) : l.text.size();
        if (!stop && longest > 0) {
            show = std::max(l.shown, l.text.size() >= longest - 1 ? l.text.size() - (longest - 1) : size_t(0));
            while (show > l.shown && show < l.text.size() && (static_cast<unsigned char>(l.text[show]) & 0xC0) == 0x80)
                show--;  // UTF-8
        }
        piece.text = l.text.substr(l.shown, show - l.shown);
        l.shown = show;
        std::lock_guard<std::mutex> lk(l.mu);
        l.pieces.push_back(std::move(piece));
        l.completion_tokens = l.tokens;
        if (stop) {
            l.finished = true;
            l.finish_reason = "stop";
            count_finish("stop");
        }
        l.cv.notify_all();
        return stop;
    }

    void log_probabilities(Piece& piece, int token, const float* row, int k) {
        const int V = config_.vocab_size;
        float m = row[argmax(row, V)];
        double sum = 0;
        for (int i = 0; i < V; i++) sum += std::exp(static_cast<double>(row[i]) - m);
        float log_z = m + static_cast<float>(std::log(sum));  // log Σ exp(z): log p_i = z_i − log_z
        piece.token_text = token_text(token);
        piece.logprob = row[token] - log_z;
        std::vector<int> order(V);
        std::iota(order.begin(), order.end(), 0);
        k = std::min(k, V);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
        for (int i = 0; i < k; i++) piece.top.push_back({token_text(order[i]), row[order[i]] - log_z});
    }
    // One token's text on its own; bytes that are only part of a character show as U+FFFD.
    std::string token_text(int id) const {
        bpe::StreamDecoder d(tok_);
        std::string s = d.push(id);
        return s + d.flush();
    }

    // The scheduler retired `r` (engine thread): the rest of the text, the finish, the counters.
    void finish(LiveRequest& l, const Result& r, int error_status = 400) {
        std::lock_guard<std::mutex> lk(l.mu);
        if (!l.finished) {
            l.finished = true;
            if (r.finish_reason == "error" || r.finish_reason == "cancelled") {
                l.error = r.finish_reason == "error"
                              ? r.error
                              : "the request was cancelled (client gone, or the server is stopping)";
                l.error_status = r.finish_reason == "error" ? error_status : 503;
                count_finish(r.finish_reason);
            } else {
                Piece last;
                last.text =
                    l.text.substr(l.shown) + l.decoder->flush();  // held back for the stop strings; a cut character
                l.pieces.push_back(std::move(last));
                l.finish_reason = r.finish_reason == "stop" ? "stop" : "length";  // "context" is a length limit too
                count_finish(l.finish_reason);
            }
            l.cv.notify_all();
        }
        std::lock_guard<std::mutex> g(mu_);
        live_--;
    }
    void count_finish(const std::string& how) {
        std::lock_guard<std::mutex> lk(mu_);
        metrics_.finished[how]++;
    }

    // ---- the HTTP threads ----------------------------------------------------------------------------
    void send_error(httplib::Response& res, const ApiError& e) {
        res.status = e.status;
        res.set_content(e.dump(), "application/json");
        if (e.status == 429) res.set_header("Retry-After", "1");
        std::lock_guard<std::mutex> lk(mu_);
        metrics_.rejected[e.status]++;
    }

    void setup_routes() {
        svr_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            std::lock_guard<std::mutex> lk(mu_);
            res.status = draining_ ? 503 : 200;
            res.set_content(draining_ ? "{\"status\":\"stopping\"}" : "{\"status\":\"ok\"}", "application/json");
        });
        svr_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            std::lock_guard<std::mutex> lk(mu_);
            res.set_content(metrics_.prometheus(static_cast<int>(inbox_.size())), "text/plain; version=0.0.4");
        });
        svr_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            json m = {{"id", defaults_.model_name},
                      {"object", "model"},
                      {"created", static_cast<long>(std::time(nullptr))},
                      {"owned_by", "gpt.cu"},
                      {"max_model_len", config_.max_seq_len}};
            res.set_content(json({{"object", "list"}, {"data", json::array({m})}}).dump(), "application/json");
        });
        svr_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
            try {
                complete(req, res);
            } catch (const ApiError& e) {
                send_error(res, e);
            }
        });
        // bodies for what httplib answers itself (404 no route, 413 too large, 400 unparsable HTTP)
        svr_.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                           httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours, already in shape
            ApiError e(res.status, res.status == 404 ? "no route " + req.method + " " + req.path +
                                                           " (POST /v1/completions; GET /v1/models, /health, /metrics)"
                                   : res.status == 413
                                       ? "the body is larger than " + std::to_string(opt_.max_body_bytes) + " bytes"
                                       : "bad request (HTTP status " + std::to_string(res.status) + ")");
            send_error(res, e);
            return httplib::Server::HandlerResponse::Handled;
        }));
        svr_.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
            std::string what = "internal error";
            try {
                std::rethrow_exception(ep);
            } catch (const std::exception& e) {
                what += std::string(": ") + e.what();
            } catch (...) {
            }
            send_error(res, ApiError(500, what, "", "server_error"));
        });
    }

    void complete(const httplib::Request& req, httplib::Response& res) {
        auto l = std::make_shared<LiveRequest>();
        l->params = parse_completion(req.body, defaults_);
        const CompletionParams& p = l->params;
        const int maxT = config_.max_seq_len;
        if (p.prompt_is_text)
            l->prompt =
                p.prompt_text.empty() ? std::vector<int>{eot_ >= 0 ? eot_ : 0} : tok_.encode_ordinary(p.prompt_text);
        else l->prompt = p.prompt_ids;
        for (int t : l->prompt)
            if (t >= config_.vocab_size)
                throw ApiError(400,
                               "'prompt': token id " + std::to_string(t) + " is outside the vocabulary (" +
                                   std::to_string(config_.vocab_size) + " tokens)",
                               "prompt");
        const int n = static_cast<int>(l->prompt.size());
        if (n >= maxT)
            throw ApiError(400,
                           "This model's maximum context length is " + std::to_string(maxT) +
                               " tokens, however your prompt has " + std::to_string(n) +
                               " tokens. Please shorten the prompt.",
                           "prompt", "invalid_request_error", "context_length_exceeded");
        if (p.max_tokens > maxT - n)
            throw ApiError(400,
                           "This model's maximum context length is " + std::to_string(maxT) +
                               " tokens, however you requested " + std::to_string(static_cast<long>(n) + p.max_tokens) +
                               " tokens (" + std::to_string(n) + " in your prompt; " + std::to_string(p.max_tokens) +
                               " for the completion). Please reduce your prompt or completion length.",
                           "max_tokens", "invalid_request_error", "context_length_exceeded");
        l->max_tokens = p.max_tokens > 0 ? p.max_tokens : std::min(defaults_.max_tokens, maxT - n);
        l->decoder.emplace(tok_);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (draining_) throw ApiError(503, "the server is stopping", "", "server_error");
            if (live_ >= max_live_)
                throw ApiError(429,
                               "the server is busy: " + std::to_string(live_) + " requests are running or waiting (" +
                                   std::to_string(max_live_) + " at most); retry after a second",
                               "", "rate_limit_error", "rate_limit_exceeded");
            l->id = "cmpl-" + std::to_string(++serial_);
            l->seed = p.has_seed ? p.seed : defaults_.seed + static_cast<uint64_t>(serial_);
            live_++;
            metrics_.prompt_tokens += n;
            inbox_.push_back(l);
        }
        inbox_cv_.notify_one();
        const long created = static_cast<long>(std::time(nullptr));
        auto chunk = [this, created, l](const std::string& text, const json& logprobs, const json& finish) {
            json c = {{"index", 0}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish}};
            return json{{"id", l->id},
                        {"object", "text_completion"},
                        {"created", created},
                        {"model", defaults_.model_name},
                        {"choices", json::array({c})}};
        };
        auto usage = [l] {
            return json{{"prompt_tokens", l->prompt.size()}, {"completion_tokens", l->completion_tokens},
                        {"total_tokens", static_cast<int>(l->prompt.size()) + l->completion_tokens}};
        };
        if (!p.stream) {
            std::unique_lock<std::mutex> lk(l->mu);
            l->cv.wait(lk, [&] { return l->finished; });
            if (!l->error.empty())
                throw ApiError(l->error_status, l->error, "",
                               l->error_status == 400 ? "invalid_request_error" : "server_error");
            std::string text;
            json lp = logprobs_json({l->pieces.begin(), l->pieces.end()});
            for (const Piece& x : l->pieces) text += x.text;
            json body = chunk(text, p.logprobs >= 0 ? lp : json(nullptr), l->finish_reason);
            body["usage"] = usage();
            res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            return;
        }
        // streaming: one event per token as it comes; an SSE comment every second without one probes the
        // connection, so a client that went away is noticed (the write fails) and its request cancelled
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, l, chunk, usage](size_t, httplib::DataSink& sink) {
                std::deque<Piece> got;
                bool finished;
                std::string error, reason;
                {
                    std::unique_lock<std::mutex> lk(l->mu);
                    l->cv.wait_for(lk, std::chrono::seconds(1), [&] { return !l->pieces.empty() || l->finished; });
                    got.swap(l->pieces);
                    finished = l->finished;
                    error = l->error;
                    reason = l->finish_reason;
                }
                auto event = [&](const json& j) {
                    std::string s = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
                    return sink.write(s.data(), s.size());
                };
                if (got.empty() && !finished) return sink.write(": keep-alive\n\n", 14);
                std::string rest;  // the final piece (no token): text held back until the finish
                for (const Piece& x : got) {
                    if (!x.has_token) rest += x.text;
                    else if (!event(
                                 chunk(x.text, l->params.logprobs >= 0 ? logprobs_json({x}) : json(nullptr), nullptr)))
                        return false;
                }
                if (!finished) return true;
                if (!error.empty()) {
                    if (!event(ApiError(l->error_status, error, "", "server_error").body())) return false;
                } else {
                    if (!event(chunk(rest, l->params.logprobs >= 0 ? logprobs_json({}) : json(nullptr), reason)))
                        return false;
                    if (l->params.include_usage) {
                        json u = chunk("", nullptr, nullptr);
                        u["choices"] = json::array();
                        u["usage"] = usage();
                        if (!event(u)) return false;
                    }
                }
                if (!sink.write("data: [DONE]\n\n", 14)) return false;
                sink.done();
                return true;
            },
            [this, l](bool success) {
                if (success) return;
                std::lock_guard<std::mutex> lk(mu_);  // the client went away: the engine cancels it between steps
                cancels_.push_back(l->id);
                inbox_cv_.notify_one();
            });
    }

    // OpenAI's legacy completions logprobs: parallel arrays over the tokens.
    static json logprobs_json(const std::vector<Piece>& pieces) {
        json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
        for (const Piece& x : pieces) {
            if (!x.has_token) continue;
            tokens.push_back(x.token_text);
            lps.push_back(x.logprob);
            json top = json::object();
            for (auto& [t, lp] : x.top) top[t] = lp;
            tops.push_back(top);
            offsets.push_back(x.text_offset);
        }
        return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
    }
};

}  // namespace serving
