// The training program end to end (CPU build, ./train_gpt_cpu): resume continues bit for bit, a kill
// in the middle of a checkpoint write loses nothing, and bad input gets a message that says what is
// wrong. The program is run as a user would run it; shards are written by the tokenizer library.
#include "test/test_util.h"
#include "checkpoint.h"
#include "gpt.cuh"

#include <sys/wait.h>
#include <filesystem>

namespace fs = std::filesystem;

using RunResult = CommandResult;
static RunResult run(const std::string& args, const std::string& env = "") {
    return run_command(env + " " + program_path("train_gpt_cpu") + " " + args);
}

// A scratch directory with random-token shards: train (enough for several steps) and val.
struct Workspace {
    std::string dir;
    explicit Workspace(const std::string& name, size_t train_tokens = 4000) {
        dir = (fs::temp_directory_path() / ("gptcu_test_train_" + name + "_" + std::to_string(getpid()))).string();
        fs::remove_all(dir);
        fs::create_directories(dir);
        Rng rng(7);
        std::vector<int> train(train_tokens), val(600);
        for (auto& t : train) t = static_cast<int>(rng.below(50257));
        for (auto& t : val) t = static_cast<int>(rng.below(50257));
        bpe::write_shard(dir + "/train_000.bin", train, 50257);
        bpe::write_shard(dir + "/val_000.bin", val, 50257);
    }
    ~Workspace() { fs::remove_all(dir); }
    std::string args(const std::string& out, int max_steps) const {
        return "--model '{\"arch\":\"gpt2\",\"n_layer\":1,\"n_head\":2,\"n_embd\":16,\"max_seq_len\":16}' --device cpu "
               "--batch-size 2 --seq-len 8 --grad-accum-tokens 32 --val-every 2 --val-batches 1 --sample-every 0 --sample-tokens 2 "
               "--warmup-steps 2 --checkpoint-every 3 --max-steps " + std::to_string(max_steps) +
               " --train-data " + dir + "/train_*.bin --val-data " + dir + "/val_*.bin --out-dir " + dir + "/" + out;
    }
};

TEST_CASE("a kill during a checkpoint write leaves the last checkpoint, and --resume continues bit for bit") {
    Workspace w("resume");
    RunResult straight = run(w.args("straight", 7));
    INFO(straight.output);
    REQUIRE(straight.exit_code == 0);
    // Same run, killed (SIGKILL) halfway through writing its second checkpoint (step 6).
    RunResult killed = run(w.args("killed", 7), "GPTCU_TEST_DIE_DURING_CHECKPOINT=2");
    INFO(killed.output);
    CHECK(killed.exit_code == -SIGKILL);
    Checkpoint survivor = read_checkpoint(w.dir + "/killed/checkpoint.bin");
    CHECK(survivor.meta.at("step") == 3);
    CHECK(fs::exists(w.dir + "/killed/checkpoint.bin.tmp"));  // the torn write, never renamed into place
    RunResult resumed = run(w.args("killed", 7) + " --resume");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(resumed.output.find("resumed from") != std::string::npos);
    Checkpoint a = read_checkpoint(w.dir + "/straight/checkpoint.bin"), b = read_checkpoint(w.dir + "/killed/checkpoint.bin");
    CHECK(a.meta.at("step") == 7);
    CHECK(b.meta.at("step") == 7);
    CHECK(a.params == b.params);  // bit for bit: weights, both AdamW moments, data position
    CHECK(a.m == b.m);
    CHECK(a.v == b.v);
    CHECK(a.meta.at("data") == b.meta.at("data"));
}

TEST_CASE("bad input: missing data, a short shard, a foreign or truncated checkpoint, a diverging loss") {
    Workspace w("bad");
    RunResult r = run(w.args("x", 2) + " --train-data " + w.dir + "/nothing_*.bin");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("no data matches") != std::string::npos);

    Workspace tiny("short", 10);  // 10 tokens; one batch needs 2*8+1
    r = run(tiny.args("x", 2));
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("has 10 tokens") != std::string::npos);

    REQUIRE(run(w.args("ok", 2)).exit_code == 0);
    r = run(w.args("ok", 4) + " --resume --model '{\"arch\":\"gpt2\",\"n_layer\":2,\"n_head\":2,\"n_embd\":16,\"max_seq_len\":16}'");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("another model config") != std::string::npos);

    std::string ck = w.dir + "/ok/checkpoint.bin";
    fs::resize_file(ck, fs::file_size(ck) - 100);
    r = run(w.args("ok", 4) + " --resume");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("truncated or corrupt") != std::string::npos);
    {
        File f(ck, "wb");
        f.write("NOTACKPT________", 16);
    }
    r = run(w.args("ok", 4) + " --resume");
    CHECK(r.output.find("not a gpt.cu checkpoint") != std::string::npos);

    r = run(w.args("nan", 20) + " --learning-rate 1e30 --grad-clip 0");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("training stopped") != std::string::npos);
    CHECK(r.output.find("Last good checkpoint") != std::string::npos);
}

TEST_CASE("unknown flags and wrong types are refused with a message") {
    RunResult r = run("--no-such-flag 1");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("unknown flag --no-such-flag") != std::string::npos);
    r = run("--batch-size lots");
    CHECK(r.exit_code == 1);
    CHECK(r.output.find("wrong type") != std::string::npos);
}

// The outputs (-o PATH) of every command `make ARGS` would run from scratch (-n: printed, not run; -B: as if
// nothing were built), and the commands themselves.
static std::pair<std::vector<std::string>, std::string> make_outputs(const std::string& args) {
    // without the MAKEFLAGS of a surrounding make (make test-asan passes SANITIZE=1 down through it)
    CommandResult r = run_command("env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory -n -B " + args);
    REQUIRE_MESSAGE(r.exit_code == 0, "make -n -B " << args << " failed:\n" << r.output);
    std::vector<std::string> outputs;
    for (size_t at = r.output.find(" -o "); at != std::string::npos; at = r.output.find(" -o ", at + 4)) {
        size_t begin = at + 4, end = r.output.find_first_of(" \n", begin);
        outputs.push_back(r.output.substr(begin, end - begin));
    }
    return {outputs, r.output};
}

TEST_CASE("a sanitizer build writes only into build/asan, and ./train_gpt_cpu is the real program") {
    // the normal build writes the programs at the top (the check below can tell)
    auto [normal, normal_commands] = make_outputs("train_gpt_cpu");
    CHECK(std::find(normal.begin(), normal.end(), "train_gpt_cpu") != normal.end());
    // SANITIZE=1 (make test-asan): programs, objects, tests all under build/asan/; its tests run its programs
    const std::string asan_targets = "build/asan/train_gpt_cpu build/asan/infer_gpt_cpu build/asan/tokenizer/tok "
                                     "build/asan/test/test_train build/asan/test/test_tokenizer";
    auto [asan, asan_commands] = make_outputs("SANITIZE=1 " + asan_targets);
    REQUIRE(asan.size() > 5);
    for (const std::string& out : asan) {
        INFO("SANITIZE=1 writes " << out);
        CHECK(out.rfind("build/", 0) == 0);
        CHECK(out.rfind("build/cpu/", 0) != 0);
    }
    CHECK(std::find(asan.begin(), asan.end(), "build/asan/train_gpt_cpu") != asan.end());
    CHECK(asan_commands.find("-DGPTCU_PROGRAMS_DIR=\\\"build/asan\\\"") != std::string::npos);
    CHECK(normal_commands.find("-fsanitize") == std::string::npos);
    // and the program `make train` runs is not linked against the sanitizer runtimes
    if (std::string(GPTCU_PROGRAMS_DIR) == ".") {
        CommandResult ldd = run_command("ldd ./train_gpt_cpu");
        REQUIRE(ldd.exit_code == 0);
        CHECK(ldd.output.find("libasan") == std::string::npos);
        CHECK(ldd.output.find("libubsan") == std::string::npos);
    }
}
