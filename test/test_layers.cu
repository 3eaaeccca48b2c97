// Tests of layers.cuh. For every op:
//   - the kernel against the CPU reference (fp32), at several shapes including odd ones (T = 1, C not a
//     multiple of 32, V not a multiple of the matmul tile), under both thread orders of the CPU build;
//     forward outputs are poisoned with NaN first; gradient buffers start from random values, so a kernel
//     that overwrites instead of accumulating fails too;
//   - the CPU backward (in double) against central finite differences of the CPU forward, through the
//     scalar L = Σ forward(x)·w for a random w (then ∂L/∂out = w is the dout given to the backward).
#include <algorithm>
#include <functional>
#include <numeric>

#include "layers.cuh"
#include "layers_cpu_blas.h"
#include "test/test_util.h"

// ----------------------------------------------------------------------------
// Helpers.
static std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

static std::vector<int> random_tokens(size_t n, int V, Rng& rng) {
    std::vector<int> t(n);
    for (auto& x : t) x = static_cast<int>(rng.below(static_cast<uint32_t>(V)));
    return t;
}

static double dot(const std::vector<double>& a, const std::vector<double>& b) {
    return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// The gradient of a scalar loss with respect to x from a backward (`analytic`) against central finite
// differences of the loss.
static void check_finite_differences(const std::string& what, const std::vector<double>& x,
                                     const std::vector<double>& analytic,
                                     const std::function<double(const std::vector<double>&)>& loss) {
    std::vector<double> numeric = finite_difference(loss, x);
    double e = rel_error(analytic, numeric);
    INFO(what << ": backward vs finite differences, relative error " << e << " (tolerance "
              << tolerance_finite_difference << ")");
    CHECK(e <= tolerance_finite_difference);
}

// ----------------------------------------------------------------------------
// 1. Encoder
TEST_CASE("encoder forward/backward: kernel matches CPU reference") {
    Rng rng(101);
    struct Shape { int B, T, C, V; };
    for (Shape s :
         {Shape{1, 1, 7, 3}, Shape{2, 5, 33, 4}, Shape{3, 17, 96, 50}, Shape{2, 300, 40, 7}, Shape{1, 3, 1100, 2}}) {
        for (bool with_wpe : {true, false}) {
            CAPTURE(s.B); CAPTURE(s.T); CAPTURE(s.C); CAPTURE(s.V); CAPTURE(with_wpe);
            const int N = s.B * s.T, maxT = s.T + 3;
            std::vector<int> tokens = random_tokens(N, s.V, rng);  // small V: many repeated tokens
            std::vector<float> wte = random_vector(static_cast<size_t>(s.V) * s.C, rng),
                               wpe = random_vector(static_cast<size_t>(maxT) * s.C, rng);
            std::vector<float> dout = random_vector(static_cast<size_t>(N) * s.C, rng);
            std::vector<float> dwte0 = random_vector(wte.size(), rng), dwpe0 = random_vector(wpe.size(), rng);
            std::vector<float> out_ref(static_cast<size_t>(N) * s.C), dwte_ref = dwte0, dwpe_ref = dwpe0;
            encoder_forward_cpu(out_ref.data(), tokens.data(), wte.data(), with_wpe ? wpe.data() : nullptr, s.B, s.T,
                                s.C);
            encoder_backward_cpu(dwte_ref.data(), with_wpe ? dwpe_ref.data() : nullptr, dout.data(), tokens.data(), s.B,
                                 s.T, s.C);
            for_each_thread_order([&] {
                DeviceBuffer<int> d_tokens(tokens);
                DeviceBuffer<float> d_wte(wte), d_wpe(wpe), d_out(out_ref.size()), d_dout(dout), d_dwte(dwte0),
                    d_dwpe(dwpe0);
                poison(d_out);
                encoder_forward(d_out.ptr, d_tokens.ptr, d_wte.ptr, with_wpe ? d_wpe.ptr : nullptr, s.B, s.T, s.C,
                                nullptr);
                check_close("encoder out", d_out.download(), out_ref, tolerance_fp32_elementwise);
                encoder_backward(d_dwte.ptr, with_wpe ? d_dwpe.ptr : nullptr, d_dout.ptr, d_tokens.ptr, s.B, s.T, s.C,
                                 nullptr);
                std::vector<float> dwte = d_dwte.download();
                check_close("encoder dwte", dwte, dwte_ref, tolerance_fp32_reduction);
                check_close("encoder dwpe", d_dwpe.download(), with_wpe ? dwpe_ref : dwpe0, tolerance_fp32_reduction);
                // deterministic: a second run from the same start gives the same bits
                d_dwte.upload(dwte0);
                encoder_backward(d_dwte.ptr, with_wpe ? d_dwpe.ptr : nullptr, d_dout.ptr, d_tokens.ptr, s.B, s.T, s.C,
                                 nullptr);
                CHECK(d_dwte.download() == dwte);
            });
        }
    }
}

TEST_CASE("encoder backward (CPU, double) matches finite differences") {
    Rng rng(102);
    const int B = 2, T = 3, C = 5, V = 4, N = B * T;
    std::vector<int> tokens = random_tokens(N, V, rng);
    std::vector<double> wte = to_double(random_vector(V * C, rng)), wpe = to_double(random_vector(T * C, rng));
    std::vector<double> w = to_double(random_vector(N * C, rng)), dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
    encoder_backward_cpu(dwte.data(), dwpe.data(), w.data(), tokens.data(), B, T, C);
    auto loss = [&](const std::vector<double>& te, const std::vector<double>& pe) {
        std::vector<double> out(N * C);
        encoder_forward_cpu(out.data(), tokens.data(), te.data(), pe.data(), B, T, C);
        return dot(out, w);
    };
    check_finite_differences("dwte", wte, dwte, [&](const std::vector<double>& x) { return loss(x, wpe); });
    check_finite_differences("dwpe", wpe, dwpe, [&](const std::vector<double>& x) { return loss(wte, x); });
}

// ----------------------------------------------------------------------------
// 2. LayerNorm and RMSNorm
TEST_CASE("layernorm forward/backward: kernel matches CPU reference") {
    Rng rng(201);
    struct Shape { int N, C; };
    for (Shape s : {Shape{1, 7}, Shape{5, 33}, Shape{130, 100}, Shape{64, 768}}) {
        CAPTURE(s.N); CAPTURE(s.C);
        size_t NC = static_cast<size_t>(s.N) * s.C;
        std::vector<float> inp = random_vector(NC, rng), weight = random_vector(s.C, rng),
                           bias = random_vector(s.C, rng);
        for (size_t i = 0; i < NC; i++) inp[i] += 0.5f;  // a non-zero mean, so the mean path matters
        std::vector<float> dout = random_vector(NC, rng), dinp0 = random_vector(NC, rng), dw0 = random_vector(s.C, rng),
                           db0 = random_vector(s.C, rng);
        std::vector<float> out_ref(NC), mean_ref(s.N), rstd_ref(s.N), dinp_ref = dinp0, dw_ref = dw0, db_ref = db0;
        layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), weight.data(), bias.data(),
                              s.N, s.C);
        layernorm_backward_cpu(dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), weight.data(),
                               mean_ref.data(), rstd_ref.data(), s.N, s.C);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_inp(inp), d_w(weight), d_b(bias), d_out(NC), d_mean(s.N), d_rstd(s.N);
            DeviceBuffer<float> d_dout(dout), d_dinp(dinp0), d_dw(dw0), d_db(db0);
            poison(d_out); poison(d_mean); poison(d_rstd);
            layernorm_forward(d_out.ptr, d_mean.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, d_b.ptr, s.N, s.C, nullptr);
            check_close("layernorm out", d_out.download(), out_ref, tolerance_fp32_reduction);
            check_close("layernorm mean", d_mean.download(), mean_ref, tolerance_fp32_reduction);
            check_close("layernorm rstd", d_rstd.download(), rstd_ref, tolerance_fp32_reduction);
            layernorm_backward(d_dinp.ptr, d_dw.ptr, d_db.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_mean.ptr, d_rstd.ptr,
                               s.N, s.C, nullptr);
            check_close("layernorm dinp", d_dinp.download(), dinp_ref, tolerance_fp32_reduction);
            check_close("layernorm dweight", d_dw.download(), dw_ref, tolerance_fp32_reduction);
            check_close("layernorm dbias", d_db.download(), db_ref, tolerance_fp32_reduction);
        });
    }
}

TEST_CASE("layernorm backward (CPU, double) matches finite differences") {
    Rng rng(202);
    const int N = 3, C = 10;
    std::vector<double> inp = to_double(random_vector(N * C, rng)), weight = to_double(random_vector(C, rng)),
                        bias = to_double(random_vector(C, rng));
    std::vector<double> w = to_double(random_vector(N * C, rng));
    std::vector<double> out(N * C), mean(N), rstd(N), dinp(N * C, 0.0), dweight(C, 0.0), dbias(C, 0.0);
    layernorm_forward_cpu(out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), N, C);
    layernorm_backward_cpu(dinp.data(), dweight.data(), dbias.data(), w.data(), inp.data(), weight.data(), mean.data(),
                           rstd.data(), N, C);
    auto loss = [&](const std::vector<double>& x, const std::vector<double>& g, const std::vector<double>& b) {
        std::vector<double> o(N * C), m(N), r(N);
        layernorm_forward_cpu(o.data(), m.data(), r.data(), x.data(), g.data(), b.data(), N, C);
        return dot(o, w);
    };
    check_finite_differences("layernorm dinp", inp, dinp,
                             [&](const std::vector<double>& x) { return loss(x, weight, bias); });
    check_finite_differences("layernorm dweight", weight, dweight,
                             [&](const std::vector<double>& x) { return loss(inp, x, bias); });
    check_finite_differences("layernorm dbias", bias, dbias,
                             [&](const std::vector<double>& x) { return loss(inp, weight, x); });
}

TEST_CASE("rmsnorm forward/backward: kernel matches CPU reference") {
    Rng rng(203);
    struct Shape { int N, C; float eps; };
    for (Shape s : {Shape{1, 7, 1e-5f}, Shape{5, 33, 1e-6f}, Shape{130, 100, 1e-5f}, Shape{64, 768, 1e-5f}}) {
        CAPTURE(s.N); CAPTURE(s.C);
        size_t NC = static_cast<size_t>(s.N) * s.C;
        std::vector<float> inp = random_vector(NC, rng), weight = random_vector(s.C, rng);
        std::vector<float> dout = random_vector(NC, rng), dinp0 = random_vector(NC, rng), dw0 = random_vector(s.C, rng);
        std::vector<float> out_ref(NC), rstd_ref(s.N), dinp_ref = dinp0, dw_ref = dw0;
        rmsnorm_forward_cpu(out_ref.data(), rstd_ref.data(), inp.data(), weight.data(), s.N, s.C, s.eps);
        rmsnorm_backward_cpu(dinp_ref.data(), dw_ref.data(), dout.data(), inp.data(), weight.data(), rstd_ref.data(),
                             s.N, s.C);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_inp(inp), d_w(weight), d_out(NC), d_rstd(s.N), d_dout(dout), d_dinp(dinp0), d_dw(dw0);
            poison(d_out); poison(d_rstd);
            rmsnorm_forward(d_out.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, s.N, s.C, s.eps, nullptr);
            check_close("rmsnorm out", d_out.download(), out_ref, tolerance_fp32_reduction);
            check_close("rmsnorm rstd", d_rstd.download(), rstd_ref, tolerance_fp32_reduction);
            rmsnorm_backward(d_dinp.ptr, d_dw.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_rstd.ptr, s.N, s.C, nullptr);
            check_close("rmsnorm dinp", d_dinp.download(), dinp_ref, tolerance_fp32_reduction);
            check_close("rmsnorm dweight", d_dw.download(), dw_ref, tolerance_fp32_reduction);
        });
    }
}

TEST_CASE("rmsnorm backward (CPU, double) matches finite differences") {
    Rng rng(204);
    const int N = 3, C = 10;
    const double eps = 1e-5;
    std::vector<double> inp = to_double(random_vector(N * C, rng)), weight = to_double(random_vector(C, rng));
    std::vector<double> w = to_double(random_vector(N * C, rng));
    std::vector<double> out(N * C), rstd(N), dinp(N * C, 0.0), dweight(C, 0.0);
    rmsnorm_forward_cpu(out.data(), rstd.data(), inp.data(), weight.data(), N, C, eps);
    rmsnorm_backward_cpu(dinp.data(), dweight.data(), w.data(), inp.data(), weight.data(), rstd.data(), N, C);
    auto loss = [&](const std::vector<double>& x, const std::vector<double>& g) {
        std::vector<double> o(N * C), r(N);
        rmsnorm_forward_cpu(o.data(), r.data(), x.data(), g.data(), N, C, eps);
        return dot(o, w);
    };
    check_finite_differences("rmsnorm dinp", inp, dinp, [&](const std::vector<double>& x) { return loss(x, weight); });
    check_finite_differences("rmsnorm dweight", weight, dweight,
                             [&](const std::vector<double>& x) { return loss(inp, x); });
}

// ----------------------------------------------------------------------------
// 3. Matmul

// Forward and backward of one (N, C, OC) on the current backend; returns out, dinp, dweight, dbias.
struct MatmulResult { std::vector<float> out, dinp, dweight, dbias; };
struct MatmulCase {
    int N, C, OC;
    bool bias, dinp;
    std::vector<float> inp, weight, b, dout, dinp0, dweight0, dbias0;
    MatmulCase(int N_, int C_, int OC_, bool bias_, bool dinp_, Rng& rng)
        : N(N_), C(C_), OC(OC_), bias(bias_), dinp(dinp_) {
        inp = random_vector(static_cast<size_t>(N) * C, rng);
        weight = random_vector(static_cast<size_t>(OC) * C, rng);
        b = random_vector(OC, rng);
        dout = random_vector(static_cast<size_t>(N) * OC, rng);
        dinp0 = random_vector(inp.size(), rng);
        dweight0 = random_vector(weight.size(), rng);
        dbias0 = random_vector(OC, rng);
    }
    MatmulResult run_device() const {
        DeviceBuffer<float> d_inp(inp), d_w(weight), d_b(b), d_out(static_cast<size_t>(N) * OC), d_dout(dout);
        DeviceBuffer<float> d_dinp(dinp0), d_dw(dweight0), d_db(dbias0);
        poison(d_out);
        matmul_forward(d_out.ptr, d_inp.ptr, d_w.ptr, bias ? d_b.ptr : nullptr, N, C, OC, nullptr);
        matmul_backward(dinp ? d_dinp.ptr : nullptr, d_dw.ptr, bias ? d_db.ptr : nullptr, d_dout.ptr, d_inp.ptr,
                        d_w.ptr, N, C, OC, nullptr);
        return {d_out.download(), d_dinp.download(), d_dw.download(), d_db.download()};
    }
    template <class Forward, class Backward>
    MatmulResult run_host(Forward forward, Backward backward) const {
        MatmulResult r{std::vector<float>(static_cast<size_t>(N) * OC), dinp0, dweight0, dbias0};
        forward(r.out.data(), inp.data(), weight.data(), bias ? b.data() : nullptr, N, C, OC);
        backward(dinp ? r.dinp.data() : nullptr, r.dweight.data(), bias ? r.dbias.data() : nullptr, dout.data(),
                 inp.data(), weight.data(), N, C, OC);
        return r;
    }
    MatmulResult run_cpu() const { return run_host(matmul_forward_cpu<float>, matmul_backward_cpu<float>); }
};

static void check_matmul(const MatmulResult& got, const MatmulResult& want) {
    check_close("matmul out", got.out, want.out, tolerance_fp32_matmul);
    check_close("matmul dinp", got.dinp, want.dinp, tolerance_fp32_matmul);
    check_close("matmul dweight", got.dweight, want.dweight, tolerance_fp32_matmul);
    check_close("matmul dbias", got.dbias, want.dbias, tolerance_fp32_matmul);
}

struct BackendGuard {  // restores the default backend when a test ends, even on failure
    ~BackendGuard() { set_matmul_backend(MatmulBackend::cublas); }
};

static const char* backend_name(MatmulBackend b) {
    const char* names[] = {"cublas", "tiled", "wmma", "cublaslt"};  // MatmulBackend's order
    return names[static_cast<int>(b)];
}

TEST_CASE("matmul forward/backward: the fp32 backends match CPU reference") {
    Rng rng(301);
    BackendGuard guard;
    struct Shape { int N, C, OC; bool bias, dinp; };
    for (Shape s :
         {Shape{1, 7, 5, true, true}, Shape{33, 70, 130, true, true}, Shape{66, 64, 1000, false, true},
          Shape{17, 96, 200, true, false}, Shape{128, 128, 64, true, true}, Shape{300, 40, 260, true, true}}) {
        CAPTURE(s.N); CAPTURE(s.C); CAPTURE(s.OC); CAPTURE(s.bias); CAPTURE(s.dinp);
        MatmulCase mc(s.N, s.C, s.OC, s.bias, s.dinp, rng);
        MatmulResult ref = mc.run_cpu();
        for (MatmulBackend backend : {MatmulBackend::cublas, MatmulBackend::tiled, MatmulBackend::cublaslt}) {
            CAPTURE(backend_name(backend));
            set_matmul_backend(backend);
            for_each_thread_order([&] { check_matmul(mc.run_device(), ref); });
        }
    }
}

TEST_CASE("matmul tiled matches cuBLAS at every GPT-2 and Llama block shape (scaled down)") {
    Rng rng(302);
    BackendGuard guard;
    const int B = 2, T = 33, N = B * T;  // 66 rows: not a multiple of the 128-row tile
    for (int C : {64, 192}) {
        int hs = 32, NH = C / hs, NKV = NH / 2;
        int H = (8 * C / 3 + 1);  // Llama's hidden width 8/3·C (rounded up to an odd width on purpose)
        struct Layer { const char* name; int in, out; };
        for (Layer l : {Layer{"GPT-2 qkv", C, 3 * C}, Layer{"attention proj", C, C}, Layer{"GPT-2 fc", C, 4 * C},
                        Layer{"GPT-2 fcproj", 4 * C, C}, Layer{"Llama gate|up", C, 2 * H}, Layer{"Llama down", H, C},
                        Layer{"Llama GQA qkv", C, (NH + 2 * NKV) * hs}, Layer{"lm_head (Vp = 1000)", C, 1000}}) {
            CAPTURE(l.name); CAPTURE(C); CAPTURE(l.in); CAPTURE(l.out);
            MatmulCase mc(N, l.in, l.out, true, true, rng);
            set_matmul_backend(MatmulBackend::cublas);
            MatmulResult want = mc.run_device();
            set_matmul_backend(MatmulBackend::tiled);
            check_matmul(mc.run_device(), want);
        }
    }
}

// The tensor-core backend rounds the inputs to bf16, so it is checked against the fp32 reference with the
// bound bf16 allows (test_util.h, check_bf16_product), not fp32's tolerance.
TEST_CASE("matmul wmma (bf16 tensor cores) forward/backward matches the fp32 CPU reference within bf16 rounding") {
    Rng rng(303);
    BackendGuard guard;
    struct Shape { int N, C, OC; bool bias, dinp; };
    for (Shape s : {Shape{1, 7, 5, true, true}, Shape{33, 70, 130, true, true}, Shape{66, 64, 1000, false, true},
                    Shape{17, 96, 200, true, false}, Shape{128, 128, 64, true, true}, Shape{300, 40, 260, true, true},
                    Shape{66, 192, 768, true, true}}) {
        CAPTURE(s.N); CAPTURE(s.C); CAPTURE(s.OC); CAPTURE(s.bias); CAPTURE(s.dinp);
        MatmulCase mc(s.N, s.C, s.OC, s.bias, s.dinp, rng);
        MatmulResult ref = mc.run_cpu();
        MatmulCase absolute = mc;  // the reference on |inputs| gives Σ|a·b| (+ |bias|, + |accumulated|) per element
        for (auto* v : {&absolute.inp, &absolute.weight, &absolute.b, &absolute.dout, &absolute.dinp0,
                        &absolute.dweight0, &absolute.dbias0})
            for (float& x : *v) x = std::fabs(x);
        MatmulResult magnitude = absolute.run_cpu();
        const int K = std::max({s.N, s.C, s.OC});
        set_matmul_backend(MatmulBackend::wmma);
        for_each_thread_order([&] {
            MatmulResult got = mc.run_device();
            check_bf16_product("matmul wmma out", got.out, ref.out, magnitude.out, K);
            check_bf16_product("matmul wmma dinp", got.dinp, ref.dinp, magnitude.dinp, K);
            check_bf16_product("matmul wmma dweight", got.dweight, ref.dweight, magnitude.dweight, K);
            check_bf16_product("matmul wmma dbias", got.dbias, ref.dbias, magnitude.dbias, K);
            // and the inputs really were rounded to bf16 (fp32 products stay within tolerance_fp32 = 1e-5)
            if (s.C >= 16) CHECK(rel_error(got.out, ref.out) > 1e-4);
        });
    }
}

// OpenBLAS versions: compiled and run in the CPU build only (the nvcc build does not link OpenBLAS).
template <bool run>
void check_matmul_cpu_blas() {
    if constexpr (run) {
        Rng rng(303);
        // N <= matmul_rows_max takes the decode path (matmul_forward_rows_cpu: OC % 4 = 1, 2, 3 test its last
        // group), larger N OpenBLAS's sgemm
        for (auto [N, C, OC] : {std::tuple{1, 7, 5}, std::tuple{3, 64, 7}, std::tuple{matmul_rows_max, 96, 130},
                                std::tuple{33, 70, 130}, std::tuple{66, 192, 768}}) {
            CAPTURE(N); CAPTURE(C); CAPTURE(OC);
            for (bool bias : {true, false}) {
                MatmulCase mc(N, C, OC, bias, bias, rng);
                check_matmul(mc.run_host(matmul_forward_cpu_blas, matmul_backward_cpu_blas), mc.run_cpu());
            }
        }
    }
}

TEST_CASE("matmul CPU OpenBLAS path matches the plain-loop reference (CPU build)") {
    check_matmul_cpu_blas<cpu_build>();
}

TEST_CASE("matmul backward (CPU, double) matches finite differences") {
    Rng rng(304);
    const int N = 3, C = 5, OC = 4;
    std::vector<double> inp = to_double(random_vector(N * C, rng)), weight = to_double(random_vector(OC * C, rng)),
                        bias = to_double(random_vector(OC, rng));
    std::vector<double> w = to_double(random_vector(N * OC, rng));
    std::vector<double> dinp(N * C, 0.0), dweight(OC * C, 0.0), dbias(OC, 0.0);
    matmul_backward_cpu(dinp.data(), dweight.data(), dbias.data(), w.data(), inp.data(), weight.data(), N, C, OC);
    auto loss = [&](const std::vector<double>& x, const std::vector<double>& W, const std::vector<double>& b) {
        std::vector<double> o(N * OC);
        matmul_forward_cpu(o.data(), x.data(), W.data(), b.data(), N, C, OC);
        return dot(o, w);
    };
    check_finite_differences("matmul dinp", inp, dinp,
                             [&](const std::vector<double>& x) { return loss(x, weight, bias); });
    check_finite_differences("matmul dweight", weight, dweight,
                             [&](const std::vector<double>& x) { return loss(inp, x, bias); });
    check_finite_differences("matmul dbias", bias, dbias,
                             [&](const std::vector<double>& x) { return loss(inp, weight, x); });
}

// ----------------------------------------------------------------------------
// 4. GELU, SwiGLU
TEST_CASE("gelu forward/backward: kernel matches CPU reference") {
    Rng rng(401);
    for (int N : {1, 31, 4096, 100003}) {
        CAPTURE(N);
        std::vector<float> inp = random_vector(N, rng, 3.0f), dout = random_vector(N, rng),
                           dinp0 = random_vector(N, rng);
        std::vector<float> out_ref(N), dinp_ref = dinp0;
        gelu_forward_cpu(out_ref.data(), inp.data(), N);
        gelu_backward_cpu(dinp_ref.data(), inp.data(), dout.data(), N);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_inp(inp), d_out(N), d_dout(dout), d_dinp(dinp0);
            poison(d_out);
            gelu_forward(d_out.ptr, d_inp.ptr, N, nullptr);
            check_close("gelu out", d_out.download(), out_ref, tolerance_fp32_elementwise);
            gelu_backward(d_dinp.ptr, d_inp.ptr, d_dout.ptr, N, nullptr);
            check_close("gelu dinp", d_dinp.download(), dinp_ref, tolerance_fp32_elementwise);
        });
    }
}

TEST_CASE("gelu backward (CPU, double) matches finite differences") {
    Rng rng(402);
    const int N = 40;
    std::vector<double> inp = to_double(random_vector(N, rng, 3.0f)), w = to_double(random_vector(N, rng)),
                        dinp(N, 0.0);
    gelu_backward_cpu(dinp.data(), inp.data(), w.data(), N);
    check_finite_differences("gelu dinp", inp, dinp, [&](const std::vector<double>& x) {
        std::vector<double> o(N);
        gelu_forward_cpu(o.data(), x.data(), N);
        return dot(o, w);
    });
}

TEST_CASE("swiglu forward/backward: kernel matches CPU reference") {
    Rng rng(403);
    struct Shape { int N, H; };
    for (Shape s : {Shape{1, 1}, Shape{3, 5}, Shape{66, 171}, Shape{64, 512}}) {
        CAPTURE(s.N); CAPTURE(s.H);
        size_t NH = static_cast<size_t>(s.N) * s.H;
        std::vector<float> inp = random_vector(2 * NH, rng, 3.0f), dout = random_vector(NH, rng),
                           dinp0 = random_vector(2 * NH, rng);
        std::vector<float> out_ref(NH), dinp_ref = dinp0;
        swiglu_forward_cpu(out_ref.data(), inp.data(), s.N, s.H);
        swiglu_backward_cpu(dinp_ref.data(), inp.data(), dout.data(), s.N, s.H);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_inp(inp), d_out(NH), d_dout(dout), d_dinp(dinp0);
            poison(d_out);
            swiglu_forward(d_out.ptr, d_inp.ptr, s.N, s.H, nullptr);
            check_close("swiglu out", d_out.download(), out_ref, tolerance_fp32_elementwise);
            swiglu_backward(d_dinp.ptr, d_inp.ptr, d_dout.ptr, s.N, s.H, nullptr);
            check_close("swiglu dinp", d_dinp.download(), dinp_ref, tolerance_fp32_elementwise);
        });
    }
}

TEST_CASE("swiglu backward (CPU, double) matches finite differences") {
    Rng rng(404);
    const int N = 3, H = 7;
    std::vector<double> inp = to_double(random_vector(2 * N * H, rng, 3.0f)), w = to_double(random_vector(N * H, rng)),
                        dinp(2 * N * H, 0.0);
    swiglu_backward_cpu(dinp.data(), inp.data(), w.data(), N, H);
    check_finite_differences("swiglu dinp", inp, dinp, [&](const std::vector<double>& x) {
        std::vector<double> o(N * H);
        swiglu_forward_cpu(o.data(), x.data(), N, H);
        return dot(o, w);
    });
}

// ----------------------------------------------------------------------------
// 5. Residual
TEST_CASE("residual forward/backward: kernel matches CPU reference") {
    Rng rng(501);
    for (int N : {1, 31, 100003}) {
        CAPTURE(N);
        std::vector<float> a = random_vector(N, rng), b = random_vector(N, rng), dout = random_vector(N, rng);
        std::vector<float> da0 = random_vector(N, rng), db0 = random_vector(N, rng), out_ref(N), da_ref = da0,
                           db_ref = db0;
        residual_forward_cpu(out_ref.data(), a.data(), b.data(), N);
        residual_backward_cpu(da_ref.data(), db_ref.data(), dout.data(), N);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_a(a), d_b(b), d_out(N), d_dout(dout), d_da(da0), d_db(db0);
            poison(d_out);
            residual_forward(d_out.ptr, d_a.ptr, d_b.ptr, N, nullptr);
            check_close("residual out", d_out.download(), out_ref, tolerance_fp32_elementwise);
            residual_backward(d_da.ptr, d_db.ptr, d_dout.ptr, N, nullptr);
            check_close("residual da", d_da.download(), da_ref, tolerance_fp32_elementwise);
            check_close("residual db", d_db.download(), db_ref, tolerance_fp32_elementwise);
        });
    }
}

TEST_CASE("residual backward (CPU, double) matches finite differences") {
    Rng rng(502);
    const int N = 10;
    std::vector<double> a = to_double(random_vector(N, rng)), b = to_double(random_vector(N, rng)),
                        w = to_double(random_vector(N, rng));
    std::vector<double> da(N, 0.0), db(N, 0.0);
    residual_backward_cpu(da.data(), db.data(), w.data(), N);
    auto loss = [&](const std::vector<double>& x, const std::vector<double>& y) {
        std::vector<double> o(N);
        residual_forward_cpu(o.data(), x.data(), y.data(), N);
        return dot(o, w);
    };
    check_finite_differences("residual da", a, da, [&](const std::vector<double>& x) { return loss(x, b); });
    check_finite_differences("residual db", b, db, [&](const std::vector<double>& x) { return loss(a, x); });
}

// ----------------------------------------------------------------------------
// 6. Fused classifier
TEST_CASE("fused classifier: kernel matches CPU reference (padded vocabulary, ignored rows, large logits)") {
    Rng rng(601);
    struct Shape { int N, V, Vp; };
    for (Shape s : {Shape{1, 5, 5}, Shape{6, 50, 67}, Shape{7, 1000, 1024}, Shape{3, 2000, 2048}}) {
        for (bool write_dlogits : {true, false}) {
            CAPTURE(s.N); CAPTURE(s.V); CAPTURE(s.Vp); CAPTURE(write_dlogits);
            std::vector<float> logits = random_vector(static_cast<size_t>(s.N) * s.Vp, rng, 4.0f);
            for (int v = 0; v < s.Vp; v++)
                logits[v] += 200.0f;  // row 0: e^z overflows fp32 unless the max is subtracted
            std::vector<int> targets = random_tokens(s.N, s.V, rng);
            if (s.N > 1) targets[1] = -1;  // an ignored row
            int valid = static_cast<int>(std::count_if(targets.begin(), targets.end(), [](int t) { return t >= 0; }));
            float dloss = 1.0f / valid;
            std::vector<float> dlogits_ref = logits, losses_ref(s.N);
            fused_classifier_cpu(dlogits_ref.data(), losses_ref.data(), targets.data(), dloss, s.N, s.V, s.Vp,
                                 write_dlogits);
            for_each_thread_order([&] {
                DeviceBuffer<float> d_logits(logits), d_losses(s.N);
                DeviceBuffer<int> d_targets(targets);
                poison(d_losses);
                fused_classifier(d_logits.ptr, d_losses.ptr, d_targets.ptr, dloss, s.N, s.V, s.Vp, write_dlogits,
                                 nullptr);
                check_close("classifier losses", d_losses.download(), losses_ref, tolerance_fp32_reduction);
                std::vector<float> dlogits = d_logits.download();
                check_close("classifier dlogits", dlogits, dlogits_ref, tolerance_fp32_reduction);
                if (write_dlogits)  // padding columns and ignored rows get exactly zero
                    for (int n = 0; n < s.N; n++)
                        for (int v = 0; v < s.Vp; v++)
                            if (v >= s.V || targets[n] < 0) REQUIRE(dlogits[static_cast<size_t>(n) * s.Vp + v] == 0.0f);
            });
        }
    }
}

TEST_CASE("fused classifier gradient (CPU, double) matches finite differences of dloss·Σ loss") {
    Rng rng(602);
    const int N = 4, V = 6, Vp = 8;
    std::vector<double> logits = to_double(random_vector(N * Vp, rng, 2.0f));
    std::vector<int> targets = {2, -1, 0, 5};
    const double dloss = 1.0 / 3;
    std::vector<double> dlogits = logits, losses(N);
    fused_classifier_cpu(dlogits.data(), losses.data(), targets.data(), dloss, N, V, Vp, true);
    check_finite_differences("classifier dlogits", logits, dlogits, [&](const std::vector<double>& z) {
        std::vector<double> zz = z, l(N);
        fused_classifier_cpu(zz.data(), l.data(), targets.data(), dloss, N, V, Vp, false);
        return dloss * std::accumulate(l.begin(), l.end(), 0.0);
    });
}

// ----------------------------------------------------------------------------
// 7. AdamW, global norm
TEST_CASE("adamw: kernel matches CPU reference over several steps") {
    Rng rng(701);
    for (size_t n : {size_t{1}, size_t{1000}, size_t{100003}}) {
        for (float weight_decay : {0.0f, 0.1f}) {
            CAPTURE(n); CAPTURE(weight_decay);
            std::vector<float> params = random_vector(n, rng), m(n, 0.0f), v(n, 0.0f);
            std::vector<float> p_ref = params, m_ref = m, v_ref = v;
            for_each_thread_order([&] {
                DeviceBuffer<float> d_p(params), d_m(m), d_v(v);
                std::vector<float> pr = p_ref, mr = m_ref, vr = v_ref;
                for (int step = 1; step <= 3; step++) {
                    std::vector<float> grads = random_vector(n, rng);
                    DeviceBuffer<float> d_g(grads);
                    adamw_update_cpu(pr.data(), grads.data(), mr.data(), vr.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f,
                                     weight_decay, step, 0.5f);
                    adamw_update(d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, weight_decay, step, 0.5f, nullptr);
                    CAPTURE(step);
                    check_close("adamw params", d_p.download(), pr, tolerance_fp32_elementwise);
                    check_close("adamw m", d_m.download(), mr, tolerance_fp32_elementwise);
                    check_close("adamw v", d_v.download(), vr, tolerance_fp32_elementwise);
                }
            });
        }
    }
}

TEST_CASE("global norm squared: kernel matches CPU reference and is deterministic") {
    Rng rng(702);
    for (size_t n :
         {size_t{1}, size_t{1000}, size_t{100003}, size_t{300001}}) {  // 300001 > 1024 blocks · 256: grid-stride
        CAPTURE(n);
        std::vector<float> g = random_vector(n, rng);
        float ref = global_norm_squared_cpu(g.data(), n);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_g(g), d_out(1);
            poison(d_out);
            global_norm_squared(d_out, d_g, n, nullptr);
            float got = d_out.download()[0];
            check_close("global norm squared", {got}, {ref}, tolerance_fp32_reduction);
            global_norm_squared(d_out, d_g, n, nullptr);
            CHECK(d_out.download()[0] == got);
        });
    }
}

// ----------------------------------------------------------------------------
// The CPU training path's fast ops (layers_cpu_blas.h) against the plain-loop references, at shapes that
// cover a partial last block (rows > 32 for layernorm's blocks, n > 16384 for the norm's). Gradients
// start random, so an op that overwrites instead of accumulating fails.
TEST_CASE("CPU fast ops (layers_cpu_blas.h) match the plain-loop references") {
    Rng rng(801);
    for (auto [N, C] : {std::pair{1, 7}, std::pair{67, 130}, std::pair{256, 768}}) {
        CAPTURE(N); CAPTURE(C);
        const size_t NC = static_cast<size_t>(N) * C;
        std::vector<float> x = random_vector(NC, rng), w = random_vector(C, rng), b = random_vector(C, rng);
        std::vector<float> dy = random_vector(NC, rng);
        std::vector<float> out_ref(NC), mean_ref(N), rstd_ref(N), out(NC, NAN), mean(N, NAN), rstd(N, NAN);
        layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(), w.data(), b.data(), N, C);
        layernorm_forward_cpu_fast(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
        check_close("layernorm out", out, out_ref, tolerance_fp32);
        check_close("layernorm mean", mean, mean_ref, tolerance_fp32);
        check_close("layernorm rstd", rstd, rstd_ref, tolerance_fp32);
        std::vector<float> dx_ref = random_vector(NC, rng), dw_ref = random_vector(C, rng);
        std::vector<float> db_ref = random_vector(C, rng), dx = dx_ref, dw = dw_ref, db = db_ref;
        layernorm_backward_cpu(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(),
                               mean_ref.data(), rstd_ref.data(), N, C);
        layernorm_backward_cpu_fast(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean_ref.data(),
                                    rstd_ref.data(), N, C);
        check_close("layernorm dinp", dx, dx_ref, tolerance_fp32);
        check_close("layernorm dweight", dw, dw_ref, tolerance_fp32);
        check_close("layernorm dbias", db, db_ref, tolerance_fp32);

        const int n = static_cast<int>(NC);
        std::vector<float> g_ref(NC), g(NC, NAN), dg_ref = random_vector(NC, rng), dg = dg_ref;
        std::vector<float> sum_ref(NC), sum(NC, NAN);
        gelu_forward_cpu(g_ref.data(), x.data(), n);
        gelu_forward_cpu_fast(g.data(), x.data(), n);
        check_close("gelu out", g, g_ref, tolerance_fp32);
        gelu_backward_cpu(dg_ref.data(), x.data(), dy.data(), n);
        gelu_backward_cpu_fast(dg.data(), x.data(), dy.data(), n);
        check_close("gelu dinp", dg, dg_ref, tolerance_fp32);
        residual_forward_cpu(sum_ref.data(), x.data(), dy.data(), n);
        residual_forward_cpu_fast(sum.data(), x.data(), dy.data(), n);
        check_close("residual out", sum, sum_ref, tolerance_fp32);
    }
    for (size_t n : {size_t{1}, size_t{16385}, size_t{100003}}) {
        CAPTURE(n);
        std::vector<float> g = random_vector(n, rng);
        double ref = global_norm_squared_cpu(g.data(), n), got = global_norm_squared_cpu_fast(g.data(), n);
        CHECK(std::abs(got - ref) <= 1e-5 * ref);
        std::vector<float> p_ref = random_vector(n, rng), m_ref(n, 0.0f), v_ref(n, 0.0f);
        std::vector<float> p = p_ref, m = m_ref, v = v_ref;
        for (int step = 1; step <= 3; step++) {
            CAPTURE(step);
            std::vector<float> grads = random_vector(n, rng);
            const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.5f;
            adamw_update_cpu(p_ref.data(), grads.data(), m_ref.data(), v_ref.data(), n, lr, b1, b2, eps, wd, step,
                             scale);
            adamw_update_cpu_fast(p.data(), grads.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, step, scale);
            check_close("adamw params", p, p_ref, tolerance_fp32);
            check_close("adamw m", m, m_ref, tolerance_fp32);
            check_close("adamw v", v, v_ref, tolerance_fp32);
        }
    }
    std::vector<float> z(5'000'003, 1.0f);  // 20 MB: zeroed in 1 MB chunks over the cores, the last one partial
    zero_memory(Exec{false, 0}, z.data(), z.size() * sizeof(float));
    CHECK(std::all_of(z.begin(), z.end(), [](float f) { return f == 0.0f; }));
}

// ----------------------------------------------------------------------------
// bf16: every op again with the element type T = __nv_bfloat16 (layers.cuh: the rule at the top), on inputs that are
// bf16 values, so that the fp32 CPU reference gets exactly the same numbers. Each output is checked twice:
//   - against the fp32 CPU reference: a bf16 output within bf16_tolerance of that op's fp32 tolerance (test_util.h
//     derives it), an fp32 output (weight gradients, norm statistics, losses) within the fp32 tolerance itself;
//   - against the same kernel run with T = float on the same inputs: a bf16 output is that fp32 output rounded once
//     to bf16, bit for bit, and an fp32 output is equal (what "one kernel, fp32 arithmetic inside" means). cuBLAS's
//     fp32 and bf16 GEMMs are different algorithms on a GPU, so the matmul's cublas backend is checked the first way
//     only.
// test_util.h has the helpers (bf16_values, upload_as, download_fp32, check_bf16_op).
TEST_CASE("bf16 encoder forward/backward: one rounding of the fp32 kernel, within bf16 of the CPU reference") {
    Rng rng(1101);
    struct Shape { int B, T, C, V; };
    for (Shape s : {Shape{2, 5, 33, 4}, Shape{3, 17, 96, 50}}) {
        CAPTURE(s.B); CAPTURE(s.T); CAPTURE(s.C); CAPTURE(s.V);
        const int N = s.B * s.T;
        std::vector<int> tokens = random_tokens(N, s.V, rng);
        std::vector<float> wte = random_bf16(static_cast<size_t>(s.V) * s.C, rng),
                           wpe = random_bf16(static_cast<size_t>(s.T) * s.C, rng),
                           dout = random_bf16(static_cast<size_t>(N) * s.C, rng);
        std::vector<float> dwte0 = random_vector(wte.size(), rng), dwpe0 = random_vector(wpe.size(), rng);  // fp32
        std::vector<float> out_ref(static_cast<size_t>(N) * s.C), dwte_ref = dwte0, dwpe_ref = dwpe0;
        encoder_forward_cpu(out_ref.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
        encoder_backward_cpu(dwte_ref.data(), dwpe_ref.data(), dout.data(), tokens.data(), s.B, s.T, s.C);
        auto run = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<int> d_tokens(tokens);
            DeviceBuffer<X> d_wte = upload_as<X>(wte), d_wpe = upload_as<X>(wpe), d_dout = upload_as<X>(dout),
                            d_out(out_ref.size());
            DeviceBuffer<float> d_dwte(dwte0), d_dwpe(dwpe0);
            poison(d_out);
            encoder_forward(d_out.ptr, d_tokens.ptr, d_wte.ptr, d_wpe.ptr, s.B, s.T, s.C, nullptr);
            encoder_backward(d_dwte.ptr, d_dwpe.ptr, d_dout.ptr, d_tokens.ptr, s.B, s.T, s.C, nullptr);
            return std::vector<OpOutput>{{"encoder out", download_fp32(d_out), true},
                                         {"encoder dwte", d_dwte.download(), false},
                                         {"encoder dwpe", d_dwpe.download(), false}};
        };
        check_bf16_op(run, {out_ref, dwte_ref, dwpe_ref},
                      {tolerance_fp32_elementwise, tolerance_fp32_reduction, tolerance_fp32_reduction});
    }
}

TEST_CASE("bf16 layernorm and rmsnorm forward/backward: one rounding of the fp32 kernel, fp32 statistics") {
    Rng rng(1201);
    struct Shape { int N, C; };
    for (Shape s : {Shape{5, 33}, Shape{130, 100}, Shape{64, 768}}) {
        CAPTURE(s.N); CAPTURE(s.C);
        const size_t NC = static_cast<size_t>(s.N) * s.C;
        std::vector<float> inp = random_vector(NC, rng);
        for (float& x : inp) x += 0.5f;  // a non-zero mean, so the mean path matters
        inp = bf16_values(inp);
        std::vector<float> weight = random_bf16(s.C, rng), bias = random_bf16(s.C, rng), dout = random_bf16(NC, rng),
                           dinp0 = random_bf16(NC, rng);
        std::vector<float> dw0 = random_vector(s.C, rng), db0 = random_vector(s.C, rng);  // fp32
        const float eps = 1e-5f;

        std::vector<float> out_ref(NC), mean_ref(s.N), rstd_ref(s.N), dinp_ref = dinp0, dw_ref = dw0, db_ref = db0;
        layernorm_forward_cpu(out_ref.data(), mean_ref.data(), rstd_ref.data(), inp.data(), weight.data(), bias.data(),
                              s.N, s.C);
        layernorm_backward_cpu(dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), weight.data(),
                               mean_ref.data(), rstd_ref.data(), s.N, s.C);
        auto run_layernorm = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_inp = upload_as<X>(inp), d_w = upload_as<X>(weight), d_b = upload_as<X>(bias),
                            d_dout = upload_as<X>(dout), d_dinp = upload_as<X>(dinp0), d_out(NC);
            DeviceBuffer<float> d_mean(s.N), d_rstd(s.N), d_dw(dw0), d_db(db0);
            poison(d_out); poison(d_mean); poison(d_rstd);
            layernorm_forward(d_out.ptr, d_mean.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, d_b.ptr, s.N, s.C, nullptr);
            layernorm_backward(d_dinp.ptr, d_dw.ptr, d_db.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_mean.ptr, d_rstd.ptr,
                               s.N, s.C, nullptr);
            return std::vector<OpOutput>{
                {"layernorm out", download_fp32(d_out), true},  {"layernorm mean", d_mean.download(), false},
                {"layernorm rstd", d_rstd.download(), false},   {"layernorm dinp", download_fp32(d_dinp), true},
                {"layernorm dweight", d_dw.download(), false}, {"layernorm dbias", d_db.download(), false}};
        };
        check_bf16_op(run_layernorm, {out_ref, mean_ref, rstd_ref, dinp_ref, dw_ref, db_ref},
                      std::vector<Tolerance>(6, tolerance_fp32_reduction));

        std::vector<float> rms_out_ref(NC), rms_rstd_ref(s.N), rms_dinp_ref = dinp0, rms_dw_ref = dw0;
        rmsnorm_forward_cpu(rms_out_ref.data(), rms_rstd_ref.data(), inp.data(), weight.data(), s.N, s.C, eps);
        rmsnorm_backward_cpu(rms_dinp_ref.data(), rms_dw_ref.data(), dout.data(), inp.data(), weight.data(),
                             rms_rstd_ref.data(), s.N, s.C);
        auto run_rmsnorm = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_inp = upload_as<X>(inp), d_w = upload_as<X>(weight), d_dout = upload_as<X>(dout),
                            d_dinp = upload_as<X>(dinp0), d_out(NC);
            DeviceBuffer<float> d_rstd(s.N), d_dw(dw0);
            poison(d_out); poison(d_rstd);
            rmsnorm_forward(d_out.ptr, d_rstd.ptr, d_inp.ptr, d_w.ptr, s.N, s.C, eps, nullptr);
            rmsnorm_backward(d_dinp.ptr, d_dw.ptr, d_dout.ptr, d_inp.ptr, d_w.ptr, d_rstd.ptr, s.N, s.C, nullptr);
            return std::vector<OpOutput>{{"rmsnorm out", download_fp32(d_out), true},
                                         {"rmsnorm rstd", d_rstd.download(), false},
                                         {"rmsnorm dinp", download_fp32(d_dinp), true},
                                         {"rmsnorm dweight", d_dw.download(), false}};
        };
        check_bf16_op(run_rmsnorm, {rms_out_ref, rms_rstd_ref, rms_dinp_ref, rms_dw_ref},
                      std::vector<Tolerance>(4, tolerance_fp32_reduction));
    }
}

TEST_CASE("bf16 matmul forward/backward, all three backends: bf16 out and dinp, fp32 dweight and dbias") {
    Rng rng(1301);
    BackendGuard guard;
    struct Shape { int N, C, OC; bool bias, dinp; };
    for (Shape s : {Shape{1, 7, 5, true, true}, Shape{33, 70, 130, true, true}, Shape{17, 96, 200, true, false},
                    Shape{66, 64, 300, false, true}, Shape{300, 40, 260, true, true}}) {
        CAPTURE(s.N); CAPTURE(s.C); CAPTURE(s.OC); CAPTURE(s.bias); CAPTURE(s.dinp);
        MatmulCase mc(s.N, s.C, s.OC, s.bias, s.dinp, rng);
        for (auto* v : {&mc.inp, &mc.weight, &mc.b, &mc.dout, &mc.dinp0}) *v = bf16_values(*v);  // not dweight0, dbias0
        MatmulResult ref = mc.run_cpu();
        auto run = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_inp = upload_as<X>(mc.inp), d_w = upload_as<X>(mc.weight), d_b = upload_as<X>(mc.b),
                            d_dout = upload_as<X>(mc.dout), d_dinp = upload_as<X>(mc.dinp0),
                            d_out(static_cast<size_t>(s.N) * s.OC);
            DeviceBuffer<float> d_dw(mc.dweight0), d_db(mc.dbias0);
            poison(d_out);
            matmul_forward(d_out.ptr, d_inp.ptr, d_w.ptr, s.bias ? d_b.ptr : nullptr, s.N, s.C, s.OC, nullptr);
            matmul_backward(s.dinp ? d_dinp.ptr : nullptr, d_dw.ptr, s.bias ? d_db.ptr : nullptr, d_dout.ptr, d_inp.ptr,
                            d_w.ptr, s.N, s.C, s.OC, nullptr);
            return std::vector<OpOutput>{{"matmul out", download_fp32(d_out), true},
                                         {"matmul dinp", download_fp32(d_dinp), true},
                                         {"matmul dweight", d_dw.download(), false},
                                         {"matmul dbias", d_db.download(), false}};
        };
        for (MatmulBackend backend :
             {MatmulBackend::cublas, MatmulBackend::tiled, MatmulBackend::wmma, MatmulBackend::cublaslt}) {
            CAPTURE(backend_name(backend));
            set_matmul_backend(backend);
            check_bf16_op(run, {ref.out, ref.dinp, ref.dweight, ref.dbias},
                          std::vector<Tolerance>(4, tolerance_fp32_matmul), backend != MatmulBackend::cublas);
        }
    }
}

// GPT-2's c_fc + GELU in one call: cuBLASLt's GELU_AUX_BIAS epilogue writes gelu(x·Wᵀ + b) and the value before
// the GELU; the other backends run matmul_forward then gelu_forward. Both outputs against the CPU references
// (matmul_forward_cpu, gelu_forward_cpu): fp32 within the matmul's tolerance; in bf16 (bf16 inputs) pre within it
// plus one rounding (bf16_tolerance), and out within that plus what pre's error becomes through the GELU, whose
// slope is at most 1.13 in magnitude: |Δout| <= tol(out) + 1.13·tol(pre), element by element.
TEST_CASE("matmul_gelu_forward (c_fc + GELU fused by cuBLASLt) matches matmul then gelu, fp32 and bf16") {
    Rng rng(1302);
    BackendGuard guard;
    for (auto [N, C, OC] : {std::array<int, 3>{33, 64, 256}, {7, 40, 120}}) {
        CAPTURE(N); CAPTURE(C); CAPTURE(OC);
        std::vector<float> inp = random_bf16(static_cast<size_t>(N) * C, rng),
                           w = random_bf16(static_cast<size_t>(OC) * C, rng), b = random_bf16(OC, rng);
        std::vector<float> pre_ref(static_cast<size_t>(N) * OC), out_ref(pre_ref.size());
        matmul_forward_cpu(pre_ref.data(), inp.data(), w.data(), b.data(), N, C, OC);
        gelu_forward_cpu(out_ref.data(), pre_ref.data(), N * OC);
        for (MatmulBackend backend : {MatmulBackend::cublaslt, MatmulBackend::cublas}) {
            CAPTURE(backend_name(backend));
            set_matmul_backend(backend);
            auto run = [&](auto zero) {
                using X = decltype(zero);
                DeviceBuffer<X> d_inp = upload_as<X>(inp), d_w = upload_as<X>(w), d_b = upload_as<X>(b),
                                d_out(pre_ref.size()), d_pre(pre_ref.size());
                poison(d_out);
                poison(d_pre);
                matmul_gelu_forward(Exec{true, nullptr}, d_out.ptr, d_pre.ptr, d_inp.ptr, d_w.ptr, d_b.ptr, N, C, OC);
                return std::make_pair(download_fp32(d_out), download_fp32(d_pre));
            };
            auto [out32, pre32] = run(0.0f);
            check_close("fused out (fp32)", out32, out_ref, tolerance_fp32_matmul);
            check_close("fused pre (fp32)", pre32, pre_ref, tolerance_fp32_matmul);
            auto [out16, pre16] = run(bf16{});
            const Tolerance t = bf16_tolerance(tolerance_fp32_matmul);
            check_close("fused pre (bf16)", pre16, pre_ref, t);
            size_t bad = 0;
            for (size_t i = 0; i < out_ref.size(); i++) {
                double tol = t.atol + t.rtol * std::fabs(out_ref[i]) + 1.13 * (t.atol + t.rtol * std::fabs(pre_ref[i]));
                bad += !(std::fabs(out16[i] - out_ref[i]) <= tol);
            }
            CHECK_MESSAGE(bad == 0, bad << " bf16 outputs past the bound");
        }
    }
}

TEST_CASE("bf16 gelu, swiglu, residual forward/backward: one rounding of the fp32 kernel") {
    Rng rng(1401);
    for (int N : {31, 4099}) {
        CAPTURE(N);
        std::vector<float> inp = random_bf16(2 * static_cast<size_t>(N), rng, 3.0f), dout = random_bf16(N, rng),
                           dinp0 = random_bf16(2 * static_cast<size_t>(N), rng), b = random_bf16(N, rng);
        const int H = N / 4, NH = 2;  // swiglu on (2, 2H): inp's first 4H values
        std::vector<float> dinp_n(dinp0.begin(), dinp0.begin() + N), dinp_swiglu(dinp0.begin(), dinp0.begin() + 4 * H);
        std::vector<float> gelu_ref(N), gelu_dinp_ref = dinp_n;
        gelu_forward_cpu(gelu_ref.data(), inp.data(), N);
        gelu_backward_cpu(gelu_dinp_ref.data(), inp.data(), dout.data(), N);
        std::vector<float> swiglu_ref(NH * H), swiglu_dinp_ref = dinp_swiglu;
        swiglu_forward_cpu(swiglu_ref.data(), inp.data(), NH, H);
        swiglu_backward_cpu(swiglu_dinp_ref.data(), inp.data(), dout.data(), NH, H);
        std::vector<float> sum_ref(N), da_ref = dinp_n, db_ref = b;
        residual_forward_cpu(sum_ref.data(), inp.data(), b.data(), N);
        residual_backward_cpu(da_ref.data(), db_ref.data(), dout.data(), N);
        auto run = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_inp = upload_as<X>(inp), d_dout = upload_as<X>(dout), d_b = upload_as<X>(b),
                            d_gelu_dinp = upload_as<X>(dinp_n), d_swiglu_dinp = upload_as<X>(dinp_swiglu),
                            d_da = upload_as<X>(dinp_n), d_db = upload_as<X>(b), d_gelu(N), d_swiglu(NH * H), d_sum(N);
            poison(d_gelu); poison(d_swiglu); poison(d_sum);
            gelu_forward(d_gelu.ptr, d_inp.ptr, N, nullptr);
            gelu_backward(d_gelu_dinp.ptr, d_inp.ptr, d_dout.ptr, N, nullptr);
            swiglu_forward(d_swiglu.ptr, d_inp.ptr, NH, H, nullptr);
            swiglu_backward(d_swiglu_dinp.ptr, d_inp.ptr, d_dout.ptr, NH, H, nullptr);
            residual_forward(d_sum.ptr, d_inp.ptr, d_b.ptr, N, nullptr);
            residual_backward(d_da.ptr, d_db.ptr, d_dout.ptr, N, nullptr);
            return std::vector<OpOutput>{
                {"gelu out", download_fp32(d_gelu), true},       {"gelu dinp", download_fp32(d_gelu_dinp), true},
                {"swiglu out", download_fp32(d_swiglu), true},   {"swiglu dinp", download_fp32(d_swiglu_dinp), true},
                {"residual out", download_fp32(d_sum), true},    {"residual da", download_fp32(d_da), true},
                {"residual db", download_fp32(d_db), true}};
        };
        check_bf16_op(run, {gelu_ref, gelu_dinp_ref, swiglu_ref, swiglu_dinp_ref, sum_ref, da_ref, db_ref},
                      std::vector<Tolerance>(7, tolerance_fp32_elementwise));
    }
}

TEST_CASE("bf16 fused classifier: bf16 dlogits in place, fp32 losses") {
    Rng rng(1601);
    struct Shape { int N, V, Vp; };
    for (Shape s : {Shape{6, 50, 67}, Shape{7, 1000, 1024}}) {
        for (bool write_dlogits : {true, false}) {
            CAPTURE(s.N); CAPTURE(s.V); CAPTURE(s.Vp); CAPTURE(write_dlogits);
            std::vector<float> logits = random_vector(static_cast<size_t>(s.N) * s.Vp, rng, 4.0f);
            for (int v = 0; v < s.Vp; v++) logits[v] += 200.0f;  // row 0: e^z overflows unless the max is subtracted
            logits = bf16_values(logits);
            std::vector<int> targets = random_tokens(s.N, s.V, rng);
            targets[1] = -1;  // an ignored row
            const float dloss = 1.0f / (s.N - 1);
            std::vector<float> dlogits_ref = logits, losses_ref(s.N);
            fused_classifier_cpu(dlogits_ref.data(), losses_ref.data(), targets.data(), dloss, s.N, s.V, s.Vp,
                                 write_dlogits);
            auto run = [&](auto zero) {
                using X = decltype(zero);
                DeviceBuffer<X> d_logits = upload_as<X>(logits);
                DeviceBuffer<float> d_losses(s.N);
                DeviceBuffer<int> d_targets(targets);
                poison(d_losses);
                fused_classifier(d_logits.ptr, d_losses.ptr, d_targets.ptr, dloss, s.N, s.V, s.Vp, write_dlogits,
                                 nullptr);
                return std::vector<OpOutput>{{"classifier losses", d_losses.download(), false},
                                             {"classifier dlogits", download_fp32(d_logits), true}};
            };
            check_bf16_op(run, {losses_ref, dlogits_ref}, {tolerance_fp32_reduction, tolerance_fp32_reduction});
        }
    }
}

TEST_CASE("convert fp32 <-> bf16: rounds to nearest, ties to even; bf16 -> fp32 exact; the CPU path refuses bf16") {
    Rng rng(1701);
    // Hand-picked: ties between two bf16 neighbours (1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even 1;
    // 1 + 3·2^-8 halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6), just off a tie, a negative tie,
    // fp32's largest value (past the midpoint between bf16's largest, (2 − 2^-7)·2^127, and 2^128: infinity), zero.
    std::vector<float> in = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -(1.0f + 0x1p-8f),
                             FLT_MAX, 0.0f};
    std::vector<float> want = {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, -1.0f, INFINITY, 0.0f};
    for (float x : random_vector(1000, rng, 100.0f)) in.push_back(x);
    for (size_t i = want.size(); i < in.size(); i++) {  // the nearest bf16 of the random values, from the bits
        uint32_t u;
        std::memcpy(&u, &in[i], 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;  // add half an ulp (less one if even), then truncate
        float f;
        std::memcpy(&f, &u, 4);
        want.push_back(f);
    }
    const size_t n = in.size();
    for_each_thread_order([&] {
        DeviceBuffer<float> d_in(in), d_back(n);
        DeviceBuffer<bf16> d_bf16(n);
        poison(d_bf16); poison(d_back);
        convert(d_bf16.ptr, d_in.ptr, n, nullptr);
        convert(d_back.ptr, d_bf16.ptr, n, nullptr);
        std::vector<float> got = download_fp32(d_bf16), back = d_back.download();
        for (size_t i = 0; i < n; i++) {
            CAPTURE(i); CAPTURE(in[i]);
            CHECK(got[i] == want[i]);
            CHECK(back[i] == got[i]);  // bf16 -> fp32 is exact
        }
    });
    std::vector<bf16> host(n);
    convert_cpu(host.data(), in.data(), n);
    for (size_t i = 0; i < n; i++) CHECK(__bfloat162float(host[i]) == want[i]);
    // op(exec, ...) on the host with a bf16 buffer: the CPU path is fp32 only and says so
    std::vector<bf16> x(8), y(8);
    CHECK_THROWS_WITH_AS(gelu_forward(Exec{false, 0}, y.data(), x.data(), 8),
                         doctest::Contains("the CPU path computes in fp32 only"), std::runtime_error);
}
