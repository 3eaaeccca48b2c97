// Tests of attention.cuh: RoPE, causal attention (CPU reference, naive path, fused path in fp32 and on tensor
// cores, the CPU training path's fast loops) forward and backward, GQA/MQA, decode against a (paged) KV cache,
// and the fused path's memory bound.
#include <algorithm>
#include <numeric>
#include <cstring>
#include <string>

#include "attention.cuh"
#include "paged_kv.cuh"
#include "layers_cpu_blas.h"
#include "test/test_util.h"

namespace {

struct Shape {
    int B, T, NH, NKV, hs;
    int W() const { return (NH + 2 * NKV) * hs; }
    size_t qkv_count() const { return static_cast<size_t>(B) * T * W(); }
    size_t out_count() const { return static_cast<size_t>(B) * T * NH * hs; }
    size_t lse_count() const { return static_cast<size_t>(B) * NH * T; }
};
std::string describe(const Shape& s) {
    return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " NH=" + std::to_string(s.NH) +
           " NKV=" + std::to_string(s.NKV) + " hs=" + std::to_string(s.hs);
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
std::vector<float> to_float(const std::vector<double>& v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); i++) f[i] = static_cast<float>(v[i]);
    return f;
}

// Poisons the attention workspace (when it exists), so a kernel that reads scratch it did not write fails.
void poison_attention_workspace() {
    if (attention_workspace_bytes() > 0) poison(attention_workspace().buffer);
}

constexpr float rope_theta = 10000.0f;

struct AttentionBackendGuard {  // restores the default backend when a test ends, even on failure
    ~AttentionBackendGuard() { set_attention_backend(AttentionBackend::flash); }
};

// RoPE's three CPU references, in double, on the input x: forward, backward, and forward at random positions
// (drawn here; the kernels take the same ones).
struct RopeCase {
    std::vector<int> positions;  // (B·T)
    std::vector<float> fwd, bwd, at;
};
RopeCase rope_case(const Shape& s, const std::vector<float>& x, Rng& rng) {
    RopeCase r;
    r.positions.resize(static_cast<size_t>(s.B) * s.T);
    for (auto& p : r.positions) p = static_cast<int>(rng.below(4096));
    std::vector<double> fwd = to_double(x), bwd = to_double(x), at = to_double(x);
    rope_forward_cpu(fwd.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    rope_backward_cpu(bwd.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    rope_forward_at_cpu(at.data(), r.positions.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    r.fwd = to_float(fwd);
    r.bwd = to_float(bwd);
    r.at = to_float(at);
    return r;
}

}  // namespace

// ----------------------------------------------------------------------------
// RoPE

TEST_CASE("rope forward/backward/at-positions: kernel matches CPU reference") {
    Rng rng(401);
    for (Shape s : {Shape{2, 7, 4, 2, 64}, Shape{1, 129, 2, 1, 128}, Shape{2, 64, 4, 4, 64}, Shape{1, 1, 1, 1, 2}}) {
        CAPTURE(describe(s));
        std::vector<float> x = random_vector(s.qkv_count(), rng);
        const RopeCase ref = rope_case(s, x, rng);
        for_each_thread_order([&] {
            DeviceBuffer<float> d(x);
            DeviceBuffer<int> dpos(ref.positions);
            rope_forward(d.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            check_close("rope_forward", d.download(), ref.fwd, tolerance_fp32_elementwise);
            d.upload(x);
            rope_backward(d.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            check_close("rope_backward", d.download(), ref.bwd, tolerance_fp32_elementwise);
            d.upload(x);
            rope_forward_at(d.ptr, dpos.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            check_close("rope_forward_at", d.download(), ref.at, tolerance_fp32_elementwise);
        });
        // v is untouched by design: exactly equal
        const std::vector<float>& f = ref.fwd;
        for (int bt = 0; bt < s.B * s.T; bt++)
            for (int i = (s.NH + s.NKV) * s.hs; i < s.W(); i++)
                REQUIRE(f[static_cast<size_t>(bt) * s.W() + i] == x[static_cast<size_t>(bt) * s.W() + i]);
    }
}

TEST_CASE("rope CPU backward matches finite differences of the CPU forward") {
    Rng rng(402);
    Shape s{2, 5, 2, 1, 8};
    std::vector<double> x = to_double(random_vector(s.qkv_count(), rng)),
                        w = to_double(random_vector(s.qkv_count(), rng));
    auto loss = [&](const std::vector<double>& in) {
        std::vector<double> y = in;
        rope_forward_cpu(y.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
        double l = 0;
        for (size_t i = 0; i < y.size(); i++) l += w[i] * y[i];
        return l;
    };
    std::vector<double> grad = w;  // dL/dy = w, rotated back
    rope_backward_cpu(grad.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    CHECK(rel_error(grad, finite_difference(loss, x)) <= tolerance_finite_difference);
}

// bf16 (attention.cuh, "Precision"): RoPE loads bf16, rotates in fp32 and rounds each output once, so each output is
// the fp32 kernel's rounded to bf16, bit for bit, and within bf16_tolerance(tolerance_fp32_elementwise) of the CPU
// reference: |bf16(y) − ref| <= |y − ref| + u·|y| <= (1 + u)·(atol + rtol·|ref|) + u·|ref| (test_util.h).
TEST_CASE(
    "bf16 rope forward/backward/at-positions: one rounding of the fp32 kernel, within bf16 of the CPU reference") {
    Rng rng(414);
    for (Shape s : {Shape{2, 7, 4, 2, 64}, Shape{1, 33, 2, 1, 128}}) {
        CAPTURE(describe(s));
        std::vector<float> x = random_bf16(s.qkv_count(), rng);
        const RopeCase ref = rope_case(s, x, rng);
        auto run = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_fwd = upload_as<X>(x), d_bwd = upload_as<X>(x), d_at = upload_as<X>(x);
            DeviceBuffer<int> d_pos(ref.positions);
            rope_forward(d_fwd.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            rope_backward(d_bwd.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            rope_forward_at(d_at.ptr, d_pos.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
            return std::vector<OpOutput>{{"rope_forward", download_fp32(d_fwd), true},
                                         {"rope_backward", download_fp32(d_bwd), true},
                                         {"rope_forward_at", download_fp32(d_at), true}};
        };
        check_bf16_op(run, {ref.fwd, ref.bwd, ref.at},
                      std::vector<Tolerance>(3, tolerance_fp32_elementwise));
    }
}

// ----------------------------------------------------------------------------
// CPU reference backward vs finite differences

TEST_CASE("attention CPU backward matches finite differences (MHA, GQA, MQA)") {
    Rng rng(403);
    for (Shape s : {Shape{2, 5, 2, 2, 4}, Shape{1, 6, 4, 2, 4}, Shape{1, 4, 3, 1, 6}, Shape{1, 1, 2, 1, 4}}) {
        CAPTURE(describe(s));
        std::vector<double> qkv = to_double(random_vector(s.qkv_count(), rng, 1.5f));
        std::vector<double> w = to_double(random_vector(s.out_count(), rng));
        auto loss = [&](const std::vector<double>& in) {
            std::vector<double> out(s.out_count()), lse(s.lse_count());
            attention_forward_cpu(out.data(), lse.data(), in.data(), s.B, s.T, s.NH, s.NKV, s.hs);
            double l = 0;
            for (size_t i = 0; i < out.size(); i++) l += w[i] * out[i];
            return l;
        };
        std::vector<double> out(s.out_count()), lse(s.lse_count()), dqkv(s.qkv_count(), 0.0);
        attention_forward_cpu(out.data(), lse.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.hs);
        attention_backward_cpu(dqkv.data(), w.data(), out.data(), lse.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.hs);
        CHECK(rel_error(dqkv, finite_difference(loss, qkv)) <= tolerance_finite_difference);
    }
}

// ----------------------------------------------------------------------------
// Kernels vs the CPU reference, forward and backward, both paths, with and without RoPE.
//
// The reference runs in double on the same fp32 inputs, so the tolerance measures the kernels' fp32
// rounding only. Without RoPE, dqkv starts from random values (checks that the backward accumulates);
// with RoPE, rope_backward rotates dqkv in place, so it starts from zero (as in the model).

namespace {

void check_attention_paths(const Shape& s, bool rope, Rng& rng) {
    CAPTURE(describe(s));
    CAPTURE(rope);
    std::vector<float> qkv = random_vector(s.qkv_count(), rng, 1.5f);
    std::vector<float> dout = random_vector(s.out_count(), rng);
    std::vector<float> dqkv_init = rope ? std::vector<float>(s.qkv_count(), 0.0f) : random_vector(s.qkv_count(), rng);

    // reference chain: [rope] → attention forward; attention backward → [rope backward]
    std::vector<double> x = to_double(qkv), out(s.out_count()), lse(s.lse_count()), dx = to_double(dqkv_init);
    if (rope) rope_forward_cpu(x.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    attention_forward_cpu(out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    std::vector<double> dout_d = to_double(dout);
    attention_backward_cpu(dx.data(), dout_d.data(), out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    if (rope) rope_backward_cpu(dx.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    std::vector<float> out_ref = to_float(out), lse_ref = to_float(lse), dqkv_ref = to_float(dx);

    for_each_thread_order([&] {
        DeviceBuffer<float> d_qkv(qkv), d_out(s.out_count()), d_lse(s.lse_count()), d_dout(dout), d_dqkv(dqkv_init);
        if (rope) rope_forward(d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
        // fused
        poison(d_out);
        poison(d_lse);
        poison_attention_workspace();
        attention_forward(d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
        std::vector<float> fused_out = d_out.download();
        check_close("fused forward out", fused_out, out_ref, tolerance_fp32_attention);
        check_close("fused forward lse", d_lse.download(), lse_ref, tolerance_fp32_attention);
        poison_attention_workspace();
        attention_backward(d_dqkv.ptr, d_dout.ptr, d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs,
                           nullptr);
        if (rope) rope_backward(d_dqkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
        std::vector<float> fused_dqkv = d_dqkv.download();
        check_close("fused backward dqkv", fused_dqkv, dqkv_ref, tolerance_fp32_attention);
        // naive
        DeviceBuffer<float> d_att(static_cast<size_t>(s.B) * s.NH * s.T * s.T), d_datt(d_att.count);
        poison(d_out);
        poison(d_att);
        poison(d_datt);
        poison_attention_workspace();
        attention_forward_naive(d_out.ptr, d_att.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
        std::vector<float> naive_out = d_out.download();
        check_close("naive forward out", naive_out, out_ref, tolerance_fp32_attention);
        d_dqkv.upload(dqkv_init);
        poison_attention_workspace();
        attention_backward_naive(d_dqkv.ptr, d_datt.ptr, d_dout.ptr, d_att.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs,
                                 nullptr);
        if (rope) rope_backward(d_dqkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
        std::vector<float> naive_dqkv = d_dqkv.download();
        check_close("naive backward dqkv", naive_dqkv, dqkv_ref, tolerance_fp32_attention);
        // the two paths agree with each other (both fp32, different summation orders)
        check_close("fused vs naive out", fused_out, naive_out, tolerance_fp32_attention);
        check_close("fused vs naive dqkv", fused_dqkv, naive_dqkv, tolerance_fp32_attention);
    });
}

}  // namespace

TEST_CASE("attention fused and naive paths match the CPU reference (T 1..129, hs 64/128, MHA/GQA/MQA, RoPE)") {
    Rng rng(404);
    for (int T : {1, 7, 64, 129})
        for (int hs : {64, 128})
            for (int NKV : {4, 2, 1})
                for (bool rope : {false, true}) check_attention_paths(Shape{2, T, 4, NKV, hs}, rope, rng);
}

TEST_CASE("attention fused and naive paths match the CPU reference at T=512 (B=1, NH=2)") {
    Rng rng(405);
    for (int hs : {64, 128})
        for (int NKV : {2, 1}) check_attention_paths(Shape{1, 512, 2, NKV, hs}, NKV == 1, rng);
}

TEST_CASE("attention fused path at head size 32, odd T") {
    Rng rng(406);
    check_attention_paths(Shape{3, 33, 6, 3, 32}, true, rng);
}

// Every head size up to 256 runs in the kernel compiled for the next capacity (32, 64, 96, 128, 256), with
// the columns past hs padded with zeros: hs 8 and 16 (toy models), 80 and 96 (HF models), 40 and 200 (padded
// far from a capacity), 256 (the largest), and 20 (not a multiple of 8, even: RoPE pairs).
TEST_CASE("attention fused path at head sizes 8..256 (8, 16, 20, 40, 80, 96, 200, 256), MHA and GQA") {
    Rng rng(410);
    for (int hs : {8, 16, 20, 40, 80, 96, 200, 256})
        check_attention_paths(Shape{2, hs > 128 ? 37 : 70, 4, hs % 16 ? 4 : 2, hs}, hs / 8 % 2 == 0, rng);
}

// The fused backward adds no floats atomically: each element of dqkv is summed by one thread in a fixed
// order, so the bits do not depend on which OS thread runs which block, or on the order threads run in.
// (With dQ added by atomicAdd, 5 of 5 reruns differed in ~10^4 of 4·10^5 elements at CUDASIM_THREADS=2.)
TEST_CASE("attention fused backward is deterministic: same bits under every thread order") {
    Rng rng(411);
    Shape s{2, 200, 4, 2, 64};
    AttentionBackendGuard guard;
    AttentionBackend backend = AttentionBackend::flash;
    SUBCASE("fp32") {}
    SUBCASE("wmma (bf16 tensor cores)") { backend = AttentionBackend::wmma; }
    set_attention_backend(backend);
    std::vector<float> qkv = random_vector(s.qkv_count(), rng, 1.5f), dout = random_vector(s.out_count(), rng);
    std::vector<float> dqkv_init = random_vector(s.qkv_count(), rng);
    DeviceBuffer<float> d_qkv(qkv), d_out(s.out_count()), d_lse(s.lse_count()), d_dout(dout), d_dqkv(dqkv_init);
    attention_forward(d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
    std::vector<float> first;
#if defined(CUDASIM)
    using cudasim::Order;
    const auto orders = {Order::forward, Order::reverse, Order::random, Order::random};
#else
    const auto orders = {0, 1, 2, 3};  // on a GPU: four runs, whatever order the hardware picks
#endif
    for (auto order : orders) {
#if defined(CUDASIM)
        cudasim::set_order(order);
#endif
        (void)order;
        d_dqkv.upload(dqkv_init);
        attention_backward(d_dqkv.ptr, d_dout.ptr, d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs,
                           nullptr);
        std::vector<float> got = d_dqkv.download();
        if (first.empty()) first = got;
        size_t differ = 0;
        for (size_t i = 0; i < got.size(); i++) differ += std::memcmp(&got[i], &first[i], sizeof(float)) != 0;
        CHECK_MESSAGE(differ == 0, differ << " of " << got.size() << " elements of dqkv differ from the first run");
    }
#if defined(CUDASIM)
    cudasim::set_order(cudasim::Order::forward);
#endif
}

TEST_CASE("attention launchers reject bad shapes with a message") {
    DeviceBuffer<float> qkv(3 * 264), out(264), lse(1);
    CHECK_THROWS_WITH_AS(attention_forward(out.ptr, lse.ptr, qkv.ptr, 1, 1, 1, 1, 264, nullptr),
                         doctest::Contains("head size 264 is outside 1..256"), std::runtime_error);
    CHECK_THROWS_WITH_AS(attention_backward(qkv.ptr, out.ptr, out.ptr, lse.ptr, qkv.ptr, 1, 1, 1, 1, 264, nullptr),
                         doctest::Contains("head size 264 is outside 1..256"), std::runtime_error);
    CHECK_THROWS_WITH_AS(attention_forward(out.ptr, lse.ptr, qkv.ptr, 1, 1, 3, 2, 64, nullptr),
                         doctest::Contains("NKV must divide NH"), std::runtime_error);
    CHECK_THROWS_WITH_AS(rope_forward(qkv.ptr, 1, 1, 1, 1, 5, rope_theta, nullptr), doctest::Contains("odd"),
                         std::runtime_error);
}

// ----------------------------------------------------------------------------
// Memory: the fused path allocates O(T), never O(T²).

TEST_CASE("fused attention allocates nothing O(T^2)") {
    // At T = 2048 one T×T score matrix per head is 16 MiB; the test's budget for everything the fused
    // path allocates is 1 MiB. Its workspace is D (B·NH·T floats).
    Shape s{1, 2048, 1, 1, 64};
    const size_t budget_bytes = 1u << 20;
    size_t score_matrix_bytes = static_cast<size_t>(s.B) * s.NH * s.T * s.T * sizeof(float);
    REQUIRE(score_matrix_bytes > 8 * budget_bytes);
    Rng rng(407);
    std::vector<float> qkv = random_vector(s.qkv_count(), rng, 1.5f), dout = random_vector(s.out_count(), rng);
    DeviceBuffer<float> d_qkv(qkv), d_out(s.out_count()), d_lse(s.lse_count()), d_dout(dout), d_dqkv(s.qkv_count());
    cuda_check(cudaMemset(d_dqkv, 0, d_dqkv.bytes()));
    attention_workspace_release();
    attention_forward(d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
    attention_backward(d_dqkv.ptr, d_dout.ptr, d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
    size_t used = attention_workspace_bytes();
    size_t linear_bound = 2 * s.out_count() * sizeof(float) + 2 * s.lse_count() * sizeof(float) + 1024;  // + alignment
    INFO("fused workspace " << used << " bytes; O(T) bound " << linear_bound << "; one score matrix "
                            << score_matrix_bytes);
    CHECK(used <= linear_bound);
    CHECK(used <= budget_bytes);
    // and the result is right: the last query row (which sees all 2048 keys) against the CPU reference
    std::vector<float> out = d_out.download(), dqkv = d_dqkv.download();
    for (float v : dqkv) REQUIRE(std::isfinite(v));
    Shape last{1, s.T, 1, 1, 64};
    std::vector<double> x = to_double(qkv), ref(last.out_count()), lse(last.lse_count());
    attention_forward_cpu(ref.data(), lse.data(), x.data(), last.B, last.T, last.NH, last.NKV, last.hs);
    check_close("fused forward at T=2048", out, to_float(ref), tolerance_fp32_attention);
    attention_workspace_release();
}

// ----------------------------------------------------------------------------
// Decode against a KV cache.

namespace {

// A whole sequence batch (B, Tfull, W) with RoPE applied at positions t (the CPU reference's input).
struct DecodeCase {
    Shape s;  // s.T = Tfull = maxT
    std::vector<float> raw;        // before RoPE
    std::vector<double> roped;     // after RoPE, double
    std::vector<double> out, lse;  // full causal attention of the roped sequence
};

DecodeCase make_decode_case(Shape s, Rng& rng) {
    DecodeCase c{s,
                 random_vector(s.qkv_count(), rng, 1.5f),
                 {},
                 std::vector<double>(s.out_count()),
                 std::vector<double>(s.lse_count())};
    c.roped = to_double(c.raw);
    rope_forward_cpu(c.roped.data(), s.B, s.T, s.NH, s.NKV, s.hs, rope_theta);
    attention_forward_cpu(c.out.data(), c.lse.data(), c.roped.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    return c;
}

// Token t of every sequence as a (B, 1, W) activation (raw, before RoPE).
std::vector<float> token_rows(const DecodeCase& c, const std::vector<int>& t_of_b) {
    int W = c.s.W();
    std::vector<float> rows(static_cast<size_t>(c.s.B) * W);
    for (int b = 0; b < c.s.B; b++)
        std::copy_n(c.raw.begin() + (static_cast<size_t>(b) * c.s.T + t_of_b[b]) * W, W,
                    rows.begin() + static_cast<size_t>(b) * W);
    return rows;
}
// Row t of full attention for every sequence: (B, NH·hs).
std::vector<float> reference_rows(const DecodeCase& c, const std::vector<int>& t_of_b) {
    size_t C = static_cast<size_t>(c.s.NH) * c.s.hs;
    std::vector<float> rows(c.s.B * C);
    for (int b = 0; b < c.s.B; b++)
        for (size_t i = 0; i < C; i++)
            rows[b * C + i] = static_cast<float>(c.out[(static_cast<size_t>(b) * c.s.T + t_of_b[b]) * C + i]);
    return rows;
}

}  // namespace

// A (B, maxT) contiguous cache as a paged one: sequence b owns blocks in a fixed scattered order.
struct PagedLayout {
    int B, maxT, NKV, hs, block_size = 16, max_blocks, num_blocks;
    std::vector<int> tables;  // (B, max_blocks)
    PagedLayout(int B_, int maxT_, int NKV_, int hs_) : B(B_), maxT(maxT_), NKV(NKV_), hs(hs_) {
        max_blocks = blocks_for(maxT, block_size);
        num_blocks = B * max_blocks;
        // a permutation when 7 is prime to num_blocks (the tests REQUIRE it)
        for (int i = 0; i < num_blocks; i++) tables.push_back(num_blocks - 1 - (i * 7) % num_blocks);
    }
    size_t pool_count() const { return static_cast<size_t>(num_blocks) * NKV * block_size * hs; }
};

TEST_CASE("decode: prefill + appends to a paged cache, then paged_attention equals the last row of full attention") {
    Rng rng(408);
    for (int hs : {64, 128})
        for (int NKV : {4, 2, 1}) {
            const int maxT = 300, prefill = 5;  // > 2 split-K chunks of 128 keys
            DecodeCase c = make_decode_case(Shape{2, maxT, 4, NKV, hs}, rng);
            const Shape& s = c.s;
            CAPTURE(describe(s));
            PagedLayout kv(s.B, maxT, s.NKV, s.hs);
            REQUIRE(std::gcd(7, kv.num_blocks) == 1);
            for_each_thread_order([&] {
                DeviceBuffer<float> k_pool(kv.pool_count()), v_pool(kv.pool_count());
                DeviceBuffer<float> d_out(static_cast<size_t>(s.B) * s.NH * s.hs);
                DeviceBuffer<int> d_tables(kv.tables);
                poison(k_pool);  // rows past the length stay NaN: decode must never read them
                poison(v_pool);
                // prefill: the first tokens of every sequence, roped at positions 0..prefill-1
                std::vector<float> first(static_cast<size_t>(s.B) * prefill * s.W());
                for (int b = 0; b < s.B; b++)
                    std::copy_n(c.raw.begin() + static_cast<size_t>(b) * s.T * s.W(), prefill * s.W(),
                                first.begin() + static_cast<size_t>(b) * prefill * s.W());
                std::vector<int> prefill_pos(static_cast<size_t>(s.B) * prefill), prefill_slot(prefill_pos.size());
                for (size_t i = 0; i < prefill_pos.size(); i++) {
                    prefill_pos[i] = static_cast<int>(i % prefill);
                    prefill_slot[i] = static_cast<int>(i / prefill);
                }
                DeviceBuffer<float> d_first(first);
                DeviceBuffer<int> d_prefill_pos(prefill_pos), d_prefill_slot(prefill_slot);
                rope_forward(d_first.ptr, s.B, prefill, s.NH, s.NKV, s.hs, rope_theta, nullptr);
                paged_kv_append(k_pool.ptr, v_pool.ptr, d_first.ptr, d_tables.ptr, d_prefill_slot.ptr,
                                d_prefill_pos.ptr, s.B * prefill, s.NH, s.NKV, s.hs, kv.block_size, kv.max_blocks,
                                nullptr);
                // then one token at a time: rope at its position, append, decode
                std::vector<int> slots(s.B);
                for (int b = 0; b < s.B; b++) slots[b] = b;
                DeviceBuffer<int> d_slots(slots);
                for (int t = prefill; t < maxT; t++) {
                    std::vector<int> pos(s.B, t);
                    DeviceBuffer<float> d_tok(token_rows(c, pos));
                    DeviceBuffer<int> d_pos(pos);
                    rope_forward_at(d_tok.ptr, d_pos.ptr, s.B, 1, s.NH, s.NKV, s.hs, rope_theta, nullptr);
                    paged_kv_append(k_pool.ptr, v_pool.ptr, d_tok.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, s.B, s.NH,
                                    s.NKV, s.hs, kv.block_size, kv.max_blocks, nullptr);
                    if (t % 37 != 0 && t != maxT - 1 && t != 127 && t != 128) continue;  // check a spread of lengths
                    CAPTURE(t);
                    poison(d_out);
                    poison_attention_workspace();
                    paged_attention(d_out.ptr, d_tok.ptr, k_pool.ptr, v_pool.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr,
                                    t + 1, s.B, s.NH, s.NKV, s.hs, kv.block_size, kv.max_blocks, nullptr);
                    check_close("paged_attention", d_out.download(), reference_rows(c, pos), tolerance_fp32_attention);
                }
            });
        }
}

TEST_CASE("decode: sequences of different lengths in one batch, paged cache filled in one append") {
    Rng rng(409);
    const int maxT = 260;
    DecodeCase c = make_decode_case(Shape{4, maxT, 4, 2, 64}, rng);
    const Shape& s = c.s;
    std::vector<int> lengths = {1, 128, 129, 260};
    PagedLayout kv(s.B, maxT, s.NKV, s.hs);
    REQUIRE(std::gcd(7, kv.num_blocks) == 1);
    // kernel append vs CPU append of the whole (roped) sequence: the same pool
    const int N = s.B * s.T;
    std::vector<int> positions(N), slots(N);
    for (int i = 0; i < N; i++) {
        positions[i] = i % s.T;
        slots[i] = i / s.T;
    }
    std::vector<double> k_ref(kv.pool_count()), v_ref(kv.pool_count());
    paged_kv_append_cpu(k_ref.data(), v_ref.data(), c.roped.data(), kv.tables.data(), slots.data(), positions.data(),
                        N, s.NH, s.NKV, s.hs, kv.block_size, kv.max_blocks);
    std::vector<int> last(s.B), seq(s.B);
    for (int b = 0; b < s.B; b++) {
        last[b] = lengths[b] - 1;
        seq[b] = b;
    }
    // decode reference on the CPU too: paged_attention_cpu equals the last row of full attention
    std::vector<double> q_rows(static_cast<size_t>(s.B) * s.W()), dec_ref(static_cast<size_t>(s.B) * s.NH * s.hs);
    for (int b = 0; b < s.B; b++)
        std::copy_n(c.roped.begin() + (static_cast<size_t>(b) * s.T + last[b]) * s.W(), s.W(),
                    q_rows.begin() + static_cast<size_t>(b) * s.W());
    paged_attention_cpu(dec_ref.data(), q_rows.data(), k_ref.data(), v_ref.data(), kv.tables.data(), seq.data(),
                        last.data(), maxT, s.B, s.NH, s.NKV, s.hs, kv.block_size, kv.max_blocks);
    check_close("paged_attention_cpu vs full attention", to_float(dec_ref), reference_rows(c, last), 1e-6);
    for_each_thread_order([&] {
        DeviceBuffer<float> k_pool(kv.pool_count()), v_pool(kv.pool_count());
        DeviceBuffer<float> d_out(static_cast<size_t>(s.B) * s.NH * s.hs);
        DeviceBuffer<float> d_seq(c.raw);
        DeviceBuffer<int> d_positions(positions), d_slots(slots), d_tables(kv.tables), d_seq_slots(seq);
        poison(k_pool);
        poison(v_pool);
        rope_forward(d_seq.ptr, s.B, s.T, s.NH, s.NKV, s.hs, rope_theta, nullptr);
        paged_kv_append(k_pool.ptr, v_pool.ptr, d_seq.ptr, d_tables.ptr, d_slots.ptr, d_positions.ptr, N, s.NH, s.NKV,
                        s.hs, kv.block_size, kv.max_blocks, nullptr);
        // the written rows (the pool's last block has slots past maxT that stay poisoned)
        auto written = [&](const std::vector<float>& pool) {
            std::vector<float> rows;
            for (int i = 0; i < N; i++)
                for (int g = 0; g < s.NKV; g++) {
                    size_t at = paged_kv_row(kv.tables.data() + static_cast<size_t>(slots[i]) * kv.max_blocks,
                                             positions[i], g, s.NKV, kv.block_size, s.hs);
                    rows.insert(rows.end(), pool.begin() + at, pool.begin() + at + s.hs);
                }
            return rows;
        };
        check_close("k pool", written(k_pool.download()), written(to_float(k_ref)), tolerance_fp32_elementwise);
        check_close("v pool", written(v_pool.download()), written(to_float(v_ref)), tolerance_fp32_elementwise);
        DeviceBuffer<float> d_q(token_rows(c, last));
        DeviceBuffer<int> d_last(last);
        rope_forward_at(d_q.ptr, d_last.ptr, s.B, 1, s.NH, s.NKV, s.hs, rope_theta, nullptr);
        poison(d_out);
        poison_attention_workspace();
        paged_attention(d_out.ptr, d_q.ptr, k_pool.ptr, v_pool.ptr, d_tables.ptr, d_seq_slots.ptr, d_last.ptr, maxT,
                        s.B, s.NH, s.NKV, s.hs, kv.block_size, kv.max_blocks, nullptr);
        check_close("paged_attention, mixed lengths", d_out.download(), reference_rows(c, last),
                    tolerance_fp32_attention);
    });
}

// ----------------------------------------------------------------------------
// The CPU training path's attention (layers_cpu_blas.h) against the plain-loop reference: forward out and
// lse; backward accumulating into a random dqkv (so an overwrite fails); MHA, GQA, MQA; odd T and hs.
TEST_CASE("attention CPU fast path matches the CPU reference (T 1..129, MHA/GQA/MQA)") {
    Rng rng(407);
    for (int T : {1, 7, 64, 129})
        for (int hs : {8, 64})
            for (int NKV : {4, 2, 1}) {
                Shape s{2, T, 4, NKV, hs};
                CAPTURE(describe(s));
                std::vector<float> qkv = random_vector(s.qkv_count(), rng), dout = random_vector(s.out_count(), rng);
                std::vector<float> dqkv_init = random_vector(s.qkv_count(), rng);
                std::vector<float> out_ref(s.out_count()), lse_ref(s.lse_count());
                std::vector<float> out(s.out_count(), NAN), lse(s.lse_count(), NAN);
                attention_forward_cpu(out_ref.data(), lse_ref.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.hs);
                attention_forward_cpu_fast(out.data(), lse.data(), qkv.data(), s.B, s.T, s.NH, s.NKV, s.hs);
                check_close("fast forward out", out, out_ref, tolerance_fp32);
                check_close("fast forward lse", lse, lse_ref, tolerance_fp32);
                std::vector<float> dqkv_ref = dqkv_init, dqkv = dqkv_init;
                attention_backward_cpu(dqkv_ref.data(), dout.data(), out_ref.data(), lse_ref.data(), qkv.data(), s.B,
                                       s.T, s.NH, s.NKV, s.hs);
                attention_backward_cpu_fast(dqkv.data(), dout.data(), out_ref.data(), lse_ref.data(), qkv.data(), s.B,
                                            s.T, s.NH, s.NKV, s.hs);
                check_close("fast backward dqkv", dqkv, dqkv_ref, tolerance_fp32);
            }
}

// ----------------------------------------------------------------------------
// The tensor-core kernels (AttentionBackend::wmma: bf16 products, fp32 sums and softmax statistics) against the
// CPU reference in double, element by element, within the error that rounding their inputs to bf16 allows.
//
// The bound, per element (u = 2^-8, bf16's unit roundoff; w = 2^-24, fp32's; a product of two bf16 numbers is
// exact in fp32, so a product of rounded inputs is off by at most (1+u)² − 1 = 2u + u² relative):
//   Scores. S_ts = scale·Σ_i q_ti·k_si is computed from bf16 q, k with fp32 sums of hs terms, then scaled to base 2
//   in fp32:  |ΔS_ts| <= ε_ts := (2u + u² + (hs + 4)·w)·a_ts + 4w·|lse_t| + 2^-21,   a_ts = scale·Σ_i |q_ti·k_si|
//   (the |lse| term: the backward subtracts an fp32 lse; 2^-21: exp2f's own error, a few ulp).
//   Forward. The kernel's softmax of S + ΔS has P'_ts/P_ts in [e^-2ε, e^2ε] with ε = max_s ε_ts (the numerator
//   moves by e^±ε, the sum by at most as much); P' is rounded to bf16 (1 + u), v too (1 + u), and O sums T terms in
//   fp32 and is rescaled once per key tile:
//     |ΔO_ti| <= (e^2ε·(1 + u)²·(1 + (2T + 8)·w) − 1)·Σ_s P_ts·|v_si|,
//     |Δlse_t| <= ε + (T + 4)·w + 4w·|lse_t|    (the fp32 sum l of T terms, then log and the base changes).
//   Backward, given the reference's out and lse (so each kernel is checked on its own):
//     P̂ = exp(S + ΔS − lse):  |P̂ − P| <= P·(e^ε_ts − 1);  dP = dO·Vᵀ from bf16: |ΔdP_ts| <= γ·Σ_i |dO_ti·v_si| with
//     γ = 2u + u² + hs·w;  D = dO·O in fp32: |ΔD_t| <= (hs + 2)·w·Σ_i |dO_ti·O_ti|, or given an out off by at most
//     r·|O| (a bf16 out: r = u + 2^-23) |ΔD_t| <= ((hs + 2)·w·(1 + r) + r)·Σ_i |dO_ti·O_ti|.  dS = P·(dP − D) in
//     fp32, then rounded to bf16:
//       |ΔdS_ts| <= E_ts := e_ts + (u + w)·(|dS_ts| + e_ts),  e_ts = P·(e^ε − 1)·|dP − D| + P·e^ε·(|ΔdP| + |ΔD|)
//     and each product adds its other input's rounding and n·w of its fp32 sum of n terms:
//       |ΔdV_si| <= Σ_t P_ts·|dO_ti|·(e^ε_ts·(1 + u)²·(1 + n·w) − 1)
//       |ΔdK_si| <= scale·Σ_t (E_ts·(1 + u) + u·|dS_ts|)·|q_ti| + n·w·scale·Σ_t (|dS_ts| + E_ts)·(1 + u)·|q_ti|
//       |ΔdQ_ti| <= the same with k_si, summed over s,
//     plus 2^-23·(|dqkv before| + |dqkv after|) for adding into dqkv. (t runs over the queries of every head of
//     the group for dK and dV: n = T·NH/NKV.)
// These are worst cases: every rounding at its maximum, with the same sign (the tests see 4–25% of them). Over
// a whole tensor the roundings of random inputs average out instead. As layers.cuh derives for
// matmul_wmma_kernel, rounding one input moves a term by a relative error of rms u/√6, independent from input to
// input; an output that depends on n rounded inputs per term is then off by about √(n/6)·u over the tensor:
//   out: q, k (through S), p, v: n = 4, √(4/6)·u = 3.2e-3 (measured 2.3e-3 to 2.6e-3);
//   dqkv: dO, v (through dP), q, k (through P), dS or p, and the other factor: n = 6, u = 3.9e-3 (measured
//   3.6e-3 to 3.8e-3, as increments over the dqkv it is added to).
// The norm checks allow twice that (tolerance_bf16_attention_norm below): a missing O rescale gives 0.12, a
// dropped key tile or head more.
namespace {

struct AttentionBf16Bounds {
    std::vector<float> out, lse, dqkv;  // the largest |kernel − reference| allowed per element
};

// The bounds above for inputs qkv, dout and the reference's out, lse, dqkv (after) and dqkv_init (before); out_rel:
// the relative error r of the out the backward is given (0: the reference's out in fp32).
AttentionBf16Bounds attention_bf16_bounds(const Shape& s, const std::vector<double>& qkv,
                                          const std::vector<double>& dout, const std::vector<double>& out,
                                          const std::vector<double>& lse, const std::vector<double>& dqkv,
                                          const std::vector<double>& dqkv_init, double out_rel = 0) {
    const double u = bf16_unit_roundoff, w = std::ldexp(1.0, -24), scale = 1 / std::sqrt(static_cast<double>(s.hs));
    const double gamma = 2 * u + u * u + s.hs * w;
    const int group = s.NH / s.NKV;
    std::vector<double> out_b(s.out_count()), lse_b(s.lse_count()), dq_b(s.qkv_count(), 0.0);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            int g = h / group;
            for (int t = 0; t < s.T; t++) {
                const double* q = qkv.data() + qkv_q_offset(b, t, h, s.T, s.NH, s.NKV, s.hs);
                size_t o_row = (static_cast<size_t>(b) * s.T + t) * s.NH * s.hs + static_cast<size_t>(h) * s.hs;
                const double* dO = dout.data() + o_row;
                const double* O = out.data() + o_row;
                double L = lse[(static_cast<size_t>(b) * s.NH + h) * s.T + t];
                double D = 0, D_abs = 0;
                for (int i = 0; i < s.hs; i++) D += dO[i] * O[i], D_abs += std::fabs(dO[i] * O[i]);
                double dD = ((s.hs + 2) * w * (1 + out_rel) + out_rel) * D_abs;
                std::vector<double> eps(t + 1), P(t + 1);
                double eps_max = 0;
                for (int j = 0; j <= t; j++) {
                    const double* k = qkv.data() + qkv_k_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    double S = 0, a = 0;
                    for (int i = 0; i < s.hs; i++) S += q[i] * k[i], a += std::fabs(q[i] * k[i]);
                    eps[j] = (2 * u + u * u + (s.hs + 4) * w) * scale * a + 4 * w * std::fabs(L) + std::ldexp(1.0, -21);
                    P[j] = std::exp(scale * S - L);
                    eps_max = std::max(eps_max, eps[j]);
                }
                lse_b[(static_cast<size_t>(b) * s.NH + h) * s.T + t] = eps_max + (s.T + 4) * w + 4 * w * std::fabs(L);
                double f_out = std::exp(2 * eps_max) * (1 + u) * (1 + u) * (1 + (2 * s.T + 8) * w) - 1;
                double n_kv = static_cast<double>(s.T) * group, n_q = s.T;
                for (int j = 0; j <= t; j++) {
                    const double* k = qkv.data() + qkv_k_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    const double* v = qkv.data() + qkv_v_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    double dP = 0, c = 0;
                    for (int i = 0; i < s.hs; i++) dP += dO[i] * v[i], c += std::fabs(dO[i] * v[i]);
                    double dS = P[j] * (dP - D), grow = std::exp(eps[j]);
                    double e = P[j] * (grow - 1) * std::fabs(dP - D) + P[j] * grow * (gamma * c + dD);
                    double E = e + (u + w) * (std::fabs(dS) + e);
                    double dS_term = E * (1 + u) + u * std::fabs(dS), dS_mag = (std::fabs(dS) + E) * (1 + u);
                    double* dq = dq_b.data() + qkv_q_offset(b, t, h, s.T, s.NH, s.NKV, s.hs);
                    double* dk = dq_b.data() + qkv_k_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    double* dv = dq_b.data() + qkv_v_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    for (int i = 0; i < s.hs; i++) {
                        out_b[o_row + i] += f_out * P[j] * std::fabs(v[i]);
                        dv[i] += P[j] * std::fabs(dO[i]) * (grow * (1 + u) * (1 + u) * (1 + n_kv * w) - 1);
                        dk[i] += scale * (dS_term + n_kv * w * dS_mag) * std::fabs(q[i]);
                        dq[i] += scale * (dS_term + n_q * w * dS_mag) * std::fabs(k[i]);
                    }
                }
            }
        }
    for (size_t i = 0; i < dq_b.size(); i++)
        dq_b[i] += std::ldexp(1.0, -23) * (std::fabs(dqkv_init[i]) + std::fabs(dqkv[i]));
    return {to_float(out_b), to_float(lse_b), to_float(dq_b)};
}

// |out − ref| <= bound element by element (naming the worst), then ‖out − ref‖/‖ref − base‖ <= norm: with `base`
// the values a backward accumulated into, the norm check sees the gradient, not the random values it was added to.
void check_within_bound(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                        const std::vector<float>& bound, double norm, const std::vector<float>* base = nullptr) {
    REQUIRE(out.size() == ref.size());
    REQUIRE(bound.size() == ref.size());
    size_t bad = 0, worst = 0;
    double worst_ratio = 0;
    for (size_t i = 0; i < out.size(); i++) {
        if (!std::isfinite(out[i])) {
            FAIL_CHECK(what << ": element " << i << " is " << out[i] << " (reference " << ref[i]
                            << ") — unwritten or overflowed");
            return;
        }
        double ratio = std::fabs(static_cast<double>(out[i]) - ref[i]) / bound[i];
        if (ratio > 1) bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    if (bad)
        FAIL_CHECK(what << ": " << bad << " of " << out.size() << " elements outside the bf16 bound; worst: element "
                        << worst << " = " << out[worst] << ", reference " << ref[worst] << ", bound " << bound[worst]
                        << " (" << worst_ratio << "× the bound)");
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); i++) {
        double d = static_cast<double>(out[i]) - ref[i], r = static_cast<double>(ref[i]) - (base ? (*base)[i] : 0.0f);
        num += d * d;
        den += r * r;
    }
    double e = std::sqrt(num / den);
    INFO(what << ": relative error " << e << " (tolerance " << norm << "); worst element at " << worst_ratio
              << "× its bound");
    CHECK(e <= norm);
}

// 2·√(n/6)·u with n the rounded inputs per term (the derivation above)
double tolerance_bf16_attention_norm(int n) { return 2 * std::sqrt(n / 6.0) * bf16_unit_roundoff; }

void check_attention_wmma(const Shape& s, Rng& rng) {
    CAPTURE(describe(s));
    std::vector<float> qkv = random_vector(s.qkv_count(), rng, 1.5f);
    std::vector<float> dout = random_vector(s.out_count(), rng);
    std::vector<float> dqkv_init = random_vector(s.qkv_count(), rng);
    std::vector<double> x = to_double(qkv), dout_d = to_double(dout), out(s.out_count()), lse(s.lse_count());
    std::vector<double> dx = to_double(dqkv_init);
    attention_forward_cpu(out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    attention_backward_cpu(dx.data(), dout_d.data(), out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    std::vector<float> out_ref = to_float(out), lse_ref = to_float(lse), dqkv_ref = to_float(dx);
    AttentionBf16Bounds bound = attention_bf16_bounds(s, x, dout_d, out, lse, dx, to_double(dqkv_init));
    AttentionBackendGuard guard;
    set_attention_backend(AttentionBackend::wmma);
    for_each_thread_order([&] {
        DeviceBuffer<float> d_qkv(qkv), d_out(s.out_count()), d_lse(s.lse_count()), d_dout(dout), d_dqkv(dqkv_init);
        poison(d_out);
        poison(d_lse);
        poison_attention_workspace();
        attention_forward(d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
        std::vector<float> got_out = d_out.download();
        check_within_bound("wmma forward out", got_out, out_ref, bound.out, tolerance_bf16_attention_norm(4));
        check_within_bound("wmma forward lse", d_lse.download(), lse_ref, bound.lse, tolerance_bf16_attention_norm(4));
        // and the inputs really were rounded to bf16 (the fp32 kernels stay within 1e-5)
        if (s.hs >= 16) CHECK(rel_error(got_out, out_ref) > 1e-4);
        // the backward from the reference's out and lse
        DeviceBuffer<float> d_out_ref(out_ref), d_lse_ref(lse_ref);
        poison_attention_workspace();
        attention_backward(d_dqkv.ptr, d_dout.ptr, d_out_ref.ptr, d_lse_ref.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs,
                           nullptr);
        check_within_bound("wmma backward dqkv", d_dqkv.download(), dqkv_ref, bound.dqkv,
                           tolerance_bf16_attention_norm(6), &dqkv_init);
    });
}

}  // namespace

// Every capacity the fused kernels are compiled for (32, 64, 96, 128, 256; hs 20 and 80 padded with zeros), T not a
// multiple of any tile (the forward's 64 queries, the backward's 32), MHA, GQA and MQA.
TEST_CASE("attention wmma (bf16 tensor cores) forward/backward within the bf16 bound of the CPU reference") {
    Rng rng(412);
    for (Shape s : {Shape{2, 70, 4, 2, 64}, Shape{1, 33, 2, 1, 32}, Shape{1, 37, 2, 2, 20}, Shape{1, 45, 4, 1, 80},
                    Shape{1, 40, 4, 4, 128}, Shape{1, 20, 2, 2, 256}})
        check_attention_wmma(s, rng);
}

// ----------------------------------------------------------------------------
// bf16 storage (attention.cuh, "Precision"): the attention paths with X = __nv_bfloat16 (qkv, out, dout, dqkv bf16; lse
// fp32) on inputs that are bf16 values. Each run is checked against the same kernel with X = float on the same inputs
// (test_util.h, check_bf16_runs: out and dqkv rounded once to bf16, lse equal, bit for bit) and against the CPU
// reference in double, element by element. The backward is given the reference's lse and the reference's out rounded
// to bf16 (as a bf16 forward stores it), so each kernel is checked on its own; a bf16 out moves D = dO·O, which the
// bounds below carry. With u = 2^-8 (bf16_unit_roundoff), a bound b on |y − ref| for the fp32 value y a kernel
// computes becomes (1 + u)·b + u·|ref| for the stored bf16(y) (|bf16(y) − y| <= u·|y| <= u·(|ref| + b)).
namespace {

// What the out given to the backward moves dqkv by when it is off by at most r·|O| per element (the reference's out
// rounded to fp32, then to bf16: r = u + 2^-23): D_t = dO_t·O_t moves by ΔD_t <= r·Σ_i |dO_ti·O_ti|, and
// dS_ts = P_ts·(dP_ts − D_t) is linear in D, so dS moves by P_ts·ΔD_t, dQ_t = scale·Σ_s dS_ts·k_s and
// dK_s = scale·Σ_(h in the group, t) dS_ts·q_t by at most
//   |ΔdQ_ti| <= scale·ΔD_t·Σ_s P_ts·|k_si|,   |ΔdK_si| <= scale·Σ_(h, t) P_ts·ΔD_t·|q_ti|;   dV does not read D.
std::vector<double> attention_out_rounding_bound(const Shape& s, const std::vector<double>& qkv,
                                                 const std::vector<double>& dout, const std::vector<double>& out,
                                                 const std::vector<double>& lse, double r) {
    const double scale = 1 / std::sqrt(static_cast<double>(s.hs));
    std::vector<double> bound(s.qkv_count(), 0.0);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            int g = h / (s.NH / s.NKV);
            for (int t = 0; t < s.T; t++) {
                const double* q = qkv.data() + qkv_q_offset(b, t, h, s.T, s.NH, s.NKV, s.hs);
                size_t o_row = (static_cast<size_t>(b) * s.T + t) * s.NH * s.hs + static_cast<size_t>(h) * s.hs;
                double dD = 0;
                for (int i = 0; i < s.hs; i++) dD += r * std::fabs(dout[o_row + i] * out[o_row + i]);
                double L = lse[(static_cast<size_t>(b) * s.NH + h) * s.T + t];
                double* dq = bound.data() + qkv_q_offset(b, t, h, s.T, s.NH, s.NKV, s.hs);
                for (int j = 0; j <= t; j++) {
                    const double* k = qkv.data() + qkv_k_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    double S = 0;
                    for (int i = 0; i < s.hs; i++) S += q[i] * k[i];
                    double c = scale * std::exp(scale * S - L) * dD;  // scale·P_tj·ΔD_t
                    double* dk = bound.data() + qkv_k_offset(b, j, g, s.T, s.NH, s.NKV, s.hs);
                    for (int i = 0; i < s.hs; i++) {
                        dq[i] += c * std::fabs(k[i]);
                        dk[i] += c * std::fabs(q[i]);
                    }
                }
            }
        }
    return bound;
}

// The bound (1 + u)·b + u·|ref| on a stored bf16 output, b the bound on the fp32 value (the derivation above).
std::vector<float> bf16_stored_bound(const std::vector<double>& b, const std::vector<float>& ref) {
    const double u = bf16_unit_roundoff;
    std::vector<float> out(b.size());
    for (size_t i = 0; i < b.size(); i++) out[i] = static_cast<float>((1 + u) * b[i] + u * std::fabs(ref[i]));
    return out;
}

double norm2(const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x * x;
    return std::sqrt(sum);
}

}  // namespace

// flash (fp32 arithmetic): the fp32-storage kernel is within tolerance_fp32_attention (atol + rtol·|ref|) of the
// reference, plus, for dqkv, what the bf16 out moves it by (attention_out_rounding_bound, δ): per element
//   out, dqkv:  (1 + u)·(atol + rtol·|ref| + δ) + u·|ref|;   lse (fp32): tolerance_fp32_attention itself;
// over the tensor (‖·‖ of the differences, by the triangle inequality) (1 + u)·(norm + ‖δ‖/‖ref‖) + u.
// wmma (bf16 products): the fp32-storage bound derived above (attention_bf16_bounds, with r = u + 2^-23 for the bf16
// out), stored once more: (1 + u)·b + u·|ref|. Over the tensor, storing rounds once more (rms u/√6, one more rounded
// input) and so does the out the backward reads (through D): n = 4 + 1 for out, 6 + 1 + 1 for dqkv (relative to
// ‖ref‖: the rounding of a stored value scales with the whole value, not only with the gradient added into it).
// naive forward (cuBLAS, att in bf16): S is rounded to bf16 (|ΔS| <= u·|S| + (hs + 2)·w·a <= the wmma ε above), P too
// (1 + u), V is exact, the sums are fp32 and the output is stored once: within the wmma out bound stored once more.
// It is not the fp32 kernel rounded once (S and P are rounded in between), so only the reference check applies. (The
// naive backward rounds dP, dS and each head's dq, dk, dv on the way; no bound is derived for it here.)
TEST_CASE("attention with bf16 storage (flash, wmma, naive forward): one rounding of the fp32-storage kernel, "
          "within the bf16 bound of the CPU reference") {
    Rng rng(413);
    AttentionBackendGuard guard;
    const double u = bf16_unit_roundoff, r = u + std::ldexp(1.0, -23);
    for (Shape s : {Shape{2, 70, 4, 2, 64}, Shape{1, 37, 2, 1, 20}}) {
        CAPTURE(describe(s));
        std::vector<float> qkv = random_bf16(s.qkv_count(), rng, 1.5f), dout = random_bf16(s.out_count(), rng);
        std::vector<float> dqkv_init = random_bf16(s.qkv_count(), rng);
        std::vector<double> x = to_double(qkv), dout_d = to_double(dout), out(s.out_count()), lse(s.lse_count());
        std::vector<double> dx = to_double(dqkv_init);
        attention_forward_cpu(out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
        attention_backward_cpu(dx.data(), dout_d.data(), out.data(), lse.data(), x.data(), s.B, s.T, s.NH, s.NKV, s.hs);
        std::vector<float> out_ref = to_float(out), lse_ref = to_float(lse), dqkv_ref = to_float(dx);
        std::vector<float> out_given = bf16_values(out_ref);  // the backward's out, as a bf16 forward stores it
        auto run = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_qkv = upload_as<X>(qkv), d_dout = upload_as<X>(dout), d_dqkv = upload_as<X>(dqkv_init);
            DeviceBuffer<X> d_out_given = upload_as<X>(out_given), d_out(s.out_count());
            DeviceBuffer<float> d_lse(s.lse_count()), d_lse_ref(lse_ref);
            poison(d_out);
            poison(d_lse);
            poison_attention_workspace();
            attention_forward(d_out.ptr, d_lse.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
            poison_attention_workspace();
            attention_backward(d_dqkv.ptr, d_dout.ptr, d_out_given.ptr, d_lse_ref.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV,
                               s.hs, nullptr);
            return std::vector<OpOutput>{{"out", download_fp32(d_out), true},
                                         {"lse", d_lse.download(), false},
                                         {"dqkv", download_fp32(d_dqkv), true}};
        };

        const Tolerance tol = tolerance_fp32_attention;
        std::vector<double> delta = attention_out_rounding_bound(s, x, dout_d, out, lse, r);
        std::vector<double> out_b(out_ref.size()), dqkv_b(dqkv_ref.size());
        for (size_t i = 0; i < out_b.size(); i++) out_b[i] = tol.atol + tol.rtol * std::fabs(out_ref[i]);
        for (size_t i = 0; i < dqkv_b.size(); i++) dqkv_b[i] = tol.atol + tol.rtol * std::fabs(dqkv_ref[i]) + delta[i];
        const double dqkv_norm = (1 + u) * (tol.norm + norm2(delta) / norm2(to_double(dqkv_ref))) + u;
        set_attention_backend(AttentionBackend::flash);
        check_bf16_runs(run, [&](const std::vector<OpOutput>& got) {
            check_within_bound("flash bf16 out", got[0].values, out_ref, bf16_stored_bound(out_b, out_ref),
                               bf16_tolerance(tol).norm);
            check_close("flash bf16 lse", got[1].values, lse_ref, tol);
            check_within_bound("flash bf16 dqkv", got[2].values, dqkv_ref, bf16_stored_bound(dqkv_b, dqkv_ref),
                               dqkv_norm);
        });

        AttentionBf16Bounds b = attention_bf16_bounds(s, x, dout_d, out, lse, dx, to_double(dqkv_init), r);
        set_attention_backend(AttentionBackend::wmma);
        check_bf16_runs(run, [&](const std::vector<OpOutput>& got) {
            check_within_bound("wmma bf16 out", got[0].values, out_ref, bf16_stored_bound(to_double(b.out), out_ref),
                               tolerance_bf16_attention_norm(4 + 1));
            check_within_bound("wmma bf16 lse", got[1].values, lse_ref, b.lse, tolerance_bf16_attention_norm(4));
            check_within_bound("wmma bf16 dqkv", got[2].values, dqkv_ref,
                               bf16_stored_bound(to_double(b.dqkv), dqkv_ref),
                               tolerance_bf16_attention_norm(6 + 1 + 1));
        });

        auto run_naive = [&](auto zero) {
            using X = decltype(zero);
            DeviceBuffer<X> d_qkv = upload_as<X>(qkv), d_out(s.out_count()), d_att(s.lse_count() * s.T);
            poison(d_out);
            poison(d_att);
            poison_attention_workspace();
            attention_forward_naive(d_out.ptr, d_att.ptr, d_qkv.ptr, s.B, s.T, s.NH, s.NKV, s.hs, nullptr);
            return std::vector<OpOutput>{{"naive out", download_fp32(d_out), true}};
        };
        check_bf16_runs(
            run_naive,
            [&](const std::vector<OpOutput>& got) {
                check_within_bound("naive bf16 out", got[0].values, out_ref,
                                   bf16_stored_bound(to_double(b.out), out_ref), tolerance_bf16_attention_norm(4 + 1));
            },
            false);
    }
}
