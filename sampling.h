// sampling.h — turning one position's logits into the next token, in one place for training samples
// (train_gpt.cu) and generation (infer_gpt.cu): greedy, temperature, top-k, top-p, drawn with the
// project's Rng; and speculative decoding's acceptance rule, which is sampling from two distributions.
//
//   p = sampling_distribution(logits, V, settings)   the distribution the settings define (Σ p = 1)
//   x = draw(p, rng)                                 one token from it
//   sample_token(logits, V, settings, rng)           both
//
// The distribution, step by step (what the settings mean):
//   temperature τ = 0:   greedy, p = one-hot at argmax (the lowest id among ties)
//   temperature τ > 0:   p_i ∝ exp(z_i / τ)                        (computed as exp((z_i − max z) / τ))
//   top-k k > 0:         keep the k largest p_i, zero the others   (ties at the k-th value: lower ids first)
//   top-p 0 < P < 1:     keep the smallest prefix of the tokens sorted by p (descending) whose mass is ≥ P,
//                        zero the others ("nucleus sampling"); always at least one token
//   then renormalise. top-k is applied before top-p, as in Hugging Face's generate().
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.cuh"

struct SamplingSettings {
    float temperature = 1.0f;  // 0 = greedy
    int top_k = 0;             // 0 = all tokens
    float top_p = 1.0f;        // 1 = all tokens

    bool greedy() const { return temperature <= 0.0f; }
    void validate() const {
        if (!(temperature >= 0.0f) || !std::isfinite(temperature))
            throw std::runtime_error("temperature " + std::to_string(temperature) + " must be >= 0 (0 = greedy)");
        if (top_k < 0) throw std::runtime_error("top_k " + std::to_string(top_k) + " must be >= 0 (0 = all tokens)");
        if (!(top_p > 0.0f && top_p <= 1.0f))
            throw std::runtime_error("top_p " + std::to_string(top_p) + " must be in (0, 1] (1 = all tokens)");
    }
};

// Index of the largest of the first V logits; the lowest index among ties.
inline int argmax(const float* logits, int V) {
    return static_cast<int>(std::max_element(logits, logits + V) - logits);
}

// The distribution over the first V tokens that `s` defines (see the top comment). Returned in double so
// that the speculative rule's differences p − q and the statistical tests are not limited by fp32.
inline std::vector<double> sampling_distribution(const float* logits, int V, const SamplingSettings& s) {
    if (V < 1) throw std::runtime_error("sampling_distribution: V must be >= 1");
    std::vector<double> p(V, 0.0);
    if (s.greedy()) {
        p[argmax(logits, V)] = 1.0;
        return p;
    }
    double zmax = logits[argmax(logits, V)];
    for (int i = 0; i < V; i++) p[i] = std::exp((logits[i] - zmax) / s.temperature);
    int k = s.top_k > 0 && s.top_k < V ? s.top_k : V;
    if (k < V || s.top_p < 1.0f) {
        // order of the tokens by probability, descending, ties by lower id first; only the first k need
        // sorting (O(V + k log k) with nth_element: top-k 40 of 50257 must not cost a full sort per token)
        std::vector<int> order(V);
        std::iota(order.begin(), order.end(), 0);
        auto before = [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
        if (k < V) std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
        std::sort(order.begin(), order.begin() + k, before);
        double total = 0;
        for (int r = 0; r < k; r++) total += p[order[r]];
        int keep = k;
        if (s.top_p < 1.0f) {
            double mass = 0;
            for (keep = 0; keep < k;) {
                mass += p[order[keep++]];
                if (mass >= s.top_p * total) break;
            }
        }
        for (int r = keep; r < V; r++) p[order[r]] = 0.0;
    }
    double sum = std::accumulate(p.begin(), p.end(), 0.0);
    for (double& x : p) x /= sum;
    return p;
}

// One token drawn from p (Σ p = 1): the first i with u < p_0 + … + p_i, u uniform in [0, 1).
// Tokens with p_i = 0 are never drawn (the final fallback picks the last token with p_i > 0).
inline int draw(const std::vector<double>& p, Rng& rng) {
    double u = rng.uniform(), acc = 0;
    int last = -1;
    for (size_t i = 0; i < p.size(); i++) {
        if (p[i] <= 0) continue;
        acc += p[i];
        last = static_cast<int>(i);
        if (u < acc) return last;
    }
    if (last < 0) throw std::runtime_error("draw: the distribution is all zero");
    return last;  // u landed in the rounding gap 1 − Σ p
}

// Greedy takes the argmax without touching the RNG, so a greedy run never depends on the seed.
inline int sample_token(const float* logits, int V, const SamplingSettings& s, Rng& rng) {
    if (s.greedy()) return argmax(logits, V);
    return draw(sampling_distribution(logits, V, s), rng);
}

// ----------------------------------------------------------------------------
// Speculative sampling (Leviathan et al. 2023, Chen et al. 2023). The draft proposed token x from its
// distribution q; the target's distribution at the same position is p.
//   accept x with probability min(1, p(x) / q(x));
//   on rejection draw from the residual r(y) = max(0, p(y) − q(y)) / Σ_y' max(0, p(y') − q(y')).
// The result is distributed exactly as p: P(y) = q(y)·min(1, p(y)/q(y)) + P(reject)·r(y)
//   = min(q(y), p(y)) + (1 − Σ_y' min(q, p))·max(0, p(y) − q(y)) / Σ_y' max(0, p − q)
//   = min(q(y), p(y)) + max(0, p(y) − q(y))      because 1 − Σ min(q, p) = Σ max(0, p − q)
//   = p(y).
// With greedy settings p and q are one-hot, so a proposal is accepted iff it is the target's argmax, and
// on rejection the residual is the target's one-hot: the output is exactly the target's greedy tokens.
struct SpeculativeVerdict {
    bool accepted;
    int token;  // x when accepted, else the token drawn from the residual
};
inline SpeculativeVerdict speculative_accept(int x, const std::vector<double>& p, const std::vector<double>& q,
                                             Rng& rng) {
    if (p.size() != q.size() || x < 0 || static_cast<size_t>(x) >= p.size())
        throw std::runtime_error("speculative_accept: proposal " + std::to_string(x) +
                                 " or distribution sizes are inconsistent");
    // q(x) > 0 for a token the draft sampled; p(x) >= q(x) accepts without spending a random number
    if (p[x] >= q[x]) return {true, x};
    if (rng.uniform() < p[x] / q[x]) return {true, x};
    std::vector<double> r(p.size());
    double sum = 0;
    for (size_t i = 0; i < p.size(); i++) sum += (r[i] = std::max(0.0, p[i] - q[i]));
    if (sum <= 0) return {true, x};  // p == q up to rounding: nothing to correct
    for (double& v : r) v /= sum;
    return {false, draw(r, rng)};
}
