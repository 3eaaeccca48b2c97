// engine.cuh — generation on the paged KV cache (paged_kv.cuh), read top to bottom:
//
//   1. InferenceEngine<Ops, FloatX> one forward over a list of rows (token, position, sequence slot): every row
//                             attends to its own sequence's cache. Prefill (many rows of one sequence),
//                             decode (one row per sequence) and a mix of both are the same call. It runs
//                             gpt.cuh's block_forward, with the paged cache as the attention step.
//   2. Scheduler              continuous batching: admits waiting requests as blocks free up, mixes prefill
//                             chunks and decode rows in one step, preempts (and later recomputes) the
//                             youngest sequence when the pool runs dry. Host logic only.
//   3. Speculative decoding   a draft engine proposes k tokens, the target checks them in one forward;
//                             sampling.h's speculative_accept keeps the target's distribution exactly.
//
// docs/inference.md explains the ideas; hf.h loads the models (ours or Hugging Face's).
#pragma once
#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "gpt.cuh"
#include "paged_kv.cuh"
#include "sampling.h"

// ============================================================================
// 1. The engine: one forward over the rows of a step
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

// Inference's attention step for gpt.cuh's block_forward: the step's N rows at their own positions; each
// row's K and V go into its sequence's paged cache, then its query attends to positions 0..pos_i there.
template <class FloatX>
struct PagedAttention {
    const GPTConfig& c;
    int N, max_len;                         // rows, and the longest context among them
    const Mirrored &positions, &slots, &tables;
    FloatX *k_pool, *v_pool;                // (L, num_blocks, NKV, block_size, hs)
    size_t pool_layer;                      // elements of one layer's pool
    int block_size, max_blocks;
    void rope(const Exec& ex, FloatX* qkv) const {
        rope_forward_at(ex, qkv, positions.backend, 1, N, c.n_head, c.n_kv_head, c.head_size(), c.rope_theta);
    }
    void forward(const Exec& ex, FloatX* atty, float* /*lse: none kept*/, const FloatX* qkv, int l) const {
        FloatX *k = k_pool + l * pool_layer, *v = v_pool + l * pool_layer;
        const int NH = c.n_head, NKV = c.n_kv_head, hs = c.head_size();
        paged_kv_append(ex, k, v, qkv, tables.backend, slots.backend, positions.backend, N, NH, NKV, hs, block_size,
                        max_blocks);
        paged_attention(ex, atty, qkv, k, v, tables.backend, slots.backend, positions.backend, max_len, N, NH, NKV, hs,
                        block_size, max_blocks);
    }
};

template <class Ops, class FloatX = float>
struct InferenceEngine {
    const GPTConfig config;
    const ParameterTensors<FloatX> params;
    const Exec exec;
    int max_seqs, max_rows, block_size, num_blocks, max_blocks;  // max_blocks: per sequence = ceil(maxT / block_size)
    FloatX *k_pool = nullptr, *v_pool = nullptr;                 // (L, num_blocks, NKV, block_size, hs)
    Mirrored tables;                                             // (max_seqs, max_blocks), uploaded each step
    Mirrored tokens, positions, slots;                           // (max_rows) the step's rows
    // activations for up to max_rows rows, reused by every layer (no backward: nothing is kept)
    FloatX *x = nullptr, *ln = nullptr, *qkv = nullptr, *atty = nullptr, *proj = nullptr, *fch = nullptr,
           *fch_act = nullptr, *logits = nullptr;
    float *mean = nullptr, *rstd = nullptr;
    std::vector<void*> owned;

    InferenceEngine(const GPT<Ops, FloatX>& model, const EngineLimits& lim)
        : config(model.config), params(model.params), exec(model.exec), max_seqs(lim.max_seqs), max_rows(lim.max_rows),
          block_size(lim.block_size) {
        if (max_seqs < 1 || max_rows < 1 || block_size < 1) throw std::runtime_error("engine limits must be positive");
        max_blocks = blocks_for(config.max_seq_len, block_size);
        num_blocks = lim.num_blocks > 0 ? lim.num_blocks : max_seqs * max_blocks;
        if (num_blocks < max_blocks)
            throw std::runtime_error("a KV pool of " + std::to_string(num_blocks) +
                                     " blocks cannot hold one full context (" + std::to_string(max_blocks) +
                                     " blocks of " + std::to_string(block_size) + " tokens)");
        const size_t C = config.n_embd, N = max_rows;
        k_pool = take<FloatX>(pool_elements());
        v_pool = take<FloatX>(pool_elements());
        x = take<FloatX>(N * C);
        ln = take<FloatX>(N * C);
        qkv = take<FloatX>(N * config.qkv_channels());
        atty = take<FloatX>(N * C);
        proj = take<FloatX>(N * C);
        fch = take<FloatX>(N * config.fc_channels());
        fch_act = take<FloatX>(N * config.ffn_hidden);
        logits = take<FloatX>(N * config.padded_vocab_size);
        mean = take<float>(N);
        rstd = take<float>(N);
        for (Mirrored* m : {&tokens, &positions, &slots}) m->backend = take<int>(N);
        tables.backend = take<int>(static_cast<size_t>(max_seqs) * max_blocks);
        tables.host.assign(static_cast<size_t>(max_seqs) * max_blocks, 0);
    }
    InferenceEngine(const InferenceEngine&) = delete;
    InferenceEngine& operator=(const InferenceEngine&) = delete;
    ~InferenceEngine() {
        for (void* p : owned) Ops::release(p);
    }
    // elements of k_pool (and of v_pool): L·num_blocks·NKV·block_size·hs
    size_t pool_elements() const {
        return static_cast<size_t>(config.n_layer) * num_blocks * config.n_kv_head * block_size * config.head_size();
    }
    size_t kv_bytes_per_token() const { return config.kv_cache_bytes_per_token(sizeof(FloatX)); }
    size_t kv_pool_bytes() const { return kv_bytes_per_token() * static_cast<size_t>(num_blocks) * block_size; }

    // Points slot's block table at `blocks` (the scheduler calls this whenever a sequence's blocks change).
    void set_blocks(int slot, const std::vector<int>& blocks) {
        if (slot < 0 || slot >= max_seqs || static_cast<int>(blocks.size()) > max_blocks)
            throw std::logic_error("set_blocks: bad slot or table");
        std::copy(blocks.begin(), blocks.end(), tables.host.begin() + static_cast<size_t>(slot) * max_blocks);
    }

    // Runs the model over `rows`: appends each row's K/V to its sequence's cache and returns, for each row
    // with want_logits (in order), Vp logits. Every row's position must be covered by its slot's blocks.
    std::vector<float> forward(const std::vector<StepRow>& rows) {
        const GPTConfig& c = config;
        const int N = static_cast<int>(rows.size()), C = c.n_embd, Vp = c.padded_vocab_size;
        if (N < 1 || N > max_rows)
            throw std::runtime_error("engine: a step has " + std::to_string(N) + " rows (1.." +
                                     std::to_string(max_rows) + ")");
        tokens.host.resize(N);
        positions.host.resize(N);
        slots.host.resize(N);
        std::vector<int> want;
        int max_len = 0;
        for (int i = 0; i < N; i++) {
            const StepRow& r = rows[i];
            if (r.token < 0 || r.token >= c.vocab_size)
                throw std::runtime_error("engine: token " + std::to_string(r.token) + " outside the vocabulary");
            if (r.position < 0 || r.position >= c.max_seq_len)
                throw std::runtime_error("engine: position " + std::to_string(r.position) +
                                         " outside the context (max_seq_len " + std::to_string(c.max_seq_len) + ")");
            if (r.slot < 0 || r.slot >= max_seqs)
                throw std::runtime_error("engine: slot " + std::to_string(r.slot) + " out of range");
            tokens.host[i] = r.token;
            positions.host[i] = r.position;
            slots.host[i] = r.slot;
            max_len = std::max(max_len, r.position + 1);
            if (r.want_logits) want.push_back(i);
        }
        for (Mirrored* m : {&tokens, &positions, &slots, &tables})
            Ops::to_backend(m->backend, m->host.data(), m->host.size() * sizeof(int));
        const ParameterTensors<FloatX>& p = params;
        embed_at_positions(exec, x, tokens.backend, positions.backend, p[WTE], p[WPE], N, C);
        // the block's activations: the same buffers for every layer, the residual stream x updated in place
        BlockActivations<FloatX> a{x, ln, mean, rstd, qkv, atty, nullptr, proj, x, ln, mean, rstd, fch, fch_act, proj,
                                   x};
        PagedAttention<FloatX> attention{c,      N,      max_len, positions, slots, tables, k_pool, v_pool,
                                         pool_elements() / c.n_layer, block_size, max_blocks};
        for (int l = 0; l < c.n_layer; l++) block_forward(exec, c, layer_view(p, c, l), l, a, N, attention);
        // the classifier only for the rows that sample: gather them to the front of ln, then one matmul
        const int M = static_cast<int>(want.size());
        if (M == 0) return {};
        norm_forward(exec, c, ln, mean, rstd, x, p[LNFW], p[LNFB], N);
        for (int j = 0; j < M; j++)
            if (want[j] != j)
                Ops::copy(ln + static_cast<size_t>(j) * C, ln + static_cast<size_t>(want[j]) * C,
                          C * sizeof(FloatX));
        matmul_forward(exec, logits, ln, c.tied_embeddings ? p[WTE] : p[LMHEAD], nullptr, M, C, Vp);
        std::vector<FloatX> out(static_cast<size_t>(M) * Vp);
        Ops::to_host(out.data(), logits, out.size() * sizeof(FloatX));
        if constexpr (std::is_same_v<FloatX, float>) return out;
        else return std::vector<float>(out.begin(), out.end());
    }

private:
    template <class T>
    T* take(size_t n) {
        void* ptr = Ops::alloc(std::max<size_t>(n, 1) * sizeof(T));
        owned.push_back(ptr);
        return static_cast<T*>(ptr);
    }
};

// ============================================================================
// 2. Continuous batching
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
        : alloc_(num_blocks),
          max_seqs_(max_seqs),
          max_rows_(max_rows),
          block_size_(block_size),
          max_seq_len_(max_seq_len),
          vocab_size_(vocab_size),
          eot_id_(eot_id),
          slot_free_(max_seqs, 1),
          start_() {}

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
            err = "the prompt has " + std::to_string(r.prompt.size()) + " tokens; the model's context is " +
                  std::to_string(max_seq_len_) + " (at most " + std::to_string(max_seq_len_ - 1) +
                  " leave room for one new token)";
        if (err.empty() && r.max_tokens < 1) err = "max_tokens " + std::to_string(r.max_tokens) + " must be >= 1";
        for (int t : r.prompt)
            if (err.empty() && (t < 0 || t >= vocab_size_))
                err = "prompt token " + std::to_string(t) + " is outside the vocabulary";
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
template <class Engine>
std::vector<Result> serve(Engine& engine, std::vector<Request> requests, int eot_id,
                          Scheduler::Stats* stats = nullptr,
                          std::function<void(const std::string&, int, const float*)> on_token = nullptr) {
    Scheduler sched(engine.max_seqs, engine.max_rows, engine.block_size, engine.num_blocks, engine.config.max_seq_len,
                    engine.config.vocab_size, eot_id);
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
// 3. Speculative decoding (one sequence)
// ============================================================================
// One sequence on one engine, slot 0, with its own blocks: feed(tokens) runs the rows past `cached` and
// returns their logits; rewind(n) forgets everything from position n on (the cache rows stay, unread,
// and are overwritten later: attention only reads positions < its own).
template <class Engine>
struct SoloSequence {
    Engine& engine;
    BlockAllocator alloc;
    std::vector<int> blocks;
    int cached = 0;
    explicit SoloSequence(Engine& e) : engine(e), alloc(e.num_blocks) {}
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
template <class Engine>
std::vector<int> generate_speculative(Engine& target, Engine& draft,
                                      const std::vector<int>& prompt, int max_tokens, int k, const SamplingSettings& s,
                                      uint64_t seed, int eot_id, SpeculativeStats* stats = nullptr,
                                      const std::function<void(int)>& on_token = nullptr) {
    const int V = target.config.vocab_size, Vp = target.config.padded_vocab_size;
    if (draft.config.vocab_size != V)
        throw std::runtime_error("the draft model's vocabulary (" + std::to_string(draft.config.vocab_size) +
                                 ") differs from the target's (" + std::to_string(V) +
                                 "): they must share a tokenizer");
    if (k < 1) throw std::runtime_error("--speculate must be >= 1");
    const int maxT = std::min(target.config.max_seq_len, draft.config.max_seq_len);
    if (prompt.empty() || static_cast<int>(prompt.size()) >= maxT)
        throw std::runtime_error("the prompt must have 1 to maxT-1 tokens");
    s.validate();
    Rng rng(seed);
    SoloSequence<Engine> tseq(target), dseq(draft);
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
        if (go && i == kk)
            go = emit(draw(sampling_distribution(pl.data() + static_cast<size_t>(kk) * Vp, V, s),
                           rng));  // all passed: a free token
        // keep only the cache rows of accepted tokens; the newest token is fed next round
        tseq.rewind(static_cast<int>(tokens.size()) - 1);
        dseq.rewind(static_cast<int>(tokens.size()) - 1);
    }
    if (stats) *stats = st;
    return out;
}
