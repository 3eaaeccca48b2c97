// fixture.h — the model fixtures written by dev/reference_gpt2.py and dev/reference_llama.py from
// Hugging Face transformers (random init, fixed seed), and the one check both families run against them:
// logits, loss and every gradient within 1e-4 (fp32; the bf16 fixtures' tolerances are derived below), the
// losses of the script's AdamW steps, and (when the fixture has one) the greedy continuation exactly. Used by
// test/test_gpt.cu and test/test_llama.cu.
//
// Fixture layout (little-endian): "GPTCUFIX" | uint32 version=1 | uint32 n | n bytes of JSON {model, B, T,
// num_parameters, steps, lr, beta1, beta2, eps, weight_decay, grad_clip[, prompt, greedy][, precision]} | float32
// params[P] | int32 inputs[B*T] | int32 targets[B*T] (-1 = ignored) | float32 logits[B*T*V] | float32 loss |
// float32 grads[P] | float32 losses[steps]
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test/test_util.h"
#include "gpt.cuh"

// fp32 end to end, but PyTorch and we sum in different orders through 2 layers and a softmax:
// 1e-4 relative over each whole tensor (the bound), as for GPT-2.
constexpr double tolerance_model = 1e-4;

// How close a whole model must come to its fixture: a Tolerance for the logits and one for every parameter's
// gradient, whose atol is in units of the reference tensor's RMS (an element whose terms cancel is off by what
// its terms are, not by what it is); the first loss within `loss`·max(|ref|, 1) and the loss before each AdamW
// step within `losses`·max(|ref|, 1) (the rounding lives in the logits, whose scale does not shrink as the loss
// falls towards 0 over the steps; a GPU machine's OpenBLAS missed 1e-4 × loss at a loss of 0.018).
// atol = INFINITY checks the norm only.
struct ModelTolerance {
    Tolerance logits, grads;
    double loss, losses;
};
// fp32: the norm only, since after two layers and a softmax the error of one element has no simple bound.
constexpr ModelTolerance tolerance_model_fp32{{INFINITY, 0, tolerance_model}, {INFINITY, 0, tolerance_model},
                                              tolerance_model, tolerance_model};

struct Fixture {
    nlohmann::json header;
    GPTConfig config;
    int B = 0, T = 0, steps = 0;
    std::vector<float> params, logits, grads, losses;
    std::vector<int> inputs, targets, prompt, greedy;
    float loss = 0;
};

inline Fixture load_fixture(const std::string& path) {
    File f(path, "rb");
    char magic[8];
    uint32_t version, n;
    f.read(magic, 8, "magic");
    REQUIRE(std::string(magic, 8) == "GPTCUFIX");
    f.read(&version, 4, "version");
    REQUIRE(version == 1);
    f.read(&n, 4, "header length");
    std::string text(n, '\0');
    f.read(text.data(), n, "header");
    Fixture x;
    x.header = nlohmann::json::parse(text);
    x.config = x.header.at("model").get<GPTConfig>();
    x.B = x.header.at("B");
    x.T = x.header.at("T");
    x.steps = x.header.at("steps");
    if (x.header.contains("greedy")) {  // Llama's fixture: a prompt and transformers' greedy continuation
        x.prompt = x.header.at("prompt").get<std::vector<int>>();
        x.greedy = x.header.at("greedy").get<std::vector<int>>();
    }
    size_t P = x.header.at("num_parameters"), N = static_cast<size_t>(x.B) * x.T, V = x.config.vocab_size;
    auto floats = [&](std::vector<float>& v, size_t count, const char* what) {
        v.resize(count);
        f.read(v.data(), count * 4, what);
    };
    floats(x.params, P, "params");
    x.inputs.resize(N);
    x.targets.resize(N);
    f.read(x.inputs.data(), N * 4, "inputs");
    f.read(x.targets.data(), N * 4, "targets");
    floats(x.logits, N * V, "logits");
    f.read(&x.loss, 4, "loss");
    floats(x.grads, P, "grads");
    floats(x.losses, x.steps, "losses");
    return x;
}

// Greedy decoding by full recomputation: forward the whole sequence, argmax of the last row, append.
template <class Ops, class T>
std::vector<int> greedy_tokens(GPT<Ops, T>& model, std::vector<int> ids, int count) {
    const int V = model.config.vocab_size;
    std::vector<int> out;
    for (int i = 0; i < count; i++) {
        int t = static_cast<int>(ids.size());
        model.forward(ids.data(), nullptr, 1, t);
        std::vector<float> row = model.logits_at(0, t - 1);
        int next = static_cast<int>(std::max_element(row.begin(), row.begin() + V) - row.begin());
        out.push_back(next);
        ids.push_back(next);
    }
    return out;
}

// out against ref within t (ModelTolerance: atol in units of ref's RMS; INFINITY: the norm only).
inline void check_model_tensor(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                               Tolerance t) {
    if (std::isinf(t.atol)) return check_close(what, out, ref, t.norm);
    double sum = 0;
    for (float r : ref) sum += static_cast<double>(r) * r;
    t.atol *= std::sqrt(sum / static_cast<double>(ref.size()));
    check_close(what, out, ref, t);
}

// The model in element type T (float, or __nv_bfloat16: mixed precision) against the fixture, within tol.
template <class Ops, class T = float>
void check_against_huggingface(const Fixture& x, const ModelTolerance& tol = tolerance_model_fp32) {
    GPT<Ops, T> model(x.config);
    REQUIRE(model.num_parameters == x.params.size());
    model.set_parameters(x.params);
    int valid = 0;
    for (int t : x.targets) valid += t != -1;
    // logits first (no targets: the buffer keeps the logits)
    model.forward(x.inputs.data(), nullptr, x.B, x.T);
    const int N = x.B * x.T, V = x.config.vocab_size;
    std::vector<float> logits(static_cast<size_t>(N) * V);
    for (int i = 0; i < N; i++) {
        std::vector<float> row = model.logits_at(i / x.T, i % x.T);
        std::copy(row.begin(), row.begin() + V, logits.begin() + static_cast<size_t>(i) * V);
    }
    check_model_tensor("logits", logits, x.logits, tol.logits);
    // the greedy continuation HF's generate() produced from the same weights: exactly
    if (!x.greedy.empty()) CHECK(greedy_tokens(model, x.prompt, static_cast<int>(x.greedy.size())) == x.greedy);
    // loss and every gradient
    model.zero_grad();
    float loss = model.forward(x.inputs.data(), x.targets.data(), x.B, x.T, 1.0f / valid);
    {
        INFO("loss " << loss << " vs PyTorch " << x.loss);
        CHECK(std::abs(loss - x.loss) <= tol.loss * std::max(1.0, std::abs(double(x.loss))));
    }
    model.backward();
    std::vector<float> grads = model.get_gradients();
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (!model.sizes[i]) continue;
        std::vector<float> g(grads.begin() + offset, grads.begin() + offset + model.sizes[i]);
        std::vector<float> r(x.grads.begin() + offset, x.grads.begin() + offset + model.sizes[i]);
        check_model_tensor(std::string("gradient of ") + param_name(i), g, r, tol.grads);
        offset += model.sizes[i];
    }
    // ten AdamW steps with clipping, as the script ran them
    model.set_parameters(x.params);
    const auto& h = x.header;
    for (int s = 0; s < x.steps; s++) {
        model.zero_grad();
        float l = model.forward(x.inputs.data(), x.targets.data(), x.B, x.T, 1.0f / valid);
        model.backward();
        float norm = model.grad_norm(), clip = h.at("grad_clip");
        float scale = norm > clip ? clip / norm : 1.0f;
        model.update(h.at("lr"), h.at("beta1"), h.at("beta2"), h.at("eps"), h.at("weight_decay"), s + 1, scale);
        INFO("step " << s << ": loss " << l << " vs PyTorch " << x.losses[s]);
        CHECK(std::abs(l - x.losses[s]) <= tol.losses * std::max(1.0, std::abs(double(x.losses[s]))));
    }
}

// Mixed precision: the bf16 fixtures (dev/reference_gpt2.py --bf16, dev/reference_llama.py --bf16) run a smaller
// model (so that params + grads fit the fixture budget) under our bf16 rule (layers.cuh, top) written out in
// PyTorch: the same bf16 weights, every activation and activation gradient rounded to bf16 where our kernels store
// one, attention and its backward as our flash kernels compute them, autocast's bf16 linear for the matmuls, fp32
// masters and AdamW. u = 2^-8; a bf16 value one unit in the last place off is off by at most 2u relative.
// Tolerances (atol in units of the reference tensor's RMS):
//
// Flash attention (and every matmul backend but cuBLASLt's GELU epilogue): the model applies the fixture's
// roundings to fp32 values that differ only in the order of their sums (relative ~K·2^-24, K <= 128), so a stored
// bf16 value differs only when the two straddle a rounding boundary, by one unit: 2u.
//   logits: atol 2u, rtol 2u (one unit), norm u/4: a unit in every 64th logit (2u·√(1/64) = u/4). The fp32
//           model, or the fixture made without the rule's roundings (pure autocast), is 1.3u away (GPT-2).
//   grads:  the fixture's matmul weight and bias gradients went through autocast's bf16 copy, so each is
//           bf16(our fp32 sum): |ref − g| <= u·|g|, u per element and u over the norm (every element within u),
//           plus a unit of an upstream flip: atol u, rtol 2u, norm u.
//   loss:   an fp32 function of logits that match: the fp32 model's 1e-4.
//   losses: 10 AdamW steps amplify a one-unit difference (PyTorch against itself with fp64 between the roundings
//           drifts by 0.22u by the last step, GPT-2): u·max(loss, 1). The fp32 model is 4u away (GPT-2).
// Measured (CPU build, 2026-11-30; docs/mixed-precision.md): GPT-2's and Llama's logits bit-identical; the
// gradients neither side rounds (norm gains, wpe, Llama's wte) within 0.0005u in norm (fp32 sum order), the matmul
// gradients as close to ours rounded to bf16; losses within 0.34u.
//
// Two backends round differently from the rule, and the fixture does not model them. Tensor-core attention (what
// --precision bf16 trains with) rounds P to bf16 before P·V and dS before the backward's products: each attention
// output moves by up to u·Σ p·|v| <= u·max|v|, one rounding more. cuBLASLt's GELU epilogue (GPT-2's c_fc) applies
// GELU to the fp32 pre-activation, one rounding fewer: each GELU output moves by up to u·|x·gelu'(x)|. The later
// layers carry and amplify either like any other rounding, and 10 AdamW steps amplify further. Measured: wmma
// attention: logits 0.56u (GPT-2) and 1.21u (Llama) in norm, gradients up to 2.4u; cuBLASLt's GELU epilogue:
// logits 0.75u, gradients up to 1.05u (both: 0.93u, 1.31u); worst element 10.8u of |ref| + RMS; the loss 0.05u
// (it moves by at most √2 × the largest change of a row of logits: its gradient w.r.t. a row is
// (softmax − onehot)/N); losses up to 2.7u. The tolerances take those with a margin: logits atol 4u, rtol 4u,
// norm 2u; gradients atol 16u, rtol 16u, norm 4u; loss u; losses 4u. They catch a wrong or missing term (an error
// of the size of the term), not a break of the rounding rule (the fp32 model passes them): the runs with the
// tight tolerances are the sharp ones.
constexpr double u_bf16 = bf16_unit_roundoff;
constexpr ModelTolerance tolerance_model_bf16{
    {2 * u_bf16, 2 * u_bf16, u_bf16 / 4}, {u_bf16, 2 * u_bf16, u_bf16}, tolerance_model, u_bf16};
constexpr ModelTolerance tolerance_model_bf16_other_roundings{
    {4 * u_bf16, 4 * u_bf16, 2 * u_bf16}, {16 * u_bf16, 16 * u_bf16, 4 * u_bf16}, u_bf16, 4 * u_bf16};

// GPT<DeviceOps, __nv_bfloat16> against a bf16 fixture under every matmul backend and both attention backends:
// the tight tolerances where the model rounds as the rule does, the others where a backend rounds otherwise.
inline void check_against_pytorch_bf16(const std::string& path) {
    Fixture x = load_fixture(path);
    REQUIRE(x.header.value("precision", std::string()) == "bf16");
    for (AttentionBackend attention : {AttentionBackend::flash, AttentionBackend::wmma})
        for (const char* matmul : {"cublas", "tiled", "wmma", "cublaslt"}) {
            std::string backends = std::string(attention == AttentionBackend::flash ? "flash" : "wmma") +
                                   " attention, " + matmul + " matmul";
            CAPTURE(backends);
            set_attention_backend(attention);
            set_matmul_backend(parse_matmul_backend(matmul));
            bool rule = attention == AttentionBackend::flash &&
                        !(std::string(matmul) == "cublaslt" && !x.config.is_llama());  // GELU epilogue
            check_against_huggingface<DeviceOps, __nv_bfloat16>(
                x, rule ? tolerance_model_bf16 : tolerance_model_bf16_other_roundings);
        }
    set_attention_backend(AttentionBackend::flash);
    set_matmul_backend(MatmulBackend::cublas);
}
