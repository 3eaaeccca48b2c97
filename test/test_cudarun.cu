// Tests of dev/cudarun and of the broken-kernel examples of docs/cpu-execution.md: every
// program under dev/examples/ is compiled and run through dev/cudarun, as a reader would, and its
// result checked. The examples check themselves (PASS/FAIL and the exit status); the unsupported
// and broken ones must fail, with the message that names the problem.
//
// These tests only shell out to dev/cudarun (from the repository root, where `make test` runs them),
// which is a CPU-build tool: in the GPU build this file compiles to nothing.
#include "test/test_util.h"

#if defined(CUDASIM)
#include <algorithm>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Run {
    int status;          // the exit status, or 128 + the signal that killed it (as a shell reports it)
    std::string output;  // stdout and stderr together
};

// dev/cudarun ARGS, from the repository root.
Run cudarun(const std::string& args) {
    CommandResult r = run_command("dev/cudarun " + args);
    return {r.exit_code < 0 ? 128 - r.exit_code : r.exit_code, r.output};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A program built once by `dev/cudarun --keep` (build/cudarun/NAME), run again with ENV (as `CUDASIM_ORDER=reverse`):
// one compile for several runs.
Run rerun(const std::string& env, const std::string& name) {
    CommandResult r = run_command(env + " build/cudarun/" + name);
    return {r.exit_code < 0 ? 128 - r.exit_code : r.exit_code, r.output};
}

// A self-checking example: exits 0 and says PASS.
void check_example(const std::string& args) {
    Run r = cudarun(args);
    INFO("$ dev/cudarun " << args << "\n" << r.output);
    CHECK(r.status == 0);
    CHECK(contains(r.output, "PASS"));
    CHECK_FALSE(contains(r.output, "FAIL"));
}

// dev/cudarun for each of `runs`, as many at a time as there are cores (each is mostly a g++ compile).
// The first runs alone: it brings the rewrite tool and cudasim.o up to date, which the others then share.
std::vector<Run> cudarun_all(const std::vector<std::string>& runs) {
    std::vector<Run> results(runs.size());
    size_t at_once = std::max(1u, std::thread::hardware_concurrency());
    if (!runs.empty()) results[0] = cudarun(runs[0]);
    for (size_t first = 1; first < runs.size(); first += at_once) {
        std::vector<std::future<Run>> batch;
        for (size_t i = first; i < std::min(runs.size(), first + at_once); i++)
            batch.push_back(std::async(std::launch::async, [&runs, i] { return cudarun(runs[i]); }));
        for (size_t i = 0; i < batch.size(); i++) results[first + i] = batch[i].get();
    }
    return results;
}

}  // namespace

// One program per feature real CUDA programs use (the CUDA samples, llm.c's dev/cuda), each
// written as those are and checking its own result; a few under another thread order and thread count.
TEST_CASE("cudarun: the example corpus (runtime API, cuBLASLt, graphs, cg, intrinsics, libcu++) pass") {
    std::vector<std::string> runs;
    for (const char* example : {"device_query", "cublaslt_bias", "graphs", "zero_copy", "occupancy", "intrinsics",
                                "launch_forms", "cg_groups", "barrier_pipeline", "wmma_gemm", "device_heap",
                                "graph_conditional", "device_malloc"})
        runs.push_back(std::string("dev/examples/") + example + ".cu");
    runs.push_back("--order reverse --threads 1 dev/examples/cg_groups.cu");
    runs.push_back("--order random --threads 3 dev/examples/barrier_pipeline.cu");
    runs.push_back("--order random --threads 3 dev/examples/device_malloc.cu");  // one heap, several OS threads
    std::vector<Run> results = cudarun_all(runs);
    for (size_t i = 0; i < runs.size(); i++) {
        INFO("$ dev/cudarun " << runs[i] << "\n" << results[i].output);
        CHECK(results[i].status == 0);
        CHECK(contains(results[i].output, "PASS"));
        CHECK_FALSE(contains(results[i].output, "FAIL"));
    }
}

TEST_CASE("cudarun: a failed device assert stops the kernel and leaves a sticky cudaErrorAssert") {
    Run r = cudarun("dev/examples/device_assert.cu");
    INFO(r.output);
    CHECK(r.status == 0);  // not an abort: the program sees the error, as on a GPU
    CHECK(contains(r.output, "device_assert.cu:16: void checked_kernel(int*, int): block: [3,0,0], thread: [232,0,0] "
                             "Assertion `i < n` failed."));
    CHECK(contains(r.output, "synchronize: cudaErrorAssert; next copy: cudaErrorAssert"));
    CHECK(contains(r.output, "device_assert: PASS"));
}

TEST_CASE("cudarun: the examples run unmodified on the CPU and pass, with the race check") {
    for (const char* example : {"reduction", "transpose", "softmax_cg"})
        check_example(std::string("--racecheck dev/examples/") + example + ".cu");
}

TEST_CASE("cudarun: a program of several source files (kernels in a .cu, the reference in a .cpp) links and passes") {
    check_example("dev/examples/two_files.cu dev/examples/two_files_ref.cpp");
    Run r = cudarun("dev/examples/two_files.cu 7");  // an argument for the program, before --
    INFO(r.output);
    CHECK(r.status == 2);
    CHECK(contains(r.output, "7 is not a source file"));
}

TEST_CASE("cudarun: options reach the program (--order, --threads, arguments after --)") {
    // A thread order or a thread count must not change a correct kernel's result.
    check_example("--order reverse --threads 1 dev/examples/transpose.cu");
    check_example("--order random --threads 3 dev/examples/softmax_cg.cu -- ignored arguments");
    Run r = cudarun("--order sideways dev/examples/transpose.cu");
    CHECK(r.status != 0);
    CHECK(contains(r.output, "--order sideways: expected forward, reverse or random"));
}

TEST_CASE("cudarun: an unsupported feature fails to compile with a message naming it") {
    Run r = cudarun("dev/examples/unsupported_grid_sync.cu");
    CHECK(r.status != 0);
    CHECK(contains(r.output, "cudasim: grid-wide synchronisation"));
    CHECK(contains(r.output, "dev/examples/unsupported_grid_sync.cu:"));  // the error names the original file
    CHECK_FALSE(contains(r.output, "PASS"));
}

// docs/cpu-execution.md, "Three broken kernels": each bug, and the tool that catches it.
TEST_CASE("broken kernel: a missing __syncthreads is caught by --order reverse") {
    Run forward = cudarun("--order forward dev/examples/broken_missing_barrier.cu");
    CHECK(forward.status == 0);  // the race hides under the order a GPU warp usually shows
    Run reverse = cudarun("--order reverse dev/examples/broken_missing_barrier.cu");
    CHECK(reverse.status == 1);
    CHECK(contains(reverse.output, "FAIL"));
    CHECK(contains(reverse.output, "nan"));  // the NaN that cudasim put in unwritten shared memory
}

TEST_CASE("broken kernel: a divergent __syncthreads aborts naming the kernel, block and threads") {
    Run r = cudarun("dev/examples/broken_divergent_barrier.cu");
    CHECK(r.status == 128 + 6);  // SIGABRT
    CHECK(contains(r.output,
                   "kernel 'block_sum_kernel' block (3,0,0): thread (0,0,0) waits at __syncthreads, "
                   "but 24 of the block's 256 threads (thread (232,0,0) the first) returned without reaching it"));
}

TEST_CASE("broken kernel: an off-by-one write is out of bounds, in the checked build and under --asan") {
    Run plain = cudarun("--no-check dev/examples/broken_off_by_one.cu");
    CHECK(plain.status == 0);  // without checks the stray write goes unnoticed
    Run checked = cudarun("dev/examples/broken_off_by_one.cu");
    INFO(checked.output);
    CHECK(checked.status == 128 + 6);
    CHECK(contains(checked.output,
                   "cudasim: out of bounds: kernel 'scale_kernel' block (3,0,0) thread (232,0,0) writes 4 bytes"));
    CHECK(contains(checked.output, "0 bytes past the end of a 4000-byte cudaMalloc allocation"));
    CHECK(contains(checked.output, "at dev/examples/broken_off_by_one.cu:25"));
    Run asan = cudarun("--asan dev/examples/broken_off_by_one.cu");
    CHECK(asan.status != 0);
    CHECK(contains(asan.output,
                   "cudasim: the access below was made by kernel 'scale_kernel', block (3,0,0), thread (232,0,0)"));
    CHECK(contains(asan.output, "AddressSanitizer: heap-buffer-overflow"));
    CHECK(contains(asan.output, "WRITE of size 4"));
    CHECK(contains(asan.output,
                   "in scale_kernel(float*, float const*, float, int) dev/examples/broken_off_by_one.cu:25"));
}

// docs/cpu-execution.md, "What the checked build catches": the checks of the checked build.
TEST_CASE("broken kernel: a race every thread order hides is reported by --racecheck") {
    Run built = cudarun("--keep dev/examples/broken_racy_sum.cu");
    CHECK(built.status == 0);
    for (const char* order : {"forward", "reverse", "random"}) {
        Run r = rerun(std::string("CUDASIM_ORDER=") + order, "broken_racy_sum");
        INFO(order << "\n" << r.output);
        CHECK(r.status == 0);  // the lost updates of a GPU cannot happen between fibers
    }
    Run r = rerun("CUDASIM_RACECHECK=1 CUDASIM_THREADS=1", "broken_racy_sum");  // block 0 first
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "cudasim: race (read after write) on shared memory in kernel 'block_sum_kernel' "
                             "block (0,0,0): thread (1,0,0) reads `total` at byte offset 0 at "
                             "dev/examples/broken_racy_sum.cu:28, and thread (0,0,0) wrote it at "
                             "dev/examples/broken_racy_sum.cu:28"));
}

// A wmma store is no barrier between lanes.
TEST_CASE("broken kernel: lanes reading a store_matrix_sync tile without __syncwarp fail, and --racecheck names it") {
    Run built = cudarun("--keep dev/examples/broken_wmma_missing_syncwarp.cu");
    INFO(built.output);
    CHECK(built.status == 1);  // lane 0 reads what lane 1 has not stored yet: NaN poison
    CHECK(contains(built.output, "broken_wmma_missing_syncwarp: FAIL"));
    Run r = rerun("CUDASIM_RACECHECK=1", "broken_wmma_missing_syncwarp");
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "race (write after read) on shared memory in kernel 'tile_bias_kernel' block (0,0,0): "
                             "thread (1,0,0) writes `stage` at byte offset 32 at dev/shadow/mma.h:"));
    CHECK(contains(r.output, "and thread (0,0,0) read it at dev/examples/broken_wmma_missing_syncwarp.cu:43"));
}

TEST_CASE("broken kernel: --racecheck finds the missing __syncthreads under the order that hides it, "
          "and passes the fix") {
    // --threads 8: more pool threads than this machine's cores, so pool threads run blocks the launching thread
    // does not (a pool thread's __shared__ variables lie in its stack mapping; a check once skipped them there)
    for (const char* threads : {"", "--threads 8 "}) {
        CAPTURE(threads);
        Run r =
            cudarun(std::string("--racecheck --order forward ") + threads + "dev/examples/broken_missing_barrier.cu");
        INFO(r.output);
        CHECK(r.status == 128 + 6);
        CHECK(contains(r.output, "race (read after write) on shared memory in kernel 'adjacent_difference_kernel'"));
        CHECK(contains(r.output, "thread (1,0,0) reads `tile` at byte offset 4 at "
                                 "dev/examples/broken_missing_barrier.cu:29, and thread (0,0,0) wrote it at "
                                 "dev/examples/broken_missing_barrier.cu:26"));
    }
    // The same file with the barrier restored (a copy under build/, as a reader would edit it).
    CommandResult fix = run_command("mkdir -p build/cudarun && "
                                    "sed 's|// __syncthreads();   <- missing.*|__syncthreads();|' "
                                    "dev/examples/broken_missing_barrier.cu > build/cudarun/fixed_missing_barrier.cu");
    REQUIRE(fix.exit_code == 0);
    Run built = cudarun("--keep build/cudarun/fixed_missing_barrier.cu");
    CHECK(built.status == 0);
    for (const char* order : {"forward", "reverse", "random"}) {
        Run fixed = rerun(std::string("CUDASIM_RACECHECK=1 CUDASIM_ORDER=") + order, "fixed_missing_barrier");
        INFO(order << "\n" << fixed.output);
        CHECK(fixed.status == 0);
        CHECK(contains(fixed.output, "broken_missing_barrier: PASS"));
    }
}

TEST_CASE("broken kernel: a host pointer given to a kernel is refused at the launch") {
    Run r = cudarun("dev/examples/broken_host_pointer.cu");
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "cudasim: kernel 'scale_kernel' argument 2 is 0x"));
    CHECK(contains(r.output, "a host pointer (stack, malloc or std::vector memory, not from cudaMalloc)"));
}

TEST_CASE("broken kernel: a read of a device-heap block after its free is out of bounds") {
    Run r = cudarun("dev/examples/broken_use_after_free.cu");
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "cudasim: out of bounds: kernel 'sum_kernel' block (0,0,0) thread (0,0,0) reads 4 bytes"));
    CHECK(contains(r.output, "broken_use_after_free.cu:21"));
}

TEST_CASE("broken graph: a conditional node whose handle nothing set (and has no default) aborts") {
    Run r = cudarun("dev/examples/broken_conditional_handle.cu");
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "which has no default (cudaGraphCondAssignDefault) and which no kernel has set "
                             "(cudaGraphSetConditional) since its graph's run began"));
}

TEST_CASE("broken kernel: static + dynamic shared memory over 48 KB without the opt-in is refused") {
    Run r = cudarun("dev/examples/broken_shared_limit.cu");
    INFO(r.output);
    CHECK(r.status == 128 + 6);
    CHECK(contains(r.output, "cudasim: kernel 'two_buffer_kernel' uses 32768 bytes of static __shared__ memory + "
                             "32768 bytes of dynamic: over the 49152 bytes a block may have without "
                             "cudaFuncSetAttribute"));
}
#endif  // CUDASIM
