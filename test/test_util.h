// test_util.h — what every kernel test needs: random non-zero inputs from the project's RNG, NaN
// poisoning, the relative-error check, the thread orders to run under, finite differences.
#pragma once
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common.cuh"

// Tolerances, named once per precision.
// fp32 kernels vs an fp32 CPU reference: both round every op to fp32 but sum in different orders;
// over reductions of up to ~10^4 terms the relative error of the whole tensor stays below 1e-5.
constexpr double tolerance_fp32 = 1e-5;
// CPU reference backward vs central finite differences in double precision: the truncation error
// of a central difference with step 1e-4 on these smooth functions is ~1e-8; 1e-5 leaves room.
constexpr double tolerance_finite_difference = 1e-5;

// Random values in [-scale, scale] that are never (nearly) zero, so a dropped term always shows.
inline std::vector<float> random_vector(size_t n, Rng& rng, float scale = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) {
        float u = rng.uniform(0.1f, 1.0f) * scale;
        x = rng.uniform() < 0.5f ? -u : u;
    }
    return v;
}

// Fills a device buffer with NaN (all bits set), so an element a kernel forgot to write fails the check.
template <class T>
void poison(DeviceBuffer<T>& buf) { cuda_check(cudaMemset(buf.ptr, 0xff, buf.bytes())); }

// ‖out − ref‖ / ‖ref‖ over the whole tensor (in double); NaN if any element of `out` is not finite.
inline double rel_error(const std::vector<float>& out, const std::vector<float>& ref) {
    REQUIRE(out.size() == ref.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); i++) {
        if (!std::isfinite(out[i])) return NAN;
        double d = static_cast<double>(out[i]) - ref[i];
        num += d * d;
        den += static_cast<double>(ref[i]) * ref[i];
    }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Per-element and whole-tensor tolerances of one op at one precision. An element passes when
//   |out − ref| <= atol + rtol·|ref|      (torch.allclose's rule)
// and the tensor when ‖out − ref‖ / ‖ref‖ <= norm. The norm check alone lets an error confined to a few
// elements through (one wrong element of 10^4 moves the norm by ~1%·its error); the per-element check
// alone lets a small error spread over all elements through. rtol covers rounding that scales with the
// value; atol covers elements that are near zero because their terms cancel, where the absolute error
// is set by the size of the terms, not of the sum.
struct Tolerance {
    double atol, rtol, norm;
};
// fp32 kernels vs a double (or fp32) CPU reference, inputs of magnitude ~1, per kind of op. Each is 5–15×
// the worst error the tests see (CPU build, test_layers and test_attention): tight enough that an
// off-by-one, a dropped term or a wrong scale fails.
// An op that rounds each output once or a few times (GELU, residual, RoPE, AdamW, a copy or permutation).
constexpr Tolerance tolerance_fp32_elementwise{1e-6, 1e-5, 1e-6};
// A sum over one row or column of up to ~10^3 terms (layernorm, RMSNorm, softmax, cross-entropy, norms).
constexpr Tolerance tolerance_fp32_reduction{1e-5, 1e-4, 1e-5};
// Matmul against an fp32 reference: dot products of up to ~10^3 terms rounded in two different orders, so
// an output that cancels to ~0.03 can be off by 2e-5 (seen: matmul dinp, OC = 1026).
constexpr Tolerance tolerance_fp32_matmul{2e-4, 1e-4, 1e-5};
// Attention: softmax, then a sum of up to T products; backward through exp and two such sums.
constexpr Tolerance tolerance_fp32_attention{2e-5, 1e-4, 1e-5};

// bf16 products with fp32 sums (tensor cores: matmul_wmma_kernel) against an fp32 reference. layers.cuh derives the
// bound at matmul_wmma_kernel: rounding both inputs to bf16 (unit roundoff u = 2^-8) moves a sum of products by at
// most (2u + u²)·Σ|a·b|, and the fp32 sums of K terms add at most ~K·2^-24·Σ|a·b| on each side. So per element
//     |out − ref| <= (2u + u² + 2·K·2^-24 + 2^-22)·magnitude,
// where `magnitude` is the reference run on the absolute values of every input (Σ|a·b| + |bias| + |accumulated|;
// 2^-22 covers the last roundings of bias and accumulation), K the longest sum. The bound is relative to Σ|a·b|,
// not to the output, which can cancel to ~0. Over the whole tensor the rounding errors average out (a random walk:
// ‖out − ref‖/‖ref‖ ≈ u/√3 ≈ 2.3e-3, derived there; 2.0e-3 measured): the norm check allows 2u = 7.8e-3, which a
// product dropped from every sum (an error of ~1/√K of the output) or a wrong tile still fails.
constexpr double bf16_unit_roundoff = 1.0 / 256;  // 2^-8: bf16 keeps 8 significant bits
constexpr double tolerance_bf16_product_norm = 2 * bf16_unit_roundoff;
inline void check_bf16_product(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                               const std::vector<float>& magnitude, int K) {
    REQUIRE(out.size() == ref.size());
    REQUIRE(magnitude.size() == ref.size());
    const double u = bf16_unit_roundoff, factor = 2 * u + u * u + 2.0 * K * std::ldexp(1.0, -24) + std::ldexp(1.0, -22);
    size_t bad = 0, worst = 0;
    double worst_ratio = 0;  // |out − ref| / bound: > 1 fails
    for (size_t i = 0; i < out.size(); i++) {
        if (!std::isfinite(out[i])) {
            FAIL_CHECK(what << ": element " << i << " is " << out[i] << " (reference " << ref[i]
                            << ") — unwritten or overflowed");
            return;
        }
        double ratio = std::fabs(static_cast<double>(out[i]) - ref[i]) / (factor * magnitude[i]);
        if (ratio > 1) bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    if (bad)
        FAIL_CHECK(what << ": " << bad << " of " << out.size() << " elements differ by more than " << factor
                        << "·Σ|a·b|; worst: element " << worst << " = " << out[worst] << ", reference " << ref[worst]
                        << ", Σ|a·b| " << magnitude[worst] << " (" << worst_ratio << "× the bound)");
    double e = rel_error(out, ref);
    INFO(what << ": relative error " << e << " (tolerance " << tolerance_bf16_product_norm << "); worst element at "
              << worst_ratio << "× its bound");
    CHECK(e <= tolerance_bf16_product_norm);
}

// Every other bf16 op (layers.cuh: the rule at the top) widens its bf16 inputs exactly, computes in fp32 and rounds
// each bf16 output once. The tests give the fp32 CPU reference the same values (bf16 inputs widened: exact), so the
// kernel's fp32 result y differs from the reference as the fp32 kernel does, |y − ref| <= atol + rtol·|ref| (that
// op's fp32 tolerance), and the stored output is bf16(y). bf16 keeps p = 8 significant bits, so rounding to nearest
// moves a value by at most half a unit in the last place: |bf16(y) − y| <= 2^-p·|y| = u·|y|, u = 2^-8 ≈ 3.9e-3
// (bf16 has fp32's exponent range, so nothing in these tests underflows or overflows that fp32 would not).
// With |y| <= |ref| + |y − ref|:
//     |out − ref| <= |bf16(y) − y| + |y − ref| <= (1 + u)·(atol + rtol·|ref|) + u·|ref|,
// so per element atol' = (1 + u)·atol, rtol' = (1 + u)·rtol + u, and by the same steps on the whole tensor
// ‖out − ref‖/‖ref‖ <= (1 + u)·norm + u. An output that stays fp32 (weight gradients, norm statistics, losses)
// keeps the fp32 tolerance itself. The test_layers bf16 cases also check the stronger statement behind the bound:
// each bf16 output is exactly bf16(the fp32 kernel's output) on the same inputs (check_bf16_op).
constexpr Tolerance bf16_tolerance(const Tolerance& fp32) {
    const double u = bf16_unit_roundoff;
    return {(1 + u) * fp32.atol, (1 + u) * fp32.rtol + u, (1 + u) * fp32.norm + u};
}

// Every element finite, then per element |out − ref| <= atol + rtol·|ref|, then the tensor's relative error.
// A failure names the first non-finite element, or the number of elements out of tolerance and the worst.
inline void check_close(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                        const Tolerance& tol) {
    REQUIRE(out.size() == ref.size());
    for (size_t i = 0; i < out.size(); i++)
        if (!std::isfinite(out[i])) {
            FAIL_CHECK(what << ": element " << i << " is " << out[i] << " (reference " << ref[i]
                            << ") — unwritten or overflowed");
            return;
        }
    size_t bad = 0, worst = 0;
    double worst_ratio = 0;  // |out − ref| / (atol + rtol·|ref|): > 1 fails
    for (size_t i = 0; i < out.size(); i++) {
        double diff = std::fabs(static_cast<double>(out[i]) - ref[i]);
        double ratio = diff / (tol.atol + tol.rtol * std::fabs(static_cast<double>(ref[i])));
        if (ratio > 1) bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    if (bad)
        FAIL_CHECK(what << ": " << bad << " of " << out.size() << " elements differ by more than atol " << tol.atol
                        << " + rtol " << tol.rtol << "·|ref|; worst: element " << worst << " = " << out[worst]
                        << ", reference " << ref[worst] << " (" << worst_ratio << "× the allowed difference)");
    double e = rel_error(out, ref);
    INFO(what << ": relative error " << e << " (tolerance " << tol.norm << "); worst element at " << worst_ratio
              << "× its tolerance");
    CHECK(e <= tol.norm);
}

// The norm check alone: for comparisons of whole models (logits after many layers), where the error of one
// element has no simple bound, and for tests of the emulator's cuBLAS.
inline void check_close(const std::string& what, const std::vector<float>& out, const std::vector<float>& ref,
                        double tol) {
    REQUIRE(out.size() == ref.size());
    for (size_t i = 0; i < out.size(); i++)
        if (!std::isfinite(out[i])) {
            FAIL_CHECK(what << ": element " << i << " is " << out[i] << " (reference " << ref[i]
                            << ") — unwritten or overflowed");
            return;
        }
    double e = rel_error(out, ref);
    INFO(what << ": relative error " << e << " (tolerance " << tol << ")");
    CHECK(e <= tol);
}

// Runs `body` once per thread order the build offers: in the CPU build forward and reverse, so a
// kernel missing a barrier reads unwritten shared memory under one of them; on a GPU, once.
// Under the race check (make test-check) once: it finds a missing barrier whatever the order.
inline void for_each_thread_order(const std::function<void()>& body) {
#if defined(CUDASIM)
    if (cudasim::check::racecheck_enabled()) {
        body();
        return;
    }
    for (auto order : {cudasim::Order::forward, cudasim::Order::reverse}) {
        cudasim::set_order(order);
        CAPTURE(order == cudasim::Order::forward ? "forward" : "reverse");
        body();
    }
    cudasim::set_order(cudasim::Order::forward);
#else
    body();
#endif
}

// ----------------------------------------------------------------------------
// bf16 kernel tests: an op with element type X = __nv_bfloat16 runs on inputs that are bf16 values, so the fp32 CPU
// reference gets exactly the same numbers, and is checked twice (test_layers.cu, test_attention.cu, test_infer.cu):
//   - against the fp32 CPU reference, within a bound derived from u = 2^-8 (bf16_tolerance above, or the op's own);
//   - against the same kernel run with X = float on the same inputs: a bf16 output is that fp32 output rounded once
//     to bf16, bit for bit, and an fp32 output is equal (what "one kernel, fp32 arithmetic inside" means).
using bf16 = __nv_bfloat16;

// v rounded to the nearest bf16 values, kept as floats (exactly).
inline std::vector<float> bf16_values(std::vector<float> v) {
    for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(x));
    return v;
}
inline std::vector<float> random_bf16(size_t n, Rng& rng, float scale = 1.0f) {
    return bf16_values(random_vector(n, rng, scale));
}

// A device buffer of element type X holding v (exact: v's values are bf16's), and a buffer's contents as floats.
template <class X>
DeviceBuffer<X> upload_as(const std::vector<float>& v) {
    std::vector<X> h(v.size());
    for (size_t i = 0; i < v.size(); i++) h[i] = from_fp32<X>(v[i]);
    return DeviceBuffer<X>(h);
}
template <class X>
std::vector<float> download_fp32(const DeviceBuffer<X>& buffer) {
    std::vector<X> h = buffer.download();
    std::vector<float> v(h.size());
    for (size_t i = 0; i < h.size(); i++) v[i] = to_fp32(h[i]);
    return v;
}

// One output of an op run: its name, its values as floats, and whether it is stored in the element type (else fp32).
struct OpOutput {
    std::string name;
    std::vector<float> values;
    bool element_type;
};

// Runs `run` (a generic lambda: run(X{}) runs the op with element type X and returns its outputs) with X = float and
// X = bf16 under each thread order; check_reference(outputs) checks the bf16 run's outputs against the CPU reference,
// and (same_kernel) each is compared with the fp32 run's: rounded once to bf16 (element_type) or equal, bit for bit.
template <class Run, class CheckReference>
void check_bf16_runs(Run run, CheckReference check_reference, bool same_kernel = true) {
    for_each_thread_order([&] {
        std::vector<OpOutput> fp32 = run(0.0f), got = run(bf16{});
        REQUIRE(got.size() == fp32.size());
        check_reference(got);
        if (!same_kernel) return;
        for (size_t i = 0; i < got.size(); i++) {
            const OpOutput& o = got[i];
            REQUIRE(o.values.size() == fp32[i].values.size());
            size_t bad = 0, first = 0;
            for (size_t j = 0; j < o.values.size(); j++) {
                float f = fp32[i].values[j], want = o.element_type ? __bfloat162float(__float2bfloat16_rn(f)) : f;
                if (std::memcmp(&want, &o.values[j], sizeof want) != 0 && !bad++) first = j;
            }
            if (bad)
                FAIL_CHECK(o.name << ": " << bad << " of " << o.values.size() << " elements differ from the fp32 "
                                  << "kernel's" << std::string(o.element_type ? " rounded to bf16" : "")
                                  << "; first: element " << first << " = " << o.values[first] << ", fp32 kernel "
                                  << fp32[i].values[first]);
        }
    });
}
// The common case: output i against refs[i] (the fp32 CPU reference) within tols[i], the op's fp32 tolerance, widened
// by bf16_tolerance for bf16 outputs.
template <class Run>
void check_bf16_op(Run run, const std::vector<std::vector<float>>& refs, const std::vector<Tolerance>& tols,
                   bool same_kernel = true) {
    REQUIRE(tols.size() == refs.size());
    check_bf16_runs(
        run,
        [&](const std::vector<OpOutput>& got) {
            REQUIRE(got.size() == refs.size());
            for (size_t i = 0; i < got.size(); i++) {
                const OpOutput& o = got[i];
                CAPTURE(o.name);
                check_close(o.name + " (bf16) vs fp32 CPU reference", o.values, refs[i],
                            o.element_type ? bf16_tolerance(tols[i]) : tols[i]);
            }
        },
        same_kernel);
}

// True in the CPU build, false in the nvcc build: a test of host code that only the CPU build links
// (OpenBLAS: layers_cpu_blas.h) runs under `if constexpr (cpu_build)` inside a template, so the nvcc
// build never instantiates it and needs no OpenBLAS.
#if defined(CUDASIM)
constexpr bool cpu_build = true;
#else
constexpr bool cpu_build = false;
#endif

// Central finite differences of a scalar function f(x) at x, for every element (double precision).
inline std::vector<double> finite_difference(const std::function<double(const std::vector<double>&)>& f,
                                             std::vector<double> x, double step = 1e-4) {
    std::vector<double> grad(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        double keep = x[i];
        x[i] = keep + step;
        double up = f(x);
        x[i] = keep - step;
        double down = f(x);
        x[i] = keep;
        grad[i] = (up - down) / (2 * step);
    }
    return grad;
}

inline double rel_error(const std::vector<double>& out, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); i++) {
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Where the programs this build's tests run live: "." for the normal build (./train_gpt_cpu,
// ./infer_gpt_cpu, ./tokenizer/tok), the build directory for a flag variant (make SANITIZE=1 sets
// build/asan), so sanitizer tests run sanitizer programs and never need them in place of the real ones.
#ifndef GPTCU_PROGRAMS_DIR
#define GPTCU_PROGRAMS_DIR "."
#endif
inline std::string program_path(const std::string& name) { return std::string(GPTCU_PROGRAMS_DIR) + "/" + name; }

// A program run as a user runs it (through sh, from the repository root): its exit code, or minus the
// signal that killed it, and everything it printed (stdout and stderr together).
struct CommandResult {
    int exit_code;
    std::string output;
};
inline CommandResult run_command(const std::string& command) {
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    REQUIRE_MESSAGE(pipe != nullptr, "cannot run " << command);
    std::string output;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output.append(buf, n);
    int status = pclose(pipe);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1000;
    if (code > 128) code = -(code - 128);  // sh reports a child killed by signal S as exit status 128 + S
    return {code, output};
}

// Runs `body` in a child process; returns (killed by SIGABRT, what it wrote to stderr): how the tests of what the
// CPU build stops (a stuck barrier, a misused warp collective) see the message without stopping themselves.
inline std::pair<bool, std::string> run_in_child(const std::function<void()>& body) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    std::fflush(nullptr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        signal(SIGABRT, SIG_DFL);  // not doctest's crash handler: the parent checks the signal
        int null_fd = open("/dev/null", O_WRONLY);
        dup2(null_fd, 1);
        dup2(fds[1], 2);
        close(fds[0]);
        body();
        _exit(0);
    }
    close(fds[1]);
    std::string err;
    char buf[4096];
    for (ssize_t got; (got = read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, got);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return {WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, err};
}
