// preference.cuh — after pretraining: supervised fine-tuning (SFT) and preference optimisation (DPO, IPO, KTO),
// the losses written by hand, forward and backward. docs/preference.md derives them; read top to bottom:
//
//   1. Sequence log-probability   log π(y | x) = Σ over the completion's tokens of log p(token | everything
//                                 before it): the fused classifier's per-position losses summed under the
//                                 completion mask, and its backward into the logits' gradient
//   2. Preference losses          DPO and IPO (pairs), KTO (unpaired, with its reference point): per pair /
//                                 per example, forward and backward
//   3. Data                       SFT, pair and KTO JSONL files, every error naming the file and line
//   4. Steps                      one SFT step, one preference step (policy forward + backward, frozen
//                                 reference forward), and what is logged
//
// Ops follow layers.cuh's anatomy: the math, a plain-loop CPU reference (`_cpu`, templated on the scalar so
// tests run it in double), the kernel, the launcher, GPTCU_OP. Rows are laid out by eval.h's make_score_batch,
// the same layout target_logprobs scores with: one implementation of "log p(these tokens | this context)".
// test/test_preference.cu checks every kernel against its reference, every reference backward against finite
// differences, and losses and gradients on a tiny model against PyTorch (dev/reference_preference.py).
#pragma once
#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "common.cuh"
#include "gpt.cuh"
#include "eval.h"
#include "tokenizer/bpe.h"

// ============================================================================
// 1. Sequence log-probability of the completion tokens
// ============================================================================
// Row b of a batch (make_score_batch) holds prompt + completion; targets[b, t] is the next token where that
// token belongs to the completion, −1 elsewhere (prompt and padding: the mask). The fused classifier wrote
// losses[b, t] = −log p(targets[b, t] | inputs[b, ≤t]) (0 where masked), so
//   forward:  logp[b] = Σ_t [targets[b, t] ≠ −1] · log p(targets[b, t] | …) = −Σ_{t unmasked} losses[b, t]
//   backward: a loss L of the logp's gives ∂L/∂losses[b, t] = −∂L/∂logp[b] on unmasked positions, 0 elsewhere;
//             and the classifier's ∂loss[b, t]/∂z[b, t, v] = p_v − [v = y]. The classifier, run with dloss = 1,
//             leaves exactly that (p − onehot; 0 on masked rows and padding columns) in the logits buffer, so
//             the backward scales each row in place: dz[b, t, :] = −dlogp[b] · (p − onehot)[b, t, :].
//             OVERWRITES dlogits (as the classifier does), ready for GPT::backward().
//   cost: forward B·T floats read; backward B·T·Vp read and written once (the classifier's own traffic).

template <class Real>
void sequence_logprob_forward_cpu(Real* logp,          // (B): overwritten
                                  const Real* losses,  // (B, T): the fused classifier's per-position losses
                                  const int* targets,  // (B, T): −1 = masked (prompt, padding)
                                  int B, int T) {
    for (int b = 0; b < B; b++) {
        Real sum = 0;
        for (int t = 0; t < T; t++)
            if (targets[static_cast<size_t>(b) * T + t] != -1) sum -= losses[static_cast<size_t>(b) * T + t];
        logp[b] = sum;
    }
}

template <class Real>
void sequence_logprob_backward_cpu(Real* dlogits,  // (B, T, Vp): in p − onehot (classifier, dloss 1); out ∂L/∂z
                                   const Real* dlogp,  // (B): ∂L/∂logp
                                   int B, int T, int Vp) {
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < static_cast<size_t>(T) * Vp; i++)
            dlogits[static_cast<size_t>(b) * T * Vp + i] *= -dlogp[b];
}

// One block per row b: threads stride over t (consecutive threads, consecutive floats: coalesced) and the
// block sums in a fixed order (block_reduce_sum), so the result does not depend on scheduling.
__global__ void sequence_logprob_forward_kernel(float* logp, const float* losses, const int* targets, int T) {
    int b = blockIdx.x;
    float sum = 0.0f;
    for (int t = threadIdx.x; t < T; t += blockDim.x)
        if (targets[static_cast<size_t>(b) * T + t] != -1) sum -= losses[static_cast<size_t>(b) * T + t];
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) logp[b] = sum;
}

// One thread per logit (grid-stride), coalesced; its row's factor is one load that every thread of a row shares.
template <class T>
__global__ void sequence_logprob_backward_kernel(T* dlogits, const float* dlogp, size_t row_elements, size_t n) {
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<size_t>(gridDim.x) * blockDim.x)
        dlogits[i] = from_fp32<T>(to_fp32(dlogits[i]) * -dlogp[i / row_elements]);
}

inline void sequence_logprob_forward(float* logp,          // (B)
                                     const float* losses,  // (B, T)
                                     const int* targets,   // (B, T)
                                     int B, int T, cudaStream_t stream) {
    sequence_logprob_forward_kernel<<<B, 256, 0, stream>>>(logp, losses, targets, T);
    cuda_check(cudaGetLastError());
}
template <class X>
void sequence_logprob_backward(X* dlogits,           // (B, T, Vp)
                               const float* dlogp,  // (B)
                               int B, int T, int Vp, cudaStream_t stream) {
    size_t row = static_cast<size_t>(T) * Vp, n = static_cast<size_t>(B) * row;
    unsigned blocks = static_cast<unsigned>(std::min<size_t>(ceil_div<size_t>(n, 256), 4096));
    sequence_logprob_backward_kernel<<<blocks, 256, 0, stream>>>(dlogits, dlogp, row, n);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(sequence_logprob_forward)
GPTCU_OP(sequence_logprob_backward)

// ============================================================================
// 2. Preference losses
// ============================================================================
// π = log π_θ(y | x) of the policy being trained, ρ = log π_ref(y | x) of the frozen reference (section 1, both).
// The implicit reward of a completion is r = β·(π − ρ) (docs/preference.md: DPO's closed form).
//
// Pairs (DPO, IPO): P pairs in 2P rows, chosen first: rows [0, P) are the chosen completions, [P, 2P) the
// rejected ones of the same prompts, in the same order. Per pair i:
//   h_i = (π_c − ρ_c) − (π_r − ρ_r)                          (log-ratio margin; reward margin = β·h)
//   DPO:  loss_i = −log σ(β·h_i) = softplus(−β·h_i)          (computed as max(x, 0) + log1p(e^−|x|): no overflow)
//         ∂loss_i/∂h_i = −β·σ(−β·h_i)
//   IPO:  loss_i = (h_i − 1/(2β))²                          (a squared loss towards a finite margin)
//         ∂loss_i/∂h_i = 2·(h_i − 1/(2β))
//   and ∂h/∂π_c = 1, ∂h/∂π_r = −1 (ρ is frozen: no gradient).
// backward ACCUMULATES dloss·∂loss_i/∂π into dlogp (dloss = 1/P: the gradient of the mean).
enum class PairLoss : int { dpo = 0, ipo = 1 };

template <class Real>
Real softplus(Real x) {
    return std::max(x, Real(0)) + std::log1p(std::exp(-std::abs(x)));
}
template <class Real>
Real sigmoid(Real x) {
    return x >= 0 ? Real(1) / (Real(1) + std::exp(-x)) : std::exp(x) / (Real(1) + std::exp(x));
}

template <class Real>
void pair_loss_forward_cpu(Real* losses,      // (P): overwritten
                           const Real* logp,  // (2P): policy, [chosen | rejected]
                           const Real* ref,   // (2P): reference, same rows
                           PairLoss kind, std::type_identity_t<Real> beta, int P) {
    for (int i = 0; i < P; i++) {
        Real h = (logp[i] - ref[i]) - (logp[P + i] - ref[P + i]);
        losses[i] =
            kind == PairLoss::dpo ? softplus(-beta * h) : (h - Real(1) / (2 * beta)) * (h - Real(1) / (2 * beta));
    }
}
template <class Real>
void pair_loss_backward_cpu(Real* dlogp,                        // (2P): accumulated
                            const Real* logp, const Real* ref,  // (2P) each
                            PairLoss kind, std::type_identity_t<Real> beta, std::type_identity_t<Real> dloss, int P) {
    for (int i = 0; i < P; i++) {
        Real h = (logp[i] - ref[i]) - (logp[P + i] - ref[P + i]);
        Real dh = kind == PairLoss::dpo ? -beta * sigmoid(-beta * h) : 2 * (h - Real(1) / (2 * beta));
        dlogp[i] += dloss * dh;
        dlogp[P + i] -= dloss * dh;
    }
}

// One thread per pair (P is a batch of pairs: tens); reads four floats, writes one or two.
__device__ inline float sigmoidf_stable(float x) {
    return x >= 0.0f ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
}
__global__ void pair_loss_forward_kernel(float* losses, const float* logp, const float* ref, int kind, float beta,
                                         int P) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= P) return;
    float h = (logp[i] - ref[i]) - (logp[P + i] - ref[P + i]);
    float x = -beta * h, d = h - 0.5f / beta;
    losses[i] = kind == static_cast<int>(PairLoss::dpo) ? fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))) : d * d;
}
__global__ void pair_loss_backward_kernel(float* dlogp, const float* logp, const float* ref, int kind, float beta,
                                          float dloss, int P) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= P) return;
    float h = (logp[i] - ref[i]) - (logp[P + i] - ref[P + i]);
    float dh = kind == static_cast<int>(PairLoss::dpo) ? -beta * sigmoidf_stable(-beta * h) : 2.0f * (h - 0.5f / beta);
    dlogp[i] += dloss * dh;
    dlogp[P + i] -= dloss * dh;
}
inline void pair_loss_forward(float* losses, const float* logp, const float* ref, PairLoss kind, float beta, int P,
                              cudaStream_t stream) {
    pair_loss_forward_kernel<<<ceil_div(P, 256), 256, 0, stream>>>(losses, logp, ref, static_cast<int>(kind), beta, P);
    cuda_check(cudaGetLastError());
}
inline void pair_loss_backward(float* dlogp, const float* logp, const float* ref, PairLoss kind, float beta,
                               float dloss, int P, cudaStream_t stream) {
    pair_loss_backward_kernel<<<ceil_div(P, 256), 256, 0, stream>>>(dlogp, logp, ref, static_cast<int>(kind), beta,
                                                                    dloss, P);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(pair_loss_forward)
GPTCU_OP(pair_loss_backward)

// KTO (Ethayarajh et al. 2024): N unpaired examples, each desirable (label 1) or undesirable (0).
//   r_i = π_i − ρ_i,   z₀ = max(0, (1/N)·Σ_j r_j)     the reference point: the batch's estimate of
//                                                    KL(π_θ ‖ π_ref), clamped at 0 and held constant (no
//                                                    gradient flows through it, as in the paper's code)
//   desirable:    loss_i = λ_D·(1 − σ(β·(r_i − z₀))),   ∂loss_i/∂π_i = −λ_D·β·s·(1 − s),  s = σ(β·(r_i − z₀))
//   undesirable:  loss_i = λ_U·(1 − σ(β·(z₀ − r_i))),   ∂loss_i/∂π_i = +λ_U·β·s·(1 − s),  s = σ(β·(z₀ − r_i))
// The paper estimates z₀ on mismatched pairs (x_i, y_j≠i); we use the batch's own completions (one forward
// fewer; docs/preference.md says what that changes). backward ACCUMULATES dloss·∂loss_i/∂π_i into dlogp.
template <class Real>
void kto_reference_point_cpu(Real* z0,                           // (1): overwritten
                             const Real* logp, const Real* ref,  // (N) each
                             int N) {
    Real sum = 0;
    for (int i = 0; i < N; i++) sum += logp[i] - ref[i];
    *z0 = std::max(Real(0), sum / N);
}
template <class Real>
void kto_loss_forward_cpu(Real* losses,                       // (N): overwritten
                          const Real* logp, const Real* ref,  // (N) each
                          const int* desirable,               // (N): 1 desirable, 0 undesirable
                          const Real* z0,                     // (1)
                          std::type_identity_t<Real> beta, std::type_identity_t<Real> weight_desirable,
                          std::type_identity_t<Real> weight_undesirable, int N) {
    for (int i = 0; i < N; i++) {
        Real r = logp[i] - ref[i];
        losses[i] = desirable[i] ? weight_desirable * (1 - sigmoid(beta * (r - *z0)))
                                 : weight_undesirable * (1 - sigmoid(beta * (*z0 - r)));
    }
}
template <class Real>
void kto_loss_backward_cpu(Real* dlogp,  // (N): accumulated
                           const Real* logp, const Real* ref, const int* desirable, const Real* z0,
                           std::type_identity_t<Real> beta, std::type_identity_t<Real> weight_desirable,
                           std::type_identity_t<Real> weight_undesirable, std::type_identity_t<Real> dloss, int N) {
    for (int i = 0; i < N; i++) {
        Real r = logp[i] - ref[i];
        Real s = sigmoid(beta * (desirable[i] ? r - *z0 : *z0 - r));
        Real d = beta * s * (1 - s) * (desirable[i] ? -weight_desirable : weight_undesirable);
        dlogp[i] += dloss * d;
    }
}

// z₀: one block; each thread sums a strided slice, block_reduce_sum adds the slices in a fixed order.
__global__ void kto_reference_point_kernel(float* z0, const float* logp, const float* ref, int N) {
    float sum = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) sum += logp[i] - ref[i];
    sum = block_reduce_sum(sum);
    if (threadIdx.x == 0) *z0 = fmaxf(0.0f, sum / N);
}
// One thread per example.
__global__ void kto_loss_forward_kernel(float* losses, const float* logp, const float* ref, const int* desirable,
                                        const float* z0, float beta, float weight_desirable, float weight_undesirable,
                                        int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float r = logp[i] - ref[i], z = *z0;
    losses[i] = desirable[i] ? weight_desirable * (1.0f - sigmoidf_stable(beta * (r - z)))
                             : weight_undesirable * (1.0f - sigmoidf_stable(beta * (z - r)));
}
__global__ void kto_loss_backward_kernel(float* dlogp, const float* logp, const float* ref, const int* desirable,
                                         const float* z0, float beta, float weight_desirable, float weight_undesirable,
                                         float dloss, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float r = logp[i] - ref[i], z = *z0;
    float s = sigmoidf_stable(beta * (desirable[i] ? r - z : z - r));
    dlogp[i] += dloss * beta * s * (1.0f - s) * (desirable[i] ? -weight_desirable : weight_undesirable);
}
inline void kto_reference_point(float* z0, const float* logp, const float* ref, int N, cudaStream_t stream) {
    kto_reference_point_kernel<<<1, 256, 0, stream>>>(z0, logp, ref, N);
    cuda_check(cudaGetLastError());
}
inline void kto_loss_forward(float* losses, const float* logp, const float* ref, const int* desirable, const float* z0,
                             float beta, float weight_desirable, float weight_undesirable, int N, cudaStream_t stream) {
    kto_loss_forward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(losses, logp, ref, desirable, z0, beta,
                                                                  weight_desirable, weight_undesirable, N);
    cuda_check(cudaGetLastError());
}
inline void kto_loss_backward(float* dlogp, const float* logp, const float* ref, const int* desirable, const float* z0,
                              float beta, float weight_desirable, float weight_undesirable, float dloss, int N,
                              cudaStream_t stream) {
    kto_loss_backward_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(dlogp, logp, ref, desirable, z0, beta,
                                                                   weight_desirable, weight_undesirable, dloss, N);
    cuda_check(cudaGetLastError());
}
GPTCU_OP(kto_reference_point)
GPTCU_OP(kto_loss_forward)
GPTCU_OP(kto_loss_backward)

// ============================================================================
// 3. Data
// ============================================================================
// One JSON object per line, blank lines skipped; every field is text (tokenized: prompt and completion
// separately, then concatenated) or a list of token ids (for models without a tokenizer of their own):
//   SFT:        {"prompt": ..., "completion": ...}
//   DPO / IPO:  {"prompt": ..., "chosen": ..., "rejected": ...}
//   KTO:        {"prompt": ..., "completion": ..., "label": true|false}, or pairs (each split into a desirable
//               and an undesirable example)
// Every problem throws "FILE:LINE: what is wrong"; nothing is returned partially.
enum class Objective { lm, sft, dpo, ipo, kto };
inline Objective parse_objective(const std::string& s) {
    if (s == "lm") return Objective::lm;
    if (s == "sft") return Objective::sft;
    if (s == "dpo") return Objective::dpo;
    if (s == "ipo") return Objective::ipo;
    if (s == "kto") return Objective::kto;
    throw std::runtime_error("--objective must be lm, sft, dpo, ipo or kto (got '" + s + "')");
}

struct PairExample {
    int line = 0;
    std::vector<int> prompt, chosen, rejected;
};
struct CompletionExample {
    int line = 0;
    std::vector<int> prompt, completion;
    bool desirable = true;  // KTO's label; SFT: always true
};

// Reads a file of pairs (want_pairs) or of completions. KTO reads completions and accepts pairs on any line.
// max_seq_len: prompt + completion − 1 must fit (the last token is only predicted).
inline void read_finetune_file(const std::string& path, const bpe::Tokenizer* tok, int vocab_size, int max_seq_len,
                               bool want_pairs, bool want_labels, std::vector<PairExample>& pairs,
                               std::vector<CompletionExample>& completions) {
    read_jsonl_objects(path, [&](nlohmann::json& j, const JsonlLine& at) {
        const int lineno = at.number;
        auto fail = [&](const std::string& m) { at.fail(m); };
        auto tokens = [&](const char* key) {
            if (!j.contains(key)) fail(std::string("missing field \"") + key + "\"");
            const nlohmann::json& v = j[key];
            std::vector<int> ids;
            if (v.is_string()) {
                if (!tok)
                    fail(std::string("\"") + key +
                         "\" is text but there is no tokenizer (pass --tokenizer DIR, or give token ids)");
                ids = tok->encode_ordinary(v.get<std::string>());
            } else if (v.is_array()) {
                for (const auto& x : v) {
                    if (!x.is_number_integer())
                        fail(std::string("\"") + key + "\" must be text or a list of token ids");
                    ids.push_back(x.get<int>());
                }
            } else {
                fail(std::string("\"") + key + "\" must be text or a list of token ids, got " + v.dump());
            }
            if (ids.empty()) fail(std::string("\"") + key + "\" is empty");
            for (int id : ids)
                if (id < 0 || id >= vocab_size)
                    fail(std::string("\"") + key + "\": token " + std::to_string(id) +
                         " is outside the model's vocabulary [0, " + std::to_string(vocab_size) + ")");
            return ids;
        };
        auto check_fits = [&](const std::vector<int>& prompt, const std::vector<int>& c, const char* key) {
            if (static_cast<int>(prompt.size() + c.size()) - 1 > max_seq_len)
                fail("prompt + " + std::string(key) + " is " + std::to_string(prompt.size() + c.size()) +
                     " tokens (prompt " + std::to_string(prompt.size()) + "); the model reads at most " +
                     std::to_string(max_seq_len) + " (+1 predicted): shorten the example");
        };
        std::vector<int> prompt = tokens("prompt");
        bool is_pair = j.contains("chosen") || j.contains("rejected");
        if (want_pairs || (want_labels && is_pair)) {
            PairExample p{lineno, prompt, tokens("chosen"), tokens("rejected")};
            check_fits(p.prompt, p.chosen, "chosen");
            check_fits(p.prompt, p.rejected, "rejected");
            if (want_pairs)
                pairs.push_back(std::move(p));
            else {
                completions.push_back({lineno, p.prompt, p.chosen, true});
                completions.push_back({lineno, p.prompt, p.rejected, false});
            }
            return;
        }
        CompletionExample c{lineno, prompt, tokens("completion"), true};
        check_fits(c.prompt, c.completion, "completion");
        if (want_labels) {
            if (!j.contains("label")) fail("missing field \"label\" (true: desirable, false: undesirable)");
            if (!j["label"].is_boolean()) fail("\"label\" must be true or false, got " + j["label"].dump());
            c.desirable = j["label"].get<bool>();
        }
        completions.push_back(std::move(c));
    });
    if (pairs.empty() && completions.empty()) throw std::runtime_error(path + ": no examples");
}

// A reference model must score the same tokens as the policy: same vocabulary, and (when both know theirs)
// the same tokenizer.
inline void check_same_vocabulary(const GPTConfig& policy, const nlohmann::json& policy_tokenizer, const GPTConfig& ref,
                                  const nlohmann::json& ref_tokenizer, const std::string& ref_path) {
    if (policy.vocab_size != ref.vocab_size)
        throw std::runtime_error(
            "reference model " + ref_path + " has a vocabulary of " + std::to_string(ref.vocab_size) +
            " tokens, the policy " + std::to_string(policy.vocab_size) +
            ": the reference must use the policy's tokenizer (usually: the checkpoint the policy started from)");
    auto fingerprint = [](const nlohmann::json& t) {
        return t.is_object() ? t.value("fingerprint", "") : std::string();
    };
    if (!fingerprint(policy_tokenizer).empty() && !fingerprint(ref_tokenizer).empty() &&
        fingerprint(policy_tokenizer) != fingerprint(ref_tokenizer))
        throw std::runtime_error("reference model " + ref_path + " was trained with another tokenizer (" +
                                 ref_tokenizer.dump() + ") than the policy (" + policy_tokenizer.dump() + ")");
}

// ============================================================================
// 4. Steps
// ============================================================================
// SFT: the ordinary next-token loss, on completion tokens only. Batches are padded, not packed: one example
// per row, padded to the batch's longest (make_score_batch), because our causal attention spans a whole row
// and packing would let an example attend to the one before it. The loss is the mean over the batch's
// completion tokens (every completion token weighs the same, whatever its example's length).
inline std::vector<ScoreRequest> completion_requests(const std::vector<CompletionExample>& batch) {
    std::vector<ScoreRequest> r;
    for (const auto& e : batch) r.push_back({e.prompt, e.completion});
    return r;
}
// Forward and backward of one SFT batch (gradients accumulate); returns the mean loss per completion token.
template <class Ops, class FloatX>
float sft_step(GPT<Ops, FloatX>& model, const std::vector<CompletionExample>& batch) {
    ScoreBatch s = make_score_batch(completion_requests(batch), model.config.max_seq_len);
    long valid = std::count_if(s.targets.begin(), s.targets.end(), [](int t) { return t != -1; });
    float loss = model.forward(s.inputs.data(), s.targets.data(), s.B, s.T, 1.0f / static_cast<float>(valid));
    model.backward();
    return loss;
}

// What a preference step reports (docs/preference.md). rewards r = β·(π − ρ); for pairs: accuracy is the
// fraction of pairs with r_c > r_r, margin the mean r_c − r_r; for KTO: chosen / rejected are the mean reward
// of desirable / undesirable examples, accuracy the fraction on the right side of β·z₀. kl: the mean of π − ρ
// over the batch's completions (KTO's z₀ before the clamp): an estimate of KL(π_θ ‖ π_ref) from the data's
// completions, not from samples of the policy.
struct PreferenceMetrics {
    double loss = 0, accuracy = 0, chosen_reward = 0, rejected_reward = 0, margin = 0, kl = 0;
    long count = 0;                                              // pairs (DPO, IPO) or examples (KTO) the sums are over
    PreferenceMetrics& operator+=(const PreferenceMetrics& o) {  // running means over batches, weighted by count
        auto mix = [&](double& a, double b) { a = (a * count + b * o.count) / std::max<long>(1, count + o.count); };
        mix(loss, o.loss);
        mix(accuracy, o.accuracy);
        mix(chosen_reward, o.chosen_reward);
        mix(rejected_reward, o.rejected_reward);
        mix(margin, o.margin);
        mix(kl, o.kl);
        count += o.count;
        return *this;
    }
    nlohmann::json to_json(const std::string& prefix = "") const {
        return {{prefix + "loss", loss},
                {prefix + "reward_accuracy", accuracy},
                {prefix + "chosen_reward", chosen_reward},
                {prefix + "rejected_reward", rejected_reward},
                {prefix + "margin", margin},
                {prefix + "kl", kl}};
    }
};

struct PreferenceSettings {
    Objective objective = Objective::dpo;
    float beta = 0.1f;
    float weight_desirable = 1.0f, weight_undesirable = 1.0f;  // KTO's λ_D, λ_U
};

// The policy's and the frozen reference's buffers for the per-row values (on the backend of Ops), grown as
// needed. The reference is a second GPT<Ops> with its own weights and activations, only ever run forward.
template <class Ops>
struct PreferenceBuffers {
    int capacity = 0;
    float *logp = nullptr, *ref = nullptr, *dlogp = nullptr, *losses = nullptr, *z0 = nullptr;  // (rows) each; z0 (1)
    int* desirable = nullptr;                                                                   // (rows)
    void ensure(int rows) {
        if (rows <= capacity) return;
        release();
        capacity = rows;
        for (float** p : {&logp, &ref, &dlogp, &losses}) *p = static_cast<float*>(Ops::alloc(rows * sizeof(float)));
        z0 = static_cast<float*>(Ops::alloc(sizeof(float)));
        desirable = static_cast<int*>(Ops::alloc(rows * sizeof(int)));
    }
    void release() {
        for (void* p : {static_cast<void*>(logp), static_cast<void*>(ref), static_cast<void*>(dlogp),
                        static_cast<void*>(losses), static_cast<void*>(z0), static_cast<void*>(desirable)})
            if (p) Ops::release(p);
        logp = ref = dlogp = losses = z0 = nullptr;
        desirable = nullptr;
    }
    PreferenceBuffers() = default;
    PreferenceBuffers(const PreferenceBuffers&) = delete;
    PreferenceBuffers& operator=(const PreferenceBuffers&) = delete;
    ~PreferenceBuffers() { release(); }
};

// Rows of a preference batch: pairs as [chosen… | rejected…] (section 2's layout), KTO examples as they are.
inline std::vector<ScoreRequest> pair_requests(const std::vector<PairExample>& batch) {
    std::vector<ScoreRequest> r;
    for (const auto& p : batch) r.push_back({p.prompt, p.chosen});
    for (const auto& p : batch) r.push_back({p.prompt, p.rejected});
    return r;
}

// The sequence log-probabilities of a batch's rows into logp (backend, (B)). With for_backward, the classifier
// also leaves p − onehot in the logits buffer (dloss 1), which sequence_logprob_backward then scales.
template <class Ops, class FloatX>
void sequence_logprobs(GPT<Ops, FloatX>& model, const ScoreBatch& s, float* logp, bool for_backward) {
    model.forward(s.inputs.data(), s.targets.data(), s.B, s.T, for_backward ? 1.0f : 0.0f);
    sequence_logprob_forward(model.exec, logp, model.template act<float>(LOSSES), model.targets, s.B, s.T);
}

// One preference batch: the reference's log-probs (forward only), the policy's (forward), the loss and, with
// backward, its gradient through the policy (accumulated into its grads, as GPT::backward does). `pairs` for
// DPO / IPO, `examples` for KTO. Returns the batch's metrics; `ipo_loss` (pairs, without backward) also gets
// IPO's mean loss, for eval_gpt's report of both.
template <class Ops, class FloatX>
PreferenceMetrics preference_step(GPT<Ops, FloatX>& policy, GPT<Ops, FloatX>& reference,
                                  PreferenceBuffers<Ops>& buf, const PreferenceSettings& set,
                                  const std::vector<PairExample>& pairs, const std::vector<CompletionExample>& examples,
                                  bool backward, double* ipo_loss = nullptr) {
    const bool kto = set.objective == Objective::kto;
    std::vector<ScoreRequest> rows = kto ? completion_requests(examples) : pair_requests(pairs);
    const int B = static_cast<int>(rows.size()), P = kto ? B : B / 2;
    ScoreBatch s = make_score_batch(rows, std::min(policy.config.max_seq_len, reference.config.max_seq_len));
    buf.ensure(B);
    sequence_logprobs(reference, s, buf.ref, false);
    sequence_logprobs(policy, s, buf.logp, backward);
    const Exec& ex = policy.exec;
    std::vector<int> label(B, 1);
    if (kto) {
        for (int i = 0; i < B; i++) label[i] = examples[i].desirable;
        Ops::to_backend(buf.desirable, label.data(), B * sizeof(int));
        kto_reference_point(ex, buf.z0, buf.logp, buf.ref, B);
        kto_loss_forward(ex, buf.losses, buf.logp, buf.ref, buf.desirable, buf.z0, set.beta, set.weight_desirable,
                         set.weight_undesirable, B);
    } else {
        pair_loss_forward(ex, buf.losses, buf.logp, buf.ref,
                          set.objective == Objective::ipo ? PairLoss::ipo : PairLoss::dpo, set.beta, P);
    }
    std::vector<float> losses(P), logp(B), ref(B);
    Ops::to_host(losses.data(), buf.losses, P * sizeof(float));
    Ops::to_host(logp.data(), buf.logp, B * sizeof(float));
    Ops::to_host(ref.data(), buf.ref, B * sizeof(float));
    if (backward) {
        zero_memory(ex, buf.dlogp, B * sizeof(float));
        if (kto)
            kto_loss_backward(ex, buf.dlogp, buf.logp, buf.ref, buf.desirable, buf.z0, set.beta, set.weight_desirable,
                              set.weight_undesirable, 1.0f / B, B);
        else
            pair_loss_backward(ex, buf.dlogp, buf.logp, buf.ref,
                               set.objective == Objective::ipo ? PairLoss::ipo : PairLoss::dpo, set.beta, 1.0f / P, P);
        sequence_logprob_backward(ex, policy.template act<FloatX>(LOGITS), buf.dlogp, B, s.T,
                                  policy.config.padded_vocab_size);
        policy.backward();
    }
    // metrics on the host, in double
    PreferenceMetrics m;
    m.count = P;
    double kl = 0;
    for (int i = 0; i < B; i++) kl += static_cast<double>(logp[i]) - ref[i];
    m.kl = kl / B;
    for (float l : losses) m.loss += l / P;
    auto reward = [&](int i) { return set.beta * (static_cast<double>(logp[i]) - ref[i]); };
    if (kto) {
        double z = set.beta * std::max(0.0, m.kl);
        int nd = 0, nu = 0;
        for (int i = 0; i < B; i++) {
            (label[i] ? m.chosen_reward : m.rejected_reward) += reward(i);
            (label[i] ? nd : nu)++;
            m.accuracy += label[i] ? reward(i) > z : reward(i) < z;
        }
        if (nd) m.chosen_reward /= nd;
        if (nu) m.rejected_reward /= nu;
        m.accuracy /= B;
        m.margin = m.chosen_reward - m.rejected_reward;
    } else {
        for (int i = 0; i < P; i++) {
            m.chosen_reward += reward(i) / P;
            m.rejected_reward += reward(P + i) / P;
            m.accuracy += (reward(i) > reward(P + i)) / static_cast<double>(P);
        }
        m.margin = m.chosen_reward - m.rejected_reward;
        if (ipo_loss) {  // IPO's loss from the same log-probs, for eval_gpt's report (dlogp is free here)
            pair_loss_forward(ex, buf.dlogp, buf.logp, buf.ref, PairLoss::ipo, set.beta, P);
            std::vector<float> ipo(P);
            Ops::to_host(ipo.data(), buf.dlogp, P * sizeof(float));
            *ipo_loss = 0;
            for (float l : ipo) *ipo_loss += l / P;
        }
    }
    return m;
}
