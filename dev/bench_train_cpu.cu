// bench_train_cpu: the CPU training path (HostOps: the CPU reference ops + OpenBLAS matmuls) against
// the machine's own OpenBLAS sgemm, measured in the same run.
//
//   model FLOP/s = 6 · parameters · tokens/s      (forward 2·P, backward 4·P per token)
//   ratio        = model FLOP/s / sgemm FLOP/s at 1024³      target: ≥ 25%
//
// The ratio, not the absolute numbers, is what carries from machine to machine: both sides use the
// same cores and the same BLAS. Run: make build/cpu/dev/bench_train_cpu && build/cpu/dev/bench_train_cpu
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "gpt.cuh"

static double sgemm_gflops(int n, int repeats) {
    std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
    Rng rng(1);
    for (auto& x : a) x = rng.uniform(-1, 1);
    for (auto& x : b) x = rng.uniform(-1, 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        Timer t;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
        best = std::min(best, t.elapsed_ms());
    }
    return 2.0 * n * n * n / (best / 1000.0) / 1e9;
}

struct Case {
    const char* name;
    GPTConfig config;
    int B, T;
};

int main() {
    GPTConfig shakespeare;  // configs/shakespeare_cpu.json's model
    shakespeare.n_layer = 4; shakespeare.n_head = 4; shakespeare.n_kv_head = 4; shakespeare.n_embd = 128;
    shakespeare.ffn_hidden = 512; shakespeare.max_seq_len = 128;
    GPTConfig wider = shakespeare;  // the same with 3x the width: the matmuls dominate more
    wider.n_layer = 6; wider.n_head = 6; wider.n_kv_head = 6; wider.n_embd = 384; wider.ffn_hidden = 1536;
    std::vector<Case> cases = {{"shakespeare_cpu (L4 C128, V 50257)", shakespeare, 16, 128},
                               {"L6 C384, V 50257", wider, 8, 128}};
    const int steps = 4;
    double sgemm = sgemm_gflops(1024, 5);
    std::printf("CPU training path (HostOps) vs OpenBLAS sgemm 1024^3 on this machine\n");
    std::printf("sgemm 1024^3: %.1f GFLOP/s (best of 5)\n\n", sgemm);
    std::printf("%-36s %12s %8s %10s %12s %8s\n", "model", "params", "B x T", "tok/s", "model GFLOP/s", "% sgemm");
    for (const Case& c : cases) {
        GPT<HostOps> model(c.config);
        model.init_random(1);
        Rng rng(2);
        std::vector<int> x(static_cast<size_t>(c.B) * c.T), y(x.size());
        for (auto& t : x) t = static_cast<int>(rng.below(c.config.vocab_size));
        for (auto& t : y) t = static_cast<int>(rng.below(c.config.vocab_size));
        std::vector<double> ms;
        for (int s = 0; s < steps + 1; s++) {  // the first step allocates and warms up
            Timer t;
            model.zero_grad();
            model.forward(x.data(), y.data(), c.B, c.T, 1.0f / (c.B * c.T));
            model.backward();
            float norm = model.grad_norm();
            model.update(1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1, norm > 1.0f ? 1.0f / norm : 1.0f);
            if (s > 0) ms.push_back(t.elapsed_ms());
        }
        std::sort(ms.begin(), ms.end());
        double median = ms[ms.size() / 2], tok_s = c.B * c.T / (median / 1000.0), gflops = 6.0 * model.num_parameters * tok_s / 1e9;
        char shape[32];
        std::snprintf(shape, sizeof shape, "%dx%d", c.B, c.T);
        std::printf("%-36s %12zu %8s %10.0f %12.1f %7.1f%%\n", c.name, model.num_parameters, shape, tok_s, gflops, 100.0 * gflops / sgemm);
    }
    return 0;
}
