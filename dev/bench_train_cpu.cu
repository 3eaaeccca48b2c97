// bench_train_cpu: the CPU training path (HostOps: the CPU reference ops + OpenBLAS matmuls) against
// the machine's own OpenBLAS sgemm, measured in the same run.
//
//   model FLOP/s = 6 · parameters · tokens/s      (forward 2·P, backward 4·P per token)
//   ratio        = model FLOP/s / sgemm FLOP/s at 1024³      target: ≥ 25%
//
// The ratio, not the absolute numbers, is what carries from machine to machine: both sides use the
// same cores and the same BLAS. Each model also reports its peak resident memory (weights, gradients,
// AdamW moments, activations, OpenBLAS's buffers) and where a step's time goes.
// Run: make build/cpu/dev/bench_train_cpu && build/cpu/dev/bench_train_cpu [all|small|124m]
// (dev/bench_llmc.sh runs ./train_gpt_cpu against llm.c's train_gpt2.c side by side.)
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "gpt.cuh"

static double sgemm_gflops(int n, int repeats) {
    std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
    Rng rng(1);
    for (auto& x : a) x = rng.uniform(-1, 1);
    for (auto& x : b) x = rng.uniform(-1, 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                n);  // warm-up
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        Timer t;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                    n);
        best = std::min(best, t.elapsed_ms());
    }
    return 2.0 * n * n * n / (best / 1000.0) / 1e9;
}

struct Case {
    const char* name;
    GPTConfig config;
    int B, T;
};

// Peak resident memory of this process since the last reset_peak_rss(), in MiB (Linux: VmHWM, reset by
// writing 5 to /proc/self/clear_refs), so each model's peak is its own, not the largest so far.
static void reset_peak_rss() {
    if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) { std::fputs("5", f); std::fclose(f); }
}
static double peak_rss_mib() {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double kib = 0;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "VmHWM: %lf kB", &kib) == 1) break;
    std::fclose(f);
    return kib / 1024;
}

int main(int argc, char** argv) {
    restart_with_passive_openmp(argv);  // as train_gpt does (layers_cpu_blas.h)
    // which models: all (default), "small" (the two small ones), "124m" (GPT-2 124M at both shapes)
    std::string which = argc > 1 ? argv[1] : "all";
    if (which != "all" && which != "small" && which != "124m") {
        std::fprintf(stderr, "usage: bench_train_cpu [all|small|124m]\n");
        return 2;
    }
    GPTConfig shakespeare;  // configs/shakespeare_cpu.json's model
    shakespeare.n_layer = 4; shakespeare.n_head = 4; shakespeare.n_kv_head = 4; shakespeare.n_embd = 128;
    shakespeare.ffn_hidden = 512; shakespeare.max_seq_len = 128;
    GPTConfig wider = shakespeare;  // the same with 3x the width: the matmuls dominate more
    wider.n_layer = 6; wider.n_head = 6; wider.n_kv_head = 6; wider.n_embd = 384; wider.ffn_hidden = 1536;
    GPTConfig gpt2;  // GPTConfig's defaults are GPT-2 124M (L12, C768, maxT 1024)
    std::vector<Case> cases;
    if (which != "124m")
        cases.insert(cases.end(), {{"shakespeare_cpu (L4 C128, V 50257)", shakespeare, 16, 128},
                                   {"L6 C384, V 50257", wider, 8, 128}});
    if (which != "small") cases.insert(cases.end(), {{"GPT-2 124M", gpt2, 4, 64}, {"GPT-2 124M", gpt2, 8, 256}});
    const int steps = 4;
    double sgemm = sgemm_gflops(1024, 5);
    std::printf("CPU training path (HostOps) vs OpenBLAS sgemm 1024^3 on this machine\n");
    std::printf("sgemm 1024^3: %.1f GFLOP/s (best of 5)\n", sgemm);
    std::printf("per step (median of %d after a warm-up): zero grad, forward, backward, norm, AdamW\n\n",
                steps);
    std::printf("%-36s %11s %7s %8s %9s %7s %9s  %s\n", "model", "params", "B x T", "tok/s", "GFLOP/s", "%sgemm",
                "peak MiB", "ms: step = zero + fwd + bwd + norm + adamw");
    for (const Case& c : cases) {
        reset_peak_rss();
        GPT<HostOps> model(c.config);
        model.init_random(1);
        Rng rng(2);
        std::vector<int> x(static_cast<size_t>(c.B) * c.T), y(x.size());
        for (auto& t : x) t = static_cast<int>(rng.below(c.config.vocab_size));
        for (auto& t : y) t = static_cast<int>(rng.below(c.config.vocab_size));
        std::vector<double> total, phase[5];
        for (int s = 0; s < steps + 1; s++) {  // the first step allocates and warms up
            double ms[5];
            Timer t, all;
            model.zero_grad();
            ms[0] = t.elapsed_ms(); t = Timer();
            model.forward(x.data(), y.data(), c.B, c.T, 1.0f / (c.B * c.T));
            ms[1] = t.elapsed_ms(); t = Timer();
            model.backward();
            ms[2] = t.elapsed_ms(); t = Timer();
            float norm = model.grad_norm();
            ms[3] = t.elapsed_ms(); t = Timer();
            model.update(1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, s + 1, norm > 1.0f ? 1.0f / norm : 1.0f);
            ms[4] = t.elapsed_ms();
            if (s == 0) continue;
            total.push_back(all.elapsed_ms());
            for (int i = 0; i < 5; i++) phase[i].push_back(ms[i]);
        }
        auto median = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
        double step_ms = median(total), tok_s = c.B * c.T / (step_ms / 1000.0);
        double gflops = 6.0 * model.num_parameters * tok_s / 1e9;
        char shape[32];
        std::snprintf(shape, sizeof shape, "%dx%d", c.B, c.T);
        std::printf("%-36s %11zu %7s %8.0f %9.1f %6.1f%% %9.0f  %.0f = %.0f + %.0f + %.0f + %.0f + %.0f\n", c.name,
                    model.num_parameters, shape, tok_s, gflops, 100.0 * gflops / sgemm, peak_rss_mib(), step_ms,
                    median(phase[0]), median(phase[1]), median(phase[2]), median(phase[3]), median(phase[4]));
        std::fflush(stdout);
    }
    return 0;
}
