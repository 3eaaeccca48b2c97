// Fine-tuning: the sequence log-probability and the DPO / IPO / KTO losses of preference.cuh, each
// kernel against its CPU reference, each reference backward against central finite differences, losses and every
// gradient of a tiny model against PyTorch autograd (test/fixtures/preference_hf, written by
// dev/reference_preference.py); then train_gpt_cpu and eval_gpt_cpu as a user runs them.
#include "test/test_util.h"
#include "hf.h"
#include "preference.cuh"

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <numeric>

namespace fs = std::filesystem;
using json = nlohmann::json;

static std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// A backward (analytic, double) against central finite differences of its forward.
static void check_finite_differences(const std::string& what, const std::vector<double>& x,
                                     const std::vector<double>& grad,
                                     const std::function<double(const std::vector<double>&)>& f) {
    std::vector<double> fd = finite_difference(f, x);
    double e = rel_error(grad, fd);
    INFO(what << ": relative error vs finite differences " << e);
    CHECK(e <= tolerance_finite_difference);
}

// ----------------------------------------------------------------------------
// 1. Sequence log-probability
TEST_CASE("sequence log-prob forward/backward: kernel matches CPU reference") {
    Rng rng(1801);
    struct Shape {
        int B, T, Vp;
    };
    for (Shape s : {Shape{1, 1, 128}, Shape{3, 17, 128}, Shape{5, 300, 256}}) {
        CAPTURE(s.B);
        CAPTURE(s.T);
        const size_t N = static_cast<size_t>(s.B) * s.T;
        std::vector<float> losses = random_vector(N, rng), dlogits = random_vector(N * s.Vp, rng),
                           dlogp = random_vector(s.B, rng);
        std::vector<int> targets(N);
        for (auto& t : targets) t = rng.uniform() < 0.3f ? -1 : static_cast<int>(rng.below(100));
        std::vector<float> logp_ref(s.B), dlogits_ref = dlogits;
        sequence_logprob_forward_cpu(logp_ref.data(), losses.data(), targets.data(), s.B, s.T);
        sequence_logprob_backward_cpu(dlogits_ref.data(), dlogp.data(), s.B, s.T, s.Vp);
        for_each_thread_order([&] {
            DeviceBuffer<float> d_losses(losses), d_logp(s.B), d_dlogits(dlogits), d_dlogp(dlogp);
            DeviceBuffer<int> d_targets(targets);
            poison(d_logp);
            sequence_logprob_forward(d_logp, d_losses, d_targets, s.B, s.T, nullptr);
            check_close("sequence logp", d_logp.download(), logp_ref, tolerance_fp32_reduction);
            sequence_logprob_backward(d_dlogits.ptr, d_dlogp.ptr, s.B, s.T, s.Vp, nullptr);
            check_close("sequence dlogits", d_dlogits.download(), dlogits_ref, tolerance_fp32_elementwise);
        });
    }
}

TEST_CASE("sequence log-prob backward through the classifier (CPU, double) matches finite differences") {
    // f(z) = Σ_b c_b · logp_b(z), logp_b = −Σ_t masked classifier losses: the classifier with dloss 1, then
    // sequence_logprob_backward with dlogp = c, must give ∂f/∂z
    Rng rng(1802);
    const int B = 3, T = 4, V = 6, Vp = 8, N = B * T;
    std::vector<double> logits = to_double(random_vector(N * Vp, rng, 2.0f)), c = to_double(random_vector(B, rng));
    std::vector<int> targets = {2, -1, 0, 5, -1, -1, 3, 1, 4, 4, -1, 0};  // row 0: 3 targets, row 1: 2, row 2: 3
    std::vector<double> dlogits = logits, losses(N);
    fused_classifier_cpu(dlogits.data(), losses.data(), targets.data(), 1.0, N, V, Vp, true);
    sequence_logprob_backward_cpu(dlogits.data(), c.data(), B, T, Vp);
    check_finite_differences("sequence logp dlogits", logits, dlogits, [&](const std::vector<double>& z) {
        std::vector<double> zz = z, l(N), logp(B);
        fused_classifier_cpu(zz.data(), l.data(), targets.data(), 1.0, N, V, Vp, false);
        sequence_logprob_forward_cpu(logp.data(), l.data(), targets.data(), B, T);
        return std::inner_product(c.begin(), c.end(), logp.begin(), 0.0);
    });
}

// ----------------------------------------------------------------------------
// 2. Losses
TEST_CASE("DPO and IPO forward/backward: kernel matches CPU reference") {
    Rng rng(1803);
    for (PairLoss kind : {PairLoss::dpo, PairLoss::ipo})
        for (int P : {1, 7, 300}) {
            CAPTURE(static_cast<int>(kind));
            CAPTURE(P);
            std::vector<float> logp = random_vector(2 * P, rng, 20.0f), ref = random_vector(2 * P, rng, 20.0f);
            std::vector<float> dlogp = random_vector(2 * P, rng);  // accumulated into
            std::vector<float> losses_ref(P), dlogp_ref = dlogp;
            const float beta = 0.3f, dloss = 1.0f / P;
            pair_loss_forward_cpu(losses_ref.data(), logp.data(), ref.data(), kind, beta, P);
            pair_loss_backward_cpu(dlogp_ref.data(), logp.data(), ref.data(), kind, beta, dloss, P);
            for_each_thread_order([&] {
                DeviceBuffer<float> d_logp(logp), d_ref(ref), d_losses(P), d_dlogp(dlogp);
                poison(d_losses);
                pair_loss_forward(d_losses, d_logp, d_ref, kind, beta, P, nullptr);
                check_close("pair losses", d_losses.download(), losses_ref, tolerance_fp32_elementwise);
                pair_loss_backward(d_dlogp, d_logp, d_ref, kind, beta, dloss, P, nullptr);
                check_close("pair dlogp", d_dlogp.download(), dlogp_ref, tolerance_fp32_elementwise);
            });
        }
}

TEST_CASE("DPO and IPO backward (CPU, double) matches finite differences of the mean loss") {
    Rng rng(1804);
    const int P = 5;
    for (PairLoss kind : {PairLoss::dpo, PairLoss::ipo}) {
        CAPTURE(static_cast<int>(kind));
        std::vector<double> logp = to_double(random_vector(2 * P, rng, 5.0f)),
                            ref = to_double(random_vector(2 * P, rng, 5.0f));
        std::vector<double> dlogp(2 * P, 0.0);
        pair_loss_backward_cpu(dlogp.data(), logp.data(), ref.data(), kind, 0.7, 1.0 / P, P);
        check_finite_differences("pair dlogp", logp, dlogp, [&](const std::vector<double>& x) {
            std::vector<double> l(P);
            pair_loss_forward_cpu(l.data(), x.data(), ref.data(), kind, 0.7, P);
            return std::accumulate(l.begin(), l.end(), 0.0) / P;
        });
    }
}

TEST_CASE("KTO reference point, forward and backward: kernel matches CPU reference") {
    Rng rng(1805);
    for (int N : {1, 9, 700}) {
        for (float shift : {3.0f, -3.0f}) {  // mean π − ρ above 0, and below (z0 clamped to 0)
            CAPTURE(N);
            CAPTURE(shift);
            std::vector<float> logp = random_vector(N, rng, 4.0f), ref = random_vector(N, rng, 4.0f),
                               dlogp = random_vector(N, rng);
            for (auto& x : logp) x += shift;
            std::vector<int> desirable(N);
            for (auto& d : desirable) d = rng.uniform() < 0.5f;
            const float beta = 0.4f, wd = 1.0f, wu = 1.5f, dloss = 1.0f / N;
            float z0_ref;
            std::vector<float> losses_ref(N), dlogp_ref = dlogp;
            kto_reference_point_cpu(&z0_ref, logp.data(), ref.data(), N);
            if (shift < 0 && N > 100) CHECK(z0_ref == 0.0f);
            kto_loss_forward_cpu(losses_ref.data(), logp.data(), ref.data(), desirable.data(), &z0_ref, beta, wd, wu,
                                 N);
            kto_loss_backward_cpu(dlogp_ref.data(), logp.data(), ref.data(), desirable.data(), &z0_ref, beta, wd, wu,
                                  dloss, N);
            for_each_thread_order([&] {
                DeviceBuffer<float> d_logp(logp), d_ref(ref), d_losses(N), d_dlogp(dlogp), d_z0(1);
                DeviceBuffer<int> d_desirable(desirable);
                poison(d_z0);
                poison(d_losses);
                kto_reference_point(d_z0, d_logp, d_ref, N, nullptr);
                check_close("kto z0", d_z0.download(), {z0_ref}, tolerance_fp32_reduction);
                kto_loss_forward(d_losses, d_logp, d_ref, d_desirable, d_z0, beta, wd, wu, N, nullptr);
                check_close("kto losses", d_losses.download(), losses_ref, tolerance_fp32_reduction);
                kto_loss_backward(d_dlogp, d_logp, d_ref, d_desirable, d_z0, beta, wd, wu, dloss, N, nullptr);
                check_close("kto dlogp", d_dlogp.download(), dlogp_ref, tolerance_fp32_reduction);
            });
        }
    }
}

TEST_CASE("KTO backward (CPU, double) matches finite differences of the mean loss at a fixed reference point") {
    // z0 carries no gradient (the paper's choice): the derivative is taken with z0 held at its value
    Rng rng(1806);
    const int N = 6;
    std::vector<double> logp = to_double(random_vector(N, rng, 4.0f)), ref = to_double(random_vector(N, rng, 4.0f));
    for (auto& x : logp) x += 2.0;
    std::vector<int> desirable = {1, 0, 0, 1, 1, 0};
    double z0;
    kto_reference_point_cpu(&z0, logp.data(), ref.data(), N);
    REQUIRE(z0 > 0);
    std::vector<double> dlogp(N, 0.0);
    kto_loss_backward_cpu(dlogp.data(), logp.data(), ref.data(), desirable.data(), &z0, 0.6, 1.0, 1.3, 1.0 / N, N);
    check_finite_differences("kto dlogp", logp, dlogp, [&](const std::vector<double>& x) {
        std::vector<double> l(N);
        kto_loss_forward_cpu(l.data(), x.data(), ref.data(), desirable.data(), &z0, 0.6, 1.0, 1.3, N);
        return std::accumulate(l.begin(), l.end(), 0.0) / N;
    });
}

// ----------------------------------------------------------------------------
// 3. Against PyTorch: a perturbed copy of the tiny GPT-2 as the policy, the original as the frozen reference
static const std::string fixture_dir = "test/fixtures/preference_hf";
// Per the issue: losses and gradients within 1e-5 relative. PyTorch ran in float64, so this is our fp32 error
// alone; the gradients are compared as whole tensors (‖ours − theirs‖ / ‖theirs‖), as the model fixtures are.
constexpr double tolerance_preference = 1e-5;

template <class Ops>
static void check_preference_fixture() {
    std::ifstream f(fixture_dir + "/preference.json");
    REQUIRE(f.good());
    json x = json::parse(f);
    LoadedModel ref_loaded = load_model("test/fixtures/hf_gpt2_tiny");
    const GPTConfig& config = ref_loaded.config;
    std::vector<float> policy_params =
        hf_params(safetensors::Reader::load(fixture_dir + "/policy.safetensors"), config);
    GPT<Ops> policy(config), reference(config);
    policy.set_parameters(policy_params);
    reference.set_parameters(ref_loaded.params);
    std::vector<PairExample> pairs;
    std::vector<CompletionExample> examples;
    for (const auto& p : x["pairs"]) pairs.push_back({0, p["prompt"], p["chosen"], p["rejected"]});
    for (const auto& p : pairs) examples.push_back({0, p.prompt, p.chosen, true});
    for (const auto& p : pairs) examples.push_back({0, p.prompt, p.rejected, false});
    const int B = 2 * static_cast<int>(pairs.size());
    PreferenceBuffers<Ops> buf;
    struct Case {
        std::string name;
        Objective objective;
    };
    for (const Case& c : {Case{"dpo", Objective::dpo}, Case{"ipo", Objective::ipo}, Case{"kto", Objective::kto}}) {
        const std::string& name = c.name;
        const Objective objective = c.objective;
        CAPTURE(name);
        PreferenceSettings set{objective, x["beta"].get<float>(), x["weight_desirable"].get<float>(),
                               x["weight_undesirable"].get<float>()};
        policy.zero_grad();
        PreferenceMetrics m = preference_step(policy, reference, buf, set, pairs, examples, true);
        check_close("policy logp", policy.get(buf.logp, B), x["policy_logp"].get<std::vector<float>>(),
                    tolerance_preference);
        check_close("reference logp", reference.get(buf.ref, B), x["ref_logp"].get<std::vector<float>>(),
                    tolerance_preference);
        double want = x[name]["loss"];
        INFO("loss " << m.loss << " vs PyTorch " << want);
        CHECK(std::abs(m.loss - want) <= tolerance_preference * std::abs(want));
        check_close("dloss/dlogp", policy.get(buf.dlogp, B), x[name]["dlogp"].get<std::vector<float>>(),
                    tolerance_preference);
        if (objective == Objective::kto)
            CHECK(std::abs(policy.get(buf.z0, 1)[0] - x["kto"]["z0"].get<double>()) <= 1e-5);
        std::vector<float> grads = policy.get_gradients();
        std::vector<float> want_grads =
            hf_params(safetensors::Reader::load(fixture_dir + "/grad_" + name + ".safetensors"), config);
        size_t offset = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!policy.sizes[i]) continue;
            std::vector<float> g(grads.begin() + offset, grads.begin() + offset + policy.sizes[i]);
            std::vector<float> r(want_grads.begin() + offset, want_grads.begin() + offset + policy.sizes[i]);
            check_close(std::string("gradient of ") + param_name(i), g, r, tolerance_preference);
            offset += policy.sizes[i];
        }
    }
}
TEST_CASE("preference losses and gradients match PyTorch (CPU reference ops)") { check_preference_fixture<HostOps>(); }
TEST_CASE("preference losses and gradients match PyTorch (CUDA kernels)") { check_preference_fixture<DeviceOps>(); }

// ----------------------------------------------------------------------------
// 4. The programs, as a user runs them
static const std::string tokenizer_small = "test/fixtures/tokenizer_small";

// A scratch directory, removed at the end of the test.
struct Scratch {
    std::string dir;
    explicit Scratch(const std::string& name) {
        dir = (fs::temp_directory_path() / ("gptcu_test_preference_" + name + "_" + std::to_string(getpid()))).string();
        fs::remove_all(dir);
        fs::create_directories(dir);
    }
    ~Scratch() { fs::remove_all(dir); }
    std::string operator/(const std::string& f) const { return dir + "/" + f; }
};
static void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path, std::ios::binary);
    f << text;
}
static std::vector<json> read_jsonl(const std::string& path) {
    std::ifstream f(path);
    REQUIRE_MESSAGE(f.good(), "cannot open " << path);
    std::vector<json> lines;
    for (std::string line; std::getline(f, line);) lines.push_back(json::parse(line));
    return lines;
}

// A randomly initialised tiny GPT-2 with the 320-token fixture tokenizer, as a checkpoint (the "pretrained" model).
static void write_tiny_model(const std::string& path, int max_seq_len = 64, int vocab_size = 320) {
    GPTConfig c;
    c.vocab_size = vocab_size;
    c.padded_vocab_size = padded_vocab(vocab_size);
    c.max_seq_len = max_seq_len;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 2;
    c.n_kv_head = 2;
    c.ffn_hidden = 128;
    GPT<HostOps> model(c);
    model.init_random(18);
    bpe::Tokenizer tok = bpe::Tokenizer::load(tokenizer_small);
    write_checkpoint(path, c, tokenizer_info(tokenizer_small, tok), json::object(), model.get_parameters(), {}, {});
}

// 16 pairs: a prompt, a sentence as the chosen completion and the same words in another order as the rejected one.
static std::string pair_lines() {
    const char* words[] = {"the cat", "a dog", "my friend", "our king", "the rain", "her song", "his horse", "the sea"};
    std::string out;
    for (int i = 0; i < 16; i++) {
        std::string a = words[i % 8], b = words[(i * 3 + 1) % 8];
        out += json{{"prompt", "Line " + std::to_string(i) + ":"},
                    {"chosen", " " + a + " saw " + b + "."},
                    {"rejected", " saw " + b + " " + a + "."}}
                   .dump() +
               "\n";
    }
    return out;
}

static CommandResult train_gpt(const std::string& args) {
    return run_command(program_path("train_gpt_cpu") + " --device cpu " + args);
}
static CommandResult eval_gpt(const std::string& args) {
    return run_command(program_path("eval_gpt_cpu") + " --device cpu " + args);
}

TEST_CASE("train_gpt --objective dpo: reward accuracy on its training pairs rises above 0.9; eval_gpt --pairs agrees") {
    Scratch s("dpo");
    write_tiny_model(s / "base.bin");
    write_text(s / "pairs.jsonl", pair_lines());
    CommandResult r =
        train_gpt("--objective dpo --init-from " + (s / "base.bin") + " --pairs " + (s / "pairs.jsonl") +
                  " --beta 0.1 --batch-size 8 --max-steps 30 --learning-rate 3e-3 --warmup-steps 0 --val-batches 2"
                  " --sample-tokens 0 --out-dir " +
                  s.dir);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::vector<json> log = read_jsonl(s / "log.jsonl");
    REQUIRE(log.size() == 32);  // eval at step 0, 30 steps, eval at the end
    for (const char* key : {"eval_loss", "eval_reward_accuracy", "eval_chosen_reward", "eval_rejected_reward",
                            "eval_margin", "eval_kl"}) {
        CHECK(log.front().contains(key));
        CHECK(log.back().contains(key));
    }
    for (const char* key :
         {"loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin", "kl", "lr", "norm"})
        CHECK(log[1].contains(key));
    // the policy starts as the reference: every reward is 0, the loss log 2
    CHECK(std::abs(log.front()["eval_loss"].get<double>() - std::log(2.0)) < 1e-5);
    CHECK(log.front()["eval_reward_accuracy"].get<double>() == 0.0);
    CHECK(log.back()["eval_reward_accuracy"].get<double>() > 0.9);
    CHECK(log.back()["eval_margin"].get<double>() > 0.0);
    CHECK(log.back()["eval_loss"].get<double>() < std::log(2.0));
    // the same pairs scored by eval_gpt against the same reference: the same accuracy and DPO loss
    r = eval_gpt("--model " + (s / "checkpoint.bin") + " --pairs " + (s / "pairs.jsonl") + " --ref-model " +
                 (s / "base.bin") + " --beta 0.1 --batch-size 8 --report " + (s / "report.json"));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::ifstream f(s / "report.json");
    json report = json::parse(f)["metrics"];
    CHECK(report["pair_count"] == 16);
    CHECK(std::abs(report["reward_accuracy"].get<double>() - log.back()["eval_reward_accuracy"].get<double>()) < 1e-9);
    CHECK(std::abs(report["dpo_loss"].get<double>() - log.back()["eval_loss"].get<double>()) < 1e-5);
    for (const char* key : {"ipo_loss", "reward_margin", "chosen_reward", "rejected_reward", "kl"})
        CHECK(report.contains(key));
}

TEST_CASE("train_gpt --objective sft, ipo, kto run and lower their loss") {
    Scratch s("others");
    write_tiny_model(s / "base.bin");
    write_text(s / "pairs.jsonl", pair_lines());
    std::string sft, kto;
    for (const json& p : read_jsonl(s / "pairs.jsonl")) {
        sft += json{{"prompt", p["prompt"]}, {"completion", p["chosen"]}}.dump() + "\n";
        kto += json{{"prompt", p["prompt"]}, {"completion", p["rejected"]}, {"label", false}}.dump() + "\n";
    }
    kto += pair_lines();  // pairs too: each a desirable and an undesirable example
    write_text(s / "sft.jsonl", sft);
    write_text(s / "kto.jsonl", kto);
    const std::string common = " --init-from " + (s / "base.bin") +
                               " --batch-size 8 --max-steps 20 --learning-rate 3e-3 --warmup-steps 0"
                               " --val-batches 4 --sample-tokens 0 --out-dir " +
                               s.dir;
    for (std::string args :
         {"--objective sft --sft-data " + (s / "sft.jsonl"), "--objective ipo --pairs " + (s / "pairs.jsonl"),
          "--objective kto --pairs " + (s / "kto.jsonl")}) {
        CAPTURE(args);
        CommandResult r = train_gpt(args + common);
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        std::vector<json> log = read_jsonl(s / "log.jsonl");
        CHECK(log.back()["eval_loss"].get<double>() < 0.9 * log.front()["eval_loss"].get<double>());
    }
}

TEST_CASE("train_gpt --objective dpo from a Hugging Face model (token ids, no tokenizer); eval_gpt reads the result") {
    Scratch s("hf");
    std::string lines;
    for (int i = 0; i < 8; i++)
        lines += json{{"prompt", {1 + i, 2 + i}}, {"chosen", {10 + i, 20, 30}}, {"rejected", {30, 20, 10 + i}}}.dump() +
                 "\n";
    write_text(s / "pairs.jsonl", lines);
    const std::string hf = "test/fixtures/hf_gpt2_tiny";
    CommandResult r = train_gpt(
        "--objective dpo --init-from " + hf + " --pairs " + (s / "pairs.jsonl") +
        " --batch-size 8 --max-steps 20 --learning-rate 3e-3 --warmup-steps 0 --sample-tokens 0 --out-dir " + s.dir);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(read_jsonl(s / "log.jsonl").back()["eval_reward_accuracy"].get<double>() > 0.9);
    r = eval_gpt("--model " + (s / "checkpoint.bin") + " --pairs " + (s / "pairs.jsonl") + " --ref-model " + hf);
    INFO(r.output);
    CHECK(r.exit_code == 0);
}

TEST_CASE("fine-tuning: bad input is an error naming the file and line, or the mismatch") {
    Scratch s("bad");
    write_tiny_model(s / "base.bin", 16);
    write_tiny_model(s / "other_vocab.bin", 16, 400);
    auto run = [&](const std::string& objective, const std::string& lines, const std::string& extra = "") {
        write_text(s / "data.jsonl", lines);
        std::string flag = objective == "sft" ? " --sft-data " : " --pairs ";
        return train_gpt("--objective " + objective + " --init-from " + (s / "base.bin") + flag + (s / "data.jsonl") +
                         " --max-steps 1 --sample-tokens 0 --out-dir " + s.dir + extra);
    };
    struct Case {
        std::string objective, lines, extra, message;
    };
    const std::string ok_pair = R"({"prompt": "a", "chosen": " b", "rejected": " c"})"
                                "\n";
    for (const Case& c : std::vector<Case>{
             {"dpo",
              ok_pair + R"({"prompt": "a", "chosen": " b"})"
                        "\n",
              "", "data.jsonl:2: missing field \"rejected\""},
             {"dpo", ok_pair + ok_pair + R"({"prompt": "a", "chosen": "", "rejected": " c"})", "",
              "data.jsonl:3: \"chosen\" is empty"},
             {"sft", R"({"prompt": "a", "completion": []})", "", "data.jsonl:1: \"completion\" is empty"},
             {"sft", R"({"prompt": "a b c d e f g h i j k l m n o p q", "completion": " x"})", "",
              "data.jsonl:1: prompt + completion is"},
             {"kto", R"({"prompt": "a", "completion": " b", "label": 1})", "",
              "data.jsonl:1: \"label\" must be true or false"},
             {"kto", R"({"prompt": "a", "completion": " b"})", "", "data.jsonl:1: missing field \"label\""},
             {"dpo", R"({"prompt": [5, 999], "chosen": " b", "rejected": " c"})", "",
              "data.jsonl:1: \"prompt\": token 999 is outside"},
             {"dpo", "not json\n", "", "data.jsonl:1: not JSON"},
             {"dpo", ok_pair, " --ref-model " + (s / "other_vocab.bin"),
              "has a vocabulary of 400 tokens, the policy 320"},
             {"dpo", ok_pair, " --beta 0", "--beta must be > 0"},
         }) {
        CAPTURE(c.lines);
        CommandResult r = run(c.objective, c.lines, c.extra);
        INFO(r.output);
        CHECK(r.exit_code == 1);
        CHECK(r.output.find(c.message) != std::string::npos);
    }
    CommandResult r = train_gpt("--objective dpo --pairs " + (s / "data.jsonl") + " --out-dir " + s.dir);
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("--init-from") != std::string::npos);
    r = eval_gpt("--model " + (s / "base.bin") + " --pairs " + (s / "data.jsonl"));
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("--pairs needs --ref-model") != std::string::npos);
}
