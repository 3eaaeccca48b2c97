// The whole model against PyTorch: test/fixtures/gpt2_tiny.bin, written by dev/reference_gpt2.py from
// Hugging Face's GPT2LMHeadModel (random init, fixed seed). Both backends: the CPU reference ops
// (HostOps) and the CUDA kernels (DeviceOps: on a GPU, or emulated by cudasim in the CPU build).
#include "test/fixture.h"

TEST_CASE("GPT-2 matches PyTorch (logits, loss, every gradient, 10 AdamW steps): CPU reference path") {
    check_against_huggingface<HostOps>(load_fixture("test/fixtures/gpt2_tiny.bin"));
}

TEST_CASE("GPT-2 matches PyTorch (logits, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    for (MatmulBackend backend : {MatmulBackend::cublas, MatmulBackend::tiled}) {
        CAPTURE(backend == MatmulBackend::cublas ? "cublas" : "tiled");
        set_matmul_backend(backend);
        check_against_huggingface<DeviceOps>(load_fixture("test/fixtures/gpt2_tiny.bin"));
    }
    set_matmul_backend(MatmulBackend::cublas);
}

// Mixed precision against test/fixtures/gpt2_tiny_bf16.bin: dev/reference_gpt2.py --bf16 runs a smaller GPT-2
// (n_embd 32, one head of 32, so params + grads fit the fixture budget) under our bf16 rule (layers.cuh, top)
// written out in PyTorch: the same bf16 weights, every activation and activation gradient rounded to bf16 where
// our kernels store one, autocast's bf16 linear for the matmuls, fp32 masters and AdamW. u = 2^-8, and a bf16
// value that differs by one unit in the last place differs by at most 2u relative. Tolerances (atol in units of
// the reference tensor's RMS, ModelTolerance) per attention backend:
//
// Flash attention (fp32 scores, softmax and P·V, as the fixture): the model applies the fixture's roundings to
// fp32 values that differ only in the order of their sums (relative ~K·2^-24, K <= 128), so a stored bf16 value
// differs only when the two straddle a rounding boundary, by one unit: 2u.
//   logits: atol 2u, rtol 2u (one unit), norm u/4: a unit in every 64th logit (2u·√(1/64) = u/4). Measured: all
//           976 logits bit-identical. The fp32 model, or the fixture without the rule's roundings (pure autocast),
//           is 1.3u away in norm.
//   grads:  the fixture's matmul weight and bias gradients went through autocast's bf16 copy, so each is
//           bf16(our fp32 sum): |ref − g| <= u·|g|, u per element and u over the norm (every element within u),
//           plus a unit of an upstream flip: atol u, rtol 2u, norm u. Measured: relative norm <= 0.46u (the
//           rounding; compared with our gradients rounded to bf16, <= 0.011u); the norm gains' and wpe's
//           gradients, which neither side rounds, <= 0.04u.
//   loss:   an fp32 function of logits that match: the fp32 model's 1e-4.
//   losses: 10 AdamW steps amplify a one-unit difference: PyTorch against itself with fp64 between the roundings
//           drifts by 0.27u by the last step. u·max(loss, 1); measured <= 0.25u, the fp32 model 4.1u.
//
// Tensor-core attention (what --precision bf16 trains with): P is rounded to bf16 before P·V (and the backward's
// dS before its products), which moves each attention output by up to u·Σ p·|v| <= u·max|v|: one rounding more
// per attention output, carried by the later layers like any other. So logits may differ by a few units where the
// fixture and the model straddle: atol 4u, rtol 4u (two units: the rounding of P carried to the logits, and a
// straddled rounding), norm u (one rounding of every element; measured 0.56u, so the fp32 model's 1.3u fails).
// Gradients carry that through the backward and through a second, independent rounding (dS): atol 8u, rtol 8u,
// norm 2u (measured: worst element 4.4u of |ref| + RMS, norm <= 1.03u). The loss and losses as above (measured
// 0.005u and <= 0.26u). The flash run is the sharp one: under this attention the fp32 model fails only the
// logits' norm (1.29u against u).
// Measured in the CPU build, 2026-11-30; docs/mixed-precision.md lists the code changes this test caught.
constexpr double u_bf16 = bf16_unit_roundoff;
constexpr ModelTolerance tolerance_model_bf16{
    {2 * u_bf16, 2 * u_bf16, u_bf16 / 4}, {u_bf16, 2 * u_bf16, u_bf16}, tolerance_model, u_bf16};
constexpr ModelTolerance tolerance_model_bf16_wmma_attention{
    {4 * u_bf16, 4 * u_bf16, u_bf16}, {8 * u_bf16, 8 * u_bf16, 2 * u_bf16}, tolerance_model, u_bf16};

TEST_CASE("GPT-2 in bf16 matches PyTorch's bf16 run (logits, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    Fixture x = load_fixture("test/fixtures/gpt2_tiny_bf16.bin");
    REQUIRE(x.header.value("precision", std::string()) == "bf16");
    for (AttentionBackend attention : {AttentionBackend::flash, AttentionBackend::wmma})
        for (MatmulBackend matmul : {MatmulBackend::cublas, MatmulBackend::tiled, MatmulBackend::wmma}) {
            std::string backends = std::string(attention == AttentionBackend::flash ? "flash" : "wmma") +
                                   " attention, " +
                                   (matmul == MatmulBackend::cublas  ? "cublas"
                                    : matmul == MatmulBackend::tiled ? "tiled"
                                                                     : "wmma") +
                                   " matmul";
            CAPTURE(backends);
            set_attention_backend(attention);
            set_matmul_backend(matmul);
            check_against_huggingface<DeviceOps, __nv_bfloat16>(
                x, attention == AttentionBackend::flash ? tolerance_model_bf16 : tolerance_model_bf16_wmma_attention);
        }
    set_attention_backend(AttentionBackend::flash);
    set_matmul_backend(MatmulBackend::cublas);
}

TEST_CASE("config validation names what is wrong") {
    GPTConfig c;
    c.n_head = 5;
    CHECK_THROWS_WITH(c.validate(), doctest::Contains("divisible by n_head"));
    c = GPTConfig{};
    c.n_kv_head = 4;
    CHECK_THROWS_WITH(c.validate(), doctest::Contains("llama"));
}
