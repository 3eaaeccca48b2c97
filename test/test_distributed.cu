// Data-parallel training end to end (CPU build, `mpirun -np N ./train_gpt_cpu`, distributed.cuh): at every ZeRO stage
// N ranks train the model one rank trains with the same global batch, runs are deterministic, a run saved on N
// ranks resumes on M, the bytes each rank sends per step are the formula's, a killed rank ends the job, and
// ranks started with different options refuse to start. The ranks are processes on this machine, one
// OpenMP thread each.
#include "test/test_util.h"
#include "checkpoint.h"
#include "gpt.cuh"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

// One rank without mpirun (as a user runs train_gpt), or N ranks under mpirun; OMP_WAIT_POLICY set so the
// program does not re-exec itself (restart_with_passive_openmp) and one thread per rank on a shared machine.
static CommandResult train(int ranks, const std::string& args, const std::string& prefix = "") {
    std::string env = "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive ";
    std::string program = program_path("train_gpt_cpu");
    if (ranks == 0) return run_command(env + program + " " + args);
    return run_command(env + "timeout 120 mpirun --allow-run-as-root --oversubscribe --bind-to none -np " +
                       std::to_string(ranks) + " -x OMP_NUM_THREADS -x OMP_WAIT_POLICY " + prefix + program + " " +
                       args);
}

// Random-token shards and a tiny GPT-2 (2 layers, C 16: 0.8M parameters, most of them wte), 4 micro-batches of
// B·T = 16 per step, so 2 ranks take 2 micro-batches each and 4 ranks one.
struct Workspace {
    std::string dir;
    explicit Workspace(const std::string& name) {
        dir =
            (fs::temp_directory_path() / ("gptcu_test_distributed_" + name + "_" + std::to_string(getpid()))).string();
        fs::remove_all(dir);
        fs::create_directories(dir);
        Rng rng(11);
        std::vector<int> train(4000), val(600);
        for (auto& t : train) t = static_cast<int>(rng.below(50257));
        for (auto& t : val) t = static_cast<int>(rng.below(50257));
        bpe::write_shard(dir + "/train_000.bin", train, 50257);
        bpe::write_shard(dir + "/val_000.bin", val, 50257);
    }
    ~Workspace() { fs::remove_all(dir); }
    std::string args(const std::string& out, int max_steps, int zero_stage, const std::string& device = "cpu") const {
        return "--model '{\"arch\":\"gpt2\",\"n_layer\":2,\"n_head\":2,\"n_embd\":16,\"max_seq_len\":16}' --device " +
               device +
               " --batch-size 2 --seq-len 8 --grad-accum-tokens 64 --val-every 3 --val-batches 1 --sample-every 0"
               " --sample-tokens 2 --warmup-steps 2 --min-lr-fraction 1 --checkpoint-every 4 --zero-stage " +
               std::to_string(zero_stage) + " --max-steps " + std::to_string(max_steps) + " --train-data " + dir +
               "/train_*.bin --val-data " + dir + "/val_*.bin --out-dir " + dir + "/" + out;
    }
    std::string checkpoint(const std::string& out) const { return dir + "/" + out + "/checkpoint.bin"; }
    // (loss, comm_bytes) of every step of a run's log.jsonl
    std::vector<double> logged(const std::string& out, const char* key) const {
        std::ifstream f(dir + "/" + out + "/log.jsonl");
        std::vector<double> values;
        for (std::string line; std::getline(f, line);) {
            nlohmann::json j = nlohmann::json::parse(line);
            if (j.contains(key)) values.push_back(j.at(key));
        }
        return values;
    }
};

// fp32 summation order: N ranks add the same per-micro-batch gradients in another order than one rank (each rank
// sums its own micro-batches, then the ranks are summed), and the global norm is a sum of shard norms. Over 6
// AdamW steps the losses differ by at most 2.2e-8 relative, the parameters by 1.1e-7 and AdamW's moments by
// 4.9e-7 (‖Δ‖/‖ref‖ over the whole tensor; measured 2026-11-30, CPU build, every case of this file): 1e-6 and
// 1e-5 leave room and still fail on a lost or doubled micro-batch, which moves the loss by ~1e-3.
constexpr double loss_tolerance = 1e-6, state_tolerance = 1e-5;

static void check_same_model(const Workspace& w, const std::string& out, const std::string& ref) {
    Checkpoint a = read_checkpoint(w.checkpoint(out)), b = read_checkpoint(w.checkpoint(ref));
    CHECK(a.meta == b.meta);  // step, data position, sampling RNG
    check_close(out + " parameters", a.params, b.params, state_tolerance);
    check_close(out + " AdamW m", a.m, b.m, state_tolerance);
    check_close(out + " AdamW v", a.v, b.v, state_tolerance);
    std::vector<double> la = w.logged(out, "loss"), lb = w.logged(ref, "loss");
    REQUIRE(la.size() == lb.size());
    for (size_t i = 0; i < la.size(); i++) {
        CAPTURE(i);
        CHECK(std::fabs(la[i] - lb[i]) <= loss_tolerance * std::fabs(lb[i]));
    }
}

// "model state kept X MiB; ZeRO formula F = Y MiB": both numbers of a run's memory report.
static std::pair<double, double> memory_line(const std::string& output) {
    size_t a = output.find("model state kept ");
    REQUIRE_MESSAGE(a != std::string::npos, output);
    double kept = std::stod(output.substr(a + 17));
    size_t b = output.find(" = ", a);
    return {kept, std::stod(output.substr(b + 3))};
}

TEST_CASE("N ranks train the model one rank trains, at every ZeRO stage; the bytes sent per step are the formula's") {
    Workspace w("stages");
    CommandResult one = train(0, w.args("one", 6, 0));
    INFO(one.output);
    REQUIRE(one.exit_code == 0);
    const size_t P = read_checkpoint(w.checkpoint("one")).params.size();
    for (int stage = 0; stage <= 3; stage++)
        for (int ranks : {2, 4}) {
            if (ranks == 4 && stage != 3) continue;  // one 4-rank run: the stage that shards the most
            CAPTURE(stage);
            CAPTURE(ranks);
            std::string out = "stage" + std::to_string(stage) + "_np" + std::to_string(ranks);
            CommandResult r = train(ranks, w.args(out, 6, stage));
            INFO(r.output);
            REQUIRE(r.exit_code == 0);
            check_same_model(w, out, "one");
            // the memory report: model state kept per rank against the ZeRO formula (padding: < 64·N floats)
            auto [kept, formula] = memory_line(r.output);
            const double psi_mib = P / double(1 << 20);
            const double expected[] = {16 * psi_mib, 8 * psi_mib + 8 * psi_mib / ranks,
                                       4 * psi_mib + 12 * psi_mib / ranks, 16 * psi_mib / ranks};
            CHECK(std::fabs(formula - expected[stage]) <= 0.01);
            CHECK(std::fabs(kept - formula) <= 0.01 + 1e-3 * formula);
            // bytes per step. The units: each layer (12C² + 13C parameters) and the rest (wte, wpe, lnf), each
            // split in N shards of ceil(n/N) rounded up to 64 floats; S is one rank's shard of all three.
            // A = 4/N micro-batches per rank; stage 3 gathers every unit for each forward and each backward.
            const size_t C = 16, layer = 12 * C * C + 13 * C, rest = P - 2 * layer;
            auto shard = [&](size_t n) { return double(((n + ranks - 1) / ranks + 63) / 64 * 64); };
            const double N = ranks, S = 2 * shard(layer) + shard(rest), A = 4 / ranks;
            const double part = (N - 1) * 4 * S;
            const double per_step[] = {2 * (N - 1) / N * 4 * P, 2 * part, (A + 1) * part, 3 * A * part};
            std::vector<double> bytes = w.logged(out, "comm_bytes");
            REQUIRE(bytes.size() == 6);
            for (int step = 1; step <= 6; step++) {
                CAPTURE(step);
                CHECK(bytes[step - 1] == doctest::Approx(per_step[stage]).epsilon(1e-9));
            }
        }
}

TEST_CASE("the kernel path (--device cuda) trains on 2 ranks what it trains on one, at every ZeRO stage") {
    Workspace w("kernels");
    CommandResult one = train(0, w.args("one", 3, 0, "cuda"));
    INFO(one.output);
    REQUIRE(one.exit_code == 0);
    for (int stage = 0; stage <= 3; stage++) {
        CAPTURE(stage);
        std::string out = "stage" + std::to_string(stage);
        CommandResult r = train(2, w.args(out, 3, stage, "cuda"));
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        check_same_model(w, out, "one");
    }
}

// Mixed precision (--precision bf16): what is communicated and sharded is fp32 (master weights, gradients, AdamW
// state) and each rank refreshes its bf16 weight copy after the update (stages 0-2) or the gather (stage 3), so N
// ranks still train what one rank trains. The forward and backward run on the same bf16 weights; only the fp32 sum
// order of the gradients differs, as in fp32, and the runs agree within the fp32 tolerances above (2026-11-30).
TEST_CASE("in bf16, 2 ranks train what one rank trains at ZeRO stages 0, 2 and 3 (kernel path)") {
    Workspace w("bf16");
    CommandResult one = train(0, w.args("one", 3, 0, "cuda") + " --precision bf16");
    INFO(one.output);
    REQUIRE(one.exit_code == 0);
    for (int stage : {0, 2, 3}) {
        CAPTURE(stage);
        std::string out = "stage" + std::to_string(stage);
        CommandResult r = train(2, w.args(out, 3, stage, "cuda") + " --precision bf16");
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        CHECK(r.output.find("bf16 weight copy") != std::string::npos);  // the memory report counts it
        check_same_model(w, out, "one");
    }
}

TEST_CASE("2-rank runs are deterministic; a run saved on 2 ranks resumes on 4 and on 1 at another stage") {
    Workspace w("resume");
    REQUIRE(train(0, w.args("one", 6, 0)).exit_code == 0);
    for (const char* out : {"a", "b"}) {
        CommandResult r = train(2, w.args(out, 6, 2));
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
    }
    std::ifstream fa(w.checkpoint("a"), std::ios::binary), fb(w.checkpoint("b"), std::ios::binary);
    std::string a((std::istreambuf_iterator<char>(fa)), {}), b((std::istreambuf_iterator<char>(fb)), {});
    CHECK(a.size() > 3 * 800000 * sizeof(float));
    CHECK(a == b);

    // saved at step 4 by 2 ranks at stage 1; continued to 6 by 4 ranks at stage 3, and by 1 rank at stage 0
    for (int ranks : {4, 0}) {
        CAPTURE(ranks);
        std::string out = "resumed_np" + std::to_string(ranks);
        CommandResult first = train(2, w.args(out, 4, 1));
        INFO(first.output);
        REQUIRE(first.exit_code == 0);
        CommandResult resumed = train(ranks, w.args(out, 6, ranks ? 3 : 0) + " --resume");
        INFO(resumed.output);
        REQUIRE(resumed.exit_code == 0);
        CHECK(resumed.output.find("resumed from") != std::string::npos);
        Checkpoint ck = read_checkpoint(w.checkpoint(out));
        CHECK(ck.meta.at("step") == 6);
        Checkpoint ref = read_checkpoint(w.checkpoint("one"));
        check_close(out + " parameters", ck.params, ref.params, state_tolerance);
        check_close(out + " AdamW v", ck.v, ref.v, state_tolerance);
    }
}

TEST_CASE("a killed rank ends the job in bounded time; ranks started with different options refuse to start") {
    Workspace w("failure");
    // rank 1 is killed (SIGKILL) 3 s after it starts, in the middle of a long run: mpirun must end the job
    auto start = std::chrono::steady_clock::now();
    CommandResult r =
        train(2, w.args("killed", 1000000, 1),
              "sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 3; kill -9 $$) & fi; exec \"$0\" \"$@\"' ");
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != 124);  // not ended by the test's timeout
    CHECK(seconds < 60);
    CHECK(r.output.find("signal 9") != std::string::npos);

    // rank 1 has another learning rate: every rank refuses, and the message names the option and both values
    r = train(2, w.args("differ", 2, 0),
              "sh -c 'exec \"$0\" \"$@\" --learning-rate 0.00$((OMPI_COMM_WORLD_RANK + 1))' ");
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.output.find("rank 1: learning_rate is 0.002 here but 0.001 on rank 0") != std::string::npos);
    CHECK(r.output.find("the ranks were started with different options") != std::string::npos);
    CHECK(!fs::exists(w.checkpoint("differ")));

    // a global batch that the ranks cannot share evenly: 4 micro-batches on 3 ranks
    r = train(3, w.args("uneven", 2, 0));
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK(r.output.find("not a multiple of the 3 ranks") != std::string::npos);
}
