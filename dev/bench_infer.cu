// bench_infer.cu — inference throughput of engine.cuh's engine: prefill tokens/s, decode tokens/s at 1 to 256
// concurrent sequences, and (on a GPU) decode time against its memory floor; speculative decoding's
// acceptance rate and speedup with a layer-skip draft (the target's first layers + its embeddings and head).
//
//   on a GPU:  GPT-2 124M (L=12, C=768, NH=12, V=50257, maxT=1024), the CUDA kernels (DeviceOps).
//              The decode floor: every step reads all weights once plus every sequence's KV cache, so
//              floor = (4·P + Σ_seq context·kv_bytes_per_token) / bandwidth (nominal: memory clock × bus width).
//   CPU build: the path infer_gpt_cpu runs (HostOps: CPU references + OpenBLAS), a small model by default
//              (L=4, C=256, NH=8, V=50257, maxT=256); `--full` for GPT-2 124M; `--model DIR` for the 134M Llama
//              that dev/make_bench_llama.py writes (the model of the comparison with llama2.c's run.c,
//              docs/benchmarks.md). Decode's floor uses the measured read bandwidth of all threads (decode only
//              reads weights); prefill is compared with OpenBLAS sgemm at the model's widest matmul shape.
//              Emulated kernels are not timed: their speed says nothing about a GPU.
//
// usage: bench_infer [--full] [--model PATH] (PATH: a checkpoint or HF directory instead of random weights)
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "hf.h"
#include "engine.cuh"
#include "dev/bench_util.h"


struct Machine {
    std::string name;
    bool gpu = false;
    double bytes_per_ms = 0;
    double sgemm_gflops = 0;  // CPU only: OpenBLAS sgemm at the prefill's widest matmul, the ceiling of prefill
};

static Machine describe_machine() {
    Machine m;
    cudaDeviceProp prop;
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0 && cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        m.name = prop.name;
    int mem_khz = 0, bus_bits = 0;
    if (!m.name.empty() && m.name.find("cudasim") == std::string::npos &&  // the emulator has no memory clock to ask
        cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, 0) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) == cudaSuccess && mem_khz > 0) {
        m.gpu = true;
        m.bytes_per_ms = 2.0 * mem_khz * (bus_bits / 8);
        return m;
    }
    cudaGetLastError();
    m.name = "CPU (HostOps: reference ops + OpenBLAS)";
    m.bytes_per_ms = host_read_bytes_per_ms();
    return m;
}

// The draft of layer-skip speculation: the target's first `layers` blocks, its embeddings, final norm and head.
// Per-layer tensors are (L, ...) layer-major, so the first layers are a prefix of each.
static std::pair<GPTConfig, std::vector<float>> layer_skip_draft(const GPTConfig& c, const std::vector<float>& params,
                                                                 int layers) {
    GPTConfig d = c;
    d.n_layer = layers;
    auto full = param_sizes(c), part = param_sizes(d);
    std::vector<float> out;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        out.insert(out.end(), params.begin() + static_cast<std::ptrdiff_t>(off),
                   params.begin() + static_cast<std::ptrdiff_t>(off + part[i]));
        off += full[i];
    }
    return {d, out};
}

template <class Ops>
static void bench(const Machine& mach, const LoadedModel& m, bool full, const std::string& path) {
    GPT<Ops> model(m.config);
    model.set_parameters(m.params);
    const GPTConfig& c = m.config;
    const double weight_bytes = model.num_parameters * sizeof(float);
    Rng rng(1);
    auto random_tokens = [&](int n) {
        std::vector<int> t(n);
        for (int& x : t) x = static_cast<int>(rng.below(static_cast<uint32_t>(c.vocab_size)));
        return t;
    };
    std::printf(
        "machine: %s; model: L=%d C=%d NH=%d V=%d maxT=%d, %.1f M parameters (%.0f MB); memory floor from %.1f GB/s "
        "(%s)\n",
        mach.name.c_str(), c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.max_seq_len, model.num_parameters / 1e6,
        weight_bytes / 1e6, mach.bytes_per_ms / 1e6, mach.gpu ? "nominal HBM" : "measured read, all threads");

    // ---- prefill: one prompt of T tokens in one forward
    {
        int T = std::min(c.max_seq_len, full || mach.gpu || !path.empty() ? 512 : 128);
        InferenceEngine<Ops> engine(model, {1, T, 16, 0});
        engine.set_blocks(0, [&] {
            std::vector<int> b(engine.max_blocks);
            for (int i = 0; i < engine.max_blocks; i++) b[i] = i;
            return b;
        }());
        std::vector<int> toks = random_tokens(T);
        std::vector<StepRow> rows;
        for (int p = 0; p < T; p++) rows.push_back({toks[p], p, 0, p == T - 1});
        std::vector<double> t;
        for (int i = 0; i < 4; i++) {
            Timer timer;
            engine.forward(rows);
            Ops::synchronize();
            if (i > 0) t.push_back(timer.elapsed_ms());
        }
        double ms = median(t), flop = 2.0 * model.num_parameters * T;
        std::printf("\n%-34s %10s %12s %14s\n", "prefill", "time ms", "tokens/s", "GFLOP/s (2PT)");
        std::printf("%-34s %10.2f %12.0f %14.1f\n", ("1 prompt x " + std::to_string(T) + " tokens").c_str(), ms,
                    T / (ms / 1000), flop / ms / 1e6);
        if (!mach.gpu) {  // the ceiling: sgemm alone at the shape of the MLP's first matmul (N = T, C -> fc width)
            const int C = c.n_embd, OC = c.fc_channels();
            std::vector<float> a(static_cast<size_t>(T) * C, 0.5f), w(static_cast<size_t>(OC) * C, 0.25f),
                o(static_cast<size_t>(T) * OC);
            std::vector<double> ts;
            for (int i = 0; i < 4; i++) {
                Timer timer;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, C, 1.0f, a.data(), C, w.data(), C, 0.0f,
                            o.data(), OC);
                if (i > 0) ts.push_back(timer.elapsed_ms());
            }
            double gf = 2.0 * T * C * OC / median(ts) / 1e6;
            std::printf("%-34s %10s %12s %14.1f   prefill = %.0f%% of it\n",
                        ("sgemm " + std::to_string(T) + "x" + std::to_string(C) + "x" + std::to_string(OC)).c_str(), "",
                        "", gf, 100 * flop / ms / 1e6 / gf);
        }
    }

    // ---- decode: B sequences with a context of `ctx` tokens each, one new token each per step
    {
        const int ctx = std::min(c.max_seq_len / 2, 128);
        std::vector<int> batches =
            mach.gpu || full ? std::vector<int>{1, 8, 16, 32, 64, 128, 256} : std::vector<int>{1, 8, 32};
        std::printf("\n%-34s %10s %12s %12s %10s %9s %11s\n", ("decode (context " + std::to_string(ctx) + ")").c_str(),
                    "ms/step", "tokens/s", "bytes/step", "floor ms", "% floor", "x batch 1");
        double batch1_tps = 0;
        for (int B : batches) {
            InferenceEngine<Ops> engine(model, {B, std::max(B, ctx), 16, 0});
            BlockAllocator alloc(engine.num_blocks);
            for (int s = 0; s < B; s++) {  // fill every sequence's cache (untimed)
                std::vector<int> blocks;
                alloc.allocate(engine.max_blocks, blocks);
                engine.set_blocks(s, blocks);
                std::vector<int> toks = random_tokens(ctx);
                std::vector<StepRow> rows;
                for (int p = 0; p < ctx; p++) rows.push_back({toks[p], p, s, false});
                engine.forward(rows);
            }
            const int steps = mach.gpu ? 20 : 9;
            std::vector<double> t;
            for (int i = 0; i < steps + 1; i++) {
                std::vector<StepRow> rows;
                for (int s = 0; s < B; s++)
                    rows.push_back(
                        {static_cast<int>(rng.below(static_cast<uint32_t>(c.vocab_size))), ctx + i, s, true});
                Timer timer;
                engine.forward(rows);
                Ops::synchronize();
                if (i > 0) t.push_back(timer.elapsed_ms());
            }
            double ms = median(t);
            double bytes = weight_bytes + static_cast<double>(B) * (ctx + steps / 2) * engine.kv_bytes_per_token();
            double floor_ms = bytes / mach.bytes_per_ms, tps = B / (ms / 1000);
            if (B == 1) batch1_tps = tps;
            std::printf("%-34s %10.3f %12.1f %12.3g %10.3f %8.1f%% %10.2fx\n", ("batch " + std::to_string(B)).c_str(),
                        ms, tps, bytes, floor_ms, 100 * floor_ms / ms, batch1_tps > 0 ? tps / batch1_tps : 0.0);
        }
    }

    // ---- speculative decoding with a layer-skip draft, greedy
    {
        int draft_layers = std::max(1, c.n_layer / 4), k = 4, n = mach.gpu || full ? 128 : 48;
        auto [dc, dp] = layer_skip_draft(c, model.get_parameters(), draft_layers);
        GPT<Ops> draft(dc);
        draft.set_parameters(dp);
        InferenceEngine<Ops> te(model, {1, 64, 16, 0}), de(draft, {1, 64, 16, 0});
        std::vector<int> prompt = random_tokens(16);
        SamplingSettings greedy{0.0f, 0, 1.0f};
        Timer t0;
        std::vector<Result> plain = serve(te, {Request{"p", prompt, n, greedy, 1, ""}}, -1);
        double plain_ms = t0.elapsed_ms();
        Timer t1;
        SpeculativeStats st;
        std::vector<int> spec = generate_speculative(te, de, prompt, n, k, greedy, 1, -1, &st);
        double spec_ms = t1.elapsed_ms();
        std::printf(
            "\nspeculative (greedy, draft = first %d of %d layers, k = %d, %d tokens): acceptance %.1f%%, %ld target "
            "forwards; "
            "%.1f ms vs %.1f ms plain = %.2fx; same tokens: %s\n",
            draft_layers, c.n_layer, k, n, 100 * st.acceptance_rate(), st.target_forwards, spec_ms, plain_ms,
            plain_ms / spec_ms, spec == plain.at(0).tokens ? "yes" : "NO");
    }
}

int main(int argc, char** argv) {
    try {
        bool full = false;
        std::string path;
        for (int i = 1; i < argc; i++) {
            std::string a = argv[i];
            if (a == "--full") full = true;
            else if (a == "--model" && i + 1 < argc) path = argv[++i];
            else throw std::runtime_error("usage: bench_infer [--full] [--model PATH]");
        }
        Machine mach = describe_machine();
        LoadedModel m;
        if (!path.empty()) m = load_model(path);
        else {
            GPTConfig& c = m.config;
            c.vocab_size = 50257;
            c.padded_vocab_size = 50304;
            bool big = full || mach.gpu;
            c.n_layer = big ? 12 : 4;
            c.n_embd = big ? 768 : 256;
            c.n_head = c.n_kv_head = big ? 12 : 8;
            c.ffn_hidden = 4 * c.n_embd;
            c.max_seq_len = big ? 1024 : 256;
            if (mach.gpu) {
                GPT<DeviceOps> init(c);
                init.init_random(1);
                m.params = init.get_parameters();
            } else {
                GPT<HostOps> init(c);
                init.init_random(1);
                m.params = init.get_parameters();
            }
        }
        if (mach.gpu) bench<DeviceOps>(mach, m, full, path);
        else bench<HostOps>(mach, m, full, path);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_infer: %s\n", e.what());
        return 1;
    }
}
