// bench_layers.cu — times every kernel of layers.cuh (every matmul backend, fp32 and bf16) and prints each next to
// its floor: the time the op's unavoidable bytes take at the memory bandwidth, or its FLOPs at the
// fp32 peak, whichever is larger.
//
//   on a GPU:  GPT-2 124M shapes (B=8, T=1024, C=768, V=50257, Vp=50304); floors from the device's
//              nominal bandwidth and fp32 peak; L2 flushed before every timed call.
//   CPU build: small shapes by default (the emulator runs one fiber per CUDA thread), `--full` for the
//              GPT-2 ones; floors measured on this machine (memcpy bandwidth, OpenBLAS SGEMM rate).
//
// usage: bench_layers [--full] [--iters N]
#include <algorithm>
#include <string>
#include <vector>

#include "layers.cuh"
#include "dev/bench_util.h"

struct Machine {
    std::string name;
    bool emulated = false;
    double bytes_per_ms = 0, flops_per_ms = 0;  // the floors' rates
    double bf16_flops_per_ms = 0;               // dense bf16 on tensor cores (the bf16 matmul rows' floor)
    std::string floor_source;
    size_t l2_bytes = 0;
};


// Nominal rates from the device attributes on a GPU; measured ones in the CPU build (whose virtual
// device answers the attributes with an A100's numbers, which say nothing about this CPU).
static Machine describe_machine() {
    Machine m;
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
    m.name = prop.name;
    m.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
    int mem_khz = 0, bus_bits = 0, sm_khz = 0;
    std::string name;
    if (have_real_gpu(name) && cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, 0) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) == cudaSuccess &&
        cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, 0) == cudaSuccess) {
        int fp32_lanes_per_sm = prop.major == 8 && prop.minor == 0 ? 64 : 128;  // A100: 64; sm_86/89/90: 128
        m.bytes_per_ms = 2.0 * mem_khz * (bus_bits / 8);  // double data rate; kHz·bytes = bytes/ms
        m.flops_per_ms =
            2.0 * fp32_lanes_per_sm * prop.multiProcessorCount * static_cast<double>(sm_khz);  // FMA = 2 FLOP
        // dense bf16 tensor-core FLOPs per SM per clock: 2048 on sm_80 (A100: 312 TFLOP/s), 4096 on sm_90
        // (H100 SXM: 989 TFLOP/s at 1830 MHz); other archs get sm_80's rate
        double bf16_per_sm_clock = prop.major >= 9 ? 4096 : 2048;
        m.bf16_flops_per_ms = bf16_per_sm_clock * prop.multiProcessorCount * static_cast<double>(sm_khz);
        m.floor_source = "nominal (memory clock × bus width; SMs × fp32 lanes × clock)";
        return m;
    }
    cudaGetLastError();  // clear an attribute's "not supported" error
    m.emulated = true;
    m.l2_bytes = 0;  // no L2 to flush
    m.bytes_per_ms = host_copy_bytes_per_ms();
    {  // fp32 GEMM rate of OpenBLAS through the emulated cuBLAS, 512³
        int n = 512;
        DeviceBuffer<float> a(static_cast<size_t>(n) * n), b(static_cast<size_t>(n) * n), c(static_cast<size_t>(n) * n);
        cuda_check(cudaMemset(a, 0, a.bytes()));
        cuda_check(cudaMemset(b, 0, b.bytes()));
        const float one = 1.0f, zero = 0.0f;
        std::vector<double> t;
        for (int i = 0; i < 5; i++) {
            Timer timer;
            cublas_check(
                cublasSgemm(cublas_handle(), CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, n, b, n, &zero, c, n));
            t.push_back(timer.elapsed_ms());
        }
        m.flops_per_ms = 2.0 * n * n * n / median(t);
    }
    m.bf16_flops_per_ms = m.flops_per_ms;  // the CPU build converts bf16 to fp32 and runs SGEMM
    m.floor_source = "measured on this CPU (memcpy bandwidth; OpenBLAS SGEMM 512^3)";
    return m;
}

struct Bench {
    Machine machine;
    int iters;
    DeviceBuffer<char> flush;  // written before every timed call so no operand stays in L2

    Bench(const Machine& m, int iters_) : machine(m), iters(iters_) {
        if (m.l2_bytes) flush = DeviceBuffer<char>(2 * m.l2_bytes);
        std::printf("%-38s %-30s %10s %14s %10s %8s\n", "op", "shape", "time ms", "achieved", "floor ms", "% floor");
    }
    // Times `op` (median of `iters` after 2 warm-up calls) and prints its row. bytes: what the op must
    // move at least; flops: what it must compute. The achieved rate shown is the one that sets the floor.
    // flops_per_ms: the compute rate of the floor (0: the fp32 peak).
    template <class Op>
    void run(const std::string& name, const std::string& shape, double bytes, double flops, Op op,
             double flops_per_ms = 0) {
        double ms = median_ms(std::function<void()>(op), 2, iters, flush);
        double memory_floor = bytes / machine.bytes_per_ms,
               compute_floor = flops / (flops_per_ms ? flops_per_ms : machine.flops_per_ms);
        double floor = std::max(memory_floor, compute_floor);
        char achieved[32];
        if (compute_floor > memory_floor) std::snprintf(achieved, sizeof achieved, "%.3f TFLOP/s", flops / ms * 1e-9);
        else std::snprintf(achieved, sizeof achieved, "%.1f GB/s", bytes / ms * 1e-6);
        std::printf("%-38s %-30s %10.3f %14s %10.4f %7.1f%%\n", name.c_str(), shape.c_str(), ms, achieved, floor,
                    100.0 * floor / ms);
    }
};

static std::vector<float> random_host(size_t n, Rng& rng, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = rng.uniform(-scale, scale);
    return v;
}

int main(int argc, char** argv) {
    bool full = false;
    int iters = -1;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--full") full = true;
        else if (a == "--iters" && i + 1 < argc) iters = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "bench_layers: unknown argument '%s' (usage: bench_layers [--full] [--iters N])\n",
                         a.c_str());
            return 1;
        }
    }
    try {
        Machine machine = describe_machine();
        bool big = full || !machine.emulated;
        if (iters < 0) iters = machine.emulated ? 5 : 20;
        const int B = big ? 8 : 2, T = big ? 1024 : 64, C = big ? 768 : 128, V = big ? 50257 : 1000,
                  Vp = big ? 50304 : 1024;
        const int N = B * T, H = (8 * C / 3 + 63) / 64 * 64;  // Llama hidden width (a multiple of 64, as Llama rounds)
        const size_t n_params = big ? 124475904 : 1 << 20;
        std::printf("machine: %s\nfloors: %s: %.0f GB/s, %.2f TFLOP/s fp32, %.2f TFLOP/s bf16 (tensor cores)\n",
                    machine.name.c_str(), machine.floor_source.c_str(), machine.bytes_per_ms * 1e-6,
                    machine.flops_per_ms * 1e-9, machine.bf16_flops_per_ms * 1e-9);
        std::printf("shapes: B=%d T=%d C=%d V=%d Vp=%d H=%d (N = B·T = %d)%s\n\n", B, T, C, V, Vp, H, N,
                    big ? "" : "  [small: the CPU emulator; --full for GPT-2 124M]");

        Rng rng(42);
        const double f = sizeof(float);
        const double NC = static_cast<double>(N) * C;
        auto shape = [](std::initializer_list<std::pair<const char*, long>> dims) {
            std::string s;
            for (auto [k, v] : dims) {
                if (!s.empty()) s += ' ';
                s += k;
                s += '=';
                s += std::to_string(v);
            }
            return s;
        };
        Bench bench(machine, iters);

        // Buffers, shared by the ops (sizes for the largest use).
        std::vector<int> tokens(N), targets(N);
        for (auto& t : tokens) t = static_cast<int>(rng.below(V));
        for (auto& t : targets) t = static_cast<int>(rng.below(V));
        DeviceBuffer<int> d_tokens(tokens), d_targets(targets);
        DeviceBuffer<float> wte(random_host(static_cast<size_t>(V) * C, rng)),
            wpe(random_host(static_cast<size_t>(T) * C, rng));
        DeviceBuffer<float> dwte(static_cast<size_t>(V) * C), dwpe(static_cast<size_t>(T) * C);
        size_t act = static_cast<size_t>(N) * std::max(4 * C, 2 * H);
        DeviceBuffer<float> x(random_host(act, rng)), y(random_host(act, rng)), dx(random_host(act, rng)),
            dy(random_host(act, rng));
        DeviceBuffer<float> w(random_host(static_cast<size_t>(Vp) * C, rng)), dw(static_cast<size_t>(Vp) * C);
        DeviceBuffer<float> bias(random_host(std::max(Vp, 4 * C), rng)), dbias(std::max(Vp, 4 * C));
        DeviceBuffer<float> mean(N), rstd(N), losses(N), norm(1);
        DeviceBuffer<float> logits(random_host(static_cast<size_t>(N) * Vp, rng, 4.0f));

        // 1. encoder. The backward writes only the rows of tokens that occur.
        std::vector<int> sorted = tokens;
        std::sort(sorted.begin(), sorted.end());
        double unique = static_cast<double>(std::unique(sorted.begin(), sorted.end()) - sorted.begin());
        bench.run("encoder_forward", shape({{"B", B}, {"T", T}, {"C", C}}), 3 * NC * f, 0,
                  [&] { encoder_forward(y.ptr, d_tokens.ptr, wte.ptr, wpe.ptr, B, T, C, nullptr); });
        bench.run("encoder_backward", shape({{"B", B}, {"T", T}, {"C", C}}), (NC + 2 * unique * C + 2.0 * T * C) * f, 0,
                  [&] { encoder_backward(dwte.ptr, dwpe.ptr, dy.ptr, d_tokens.ptr, B, T, C, nullptr); });

        // 2. norms
        bench.run("layernorm_forward", shape({{"N", N}, {"C", C}}), 2 * NC * f, 0,
                  [&] { layernorm_forward(y.ptr, mean.ptr, rstd.ptr, x.ptr, w.ptr, bias.ptr, N, C, nullptr); });
        bench.run("layernorm_backward", shape({{"N", N}, {"C", C}}), 4 * NC * f, 0, [&] {
            layernorm_backward(dx.ptr, dw.ptr, dbias.ptr, dy.ptr, x.ptr, w.ptr, mean.ptr, rstd.ptr, N, C, nullptr);
        });
        bench.run("rmsnorm_forward", shape({{"N", N}, {"C", C}}), 2 * NC * f, 0,
                  [&] { rmsnorm_forward(y.ptr, rstd.ptr, x.ptr, w.ptr, N, C, 1e-5f, nullptr); });
        bench.run("rmsnorm_backward", shape({{"N", N}, {"C", C}}), 4 * NC * f, 0,
                  [&] { rmsnorm_backward(dx.ptr, dw.ptr, dy.ptr, x.ptr, w.ptr, rstd.ptr, N, C, nullptr); });

        // 3. matmul at the GPT-2 block's shapes and the lm_head, with each backend: x, w, bias, out and dx are T
        // (dout is the forward's out), dweight and dbias fp32 as in training; the floor's compute rate is `rate`
        struct Linear { const char* name; int in, out; };
        auto bench_matmuls = [&]<class T>(std::initializer_list<MatmulBackend> backends, const char* precision,
                                          double rate, T* x_, T* w_, T* bias_, T* dx_, T* out_block, T* out_head) {
            for (MatmulBackend backend : backends) {
                set_matmul_backend(backend);
                std::string tag = std::string(" [") +
                                  (backend == MatmulBackend::cublas ? "cublas" :
                                   backend == MatmulBackend::tiled  ? "tiled" : "wmma") + precision + "]";
                for (Linear l : {Linear{"qkv", C, 3 * C}, Linear{"fc", C, 4 * C}, Linear{"fcproj", 4 * C, C},
                                 Linear{"lm_head", C, Vp}}) {
                    double flops = 2.0 * N * l.in * l.out;
                    double bytes = (static_cast<double>(N) * l.in + static_cast<double>(l.out) * l.in +
                                    static_cast<double>(N) * l.out) * sizeof(T);
                    T* out = l.name == std::string("lm_head") ? out_head : out_block;
                    std::string s = shape({{"N", N}, {"C", l.in}, {"OC", l.out}});
                    bench.run(std::string("matmul_forward ") + l.name + tag, s, bytes, flops,
                              [&] { matmul_forward(out, x_, w_, bias_, N, l.in, l.out, nullptr); }, rate);
                    bench.run(std::string("matmul_backward ") + l.name + tag, s, 2 * bytes, 2 * flops, [&] {
                        matmul_backward(dx_, dw.ptr, dbias.ptr, out, x_, w_, N, l.in, l.out, nullptr);
                    }, rate);
                }
            }
        };
        bench_matmuls({MatmulBackend::cublas, MatmulBackend::tiled}, "", machine.flops_per_ms, x.ptr, w.ptr,
                      bias.ptr, dx.ptr, y.ptr, logits.ptr);
        // the same products in bf16 (fp32 sums) against the tensor cores' bf16 peak: cuBLAS (cublasGemmEx) and
        // the hand-written wmma kernel
        {
            auto bf16 = [](const std::vector<float>& v) {
                std::vector<__nv_bfloat16> b(v.size());
                for (size_t i = 0; i < v.size(); i++) b[i] = __float2bfloat16_rn(v[i]);
                return b;
            };
            size_t wn = static_cast<size_t>(Vp) * C, on = static_cast<size_t>(N) * Vp;
            DeviceBuffer<__nv_bfloat16> x16(bf16(random_host(act, rng))), dx16(act), w16(bf16(random_host(wn, rng)));
            DeviceBuffer<__nv_bfloat16> bias16(bf16(random_host(std::max(Vp, 4 * C), rng))), out16(on);
            bench_matmuls({MatmulBackend::cublas, MatmulBackend::wmma}, " bf16", machine.bf16_flops_per_ms,
                          x16.ptr, w16.ptr, bias16.ptr, dx16.ptr, out16.ptr, out16.ptr);
        }
        set_matmul_backend(MatmulBackend::cublas);

        // 4. activations: GELU on the fc output (N, 4C); SwiGLU on Llama's (N, 2H) -> (N, H)
        int n_gelu = N * 4 * C;
        bench.run("gelu_forward", shape({{"N", N}, {"4C", 4 * C}}), 2.0 * n_gelu * f, 0,
                  [&] { gelu_forward(y.ptr, x.ptr, n_gelu, nullptr); });
        bench.run("gelu_backward", shape({{"N", N}, {"4C", 4 * C}}), 4.0 * n_gelu * f, 0,
                  [&] { gelu_backward(dx.ptr, x.ptr, dy.ptr, n_gelu, nullptr); });
        double NH = static_cast<double>(N) * H;
        bench.run("swiglu_forward", shape({{"N", N}, {"H", H}}), 3 * NH * f, 0,
                  [&] { swiglu_forward(y.ptr, x.ptr, N, H, nullptr); });
        bench.run("swiglu_backward", shape({{"N", N}, {"H", H}}), 7 * NH * f, 0,
                  [&] { swiglu_backward(dx.ptr, x.ptr, dy.ptr, N, H, nullptr); });

        // 5. residual
        int n_res = N * C;
        bench.run("residual_forward", shape({{"N", N}, {"C", C}}), 3 * NC * f, 0,
                  [&] { residual_forward(y.ptr, x.ptr, dx.ptr, n_res, nullptr); });
        bench.run("residual_backward", shape({{"N", N}, {"C", C}}), 5 * NC * f, 0,
                  [&] { residual_backward(dx.ptr, y.ptr, dy.ptr, n_res, nullptr); });

        // 6. classifier (in place: after the first call the buffer holds dlogits; the cost is the same)
        double NV = static_cast<double>(N) * V, NVp = static_cast<double>(N) * Vp;
        bench.run("fused_classifier", shape({{"N", N}, {"V", V}, {"Vp", Vp}}), (NV + NVp) * f, 0,
                  [&] { fused_classifier(logits.ptr, losses.ptr, d_targets.ptr, 1.0f / N, N, V, Vp, true, nullptr); });
        bench.run("fused_classifier (loss only)", shape({{"N", N}, {"V", V}, {"Vp", Vp}}), NV * f, 0,
                  [&] { fused_classifier(logits.ptr, losses.ptr, d_targets.ptr, 1.0f / N, N, V, Vp, false, nullptr); });

        // 7. optimizer over all parameters
        DeviceBuffer<float> params(n_params), grads(n_params), m(n_params), v(n_params);
        for (auto* buf : {&params, &grads, &m, &v}) cuda_check(cudaMemset(*buf, 0, buf->bytes()));
        int step = 0;
        double n = static_cast<double>(n_params);
        bench.run("adamw_update", shape({{"params", static_cast<long>(n_params)}}), 7 * n * 4, 0, [&] {
            adamw_update(params, grads, m, v, n_params, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, ++step, 1.0f, nullptr);
        });
        bench.run("global_norm_squared", shape({{"params", static_cast<long>(n_params)}}), n * 4, 0,
                  [&] { global_norm_squared(norm, grads, n_params, nullptr); });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_layers: %s\n", e.what());
        return 1;
    }
    return 0;
}
