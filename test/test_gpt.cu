// The whole model against PyTorch: test/fixtures/gpt2_tiny.bin, written by dev/reference_gpt2.py from
// Hugging Face's GPT2LMHeadModel (random init, fixed seed). Both backends: the CPU reference ops
// (HostOps) and the CUDA kernels (DeviceOps: on a GPU, or emulated by cudasim in the CPU build).
#include "test/fixture.h"

TEST_CASE("GPT-2 matches PyTorch (logits, loss, every gradient, 10 AdamW steps): CPU reference path") {
    check_against_huggingface<HostOps>(load_fixture("test/fixtures/gpt2_tiny.bin"));
}

TEST_CASE("GPT-2 matches PyTorch (logits, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    for (MatmulBackend backend : {MatmulBackend::cublas, MatmulBackend::tiled, MatmulBackend::cublaslt}) {
        CAPTURE(static_cast<int>(backend));  // MatmulBackend: cublas, tiled, wmma, cublaslt
        set_matmul_backend(backend);
        check_against_huggingface<DeviceOps>(load_fixture("test/fixtures/gpt2_tiny.bin"));
    }
    set_matmul_backend(MatmulBackend::cublas);
}

// Mixed precision: test/fixtures/gpt2_tiny_bf16.bin, written by dev/reference_gpt2.py --bf16 (our bf16 rule
// written out in PyTorch; tolerances derived in test/fixture.h).
TEST_CASE("GPT-2 in bf16 matches PyTorch's bf16 run (logits, loss, every gradient, 10 AdamW steps): CUDA kernels") {
    check_against_pytorch_bf16("test/fixtures/gpt2_tiny_bf16.bin");
}

TEST_CASE("config validation names what is wrong") {
    GPTConfig c;
    c.n_head = 5;
    CHECK_THROWS_WITH(c.validate(), doctest::Contains("divisible by n_head"));
    c = GPTConfig{};
    c.n_kv_head = 4;
    CHECK_THROWS_WITH(c.validate(), doctest::Contains("llama"));
}
