// Inference: sampling, speculative acceptance, safetensors, Hugging Face GPT-2 interop (hf.h), the paged
// KV cache ops (paged_kv.cuh) against their CPU references and causal attention, the engine's cached
// decoding against full recomputation and at a context beyond 16k tokens, continuous batching against
// one-at-a-time, speculative decoding (engine.cuh).
// Tiny models throughout: the kernels are emulated by cudasim in the CPU build.
#include "test/test_util.h"
#include "hf.h"
#include "engine.cuh"

#include <bit>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sys/wait.h>

namespace fs = std::filesystem;

// fp32 through a few layers, summed in a different order than PyTorch / than the full forward: 1e-4
// relative over a logits row (the issue's bound for the Hugging Face comparison).
constexpr double tolerance_model = 1e-4;

// ----------------------------------------------------------------------------
// Sampling
TEST_CASE("sampling: greedy, temperature, top-k, top-p define the documented distribution") {
    std::vector<float> z = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    const int V = 5;
    auto p = sampling_distribution(z.data(), V, {0.0f, 0, 1.0f});
    CHECK(p == std::vector<double>{0, 1, 0, 0, 0});  // greedy: the lowest index among the tied maxima
    // temperature: softmax(z / τ)
    p = sampling_distribution(z.data(), V, {0.5f, 0, 1.0f});
    double sum = 0;
    for (int i = 0; i < V; i++) sum += std::exp(z[i] / 0.5);
    for (int i = 0; i < V; i++) CHECK(p[i] == doctest::Approx(std::exp(z[i] / 0.5) / sum).epsilon(1e-12));
    // top-k 2 keeps the two 3.0s
    p = sampling_distribution(z.data(), V, {1.0f, 2, 1.0f});
    CHECK(p == std::vector<double>{0, 0.5, 0, 0.5, 0});
    // top-p: sorted probs at τ=1 are 0.422, 0.422, 0.155, 0.057, 0.0077; P = 0.9 keeps the first three
    p = sampling_distribution(z.data(), V, {1.0f, 0, 0.9f});
    CHECK(p[0] == 0.0);
    CHECK(p[4] == 0.0);
    CHECK(p[1] + p[2] + p[3] == doctest::Approx(1.0));
    CHECK(p[2] == doctest::Approx(std::exp(-1.0) / (2 + std::exp(-1.0))));
    // draw follows p: 100k draws, each frequency within 5 standard deviations
    Rng rng(7);
    std::vector<int> count(V, 0);
    const int n = 100000;
    p = sampling_distribution(z.data(), V, {1.3f, 0, 1.0f});
    for (int i = 0; i < n; i++) count[draw(p, rng)]++;
    for (int i = 0; i < V; i++) CHECK(std::abs(count[i] - n * p[i]) <= 5 * std::sqrt(n * p[i] * (1 - p[i])) + 1);
    CHECK_THROWS_WITH(SamplingSettings({-1.0f, 0, 1.0f}).validate(), doctest::Contains("temperature"));
    CHECK_THROWS_WITH(SamplingSettings({1.0f, 0, 0.0f}).validate(), doctest::Contains("top_p"));
}

TEST_CASE("speculative acceptance: the output follows the target distribution exactly (statistical)") {
    // tiny vocabulary, random p (target) and q (draft) with different supports; x ~ q, then the rule
    Rng rng(2024);
    const int V = 6, n = 200000;
    for (int trial = 0; trial < 3; trial++) {
        std::vector<double> p(V), q(V);
        double sp = 0, sq = 0;
        for (int i = 0; i < V; i++) {
            sp += (p[i] = rng.uniform() < 0.2f ? 0.0 : rng.uniform());
            sq += (q[i] = rng.uniform() < 0.2f ? 0.0 : rng.uniform());
        }
        q[trial] += 0.5;  // q is never all zero
        sq += 0.5;
        p[V - 1 - trial] += 0.5;
        sp += 0.5;
        for (int i = 0; i < V; i++) { p[i] /= sp; q[i] /= sq; }
        std::vector<int> count(V, 0);
        int accepted = 0;
        for (int k = 0; k < n; k++) {
            SpeculativeVerdict v = speculative_accept(draw(q, rng), p, q, rng);
            count[v.token]++;
            accepted += v.accepted;
        }
        // chi-square with V-1 degrees of freedom over the tokens p gives mass; none where p is 0
        double chi2 = 0, overlap = 0;
        for (int i = 0; i < V; i++) {
            overlap += std::min(p[i], q[i]);
            if (p[i] == 0) CHECK(count[i] == 0);
            else chi2 += (count[i] - n * p[i]) * (count[i] - n * p[i]) / (n * p[i]);
        }
        INFO("trial " << trial << ": chi2 " << chi2 << ", acceptance " << double(accepted) / n << " (theory " << overlap
                      << ")");
        CHECK(chi2 < 25.0);  // p < 1e-4 for 5 degrees of freedom
        CHECK(std::abs(double(accepted) / n - overlap) < 0.01);  // acceptance rate = Σ min(p, q)
    }
}

// ----------------------------------------------------------------------------
// safetensors
static std::vector<uint8_t> st_file(const std::string& header, size_t data_bytes, uint64_t header_len = UINT64_MAX) {
    std::vector<uint8_t> out(8 + header.size() + data_bytes, 0);
    uint64_t n = header_len == UINT64_MAX ? header.size() : header_len;
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    return out;
}

TEST_CASE("safetensors: write, read back; F16 and BF16 convert exactly") {
    Rng rng(3);
    std::vector<safetensors::Tensor> ts = {
        {"a", {2, 3}, random_vector(6, rng)}, {"b.c", {5}, random_vector(5, rng)}, {"empty", {0, 4}, {}}};
    auto r = safetensors::Reader::parse(safetensors::serialize(ts, {{"format", "pt"}}), "mem");
    CHECK(r.metadata().at("format") == "pt");
    for (const auto& t : ts) CHECK(r.get(t.name, t.shape) == t.values);
    // F16: 1.0 = 0x3c00, -2.5 = 0xc100, 65504 = 0x7bff, smallest subnormal 2^-24 = 0x0001; BF16: 1.0 = 0x3f80, -3.0 =
    // 0xc040
    std::string h =
        R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},)"
        R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})";
    auto bytes = st_file(h, 12);
    uint16_t vals[6] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x3f80, 0xc040};
    std::memcpy(bytes.data() + 8 + h.size(), vals, 12);
    auto r2 = safetensors::Reader::parse(bytes, "mem");
    CHECK(r2.get("h") == std::vector<float>{1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24)});
    CHECK(r2.get("b") == std::vector<float>{1.0f, -3.0f});
}

TEST_CASE("safetensors: malformed files are refused with a message naming the problem") {
    auto refuse = [](const std::vector<uint8_t>& bytes, const std::string& what) {
        CAPTURE(what);
        CHECK_THROWS_WITH(safetensors::Reader::parse(bytes, "bad.safetensors"), doctest::Contains(what.c_str()));
    };
    const std::string ok = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    CHECK_NOTHROW(safetensors::Reader::parse(st_file(ok, 16), "good"));
    refuse({1, 2, 3}, "8-byte header length");
    refuse(st_file(ok, 16, 1000000), "runs past the end");
    refuse(st_file("{\"w\":", 0), "not valid JSON");
    refuse(st_file("[1,2]", 0), "not an object");
    refuse(st_file(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", 16), "dtype 'F64' is not supported");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,32]}})", 16), "out of range");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}})", 16), "out of range");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16), "needs 12");
    refuse(
        st_file(
            R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            12),
        "overlap");
    refuse(
        st_file(
            R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("v":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
            16),
        "belong to no tensor");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
           "overflows");
    refuse(st_file(R"({"w":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
    refuse(st_file(R"({"__metadata__":{"format":1}})", 0), "not a string");
    auto r = safetensors::Reader::parse(st_file(ok, 16), "good.safetensors");
    CHECK_THROWS_WITH(r.get("missing"), doctest::Contains("no tensor named 'missing'"));
    CHECK_THROWS_WITH(r.get("w", {4}), doctest::Contains("has shape [2, 2], expected [4]"));
}

// ----------------------------------------------------------------------------
// Hugging Face GPT-2
static const std::string hf_dir = "test/fixtures/hf_gpt2_tiny";

struct Generation {
    std::vector<int> prompt, greedy;
    std::vector<std::vector<float>> logits;
};
static Generation load_generation() {
    std::ifstream f(hf_dir + "/generation.json");
    REQUIRE(f.good());
    nlohmann::json j = nlohmann::json::parse(f);
    return {j.at("prompt").get<std::vector<int>>(), j.at("greedy").get<std::vector<int>>(),
            j.at("logits").get<std::vector<std::vector<float>>>()};
}

TEST_CASE("HF GPT-2: the fixture loads; export and reload give the same parameters") {
    LoadedModel m = load_model(hf_dir);
    CHECK(m.format == "Hugging Face GPT-2");
    CHECK(m.config.vocab_size == 97);
    CHECK(m.config.padded_vocab_size == 128);
    CHECK(m.config.n_layer == 2);
    // padding rows of wte are zero
    for (size_t i = static_cast<size_t>(97) * m.config.n_embd; i < static_cast<size_t>(128) * m.config.n_embd; i++)
        REQUIRE(m.params[i] == 0.0f);
    std::string out = (fs::temp_directory_path() / "gptcu_test_export_hf").string();
    fs::remove_all(out);
    export_hf(out, m.config, m.params, m.eot_id);
    LoadedModel back = load_model(out);
    CHECK(nlohmann::json(back.config) == nlohmann::json(m.config));
    CHECK(back.params == m.params);
    CHECK(back.eot_id == m.eot_id);
    fs::remove_all(out);
    // in bf16: every weight rounded to the nearest bf16, ties to even, as the GPU's conversion rounds
    export_hf(out, m.config, m.params, m.eot_id, safetensors::DType::BF16);
    back = load_model(out);
    CHECK(safetensors::Reader::load(out + "/model.safetensors").info("transformer.wte.weight").dtype ==
          safetensors::DType::BF16);
    REQUIRE(back.params.size() == m.params.size());
    for (size_t i = 0; i < m.params.size(); i++)
        REQUIRE(back.params[i] == __bfloat162float(__float2bfloat16_rn(m.params[i])));
    fs::remove_all(out);
    for (float x : {1.0f + 0x1p-8f, 1.0f + 0x3p-8f, -1.0f - 0x1p-8f, 0x1.fffffep127f, 1e-40f})  // ties, overflow
        CHECK(safetensors::f32_to_bf16(x) == std::bit_cast<uint16_t>(__float2bfloat16_rn(x)));
    CHECK_THROWS_WITH(load_model("test/fixtures"), doctest::Contains("config.json and model.safetensors"));
}

// ----------------------------------------------------------------------------
// The paged ops against attention.cuh's contiguous references, kernels against CPU references
TEST_CASE("paged attention and KV append: kernels match CPU references; CPU reference matches causal attention") {
    Rng rng(11);
    for (auto [NH, NKV, hs, block_size] : {std::array<int, 4>{4, 4, 16, 4}, {4, 2, 8, 3}, {2, 1, 32, 16}}) {
        CAPTURE(NH); CAPTURE(NKV); CAPTURE(hs); CAPTURE(block_size);
        const int QKVW = (NH + 2 * NKV) * hs;
        // two sequences of lengths 7 and 10, stored in scattered blocks; their tokens all come in one step
        const std::vector<int> lens = {7, 10};
        const int max_blocks = 5, num_blocks = 12, N = 17;
        std::vector<int> tables = {9, 2, 6, 0, 0, 1, 11, 4, 7, 3};  // (2, max_blocks)
        std::vector<int> slots, positions;
        for (int s = 0; s < 2; s++)
            for (int t = 0; t < lens[s]; t++) { slots.push_back(s); positions.push_back(t); }
        std::vector<float> qkv = random_vector(static_cast<size_t>(N) * QKVW, rng);
        size_t pool = static_cast<size_t>(num_blocks) * NKV * block_size * hs;
        std::vector<float> k_ref(pool, 0.0f), v_ref(pool, 0.0f), out_ref(static_cast<size_t>(N) * NH * hs);
        paged_kv_append_cpu(k_ref.data(), v_ref.data(), qkv.data(), tables.data(), slots.data(), positions.data(), N,
                            NH, NKV, hs, block_size, max_blocks);
        paged_attention_cpu(out_ref.data(), qkv.data(), k_ref.data(), v_ref.data(), tables.data(), slots.data(),
                            positions.data(), 10, N, NH, NKV, hs, block_size, max_blocks);
        // the reference equals attention.cuh's causal attention of each sequence on its own
        for (int s = 0, row0 = 0; s < 2; row0 += lens[s], s++) {
            int T = lens[s];
            std::vector<float> q(qkv.begin() + static_cast<size_t>(row0) * QKVW,
                                 qkv.begin() + static_cast<size_t>(row0 + T) * QKVW);
            std::vector<float> o(static_cast<size_t>(T) * NH * hs), lse(static_cast<size_t>(NH) * T);
            attention_forward_cpu(o.data(), lse.data(), q.data(), 1, T, NH, NKV, hs);
            std::vector<float> mine(out_ref.begin() + static_cast<size_t>(row0) * NH * hs,
                                    out_ref.begin() + static_cast<size_t>(row0 + T) * NH * hs);
            check_close("paged attention cpu vs attention_forward_cpu", mine, o, tolerance_fp32_attention);
        }
        for_each_thread_order([&] {
            DeviceBuffer<float> d_qkv(qkv), d_k(pool), d_v(pool), d_out(out_ref.size());
            DeviceBuffer<int> d_tables(tables), d_slots(slots), d_pos(positions);
            poison(d_k);
            poison(d_v);
            poison(d_out);
            paged_kv_append(d_k.ptr, d_v.ptr, d_qkv.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, N, NH, NKV, hs,
                            block_size, max_blocks, 0);
            paged_attention(d_out.ptr, d_qkv.ptr, d_k.ptr, d_v.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, 10, N, NH,
                            NKV, hs, block_size, max_blocks, 0);
            check_close("paged attention kernel", d_out.download(), out_ref, tolerance_fp32_attention);
            // every appended K and V row sits where the reference put it (the rest of the pool keeps its poison)
            std::vector<float> k = d_k.download(), v = d_v.download();
            for (int i = 0; i < N; i++)
                for (int g = 0; g < NKV; g++) {
                    size_t at = paged_kv_row(tables.data() + static_cast<size_t>(slots[i]) * max_blocks, positions[i],
                                             g, NKV, block_size, hs);
                    REQUIRE(std::equal(k.begin() + at, k.begin() + at + hs, k_ref.begin() + at));
                    REQUIRE(std::equal(v.begin() + at, v.begin() + at + hs, v_ref.begin() + at));
                }
        });
    }
}

TEST_CASE("paged attention, one row per sequence over several split-K chunks: kernel matches CPU reference") {
    // Decode rows of different lengths (one chunk, a chunk boundary, several chunks), GQA, scattered blocks.
    Rng rng(12);
    const int B = 4, NH = 4, NKV = 2, hs = 32, block_size = 8, max_blocks = 40, num_blocks = B * max_blocks;
    const int QKVW = (NH + 2 * NKV) * hs;
    const std::vector<int> lens = {1, 128, 129, 300};
    std::vector<float> k_pool = random_vector(static_cast<size_t>(num_blocks) * NKV * block_size * hs, rng);
    std::vector<float> v_pool = random_vector(k_pool.size(), rng);
    std::vector<float> qkv = random_vector(static_cast<size_t>(B) * QKVW, rng);
    std::vector<int> tables(num_blocks);
    for (int i = 0; i < num_blocks; i++) tables[i] = (i * 37 + 11) % num_blocks;  // 37 is prime to 160: a permutation
    std::vector<int> slots = {0, 1, 2, 3}, positions = {lens[0] - 1, lens[1] - 1, lens[2] - 1, lens[3] - 1};
    std::vector<float> ref(static_cast<size_t>(B) * NH * hs);
    paged_attention_cpu(ref.data(), qkv.data(), k_pool.data(), v_pool.data(), tables.data(), slots.data(),
                        positions.data(), 300, B, NH, NKV, hs, block_size, max_blocks);
    for_each_thread_order([&] {
        DeviceBuffer<float> d_qkv(qkv), d_k(k_pool), d_v(v_pool), d_out(ref.size());
        DeviceBuffer<int> d_tables(tables), d_slots(slots), d_pos(positions);
        poison(d_out);
        paged_attention(d_out.ptr, d_qkv.ptr, d_k.ptr, d_v.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, 300, B, NH, NKV,
                        hs, block_size, max_blocks, 0);
        check_close("paged_attention split-K vs cpu", d_out.download(), ref, tolerance_fp32_attention);
    });
}

// bf16 (paged_kv.cuh, "Precision"): the paged ops with X = __nv_bfloat16 on inputs that are bf16 values, checked as
// layers.cuh's ops are (test_util.h, check_bf16_op): each bf16 output is the fp32 kernel's rounded once, bit for bit
// (the appended K, V rows are copies: exactly the inputs), and within bf16_tolerance of the op's fp32 tolerance of the
// CPU reference in double: |bf16(y) − ref| <= (1 + u)·(atol + rtol·|ref|) + u·|ref|, u = 2^-8. Every token of three
// sequences (lengths 1, 129, 150: one split-K chunk, one past a chunk boundary, two chunks) is appended in one step
// and attends to its own prefix, as a prefill does; embed_at_positions runs with wpe and without (a bare nullptr).
TEST_CASE("bf16 paged KV append, paged attention (split-K), embed_at_positions: one rounding of the fp32 kernel") {
    Rng rng(13);
    const int NH = 4, NKV = 2, hs = 32, block_size = 8, max_blocks = 20, S = 3, num_blocks = S * max_blocks;
    const int QKVW = (NH + 2 * NKV) * hs, C = 48, V = 50, max_len = 150;
    const std::vector<int> lens = {1, 129, 150};
    std::vector<int> tables(num_blocks), slots, positions;
    for (int i = 0; i < num_blocks; i++) tables[i] = (i * 37 + 11) % num_blocks;  // 37 is prime to 60: a permutation
    for (int s = 0; s < S; s++)
        for (int t = 0; t < lens[s]; t++) { slots.push_back(s); positions.push_back(t); }
    const int N = static_cast<int>(slots.size());
    const size_t pool = static_cast<size_t>(num_blocks) * NKV * block_size * hs;
    std::vector<float> qkv = random_bf16(static_cast<size_t>(N) * QKVW, rng);
    std::vector<float> wte = random_bf16(static_cast<size_t>(V) * C, rng), wpe = random_bf16(
                                                                            static_cast<size_t>(max_len) * C, rng);
    std::vector<int> tokens(N);
    for (int& t : tokens) t = static_cast<int>(rng.below(V));

    auto as_double = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    auto as_float = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
    std::vector<double> x = as_double(qkv), k_ref(pool, 0.0), v_ref(pool, 0.0),
                        out_ref(static_cast<size_t>(N) * NH * hs);
    std::vector<double> wte_d = as_double(wte), wpe_d = as_double(wpe), emb_ref(static_cast<size_t>(N) * C),
                        emb_nowpe_ref(emb_ref.size());
    paged_kv_append_cpu(k_ref.data(), v_ref.data(), x.data(), tables.data(), slots.data(), positions.data(), N, NH, NKV,
                        hs, block_size, max_blocks);
    paged_attention_cpu(out_ref.data(), x.data(), k_ref.data(), v_ref.data(), tables.data(), slots.data(),
                        positions.data(), max_len, N, NH, NKV, hs, block_size, max_blocks);
    embed_at_positions_cpu(emb_ref.data(), tokens.data(), positions.data(), wte_d.data(), wpe_d.data(), N, C);
    embed_at_positions_cpu(emb_nowpe_ref.data(), tokens.data(), positions.data(), wte_d.data(),
                           static_cast<const double*>(nullptr), N, C);
    // the appended rows (the rest of the pool stays poisoned)
    auto written = [&](const std::vector<float>& p) {
        std::vector<float> rows;
        for (int i = 0; i < N; i++)
            for (int g = 0; g < NKV; g++) {
                size_t at = paged_kv_row(tables.data() + static_cast<size_t>(slots[i]) * max_blocks, positions[i], g,
                                         NKV, block_size, hs);
                rows.insert(rows.end(), p.begin() + at, p.begin() + at + hs);
            }
        return rows;
    };
    auto run = [&](auto zero) {
        using X = decltype(zero);
        DeviceBuffer<X> d_qkv = upload_as<X>(qkv), d_k(pool), d_v(pool), d_out(out_ref.size());
        DeviceBuffer<X> d_wte = upload_as<X>(wte), d_wpe = upload_as<X>(wpe), d_emb(emb_ref.size()),
                        d_emb_nowpe(emb_ref.size());
        DeviceBuffer<int> d_tables(tables), d_slots(slots), d_pos(positions), d_tokens(tokens);
        poison(d_k);
        poison(d_v);
        poison(d_out);
        poison(d_emb);
        poison(d_emb_nowpe);
        paged_kv_append(d_k.ptr, d_v.ptr, d_qkv.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, N, NH, NKV, hs, block_size,
                        max_blocks, 0);
        paged_attention(d_out.ptr, d_qkv.ptr, d_k.ptr, d_v.ptr, d_tables.ptr, d_slots.ptr, d_pos.ptr, max_len, N, NH,
                        NKV, hs, block_size, max_blocks, 0);
        embed_at_positions(d_emb.ptr, d_tokens.ptr, d_pos.ptr, d_wte.ptr, d_wpe.ptr, N, C, 0);
        embed_at_positions(d_emb_nowpe.ptr, d_tokens.ptr, d_pos.ptr, d_wte.ptr, nullptr, N, C, 0);
        return std::vector<OpOutput>{{"appended k", written(download_fp32(d_k)), true},
                                     {"appended v", written(download_fp32(d_v)), true},
                                     {"paged attention out", download_fp32(d_out), true},
                                     {"embed_at_positions", download_fp32(d_emb), true},
                                     {"embed_at_positions without wpe", download_fp32(d_emb_nowpe), true}};
    };
    check_bf16_op(run,
                  {written(as_float(k_ref)), written(as_float(v_ref)), as_float(out_ref), as_float(emb_ref),
                   as_float(emb_nowpe_ref)},
                  {tolerance_fp32_elementwise, tolerance_fp32_elementwise, tolerance_fp32_attention,
                   tolerance_fp32_elementwise, tolerance_fp32_elementwise});
}

// ----------------------------------------------------------------------------
// The engine
static GPTConfig tiny_config(int L, int C, int NH, int V, int maxT) {
    GPTConfig c;
    c.vocab_size = V;
    c.padded_vocab_size = padded_vocab(V);
    c.max_seq_len = maxT;
    c.n_layer = L;
    c.n_embd = C;
    c.n_head = c.n_kv_head = NH;
    c.ffn_hidden = 4 * C;
    return c;
}

// Random weights larger than the 0.02 init, so attention is not uniform and bugs show.
template <class Ops>
static void randomize(GPT<Ops>& model, uint64_t seed) {
    model.init_random(seed);
    std::vector<float> p = model.get_parameters();
    Rng rng(seed + 1);
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        for (size_t k = 0; k < model.sizes[i]; k++) {
            float& w = p[off + k];
            if (i == WTE && k >= static_cast<size_t>(model.config.vocab_size) * model.config.n_embd) continue;
            w = (i == LN1W || i == LN2W || i == LNFW) ? 1.0f + 0.2f * rng.normal()
                                                      : (w == 0.0f ? 0.05f * rng.normal() : w * 10.0f);
        }
        off += model.sizes[i];
    }
    model.set_parameters(p);
}

template <class Ops>
static void check_cached_decode_matches_recompute() {
    GPTConfig c = tiny_config(2, 64, 2, 50, 24);  // hs = 32: attention_forward's kernels are compiled for 32/64/128
    GPT<Ops> model(c);
    randomize(model, 5);
    InferenceEngine<Ops> engine(model, {2, 16, 4, 0});
    engine.set_blocks(1, {5, 3, 0, 9, 1, 7});  // slot 1, scattered blocks
    Rng rng(8);
    std::vector<int> tokens;
    for (int i = 0; i < 6; i++) tokens.push_back(static_cast<int>(rng.below(50)));
    // prefill 6 tokens, then decode 10 more, each time comparing the last row's logits with a full forward
    std::vector<StepRow> rows;
    for (int p = 0; p < 6; p++) rows.push_back({tokens[p], p, 1, p == 5});
    std::vector<float> logits = engine.forward(rows);
    for (int step = 0; step < 11; step++) {
        int T = static_cast<int>(tokens.size());
        model.forward(tokens.data(), nullptr, 1, T);
        std::vector<float> full = model.logits_at(0, T - 1);
        CAPTURE(step);
        check_close("cached vs full recompute", logits, full, tolerance_model);
        int next = argmax(logits.data(), c.vocab_size);
        tokens.push_back(next);
        logits = engine.forward({{next, T, 1, true}});
    }
}

TEST_CASE("engine: logits from cached decoding equal full recomputation at every step (CPU reference ops)") {
    check_cached_decode_matches_recompute<HostOps>();
}
TEST_CASE("engine: logits from cached decoding equal full recomputation at every step (kernels)") {
    check_cached_decode_matches_recompute<DeviceOps>();
}

// One decode step at a context beyond 16k tokens (above the old one-block-per-row kernel's shared-memory
// limit of ~12k): a tiny Llama (1 layer, hs = 16, GQA), the cache filled with random K/V rather than by a
// 17k-token prefill (which the CPU reference would take minutes for), the kernels against the CPU references.
template <class Ops>
static std::vector<float> long_context_logits(const std::vector<float>& params, const GPTConfig& c, int position,
                                              uint64_t seed) {
    GPT<Ops> model(c);
    model.set_parameters(params);
    InferenceEngine<Ops> engine(model, {1, 4, 64, 0});
    std::vector<int> blocks(engine.max_blocks);
    for (int i = 0; i < engine.max_blocks; i++) blocks[i] = engine.max_blocks - 1 - i;  // scattered: reversed
    engine.set_blocks(0, blocks);
    Rng rng(seed);
    std::vector<float> k = random_vector(engine.pool_elements(), rng, 2.0f);
    std::vector<float> v = random_vector(engine.pool_elements(), rng);
    Ops::to_backend(engine.k_pool, k.data(), k.size() * sizeof(float));
    Ops::to_backend(engine.v_pool, v.data(), v.size() * sizeof(float));
    return engine.forward({{7, position, 0, true}});
}

TEST_CASE("engine: one decode step at a 17,000-token context, kernels (split-K) match the CPU references") {
    GPTConfig c = tiny_config(1, 32, 2, 50, 17000);
    c.arch = Arch::llama;
    c.n_kv_head = 1;
    c.ffn_hidden = 64;
    c.tied_embeddings = false;
    GPT<HostOps> init(c);
    randomize(init, 31);
    std::vector<float> params = init.get_parameters();
    std::vector<float> ref = long_context_logits<HostOps>(params, c, 16999, 32);
    for_each_thread_order([&] {
        check_close("logits at position 16999", long_context_logits<DeviceOps>(params, c, 16999, 32), ref,
                    tolerance_model);
    });
}

template <class Ops>
static void check_hf_fixture() {
    Generation g = load_generation();
    LoadedModel m = load_model(hf_dir);
    GPT<Ops> model(m.config);
    model.set_parameters(m.params);
    InferenceEngine<Ops> engine(model, {1, 32, 8, 0});
    Request r{"hf", g.prompt, static_cast<int>(g.greedy.size()), {0.0f, 0, 1.0f}, 1, ""};
    std::vector<std::vector<float>> seen;
    auto results = serve(engine, {r}, -1, nullptr, [&](const std::string&, int, const float* row) {
        seen.emplace_back(row, row + m.config.vocab_size);
    });
    REQUIRE(results.size() == 1);
    CHECK(results[0].tokens == g.greedy);
    REQUIRE(seen.size() == g.logits.size());
    for (size_t i = 0; i < seen.size(); i++) {
        CAPTURE(i);
        check_close("logits vs transformers", seen[i], g.logits[i], tolerance_model);
    }
}
TEST_CASE("HF GPT-2 fixture: greedy tokens exact, logits within 1e-4 of transformers (CPU reference ops)") {
    check_hf_fixture<HostOps>();
}
TEST_CASE("HF GPT-2 fixture: greedy tokens exact, logits within 1e-4 of transformers (kernels)") {
    check_hf_fixture<DeviceOps>();
}

// ----------------------------------------------------------------------------
// Continuous batching
static std::vector<Request> random_requests(int n, int V, int maxT, Rng& rng, bool greedy) {
    std::vector<Request> rs;
    for (int i = 0; i < n; i++) {
        Request r;
        r.id = "r";
        r.id += std::to_string(i);  // not "r" + to_string(i): GCC 12's -O3 -Wrestrict false positive
        int len = 1 + static_cast<int>(rng.below(static_cast<uint32_t>(maxT / 2)));
        for (int t = 0; t < len; t++) r.prompt.push_back(static_cast<int>(rng.below(static_cast<uint32_t>(V))));
        r.max_tokens = 1 + static_cast<int>(rng.below(static_cast<uint32_t>(maxT / 2)));
        r.sampling = greedy ? SamplingSettings{0.0f, 0, 1.0f} : SamplingSettings{0.9f, 10, 0.95f};
        r.seed = 100 + i;
        rs.push_back(r);
    }
    return rs;
}
static std::map<std::string, Result> by_id(const std::vector<Result>& v) {
    std::map<std::string, Result> m;
    for (const Result& r : v) m[r.id] = r;
    return m;
}

// A stand-in model for scheduler tests: logits that depend only on the sequence so far (a hash of
// its tokens seeds them), so a sequence gets the same logits however it is batched.
static void fake_model_logits(const std::vector<int>& toks, int V, int Vp, std::vector<float>& logits) {
    uint64_t h = 1469598103934665603ull;
    for (int t : toks) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
    Rng fake(h);
    for (int v = 0; v < Vp; v++) logits.push_back(v < V ? 4.0f * fake.uniform() : 0.0f);
}

TEST_CASE("scheduler: no block leaks, every request finishes, results independent of batching (fake model)") {
    // The "model": logits that depend only on the sequence so far (a hash of its tokens), so any
    // scheduling must give the same tokens. Small pools force preemption and recomputation.
    const int V = 40, Vp = 48, maxT = 40, eot = 3;
    Rng rng(99);
    for (auto [max_seqs, max_rows, block_size, num_blocks] :
         std::vector<std::array<int, 4>>{{1, 64, 4, 10}, {4, 16, 4, 10}, {8, 7, 3, 20}, {16, 64, 5, 8}}) {
        CAPTURE(max_seqs); CAPTURE(max_rows); CAPTURE(block_size); CAPTURE(num_blocks);
        std::vector<Request> reqs = random_requests(60, V, maxT, rng, rng.uniform() < 0.5f);
        Scheduler sched(max_seqs, max_rows, block_size, num_blocks, maxT, V, eot);
        std::map<int, std::vector<int>> tables;  // slot → blocks, as the engine would mirror them
        sched.on_blocks = [&](int slot, const std::vector<int>& b) { tables[slot] = b; };
        std::map<int, std::vector<int>> seq_tokens;  // slot → tokens seen so far (positions must be consecutive)
        for (auto& r : reqs) sched.submit(r);
        while (!sched.done()) {
            auto plan = sched.plan();
            REQUIRE(static_cast<int>(plan.rows.size()) <= max_rows);
            std::vector<float> logits;
            std::map<int, uint64_t> hash;
            for (const StepRow& row : plan.rows) {
                // every row's position is inside its slot's blocks, and blocks are not shared between slots
                REQUIRE(row.position / block_size < static_cast<int>(tables[row.slot].size()));
                auto& toks = seq_tokens[row.slot];
                if (row.position == 0) toks.clear();
                REQUIRE(static_cast<int>(toks.size()) >= row.position);
                toks.resize(row.position);
                toks.push_back(row.token);
                if (!row.want_logits) continue;
                fake_model_logits(toks, V, Vp, logits);
            }
            std::set<int> used;
            for (auto& [slot, b] : tables)
                for (int x : b) {
                    bool live = false;
                    for (const StepRow& row : plan.rows) live |= row.slot == slot;
                    if (live) REQUIRE(used.insert(x).second);
                }
            sched.commit(plan, logits, Vp);
        }
        CHECK(sched.allocator().free_blocks() == num_blocks);  // no leaks
        REQUIRE(sched.finished.size() == reqs.size());
        // the same requests one at a time
        auto batched = by_id(sched.finished);
        for (auto& r : reqs) {
            Scheduler solo(1, 64, block_size, 64, maxT, V, eot);
            solo.submit(r);
            std::vector<int> toks;
            while (!solo.done()) {
                auto plan = solo.plan();
                std::vector<float> logits;
                for (const StepRow& row : plan.rows) {
                    toks.resize(row.position);
                    toks.push_back(row.token);
                    if (!row.want_logits) continue;
                    fake_model_logits(toks, V, Vp, logits);
                }
                solo.commit(plan, logits, Vp);
            }
            CAPTURE(r.id);
            CHECK(solo.finished.at(0).tokens == batched.at(r.id).tokens);
            CHECK(solo.finished.at(0).finish_reason == batched.at(r.id).finish_reason);
        }
        if (num_blocks <= 10 && max_seqs > 1) CHECK(sched.stats().preemptions > 0);
    }
}

TEST_CASE("scheduler: bad requests get an error, the others are served") {
    Scheduler sched(2, 16, 4, 8, 16, 20, -1);
    sched.submit({"empty", {}, 4, {}, 1, ""});
    sched.submit({"long", std::vector<int>(16, 1), 4, {}, 1, ""});
    sched.submit({"parse", {1}, 4, {}, 1, "line 3: not valid JSON"});
    sched.submit({"vocab", {25}, 4, {}, 1, ""});
    sched.submit({"temp", {1}, 4, {-1.0f, 0, 1.0f}, 1, ""});
    sched.submit({"good", {1, 2}, 3, {0.0f, 0, 1.0f}, 1, ""});
    while (!sched.done()) {
        auto plan = sched.plan();
        std::vector<float> logits(plan.sampling.size() * 20, 0.0f);
        sched.commit(plan, logits, 20);
    }
    auto r = by_id(sched.finished);
    CHECK(r["empty"].error == "the prompt is empty");
    CHECK(r["long"].error.find("context is 16") != std::string::npos);
    CHECK(r["parse"].error == "line 3: not valid JSON");
    CHECK(r["vocab"].error.find("outside the vocabulary") != std::string::npos);
    CHECK(r["temp"].error.find("temperature") != std::string::npos);
    CHECK(r["good"].error.empty());
    CHECK(r["good"].tokens == std::vector<int>{0, 0, 0});
    CHECK(r["good"].finish_reason == "length");
}

template <class Ops>
static void check_batched_equals_solo() {
    GPTConfig c = tiny_config(2, 64, 2, 50, 32);
    GPT<Ops> model(c);
    randomize(model, 21);
    Rng rng(5);
    std::vector<Request> reqs = random_requests(6, c.vocab_size, 20, rng, true);
    // a pool of 8 blocks of 4 tokens (one full context): requests wait for blocks and some are preempted
    InferenceEngine<Ops> batched(model, {4, 24, 4, 8});
    Scheduler::Stats stats;
    auto b = by_id(serve(batched, reqs, 7, &stats));
    InferenceEngine<Ops> one(model, {1, 64, 8, 0});
    for (const Request& r : reqs) {
        auto solo = serve(one, {r}, 7);
        CAPTURE(r.id);
        CHECK(solo.at(0).tokens == b.at(r.id).tokens);
    }
    CHECK(stats.preemptions > 0);
    MESSAGE("batched: " << stats.steps << " steps, " << stats.preemptions << " preemptions, max " << stats.max_running
                        << " running");
}
TEST_CASE("continuous batching + paged KV: greedy outputs equal one-at-a-time (CPU reference ops)") {
    check_batched_equals_solo<HostOps>();
}
TEST_CASE("continuous batching + paged KV: greedy outputs equal one-at-a-time (kernels)") {
    check_batched_equals_solo<DeviceOps>();
}

// ----------------------------------------------------------------------------
// Speculative decoding
template <class Ops>
static void check_speculative_greedy(const std::vector<int>& ks) {
    GPTConfig c = tiny_config(2, 64, 2, 50, 32), small = tiny_config(1, 32, 1, 50, 32);
    GPT<Ops> target(c), noisy(c), tiny(small);
    randomize(target, 31);
    randomize(tiny, 32);
    // a draft that mostly agrees with the target: its weights times 1 + N(0, 0.05²)
    std::vector<float> w = target.get_parameters();
    Rng rng(33);
    for (float& x : w) x *= 1.0f + 0.05f * rng.normal();
    noisy.set_parameters(w);
    InferenceEngine<Ops> te(target, {1, 32, 4, 0});
    std::vector<int> prompt = {4, 8, 15, 16, 23};
    auto ref = serve(te, {Request{"t", prompt, 20, {0.0f, 0, 1.0f}, 1, ""}}, -1);
    for (GPT<Ops>* draft : {&noisy, &tiny})
        for (int k : ks) {
            InferenceEngine<Ops> de(*draft, {1, 32, 4, 0});
            SpeculativeStats st;
            std::vector<int> out = generate_speculative(te, de, prompt, 20, k, {0.0f, 0, 1.0f}, 1, -1, &st);
            CAPTURE(k);
            CHECK(out == ref.at(0).tokens);
            MESSAGE(std::string(draft == &noisy ? "noisy copy" : "tiny random")
                    << " draft, k=" << k << ": acceptance " << st.acceptance_rate() << ", target forwards "
                    << st.target_forwards << " for 20 tokens");
        }
    // the draft is the target itself (its own engine): every proposal is accepted
    InferenceEngine<Ops> same(target, {1, 32, 4, 0});
    SpeculativeStats st;
    CHECK(generate_speculative(te, same, prompt, 20, 4, {0.0f, 0, 1.0f}, 1, -1, &st) == ref.at(0).tokens);
    CHECK(st.acceptance_rate() == 1.0);
    CHECK(st.target_forwards == 4);  // 20 tokens = 4 rounds of 4 accepted + 1 free
}

TEST_CASE("speculative decoding: greedy output equals the target's greedy output (CPU reference ops)") {
    check_speculative_greedy<HostOps>({1, 3, 5});
}
TEST_CASE("speculative decoding: greedy output equals the target's greedy output (kernels)") {
    check_speculative_greedy<DeviceOps>({3});
}  // fewer k: emulated kernels are slow under ASan

// ----------------------------------------------------------------------------
// The program, run as a user would (CPU build): a request file with bad lines
static std::string run_infer(const std::string& args, int& code) {
    CommandResult r = run_command(program_path("infer_gpt_cpu") + " " + args);
    code = r.exit_code;
    return r.output;
}

TEST_CASE("infer_gpt: a request file with bad lines serves the good ones and names each problem") {
    const std::string tok_dir = "test/fixtures/tokenizer_small";
    bpe::Tokenizer tok = bpe::Tokenizer::load(tok_dir);
    GPTConfig c = tiny_config(1, 32, 1, tok.vocab_size(), 16);
    GPT<HostOps> model(c);
    randomize(model, 3);
    std::string dir = (fs::temp_directory_path() / ("gptcu_test_infer_" + std::to_string(getpid()))).string();
    fs::create_directories(dir);
    write_checkpoint(dir + "/model.bin", c, tokenizer_info(tok_dir, tok), nlohmann::json::object(),
                     model.get_parameters(), {}, {});
    {
        std::ofstream f(dir + "/requests.jsonl");
        f << R"({"id": "a", "prompt": "To be", "max_tokens": 5, "temperature": 0})"
          << "\n"
          << R"({"id": "b", "prompt": "or not", "max_tokens": 3)"
          << "\n"  // truncated JSON
          << R"({"id": "c", "max_tokens": 3})"
          << "\n"  // no prompt
          << "\n"  // blank: skipped
          << R"({"id": "d", "prompt": "that is the question, whether tis nobler in the mind", "max_tokens": 2})"
          << "\n"  // > context
          << R"({"id": "e", "prompt": "x", "max_tokens": 4, "temperature": 0.8, "top_k": 5, "top_p": 0.9, "seed": 3})"
          << "\n";
    }
    int code = 0;
    std::string out = run_infer(
        "--model " + dir + "/model.bin --requests " + dir + "/requests.jsonl --out " + dir + "/out.jsonl", code);
    INFO(out);
    REQUIRE(code == 0);
    std::ifstream in(dir + "/out.jsonl");
    std::map<std::string, nlohmann::json> r;
    for (std::string line; std::getline(in, line);) {
        nlohmann::json j = nlohmann::json::parse(line);
        r[j.at("id").get<std::string>()] = j;
    }
    REQUIRE(r.size() == 5);
    CHECK(r["a"].at("tokens").size() == 5);
    CHECK(r["a"].at("finish_reason") == "length");
    CHECK(r["a"].contains("latency_ms"));
    CHECK(r["line 2"].at("error").get<std::string>().find("line 2") != std::string::npos);  // no id could be read
    CHECK(r["c"].at("error").get<std::string>().find("prompt") != std::string::npos);
    CHECK(r["d"].at("error").get<std::string>().find("context is 16") != std::string::npos);
    CHECK(r["e"].at("tokens").size() == 4);
    // greedy is reproducible through the program: the same request alone gives the same tokens
    std::string one =
        run_infer("--model " + dir + "/model.bin --prompt \"To be\" --max-tokens 5 --temperature 0", code);
    CHECK(code == 0);
    CHECK(one.find("To be" + r["a"].at("text").get<std::string>()) != std::string::npos);
    // errors a user can meet
    CHECK(run_infer("--model " + dir + "/nope.bin", code).find("cannot open") != std::string::npos);
    CHECK(code == 1);
    CHECK(run_infer("--model " + dir + "/model.bin --top-p 2", code).find("top_p") != std::string::npos);
    CHECK(run_infer("--model " + dir + "/model.bin --max-tokens x", code).find("--max-tokens needs an integer") !=
          std::string::npos);
    fs::remove_all(dir);
}

// --precision bf16 through the program: the kernel path in bf16 (weights, activations, KV cache) gives the fp32
// run's logits to within bf16's rounding carried through the model's 2 layers: every logit within 3% of the
// largest (measured 2026-11-30: 0.74%); the CPU reference path refuses bf16 and says what to use.
TEST_CASE("infer_gpt --precision bf16: logits within bf16 rounding of fp32's; the CPU path refuses it") {
    const std::string dir = (fs::temp_directory_path() / ("gptcu_test_bf16_" + std::to_string(getpid()))).string();
    fs::create_directories(dir);
    auto logits = [&](const std::string& precision) {
        int code = 0;
        std::string out = run_infer("--model " + hf_dir + " --prompt-ids 5,17,3,42,8 --max-tokens 1 --temperature 0"
                                    " --device cuda --precision " + precision + " --dump-logits " + dir + "/" +
                                    precision + ".bin", code);
        INFO(out);
        REQUIRE(code == 0);
        std::ifstream f(dir + "/" + precision + ".bin", std::ios::binary);
        std::vector<float> v(97);
        f.read(reinterpret_cast<char*>(v.data()), v.size() * sizeof(float));
        REQUIRE(f.gcount() == static_cast<std::streamsize>(v.size() * sizeof(float)));
        return v;
    };
    std::vector<float> fp32 = logits("fp32"), bf16 = logits("bf16");
    float largest = 0, worst = 0;
    for (size_t i = 0; i < fp32.size(); i++) {
        largest = std::max(largest, std::fabs(fp32[i]));
        worst = std::max(worst, std::fabs(bf16[i] - fp32[i]));
    }
    CHECK(largest > 0);
    CHECK(worst > 0);  // it did run in bf16
    CHECK_MESSAGE(worst <= 0.03f * largest, "worst " << worst << " of largest " << largest);
    int code = 0;
    std::string refused = run_infer("--model " + hf_dir + " --prompt-ids 5 --device cpu --precision bf16", code);
    CHECK(code == 1);
    CHECK(refused.find("--device cuda") != std::string::npos);
    fs::remove_all(dir);
}
