// cudasim.h — the CUDA execution model on the CPU, so every kernel of gpt.cu runs (and can be stepped
// through in gdb) on a machine without a GPU.
//
// How the CPU build uses it (see docs/cpu-execution.md):
//   1. dev/cudasim_rewrite turns `kernel<<<grid, block, smem, stream>>>(args)` into
//      `::cudasim::launch(kernel, "kernel", grid, block, smem, stream)(args)` and
//      `extern __shared__ T buf[];` into a pointer to this worker's dynamic shared memory; nothing else
//      in a source file changes, and `#line` keeps error messages and gdb on the original lines.
//   2. g++ compiles the result with `-include dev/cudasim.h` and `-I dev/shadow` (CPU versions of the
//      device-only headers such as <cooperative_groups.h>). The host half of the real CUDA headers
//      (types, enums, error codes, cudaDeviceProp, dim3, float4, __nv_bfloat16 conversions) is used as is;
//      this file defines the functions behind them.
//   3. Exactly one translation unit defines CUDASIM_IMPLEMENTATION before including this file
//      (the Makefile builds it once as build/cpu/cudasim.o).
//
// The execution model, in one paragraph: each CUDA thread of a block is a fiber (Boost.Context; ~4 ns
// per switch) with its own small stack. A block's fibers run on one OS thread, one at a time, each until
// it reaches a barrier (__syncthreads, a warp collective such as __shfl_sync) or returns; when every
// thread of the block (or warp) has arrived, the barrier is released. `__shared__` variables are
// `static thread_local`, which is exactly "one copy per block" because an OS thread runs one block at a
// time. Blocks are spread over CUDASIM_THREADS OS threads (default: the number of cores). A block's clock()
// runs n times as fast as real time (its n threads take turns), so a thread spinning on it costs one spin.
//
// What it checks that a GPU would only get wrong silently: a barrier that some threads never reach
// (abort with kernel name and coordinates, never a hang), a warp collective with a missing lane, launch
// configurations the GPU rejects (returned as the GPU's error codes), device-pointer ranges in memcpy.
// The order in which threads run between barriers is selectable (CUDASIM_ORDER=forward|reverse|random,
// or cudasim::set_order), so a missing barrier changes the result under one of the orders.
#ifndef GPTCU_CUDASIM_H
#define GPTCU_CUDASIM_H
#define CUDASIM 1
// __CUDA_ARCH__ as the virtual device's device code sees it (sm_80, as cudaDevAttrComputeCapabilityMajor/Minor
// say). Never defined as __CUDA_ARCH__ itself: host code must not see it. The rewrite puts this name where device
// code tests __CUDA_ARCH__ (resolve_cuda_arch in dev/cudasim_rewrite.h).
#define CUDASIM_CUDA_ARCH 800

#include <cuda_runtime.h>  // real CUDA host headers: they compile with g++ and give the exact types
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <boost/context/fiber.hpp>
#include "cudasim_check.h"  // memory, race and launch-resource checks

// ----------------------------------------------------------------------------
// Function and variable qualifiers. The CUDA headers define them as attributes g++ would warn about.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
// One copy per OS thread == one copy per block, because an OS thread runs one block at a time.
#define __shared__ static thread_local

namespace cudasim {

enum class Order { forward, reverse, random };
void set_order(Order order);  // the order threads run in between barriers (default: CUDASIM_ORDER or forward)
Order get_order();

// ----------------------------------------------------------------------------
// State of one CUDA thread while its block runs.
// not_started: the thread has not begun (it will run on the fiber of the lane before it, if that one finishes);
// trapped: it stopped at a device assert or __trap, ending its block and the grid.
// spin: it waits for a condition other threads make true (cuda::barrier, a tile of more than 32 threads): it is
// resumed, to look again, after the other threads of the block have run.
enum class Wait : uint8_t { not_started, run, block_barrier, warp_collective, done, trapped, spin };
// match_any/match_all (__match_*_sync), coalesce (cg::coalesced_threads: the lanes at the same call)
enum class WarpOp : uint8_t {
    sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, match_any, match_all, coalesce,
    wmma_load, wmma_store, wmma_mma  // nvcuda::wmma (dev/shadow/mma.h); keep them last
};
enum class BarrierKind : uint8_t { sync, count, and_, or_ };

struct Thread {
    uint3 idx;                      // threadIdx
    unsigned linear;                // x + y·Dx + z·Dx·Dy, which fixes warp and lane as on the GPU
    boost::context::fiber fiber;    // where this thread continues when it is resumed
    unsigned stack_slot = 0;        // whose stack the fiber runs on (the first thread of its chain)
    Wait wait = Wait::not_started;
    BarrierKind barrier = BarrierKind::sync;
    WarpOp op = WarpOp::sync;
    int predicate = 0;              // __syncthreads_count/and/or, ballot/any/all
    unsigned mask = 0;              // warp collective: the lanes that take part
    int arg = 0;                    // shfl: srcLane, delta or laneMask
    int width = 32;                 // shfl: sub-warp width
    uint64_t value = 0, result = 0; // shfl: the value given and the value received (up to 8 bytes)
};

struct Worker;                             // an OS thread that runs blocks (defined in the implementation)
extern thread_local Worker* this_worker;   // set while the OS thread runs a block
Thread& current_thread();
void yield_to_scheduler();                 // the running fiber waits; the scheduler decides what runs next
void wait_for_others();                    // at a barrier or warp collective: the next lane runs (see its definition)
void* dynamic_shared_memory();             // this worker's `extern __shared__` buffer (fixed address)
bool shared_declared(void* p, size_t bytes); // a static __shared__ variable: NaN-fill it at every block start
[[noreturn]] void fatal(const char* fmt, ...);
[[noreturn]] void trap_current_thread();   // device assert / __trap: this thread stops, the grid ends
// waiting on shared state. `spin_wait` yields until the other threads of the block have had a turn;
// whoever changes what a spinning thread waits for calls `note_progress` (without it, a round in which only
// spinning threads ran is a deadlock, reported with the kernel's name).
void spin_wait();
void note_progress();
// A barrier of `size` consecutive threads starting at thread `first` of the block (cg tiles of more than 32).
void group_barrier(unsigned first, unsigned size);

// ----------------------------------------------------------------------------
// Kernel launch: what `kernel<<<grid, block, smem, stream>>>(args)` becomes.
struct LaunchConfig {
    const char* name;
    const void* function;  // identifies the kernel for cudaFuncSetAttribute
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream = nullptr;  // a capturing stream records the launch instead of running it
};
void run_grid(const LaunchConfig& config, const std::function<void()>& thread_body);
// true when config.stream is capturing into a graph; the launch is then recorded as `later`.
extern std::atomic<int> g_capturing_streams;
bool capture_launch_slow(const LaunchConfig& config, std::function<void()> later);
template <class F>
bool capture_launch(const LaunchConfig& config, F&& later) {
    return g_capturing_streams.load(std::memory_order_relaxed) > 0 &&
           capture_launch_slow(config, std::forward<F>(later));
}

// One CUDA thread's call of the kernel. In the checked build the per-access checks are on only inside it, and the
// parameters are copied first: `params` lives on the launching thread's stack, outside every checked region. They
// are copied straight into the by-value parameters of the lambda, in registers where they fit, which are then
// passed on as lvalues (a launch by call takes its arguments as `auto&...`): a copy into a local tuple first, then
// read back with the checks on, cost two more checked accesses per parameter in every CUDA thread.
template <class F, class Tuple>
void run_kernel_body(F function, const Tuple& params) {
#if defined(CUDASIM_CHECKED)
    std::apply(
        [&function](auto... own) {
            check::enter_kernel();
            function(own...);
            check::leave_kernel();
        },
        params);
#else
    std::apply(function, params);
#endif
}

template <class... Params>
struct Launcher {
    void (*kernel)(Params...);
    LaunchConfig config;
    template <class... Args>
    void operator()(Args&&... args) const {
        static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
        // Like the GPU, every thread gets its own copy of the parameters, converted to the kernel's types.
        std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
        int index = 0;
        std::apply([&](const auto&... p) { (check::argument(config, index++, p), ...); }, params);  // no host pointers
        auto later = [k = kernel, c = config, params] { run_grid(c, [&] { run_kernel_body(k, params); }); };
        if (capture_launch(config, later)) return;
        run_grid(config, [&] { run_kernel_body(kernel, params); });
    }
};
template <class... Params>
Launcher<Params...> launch(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block,
                           size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
    LaunchConfig config{name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, stream};
    return Launcher<Params...>{kernel, config};
}

// ---- launches the rewrite cannot turn into a function pointer (a template kernel whose
// arguments are deduced, a kernel with default arguments, or one that shares its name with a host
// function) are launched as a call, `kernel(args...)` in every CUDA thread, so C++ overload resolution
// and template deduction pick the kernel exactly as nvcc does. The kernel's address is then unknown:
// its dynamic shared memory is checked against the largest limit any kernel was given.
template <class F>
struct CallLauncher {
    F call;  // [](auto&... a) { kernel(a...); }
    LaunchConfig config;
    template <class... Args>
    void operator()(Args&&... args) const {
        std::tuple<std::decay_t<Args>...> params(std::forward<Args>(args)...);
        int index = 0;
        std::apply([&](const auto&... p) { (check::argument(config, index++, p), ...); }, params);  // no host pointers
        auto later = [f = call, c = config, params] { run_grid(c, [&] { run_kernel_body(f, params); }); };
        if (capture_launch(config, later)) return;
        run_grid(config, [&] { run_kernel_body(call, params); });
    }
};
template <class F>
CallLauncher<F> launch_call(F call, const char* name, dim3 grid, dim3 block, size_t shared_bytes = 0,
                            cudaStream_t stream = nullptr) {
    return CallLauncher<F>{call, LaunchConfig{name, nullptr, grid, block, shared_bytes, stream}};
}

// ----------------------------------------------------------------------------
// Collectives. The calling thread records what it brings and yields; the scheduler releases it when
// all the threads that must take part have arrived, with `result` filled in.
CUDASIM_UNCHECKED inline int block_barrier(BarrierKind kind, int predicate) {
    Thread& t = current_thread();
    t.wait = Wait::block_barrier;
    t.barrier = kind;
    t.predicate = predicate;
    wait_for_others();
    return static_cast<int>(t.result);
}

template <class T>
CUDASIM_UNCHECKED T warp_collective(WarpOp op, unsigned mask, T value, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move at most 8 bytes");
    Thread& t = current_thread();
    t.wait = Wait::warp_collective;
    t.op = op;
    t.mask = mask;
    t.value = 0;
    std::memcpy(&t.value, &value, sizeof(T));
    t.arg = arg;
    t.width = width;
    wait_for_others();
    T result;
    std::memcpy(&result, &t.result, sizeof(T));
    return result;
}

// ---- nvcuda::wmma (dev/shadow/mma.h). load_matrix_sync / store_matrix_sync: each lane brings the
// pointer as `value`, ldm as `arg`, and 2·(element bytes) + (1 if column-major) as `width`. mma_sync: `value`
// points to the lane's WmmaMma; the scheduler calls `compute` once, with all 32 lanes' fragments.
struct WmmaMma {
    void (*compute)(const WmmaMma* const lanes[32]);  // one instantiation per combination of fragment types
    const void *a, *b, *c;
    void* d;
};

// CUDA features with no CPU version: using one instantiates one of these, and the compile fails with
// a message that names the feature (a static_assert that fires only when instantiated).
template <class T> constexpr bool dependent_false = false;
template <class T = void>
struct unsupported {
    static_assert(dependent_false<T>, "cudasim: this CUDA feature is not supported on the CPU");
};
template <class T = void>
struct unsupported_texture {
    static_assert(dependent_false<T>, "cudasim: texture and surface objects (tex1Dfetch, tex2D, surf2Dwrite, ...) "
                                      "are not supported on the CPU; read the array with plain loads");
};
template <class T = void>
struct unsupported_grid_sync {
    static_assert(dependent_false<T>,
                  "cudasim: grid-wide synchronisation (cooperative_groups::this_grid, grid_group::sync) "
                  "is not supported on the CPU, whose blocks do not all run at once; split the kernel "
                  "into two launches");
};

}  // namespace cudasim

// ----------------------------------------------------------------------------
// Built-in variables. The scheduler sets them before it resumes a thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ----------------------------------------------------------------------------
// Synchronisation and warp intrinsics.
inline void __syncthreads() { cudasim::block_barrier(cudasim::BarrierKind::sync, 0); }
inline int __syncthreads_count(int p) { return cudasim::block_barrier(cudasim::BarrierKind::count, p != 0); }
inline int __syncthreads_and(int p) { return cudasim::block_barrier(cudasim::BarrierKind::and_, p != 0); }
inline int __syncthreads_or(int p) { return cudasim::block_barrier(cudasim::BarrierKind::or_, p != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cudasim::warp_collective(cudasim::WarpOp::sync, mask, 0, 0, 32); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    return cudasim::warp_collective(cudasim::WarpOp::shfl_idx, mask, v, src, width);
}
template <class T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return cudasim::warp_collective(cudasim::WarpOp::shfl_up, mask, v, static_cast<int>(delta), width);
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    return cudasim::warp_collective(cudasim::WarpOp::shfl_down, mask, v, static_cast<int>(delta), width);
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    return cudasim::warp_collective(cudasim::WarpOp::shfl_xor, mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int p) {
    return cudasim::warp_collective<unsigned>(cudasim::WarpOp::ballot, mask, p != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int p) {
    return cudasim::warp_collective<int>(cudasim::WarpOp::any, mask, p != 0, 0, 32);
}
inline int __all_sync(unsigned mask, int p) {
    return cudasim::warp_collective<int>(cudasim::WarpOp::all, mask, p != 0, 0, 32);
}
unsigned __activemask();  // the lanes of the warp that have not returned
// the lanes of `mask` whose `value` equals this lane's (any), or all of them if all are equal (all)
template <class T> unsigned __match_any_sync(unsigned mask, T value) {
    return static_cast<unsigned>(cudasim::warp_collective<unsigned long long>(
        cudasim::WarpOp::match_any, mask, static_cast<unsigned long long>(value), 0, 32));
}
template <class T> unsigned __match_all_sync(unsigned mask, T value, int* pred) {
    unsigned r = static_cast<unsigned>(cudasim::warp_collective<unsigned long long>(
        cudasim::WarpOp::match_all, mask, static_cast<unsigned long long>(value), 0, 32));
    *pred = r != 0;
    return r;
}

// ----------------------------------------------------------------------------
// Atomics. Threads of one block never run at the same time; blocks on other OS threads may, so these
// are real atomic read-modify-writes.
namespace cudasim {
#if __cplusplus >= 202002L
template <class T> using atomic_ref = std::atomic_ref<T>;
#else
// C++17 (dev/cudarun's default dialect, as nvcc's) has no std::atomic_ref: the same operations on
// GCC's __atomic built-ins, which is what std::atomic_ref compiles to.
// Not instrumented by the checked build (CUDASIM_UNCHECKED): the atomic itself is checked once by the caller.
template <class T>
struct atomic_ref {
    T* p;
    CUDASIM_UNCHECKED explicit atomic_ref(T& x) : p(&x) {}
    CUDASIM_UNCHECKED T load() const { T v; __atomic_load(p, &v, __ATOMIC_SEQ_CST); return v; }
    CUDASIM_UNCHECKED T exchange(T v) const { T old; __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST); return old; }
    CUDASIM_UNCHECKED bool compare_exchange_strong(T& expected, T desired) const {
        return __atomic_compare_exchange(p, &expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    CUDASIM_UNCHECKED bool compare_exchange_weak(T& expected, T desired) const {
        return __atomic_compare_exchange(p, &expected, &desired, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    CUDASIM_UNCHECKED T fetch_add(T v) const {
        if constexpr (std::is_integral_v<T>) return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
        T old = load();
        while (!compare_exchange_weak(old, old + v)) {}
        return old;
    }
    CUDASIM_UNCHECKED T fetch_sub(T v) const { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
    CUDASIM_UNCHECKED T fetch_and(T v) const { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
    CUDASIM_UNCHECKED T fetch_or(T v) const { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
    CUDASIM_UNCHECKED T fetch_xor(T v) const { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }
};
#endif
}  // namespace cudasim
template <class T> CUDASIM_UNCHECKED T cudasim_atomic_add(T* a, T v) {
    cudasim::check::atomic_access(a, sizeof *a);
    return cudasim::atomic_ref<T>(*a).fetch_add(v);
}
inline float atomicAdd(float* a, float v) { return cudasim_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return cudasim_atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return cudasim_atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return cudasim_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return cudasim_atomic_add(a, v); }
CUDASIM_UNCHECKED inline int atomicSub(int* a, int v) {
    cudasim::check::atomic_access(a, sizeof *a);
    return cudasim::atomic_ref<int>(*a).fetch_sub(v);
}
CUDASIM_UNCHECKED inline unsigned atomicSub(unsigned* a, unsigned v) {
    cudasim::check::atomic_access(a, sizeof *a);
    return cudasim::atomic_ref<unsigned>(*a).fetch_sub(v);
}
template <class T> CUDASIM_UNCHECKED T cudasim_atomic_exch(T* a, T v) {
    cudasim::check::atomic_access(a, sizeof *a);
    return cudasim::atomic_ref<T>(*a).exchange(v);
}
inline int atomicExch(int* a, int v) { return cudasim_atomic_exch(a, v); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return cudasim_atomic_exch(a, v); }
inline float atomicExch(float* a, float v) { return cudasim_atomic_exch(a, v); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) { return cudasim_atomic_exch(a, v); }
template <class T> CUDASIM_UNCHECKED T cudasim_atomic_cas(T* a, T expected, T desired) {
    cudasim::check::atomic_access(a, sizeof *a);
    cudasim::atomic_ref<T>(*a).compare_exchange_strong(expected, desired);
    return expected;  // the old value, whether or not the swap happened
}
inline int atomicCAS(int* a, int c, int v) { return cudasim_atomic_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return cudasim_atomic_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
    return cudasim_atomic_cas(a, c, v);
}
template <class T, class F> CUDASIM_UNCHECKED T cudasim_atomic_update(T* a, F f) {
    cudasim::check::atomic_access(a, sizeof *a);
    cudasim::atomic_ref<T> ref(*a);
    T old = ref.load();
    while (!ref.compare_exchange_weak(old, f(old))) {}
    return old;
}
inline int atomicMax(int* a, int v) { return cudasim_atomic_update(a, [v](int o) { return o > v ? o : v; }); }
inline unsigned atomicMax(unsigned* a, unsigned v) {
    return cudasim_atomic_update(a, [v](unsigned o) { return o > v ? o : v; });
}
inline long long atomicMax(long long* a, long long v) {
    return cudasim_atomic_update(a, [v](long long o) { return o > v ? o : v; });
}
inline int atomicMin(int* a, int v) { return cudasim_atomic_update(a, [v](int o) { return o < v ? o : v; }); }
inline unsigned atomicMin(unsigned* a, unsigned v) {
    return cudasim_atomic_update(a, [v](unsigned o) { return o < v ? o : v; });
}
// atomicAnd/Or/Xor: one checked read-modify-write, op '&', '|' or '^', for every integer type CUDA offers them on.
template <class T> CUDASIM_UNCHECKED T cudasim_atomic_bits(T* a, T v, char op) {
    cudasim::check::atomic_access(a, sizeof *a);
    cudasim::atomic_ref<T> ref(*a);
    return op == '&' ? ref.fetch_and(v) : op == '|' ? ref.fetch_or(v) : ref.fetch_xor(v);
}
#define CUDASIM_ATOMIC_BITS(T)                                                                                     \
    inline T atomicAnd(T* a, T v) { return cudasim_atomic_bits(a, v, '&'); }                                      \
    inline T atomicOr(T* a, T v) { return cudasim_atomic_bits(a, v, '|'); }                                       \
    inline T atomicXor(T* a, T v) { return cudasim_atomic_bits(a, v, '^'); }
CUDASIM_ATOMIC_BITS(int)
CUDASIM_ATOMIC_BITS(unsigned)
CUDASIM_ATOMIC_BITS(unsigned long long)
#undef CUDASIM_ATOMIC_BITS

// ----------------------------------------------------------------------------
// Math and bit intrinsics: the fast-math versions are the exact ones here.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline void sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float tanhf_approx(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float2int_rn(float x) { return static_cast<int>(nearbyintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
// Cache-hinted loads and stores: plain memory accesses on the CPU.
template <class T> T __ldg(const T* p) { return *p; }
template <class T> T __ldcs(const T* p) { return *p; }
template <class T> T __ldcg(const T* p) { return *p; }
template <class T> T __ldca(const T* p) { return *p; }
template <class T> T __ldlu(const T* p) { return *p; }
template <class T> T __ldcv(const T* p) { return *p; }
template <class T> void __stcs(T* p, T v) { *p = v; }
template <class T> void __stcg(T* p, T v) { *p = v; }
template <class T> void __stwb(T* p, T v) { *p = v; }
template <class T> void __stwt(T* p, T v) { *p = v; }
// CUDA's integer/float min and max overloads, usable from device code without std::.
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) { using C = std::common_type_t<A, B>; return C(a) < C(b) ? C(a) : C(b); }
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) { using C = std::common_type_t<A, B>; return C(a) < C(b) ? C(b) : C(a); }
long long clock64();
inline void __nanosleep(unsigned) {}

// The C++ overloads <cuda_runtime.h> gives nvcc only: kernel attributes by function pointer.
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ----------------------------------------------------------------------------
// Features with no CPU version fail to compile, naming themselves, instead of giving a wrong answer.
// Inline PTX `asm` is caught by the rewrite step; grid groups by the shadow headers; dynamic
// parallelism, cudaLaunchCooperativeKernel, cudaLaunchKernel and texture/surface object creation
// abort at run time with a message (see the implementation).
#define CUDASIM_TEXTURE_FUNCTION(name) \
    template <class T = void, class... A> cudasim::unsupported_texture<T> name(A&&...) { return {}; }
CUDASIM_TEXTURE_FUNCTION(tex1Dfetch)
CUDASIM_TEXTURE_FUNCTION(tex1D)
CUDASIM_TEXTURE_FUNCTION(tex2D)
CUDASIM_TEXTURE_FUNCTION(tex3D)
CUDASIM_TEXTURE_FUNCTION(tex1DLod)
CUDASIM_TEXTURE_FUNCTION(tex2DLod)
CUDASIM_TEXTURE_FUNCTION(tex1DLayered)
CUDASIM_TEXTURE_FUNCTION(tex2DLayered)
CUDASIM_TEXTURE_FUNCTION(tex2Dgather)
CUDASIM_TEXTURE_FUNCTION(texCubemap)
CUDASIM_TEXTURE_FUNCTION(surf1Dread)
CUDASIM_TEXTURE_FUNCTION(surf1Dwrite)
CUDASIM_TEXTURE_FUNCTION(surf2Dread)
CUDASIM_TEXTURE_FUNCTION(surf2Dwrite)
CUDASIM_TEXTURE_FUNCTION(surf3Dread)
CUDASIM_TEXTURE_FUNCTION(surf3Dwrite)
#undef CUDASIM_TEXTURE_FUNCTION

// ----------------------------------------------------------------------------
// cuBLAS on the CPU: the subset gpt.cu uses, on OpenBLAS (`cblas_sgemm` in column-major order takes
// cuBLAS's arguments unchanged). Declarations come from <cublas_v2.h>; definitions are below.
// Supported: cublasCreate/Destroy/SetStream/GetStream/SetMathMode/GetMathMode/SetWorkspace,
// cublasSgemm, cublasSgemmStridedBatched, cublasGemmEx, cublasGemmStridedBatchedEx (fp32 and bf16
// matrices, fp32 compute), cublasGetStatusString/Name.

// ---- the wider runtime API, intrinsics and libraries, each in its own header
#include "cudasim_intrinsics.h"
#include "cudasim_runtime.h"
#include "cudasim_cublaslt.h"

#endif  // GPTCU_CUDASIM_H

// ============================================================================
// Implementation: compiled once (build/cpu/cudasim.o).
#if defined(CUDASIM_IMPLEMENTATION) && !defined(GPTCU_CUDASIM_IMPLEMENTED)
#define GPTCU_CUDASIM_IMPLEMENTED
#include <cblas.h>
#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>

namespace cudasim {

// The device we pretend to be: limits as on an sm_80/sm_90 part, so launches fail where a GPU's would.
constexpr int max_threads_per_block = 1024;
constexpr size_t default_shared_bytes = 48 * 1024;   // dynamic shared memory without opt-in
constexpr size_t max_shared_bytes_optin = 163 * 1024; // with cudaFuncSetAttribute(MaxDynamicSharedMemorySize) (A100)

void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "cudasim: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    std::fflush(stderr);
    std::abort();
}

static const char* env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v && *v ? v : fallback;
}

static Order parse_order() {
    std::string s = env_or("CUDASIM_ORDER", "forward");
    if (s == "forward") return Order::forward;
    if (s == "reverse") return Order::reverse;
    if (s == "random") return Order::random;
    fatal("CUDASIM_ORDER=%s: expected forward, reverse or random", s.c_str());
}
static std::atomic<Order> g_order{parse_order()};
void set_order(Order order) { g_order = order; }
Order get_order() { return g_order; }

// ----------------------------------------------------------------------------
// One OS thread that runs blocks. Its fibers' stacks come from one mapping, each stack with a guard
// page below it, so a kernel that overflows its stack faults instead of corrupting a neighbour.
struct Worker {
    std::vector<Thread> threads;
    boost::context::fiber scheduler;  // while a fiber runs: where it returns to
    Thread* current = nullptr;
    const LaunchConfig* config = nullptr;
    const std::function<void()>* body = nullptr;
    char* stacks = nullptr;
    size_t stack_bytes = 0;
    std::mt19937 rng{1234};
    size_t page = 0;                             // the guard page below each stack
    const std::vector<unsigned>* lane_order = nullptr;  // the block's order of lanes inside a warp
    unsigned lane_position[32] = {};             // lane -> its position in *lane_order
    unsigned block_threads = 0;                  // threads in the running block
    long long clock_start = 0, clock_real_start = 0;  // the running block's device clock at its start (ns), real time
    bool trapped = false;                        // a thread of the running block stopped at a trap
    unsigned long long progress = 0;             // counts what threads did other than spin (see spin_wait)
    unsigned group_arrived[32] = {}, group_phase[32] = {};  // group_barrier: arrivals and phase, per group
    std::vector<std::pair<void*, size_t>> static_shared;  // this OS thread's copies of __shared__ variables
    alignas(128) unsigned char shared[max_shared_bytes_optin];  // `extern __shared__`

    Worker() {
        size_t kb = std::strtoul(env_or("CUDASIM_STACK_KB",
#if defined(__SANITIZE_ADDRESS__)
                                        "512"
#else
                                        "64"
#endif
                                        ), nullptr, 10);
        page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        stack_bytes = (kb * 1024 + page - 1) / page * page + page;  // + the guard page
        size_t total = stack_bytes * max_threads_per_block;
        void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) fatal("cannot map %zu bytes of fiber stacks", total);
        stacks = static_cast<char*>(p);
        for (int i = 0; i < max_threads_per_block; i++) mprotect(stacks + i * stack_bytes, page, PROT_NONE);
        threads.resize(max_threads_per_block);
    }
    ~Worker() {
        threads.clear();  // the fibers first: their records live in the stacks
        munmap(stacks, stack_bytes * max_threads_per_block);
    }
};
thread_local Worker* this_worker = nullptr;

// A Boost.Context stack allocator that hands out one slot of the worker's mapping and frees nothing.
struct SlotStack {
    boost::context::stack_context slot;
    boost::context::stack_context allocate() { return slot; }
    void deallocate(boost::context::stack_context&) noexcept {}
};

Thread& current_thread() {
    if (!this_worker || !this_worker->current)
        fatal("a device-side intrinsic (__syncthreads, __shfl_sync, ...) was called outside a kernel");
    return *this_worker->current;
}

// AddressSanitizer must be told when execution moves to another stack, or it takes the fiber's
// frames for overflows of the OS thread's stack. The fibers switch with Boost's fcontext (a few
// instructions); these calls tell ASan about each switch (no-ops in normal builds).
#if defined(__SANITIZE_ADDRESS__)
struct AsanStacks {
    const void* scheduler_bottom = nullptr;  // the OS thread's own stack, learnt at the first switch
    size_t scheduler_size = 0;
    void* scheduler_fake = nullptr;
};
static thread_local AsanStacks asan_stacks;
static void asan_enter_fiber(const void* bottom, size_t size) {
    __sanitizer_start_switch_fiber(&asan_stacks.scheduler_fake, bottom, size);
}
static void asan_back_in_scheduler() { __sanitizer_finish_switch_fiber(asan_stacks.scheduler_fake, nullptr, nullptr); }
static void asan_fiber_started() {
    __sanitizer_finish_switch_fiber(nullptr, &asan_stacks.scheduler_bottom, &asan_stacks.scheduler_size);
}
static void asan_leave_fiber(void** fake) {
    __sanitizer_start_switch_fiber(fake, asan_stacks.scheduler_bottom, asan_stacks.scheduler_size);
}
static void asan_fiber_resumed(void* fake) {
    __sanitizer_finish_switch_fiber(fake, &asan_stacks.scheduler_bottom, &asan_stacks.scheduler_size);
}
#else
static void asan_enter_fiber(const void*, size_t) {}
static void asan_back_in_scheduler() {}
static void asan_fiber_started() {}
static void asan_leave_fiber(void**) {}
static void asan_fiber_resumed(void*) {}
#endif

void yield_to_scheduler() {
    Worker& w = *this_worker;
    void* fake = nullptr;
    bool checked = check::leave_kernel();  // the scheduler's own accesses are not the kernel's
    asan_leave_fiber(&fake);
    boost::context::fiber back = std::move(w.scheduler).resume();
    asan_fiber_resumed(fake);
    if (back) w.scheduler = std::move(back);  // empty: another lane switched here itself (wait_for_others)
    if (checked) check::enter_kernel();
}

void* dynamic_shared_memory() {
    static thread_local Worker* w = nullptr;  // pointer is fixed per OS thread: see Worker::shared
    if (!w) w = this_worker;
    if (!w) fatal("extern __shared__ memory used outside a kernel");
    return w->shared;
}

bool shared_declared(void* p, size_t bytes) {
    Worker* w = this_worker;
    if (!w) fatal("a __shared__ variable was declared outside a kernel");
    w->static_shared.emplace_back(p, bytes);
    std::memset(p, 0xff, bytes);  // first use on this OS thread: poison now; later blocks: in run_block
    return true;
}

unsigned __activemask_impl() {
    Worker& w = *this_worker;
    Thread& t = current_thread();
    unsigned warp_base = t.linear / 32 * 32, n = blockDim.x * blockDim.y * blockDim.z, mask = 0;
    for (unsigned lane = 0; lane < 32 && warp_base + lane < n; lane++)
        if (w.threads[warp_base + lane].wait != Wait::done) mask |= 1u << lane;
    return mask;
}

static void describe_thread(char* buf, size_t n, const Thread& t) {
    std::snprintf(buf, n, "(%u,%u,%u)", t.idx.x, t.idx.y, t.idx.z);
}

static const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::sync: return "__syncwarp";
        case WarpOp::shfl_idx: return "__shfl_sync";
        case WarpOp::shfl_up: return "__shfl_up_sync";
        case WarpOp::shfl_down: return "__shfl_down_sync";
        case WarpOp::shfl_xor: return "__shfl_xor_sync";
        case WarpOp::ballot: return "__ballot_sync";
        case WarpOp::any: return "__any_sync";
        case WarpOp::all: return "__all_sync";
        case WarpOp::match_any: return "__match_any_sync";
        case WarpOp::match_all: return "__match_all_sync";
        case WarpOp::coalesce: return "cooperative_groups::coalesced_threads";
        case WarpOp::wmma_load: return "nvcuda::wmma::load_matrix_sync";
        case WarpOp::wmma_store: return "nvcuda::wmma::store_matrix_sync";
        case WarpOp::wmma_mma: return "nvcuda::wmma::mma_sync";
    }
    return "?";
}

// ---- fibers are chained. A thread that has not started yet runs on the fiber of the lane
// before it in the warp's order, if that lane finished without waiting at a barrier or a collective:
// a kernel with neither costs one fiber per warp, not one per thread. A fiber returns to the scheduler
// only when its current thread waits (the fiber then belongs to that thread) or the warp has no thread
// left to start. The order in which threads run is the same as with one fiber per thread.

// The first lane after `t` in its warp's lane order whose state `wanted` accepts; nullptr if none.
template <class Wanted>
static Thread* next_lane(Worker& w, const Thread& t, Wanted wanted) {
    unsigned base = t.linear / 32 * 32;
    for (unsigned p = w.lane_position[t.linear % 32] + 1; p < 32; p++) {
        unsigned i = base + (*w.lane_order)[p];
        if (i < w.block_threads && wanted(w.threads[i].wait)) return &w.threads[i];
    }
    return nullptr;
}

// The running thread waits at a block barrier or a warp collective. If the lane after it in the pass was released
// (it waits inside wait_for_others or yield_to_scheduler), this thread switches to it directly instead of going
// back to the scheduler, whose loop would only resume that lane: one fiber switch per waiting thread, not two.
// The order is the scheduler's; the warp's last lane of the pass (or one before a lane that has not started: it
// needs a new fiber) returns to the scheduler, which completes collectives and releases barriers.
// Under AddressSanitizer every switch goes through the scheduler (its stack annotations assume so).
void wait_for_others() {
    Worker& w = *this_worker;
    Thread& me = *w.current;
    // the lane run_warp's loop comes to next (it skips lanes that wait or are done)
    Thread* next = next_lane(w, me, [](Wait s) { return s == Wait::run || s == Wait::not_started; });
#if defined(__SANITIZE_ADDRESS__)
    next = nullptr;
#endif
    if (!next || next->wait != Wait::run) return yield_to_scheduler();
    w.progress++;  // as switch_to counts a thread that did not spin
    bool checked = check::leave_kernel();  // as yield_to_scheduler: each lane turns checks back on as it resumes
    threadIdx = next->idx;
    w.current = next;
    // resume_with: `me`'s continuation is saved on the next lane's stack, and it gets an empty fiber, not `me`'s,
    // so it keeps the scheduler's continuation in w.scheduler.
    boost::context::fiber back = std::move(next->fiber).resume_with([&me](boost::context::fiber&& f) {
        me.fiber = std::move(f);
        return boost::context::fiber();
    });
    if (back) w.scheduler = std::move(back);  // resumed by the scheduler, not by another lane
    if (checked) check::enter_kernel();
}

// Switches to `fiber`, which runs thread `t` (and maybe the threads after it), until it yields or ends.
// Always inlined into the scheduler's loop: called out of line, it made every switch ~7 ns dearer (the
// barrier and shuffle kernels of dev/bench_cudasim 15-17% slower; measured 2026-11-29, load ~2). Boost's
// jump_fcontext returns with an indirect jump, not `ret`, so the CPU's return-address predictor is off after
// every switch, and each extra `ret` on the way back into the scheduler likely pays a misprediction.
__attribute__((always_inline)) inline static void switch_to(Worker& w, Thread& t, boost::context::fiber&& fiber) {
    threadIdx = t.idx;
    w.current = &t;
    asan_enter_fiber(w.stacks + t.stack_slot * w.stack_bytes + w.page, w.stack_bytes - w.page);
    boost::context::fiber back = std::move(fiber).resume();
    asan_back_in_scheduler();
    Thread& last = *w.current;  // the thread the fiber ran last
    if (last.wait != Wait::spin) w.progress++;
    if (last.wait == Wait::trapped) new boost::context::fiber(std::move(back));  // never resumed nor unwound
    else if (last.wait != Wait::done) last.fiber = std::move(back);
    w.current = nullptr;
}

static void resume(Worker& w, Thread& t) { switch_to(w, t, std::move(t.fiber)); }

// Starts thread `t` on a new fiber in its own stack slot.
static void start_chain(Worker& w, Thread& t) {
    boost::context::stack_context slot;
    slot.size = w.stack_bytes - w.page;
    slot.sp = w.stacks + (t.linear + 1) * w.stack_bytes;  // stacks grow down from the top of the slot
    t.stack_slot = t.linear;
    t.wait = Wait::run;
    boost::context::fiber f(std::allocator_arg, SlotStack{slot}, [&w](boost::context::fiber&& scheduler) {
        asan_fiber_started();
        w.scheduler = std::move(scheduler);
        for (;;) {
            Thread& cur = *w.current;
            (*w.body)();
            cur.wait = Wait::done;
            Thread* next = next_lane(w, cur, [](Wait s) { return s == Wait::not_started; });
            if (!next) break;
            next->wait = Wait::run;
            next->stack_slot = cur.stack_slot;
            threadIdx = next->idx;
            w.current = next;
        }
        asan_leave_fiber(nullptr);  // nullptr: this fiber's stack is finished
        return std::move(w.scheduler);
    });
    switch_to(w, t, std::move(f));
}

void spin_wait() {
    current_thread().wait = Wait::spin;
    yield_to_scheduler();
}
void note_progress() { this_worker->progress++; }
void group_barrier(unsigned first, unsigned size) {
    Worker& w = *this_worker;
    unsigned g = first / size % 32, phase = w.group_phase[g];
    w.progress++;
    if (++w.group_arrived[g] == std::min(size, w.block_threads - first)) {
        w.group_arrived[g] = 0;
        w.group_phase[g]++;
        return;
    }
    while (w.group_phase[g] == phase) spin_wait();
}

void trap_current_thread() {
    Worker& w = *this_worker;
    current_thread().wait = Wait::trapped;
    w.trapped = true;
    for (;;) yield_to_scheduler();  // the scheduler never resumes a trapped thread
}

// ---- nvcuda::wmma (dev/shadow/mma.h). A wmma call needs all 32 lanes of a full warp, with the same
// arguments, and the GPU's alignment (a 32-byte aligned pointer, ldm a multiple of 16 bytes). It is not a warp
// sync for the race check (no check::on_warp_sync): the GPU's wmma loads and stores are plain loads and stores.
static void perform_wmma(Worker& w, unsigned warp_base, unsigned n, unsigned group, Thread* const lanes[32]) {
    const Thread& first = *lanes[__builtin_ctz(group)];
    const char* op = op_name(first.op);
    if (group != 0xffffffffu)
        fatal("kernel '%s' block (%u,%u,%u): %s in warp %u, which has %u threads (the block has %u): wmma needs all "
              "32 lanes of a full warp", w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, op, warp_base / 32,
              static_cast<unsigned>(__builtin_popcount(group)), n);
    char buf[48];  // the thread a message names, described only when there is a message (snprintf per lane is slow)
    auto who = [&](const Thread& t) { return describe_thread(buf, sizeof buf, t), buf; };
    if (first.op == WarpOp::wmma_mma) {
        const WmmaMma* args[32];
        for (unsigned l = 0; l < 32; l++) {
            args[l] = reinterpret_cast<const WmmaMma*>(lanes[l]->value);
            if (args[l]->compute != args[0]->compute)
                fatal("kernel '%s' block (%u,%u,%u): thread %s calls %s with other fragment types than lane 0",
                      w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, who(*lanes[l]), op);
        }
        args[0]->compute(args);
    } else {
        for (unsigned l = 1; l < 32; l++) {
            const Thread& t = *lanes[l];
            if (t.value != first.value || t.arg != first.arg || t.width != first.width)
                fatal("kernel '%s' block (%u,%u,%u): thread %s calls %s(p = %p, ldm = %d, %s) but lane 0 calls it with "
                      "(p = %p, ldm = %d, %s): all lanes of the warp must pass the same arguments", w.config->name,
                      blockIdx.x, blockIdx.y, blockIdx.z, who(t), op, reinterpret_cast<void*>(t.value), t.arg,
                      t.width % 2 ? "column-major" : "row-major", reinterpret_cast<void*>(first.value), first.arg,
                      first.width % 2 ? "column-major" : "row-major");
        }
        int bytes = first.width / 2;
        if (first.value % 32 != 0 || (static_cast<long>(first.arg) * bytes) % 16 != 0)
            fatal("kernel '%s' block (%u,%u,%u): thread %s calls %s(p = %p, ldm = %d): the pointer must be 32-byte "
                  "aligned and ldm a multiple of 16 bytes (%d elements of %d bytes), or a GPU faults or misreads",
                  w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, who(first), op,
                  reinterpret_cast<void*>(first.value), first.arg, 16 / bytes, bytes);
    }
    for (unsigned l = 0; l < 32; l++) {
        lanes[l]->result = 0;
        lanes[l]->wait = Wait::run;
    }
}

// Performs one warp collective for the lanes in `group` (indices into the block's threads), all of
// which are waiting at the same operation with the same mask.
static void perform_warp_op(Worker& w, unsigned warp_base, unsigned n, unsigned group) {
    Thread* lanes[32] = {};
    for (unsigned l = 0; l < 32; l++)
        if (group >> l & 1u) lanes[l] = &w.threads[warp_base + l];
    Thread& first = *lanes[__builtin_ctz(group)];
    if (first.op >= WarpOp::wmma_load) return perform_wmma(w, warp_base, n, group, lanes);
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; l++)
        if (lanes[l] && lanes[l]->value) ballot |= 1u << l;  // ballot/any/all bring their predicate as the value
    for (unsigned l = 0; l < 32; l++) {
        Thread* t = lanes[l];
        if (!t) continue;
        switch (first.op) {
            case WarpOp::sync: t->result = 0; break;
            case WarpOp::ballot: t->result = ballot; break;
            case WarpOp::any: t->result = ballot != 0; break;
            case WarpOp::all: t->result = ballot == group; break;
            case WarpOp::match_any: case WarpOp::match_all: {  // the lanes whose value equals this lane's
                unsigned same = 0;
                for (unsigned m = 0; m < 32; m++)
                    if (lanes[m] && lanes[m]->value == t->value) same |= 1u << m;
                t->result = t->op == WarpOp::match_any ? same : (same == group ? group : 0);
                break;
            }
            case WarpOp::coalesce: t->result = group; break;
            default: {
                int width = t->width, section = static_cast<int>(l) / width * width, src = static_cast<int>(l);
                if (t->op == WarpOp::shfl_idx) src = section + (t->arg % width + width) % width;
                if (t->op == WarpOp::shfl_up) src = static_cast<int>(l) - t->arg < section ? l : l - t->arg;
                if (t->op == WarpOp::shfl_down) src = static_cast<int>(l) + t->arg >= section + width ? l : l + t->arg;
                if (t->op == WarpOp::shfl_xor)
                    src = (static_cast<int>(l) ^ t->arg) >= section + width ? l : (l ^ t->arg);
                // A lane past the end of a partial warp does not exist: undefined on a GPU, poison (NaN, -1) here.
                if (warp_base + src >= n) { t->result = ~0ull; break; }
                if (!lanes[src]) {
                    char who[48];
                    describe_thread(who, sizeof who, *t);
                    fatal(
                        "kernel '%s' block (%u,%u,%u): thread %s reads lane %d in %s, but lane %d is not in the mask "
                        "0x%08x",
                        w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, who, src, op_name(t->op), src, t->mask);
                }
                t->result = lanes[src]->value;
            }
        }
    }
    for (unsigned l = 0; l < 32; l++)
        if (lanes[l]) lanes[l]->wait = Wait::run;
    check::on_warp_sync(warp_base / 32);
}

// Runs the lanes of one warp until none can go on inside the warp: each is done, waiting at a block
// barrier, or waiting at a warp collective that cannot complete yet.
static void run_warp(Worker& w, unsigned warp, unsigned n, const std::vector<unsigned>& lane_order) {
    unsigned base = warp * 32;
    for (;;) {
        for (unsigned lane : lane_order) {
            if (base + lane >= n) continue;
            Thread& t = w.threads[base + lane];
            if (t.wait == Wait::not_started) start_chain(w, t);
            else if (t.wait == Wait::run) resume(w, t);
            if (w.trapped) return;
        }
        unsigned waiting = 0, exists = 0;
        for (unsigned l = 0; l < 32 && base + l < n; l++) {
            exists |= 1u << l;
            if (w.threads[base + l].wait == Wait::warp_collective) waiting |= 1u << l;
        }
        if (!waiting) return;
        bool progressed = false;
        for (unsigned l = 0; l < 32; l++) {
            if (!(waiting >> l & 1u)) continue;
            Thread& t = w.threads[base + l];
            if (t.op == WarpOp::coalesce) continue;  // formed below, once nothing else can complete
            unsigned group = t.mask & exists;
            bool complete = (group >> l & 1u);
            for (unsigned m = 0; m < 32 && complete; m++) {
                if (!(group >> m & 1u)) continue;
                const Thread& o = w.threads[base + m];
                complete = o.wait == Wait::warp_collective && o.mask == t.mask && o.op == t.op;
            }
            if (complete) {
                perform_warp_op(w, base, n, group);
                progressed = true;
                break;
            }
        }
        if (progressed) continue;
        // ---- cg::coalesced_threads() groups the lanes waiting at the same call (the lanes a GPU
        // would have converged there), once no other collective of the warp can complete.
        for (unsigned l = 0; l < 32 && !progressed; l++) {
            const Thread& t = w.threads[base + l];
            if (!(waiting >> l & 1u) || t.op != WarpOp::coalesce) continue;
            unsigned group = 0;
            for (unsigned m = l; m < 32; m++)
                if ((waiting >> m & 1u) && w.threads[base + m].op == WarpOp::coalesce &&
                    w.threads[base + m].value == t.value)
                    group |= 1u << m;
            perform_warp_op(w, base, n, group);
            progressed = true;
        }
        if (progressed) continue;
        for (unsigned l = 0; l < 32 && base + l < n; l++)  // a spinning lane may still come: the block decides
            if (w.threads[base + l].wait == Wait::spin) return;
        // Nothing can complete: name the first stuck collective and a lane that is missing from it.
        Thread& t = w.threads[base + __builtin_ctz(waiting)];
        unsigned group = t.mask & exists;
        for (unsigned m = 0; m < 32; m++) {
            if (!(group >> m & 1u)) continue;
            const Thread& o = w.threads[base + m];
            if (o.wait == Wait::warp_collective && o.mask == t.mask && o.op == t.op) continue;
            char a[48], b[48];
            describe_thread(a, sizeof a, t);
            describe_thread(b, sizeof b, o);
            const char* where = o.wait == Wait::done            ? "has returned"
                                : o.wait == Wait::block_barrier ? "waits at __syncthreads"
                                                                : "waits at a different warp collective";
            fatal(
                "kernel '%s' block (%u,%u,%u): thread %s waits in %s (mask 0x%08x), but thread %s (lane %u) %s — "
                "a warp collective that not all lanes of its mask reach never completes on a GPU (deadlock or "
                "undefined result)",
                w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, a, op_name(t.op), t.mask, b, m, where);
        }
        fatal("kernel '%s': warp collective cannot complete", w.config->name);
    }
}

static std::vector<unsigned> make_order(Worker& w, unsigned count) {
    std::vector<unsigned> order(count);
    std::iota(order.begin(), order.end(), 0u);
    Order o = g_order;
    if (o == Order::reverse) std::reverse(order.begin(), order.end());
    if (o == Order::random) std::shuffle(order.begin(), order.end(), w.rng);
    return order;
}

long long clock64_impl();  // real time, ns (the steady clock)

static void run_block(Worker& w, const LaunchConfig& config, unsigned long long linear_block) {
    const dim3 g = config.grid, b = config.block;
    blockIdx = uint3{static_cast<unsigned>(linear_block % g.x), static_cast<unsigned>(linear_block / g.x % g.y),
                     static_cast<unsigned>(linear_block / g.x / g.y)};
    blockDim = b;
    gridDim = g;
    const unsigned n = b.x * b.y * b.z, nwarps = (n + 31) / 32;
    // Shared memory starts as NaN bytes in every block, so reading an element before it is written
    // (a missing barrier, an off-by-one) shows up as NaN instead of a stale value from the last block.
    std::memset(w.shared, 0xff, config.shared_bytes);
    for (auto [p, bytes] : w.static_shared) std::memset(p, 0xff, bytes);
    // Fibers left by the previous block (only a trapped block leaves any) are released before any new
    // one is built: a fiber's record lives in a stack slot a new fiber may be built in.
    if (w.trapped)
        for (unsigned i = 0; i < w.block_threads; i++) w.threads[i].fiber = boost::context::fiber();
    check::on_block_start(n);
    uint3 idx{0, 0, 0};  // counted up, not divided out of i: two divisions per thread were ~15% of a small kernel
    for (unsigned i = 0; i < n; i++) {
        Thread& t = w.threads[i];
        t.idx = idx;
        t.linear = i;
        t.wait = Wait::not_started;  // each starts on a fiber when the scheduler (or the lane before it) gets to it
        if (++idx.x == b.x) {
            idx.x = 0;
            if (++idx.y == b.y) idx.y = 0, idx.z++;
        }
    }
    std::vector<unsigned> warp_order = make_order(w, nwarps), lane_order = make_order(w, 32);
    w.lane_order = &lane_order;
    for (unsigned p = 0; p < 32; p++) w.lane_position[lane_order[p]] = p;
    // The block's device clock (clock64) runs n times as fast as real time: its n threads take turns here, where a
    // GPU runs them side by side, so a thread that spins for C cycles (a sample's `while (clock() - start < C)`)
    // costs the block C cycles, not n·C. It goes on from where the last block's clock on this OS thread stopped.
    long long now = clock64_impl();
    w.clock_start = std::max(now, w.clock_start + (now - w.clock_real_start) * w.block_threads);
    w.clock_real_start = now;
    w.block_threads = n;
    w.trapped = false;
    std::fill(std::begin(w.group_arrived), std::end(w.group_arrived), 0u);
    unsigned long long progress_seen = ~0ull;
    for (;;) {
        for (unsigned warp : warp_order) {
            run_warp(w, warp, n, lane_order);
            if (w.trapped) return;
        }
        // One pass over the block's threads: which have returned, which spin, and what the barrier collects.
        unsigned done = 0, count = 0, spinning = 0, first_done = n, first_waiting = n;
        bool all_same = true;
        BarrierKind kind = BarrierKind::sync;
        for (unsigned i = 0; i < n; i++) {
            const Thread& t = w.threads[i];
            if (t.wait == Wait::done) { done++; first_done = std::min(first_done, i); continue; }
            if (t.wait == Wait::spin) { spinning++; continue; }
            if (first_waiting == n) { first_waiting = i; kind = t.barrier; }
            all_same = all_same && t.barrier == kind;
            count += t.predicate != 0;
        }
        // ---- spinning threads look again, as long as some thread did something since they last looked
        if (spinning) {
            if (w.progress == progress_seen)
                fatal("kernel '%s' block (%u,%u,%u): threads wait for arrivals that never come (cuda::barrier, a "
                      "pipeline, or a cooperative-groups tile of more than 32 threads that not all its threads reach) "
                      "- a deadlock on a GPU", config.name, blockIdx.x, blockIdx.y, blockIdx.z);
            progress_seen = w.progress;
            for (unsigned i = 0; i < n; i++)
                if (w.threads[i].wait == Wait::spin) w.threads[i].wait = Wait::run;
            continue;
        }
        if (done == n) return;
        if (done > 0) {
            char a[48], c[48];
            describe_thread(a, sizeof a, w.threads[first_waiting]);
            describe_thread(c, sizeof c, w.threads[first_done]);
            fatal(
                "kernel '%s' block (%u,%u,%u): thread %s waits at __syncthreads, but %u of the block's %u threads "
                "(thread %s the first) returned without reaching it — a divergent barrier hangs or misbehaves on a GPU",
                config.name, blockIdx.x, blockIdx.y, blockIdx.z, a, done, n, c);
        }
        if (!all_same)
            fatal(
                "kernel '%s' block (%u,%u,%u): threads wait at different kinds of block barrier "
                "(__syncthreads vs __syncthreads_count/and/or)",
                config.name, blockIdx.x, blockIdx.y, blockIdx.z);
        unsigned long long result = kind == BarrierKind::count ? count : kind == BarrierKind::and_ ? count == n :
                                    kind == BarrierKind::or_ ? count > 0 : 0;
        for (unsigned i = 0; i < n; i++) {
            w.threads[i].result = result;
            w.threads[i].wait = Wait::run;
        }
        check::on_barrier();
    }
}

cudaError_t sticky_error();  // cudaErrorAssert etc. after a device assert; cudaSuccess before
bool release_graph_memory(void* p);  // a live graph allocation at p is freed (false: p is not one)
bool graph_memory_live(void* p);     // p is a graph allocation, allocated and not yet freed
bool capture_graph_malloc(void** p, size_t bytes, cudaStream_t stream);  // cudaMallocAsync into a captured graph

// ----------------------------------------------------------------------------
// The pool of OS threads. The launching thread works too; the others wait for the next grid.
struct Pool {
    std::mutex mutex;
    std::condition_variable start, finished;
    std::vector<std::thread> threads;
    unsigned long long generation = 0;
    int running = 0;
    bool stopping = false;
    const LaunchConfig* config = nullptr;
    const std::function<void()>* body = nullptr;
    std::atomic<unsigned long long> next_block{0};
    unsigned long long blocks = 0;
    int helpers = 0;  // how many pool threads take part in the current grid

    static Worker& worker() {
        static thread_local Worker w;
        return w;
    }
    void work() {
        Worker& w = worker();
        w.config = config;
        w.body = body;
        this_worker = &w;
        for (unsigned long long b; (b = next_block.fetch_add(1)) < blocks && !sticky_error();) run_block(w, *config, b);
        this_worker = nullptr;
    }
    void loop(int id) {
        unsigned long long seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex);
            start.wait(lock, [&] { return stopping || (generation != seen && id < helpers); });
            if (stopping) return;
            seen = generation;
            lock.unlock();
            work();
            lock.lock();
            if (--running == 0) finished.notify_all();
        }
    }
    void run(const LaunchConfig& c, const std::function<void()>& f, unsigned long long nblocks) {
        static const int nthreads = [] {
            int n = std::atoi(env_or("CUDASIM_THREADS", "0"));
            return n > 0 ? n : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
        }();
        config = &c;
        body = &f;
        blocks = nblocks;
        next_block = 0;
        int want = static_cast<int>(std::min<unsigned long long>(nthreads, nblocks)) - 1;
        {
            std::lock_guard<std::mutex> lock(mutex);
            while (static_cast<int>(threads.size()) < want) {
                int id = static_cast<int>(threads.size());
                threads.emplace_back([this, id] { loop(id); });
            }
            helpers = want;
            running = want;
            generation++;
        }
        start.notify_all();
        work();
        std::unique_lock<std::mutex> lock(mutex);
        finished.wait(lock, [&] { return running == 0; });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mutex);
            stopping = true;
        }
        start.notify_all();
        for (auto& t : threads) t.join();
    }
};
static Pool& pool() {
    static Pool p;
    return p;
}

// ----------------------------------------------------------------------------
// Runtime state: the last error, allocations, per-kernel attributes.
static thread_local cudaError_t g_last_error = cudaSuccess;
static std::mutex g_mutex;
static std::map<uintptr_t, size_t> g_device_allocations;  // start -> bytes
static std::map<const void*, int> g_max_dynamic_shared;    // kernel -> opt-in bytes
static std::mutex g_launch_mutex;                         // one grid at a time, as on one stream

static cudaError_t fail(cudaError_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "cudasim: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, " (%s)\n", cudaGetErrorName(code));
    va_end(ap);
    g_last_error = code;
    return code;
}

void run_grid(const LaunchConfig& c, const std::function<void()>& body) {
    if (this_worker)
        fatal("kernel '%s' launched from inside kernel '%s': dynamic parallelism is not supported on the CPU", c.name,
              this_worker->config->name);
    if (cudaError_t e = sticky_error()) { g_last_error = e; return; }  // after a trap nothing runs
    const dim3 g = c.grid, b = c.block;
    unsigned long long threads = 1ull * b.x * b.y * b.z, blocks = 1ull * g.x * g.y * g.z;
    // An empty or oversized launch is cudaErrorInvalidValue: what CUDA 13.0 on an H200 returned when
    // test_cudasim ran on the GPU (make gpu-check), not the cudaErrorInvalidConfiguration one might expect.
    if (blocks == 0 || threads == 0) {
        fail(cudaErrorInvalidValue, "launch of '%s': grid (%u,%u,%u) x block (%u,%u,%u) is empty",
             c.name, g.x, g.y, g.z, b.x, b.y, b.z);
        return;
    }
    if (threads > max_threads_per_block || b.x > 1024 || b.y > 1024 || b.z > 64 || g.y > 65535 || g.z > 65535) {
        fail(cudaErrorInvalidValue, "launch of '%s': block (%u,%u,%u) has %llu threads (limit 1024; z <= 64) "
             "or grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", c.name, b.x, b.y, b.z, threads, g.x, g.y, g.z);
        return;
    }
    // Without the opt-in, static + dynamic shared memory fit in 48 KB; with it, the dynamic part fits
    // in the attribute's value and the sum in 227 KB. (Static bytes are known once the kernel has run.)
    size_t limit = default_shared_bytes;
    bool opted_in = false;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = g_max_dynamic_shared.find(c.function);
        if (it != g_max_dynamic_shared.end()) { limit = static_cast<size_t>(it->second); opted_in = true; }
        if (!c.function)  // a launch by call (launch_call) does not know its kernel's address
            for (auto [kernel, bytes] : g_max_dynamic_shared) {
                limit = std::max(limit, static_cast<size_t>(bytes));
                opted_in = true;
            }
    }
    size_t static_bytes = check::static_shared_bytes(c.function);
    if (c.shared_bytes > limit ||
        static_bytes + c.shared_bytes > (opted_in ? max_shared_bytes_optin : default_shared_bytes)) {
        fail(cudaErrorInvalidValue,
             "launch of '%s': %zu bytes of dynamic shared memory + %zu static, but the limit is %zu "
             "dynamic and %zu in all (raise it up to %zu with cudaFuncSetAttribute(kernel, "
             "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))",
             c.name, c.shared_bytes, static_bytes, limit, opted_in ? max_shared_bytes_optin : default_shared_bytes,
             max_shared_bytes_optin);
        return;
    }
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    check::on_launch(c);  // under the lock: the checks' caches are per launch
    pool().run(c, body, blocks);
}

long long clock64_impl() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

static bool find_allocation(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto a = reinterpret_cast<uintptr_t>(p);
    auto it = g_device_allocations.upper_bound(a);
    if (it == g_device_allocations.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

static size_t physical_memory() {
    return static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace cudasim

unsigned __activemask() { return cudasim::__activemask_impl(); }

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer calls this when it finds a bad access: say which CUDA thread made it.
extern "C" void __asan_on_error() {
    cudasim::Worker* w = cudasim::this_worker;
    if (w && w->current && w->config)
        std::fprintf(stderr, "cudasim: the access below was made by kernel '%s', block (%u,%u,%u), thread (%u,%u,%u)\n",
                     w->config->name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
}
#endif
// cycles of the virtual device's 1410 MHz clock (cudaDevAttrClockRate): in a block, its own clock (run_block)
long long clock64() {
    const cudasim::Worker* w = cudasim::this_worker;
    long long ns = cudasim::clock64_impl();
    if (w && w->current) ns = w->clock_start + (ns - w->clock_real_start) * w->block_threads;
    return ns * 141 / 100;
}

// ----------------------------------------------------------------------------
// CUDA runtime API (declared by <cuda_runtime_api.h>).
using cudasim::fail;

cudaError_t cudaGetLastError() {
    if (cudaError_t e = cudasim::sticky_error()) return e;  // a trap's error does not clear
    cudaError_t e = cudasim::g_last_error;
    cudasim::g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() { return cudasim::sticky_error() ? cudasim::sticky_error() : cudasim::g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define CASE(x) case x: return #x;
        CASE(cudaSuccess) CASE(cudaErrorInvalidValue) CASE(cudaErrorMemoryAllocation) CASE(cudaErrorInitializationError)
        CASE(cudaErrorInvalidConfiguration) CASE(cudaErrorInvalidSymbol) CASE(cudaErrorInvalidDevicePointer)
        CASE(cudaErrorInvalidMemcpyDirection) CASE(cudaErrorNoDevice) CASE(cudaErrorInvalidDevice)
        CASE(cudaErrorInvalidResourceHandle) CASE(cudaErrorNotReady) CASE(cudaErrorIllegalAddress)
        CASE(cudaErrorLaunchOutOfResources) CASE(cudaErrorLaunchFailure) CASE(cudaErrorNotSupported)
        CASE(cudaErrorInvalidDeviceFunction)
        CASE(cudaErrorAssert) CASE(cudaErrorUnsupportedLimit) CASE(cudaErrorHostMemoryAlreadyRegistered)
        CASE(cudaErrorHostMemoryNotRegistered) CASE(cudaErrorStreamCaptureUnsupported) CASE(cudaErrorIllegalState)
        CASE(cudaErrorInvalidPitchValue) CASE(cudaErrorIllegalInstruction)
#undef CASE
        default: return "cudaErrorUnknown";
    }
}
const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorNotSupported: return "operation not supported";
        case cudaErrorAssert: return "device-side assert triggered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
        case cudaErrorUnsupportedLimit: return "limit is not supported on this architecture";
        default: return "unknown error";
    }
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    void* q = nullptr;  // exact size, so an address sanitizer sees the first byte past the end
    if (posix_memalign(&q, 256, bytes) != 0)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes failed", bytes);
#ifdef MADV_HUGEPAGE
    if (bytes >= (4u << 20)) {  // 2 MB pages for the whole pages inside a large allocation:
        // one thread runs its loop to the end before the next starts, so a grid-stride loop (alignedTypes: 16,384
        // threads, 1-byte elements) touches a new 4 KB page at every access (that sample: 89 s -> 72 s)
        const uintptr_t page = 4096, begin = (reinterpret_cast<uintptr_t>(q) + page - 1) & ~(page - 1),
                        end = (reinterpret_cast<uintptr_t>(q) + bytes) & ~(page - 1);
        madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: its failure changes nothing
    }
#endif
    std::memset(q, 0xff, bytes);  // as on a GPU, new memory holds no useful values: NaN as floats, -1 as ints
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    cudasim::g_device_allocations[reinterpret_cast<uintptr_t>(q)] = bytes;
    *p = q;
    return cudaSuccess;
}
cudaError_t cudaMallocManaged(void** p, size_t bytes, unsigned) { return cudaMalloc(p, bytes); }
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream) {
    if (cudasim::capture_graph_malloc(p, bytes, stream)) return cudaSuccess;  // an allocation node of the graph
    return cudaMalloc(p, bytes);
}
cudaError_t cudaFree(void* p) {
    if (!p) return cudaSuccess;
    if (cudasim::release_graph_memory(p)) return cudaSuccess;  // graph memory is freed, not given back
    {
        std::lock_guard<std::mutex> lock(cudasim::g_mutex);
        auto it = cudasim::g_device_allocations.find(reinterpret_cast<uintptr_t>(p));
        if (it == cudasim::g_device_allocations.end()) goto invalid;
        cudasim::g_device_allocations.erase(it);
    }
    std::free(p);
    return cudaSuccess;
invalid:
    return fail(cudaErrorInvalidValue, "cudaFree(%p): not the start of a cudaMalloc allocation", p);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream) {
    // freed in a captured stream: a graph allocation is freed when the graph runs; other memory must
    // outlive every launch of the graph, and is kept
    if (cudasim::capture_node(stream, "cudaFreeAsync", [p] { return cudasim::BoundLaunch([p] {
            cudasim::release_graph_memory(p);
        }); }))
        return cudaSuccess;
    return cudaFree(p);
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
    *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (*p) cudasim::check::on_malloc_host(*p, bytes, true);  // kernels may read pinned memory, as on a GPU
    return *p || bytes == 0 ? cudaSuccess
                            : fail(cudaErrorMemoryAllocation, "cudaMallocHost of %zu bytes failed", bytes);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) { return cudaMallocHost(p, bytes); }
cudaError_t cudaFreeHost(void* p) {
    if (p) cudasim::check::on_malloc_host(p, 0, false);
    std::free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (cudaError_t e = cudasim::sticky_error()) return e;
    if (bytes == 0) return cudaSuccess;
    bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
        return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: kind %d is not a cudaMemcpyKind",
                    static_cast<int>(kind));
    if (dst_device && !cudasim::find_allocation(dst, bytes))
        return fail(cudaErrorInvalidValue,
                    "cudaMemcpy: destination %p + %zu bytes is not inside one cudaMalloc allocation", dst, bytes);
    if (src_device && !cudasim::find_allocation(src, bytes))
        return fail(cudaErrorInvalidValue, "cudaMemcpy: source %p + %zu bytes is not inside one cudaMalloc allocation",
                    src, bytes);
    std::memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    if (cudasim::capture_node(stream, "cudaMemcpyAsync", [&] {  // a node of the graph being captured
            return cudasim::BoundLaunch([=] { cudaMemcpy(dst, src, bytes, kind); });
        }))
        return cudaSuccess;
    return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
    if (bytes && !cudasim::find_allocation(p, bytes))
        return fail(cudaErrorInvalidValue, "cudaMemset: %p + %zu bytes is not inside one cudaMalloc allocation", p,
                    bytes);
    std::memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
    if (cudasim::capture_node(stream, "cudaMemsetAsync", [&] {
            return cudasim::BoundLaunch([=] { cudaMemset(p, value, bytes); });
        }))
        return cudaSuccess;
    return cudaMemset(p, value, bytes);
}
cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t bytes, size_t offset, cudaMemcpyKind) {
    std::memcpy(static_cast<char*>(const_cast<void*>(symbol)) + offset, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyFromSymbol(void* dst, const void* symbol, size_t bytes, size_t offset, cudaMemcpyKind) {
    std::memcpy(dst, static_cast<const char*>(symbol) + offset, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = *total_bytes = cudasim::physical_memory();
    return cudaSuccess;
}

// Declared by the CUDA headers, but with no CPU version: abort naming the feature, never a wrong answer.
cudaError_t cudaLaunchCooperativeKernel(const void*, dim3, dim3, void**, size_t, cudaStream_t) {
    cudasim::fatal("cudaLaunchCooperativeKernel: cooperative launches (grid-wide synchronisation) are not supported on "
                   "the CPU, whose blocks do not all run at once; split the kernel into two launches");
}
cudaChannelFormatDesc cudaCreateChannelDesc(int x, int y, int z, int w, cudaChannelFormatKind f) {
    return {x, y, z, w, f};
}
cudaError_t cudaCreateTextureObject(cudaTextureObject_t*, const cudaResourceDesc*, const cudaTextureDesc*,
                                    const cudaResourceViewDesc*) {
    cudasim::fatal(
        "cudaCreateTextureObject: texture objects are not supported on the CPU; read the array with plain loads");
}
cudaError_t cudaCreateSurfaceObject(cudaSurfaceObject_t*, const cudaResourceDesc*) {
    cudasim::fatal(
        "cudaCreateSurfaceObject: surface objects are not supported on the CPU; write the array with plain stores");
}

cudaError_t cudaDeviceSynchronize() { return cudasim::sticky_error(); }  // every launch and copy is synchronous
cudaError_t cudaDeviceReset() { return cudaSuccess; }
cudaError_t cudaSetDevice(int device) {
    return device == 0
               ? cudaSuccess
               : fail(cudaErrorInvalidDevice, "cudaSetDevice(%d): the CPU is device 0 and the only one", device);
}
cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
// cudaGetDeviceProperties and cudaDeviceGetAttribute: dev/cudasim_runtime.h (the virtual device).
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;  // carve-out hints: nothing to do
    if (value < 0 || static_cast<size_t>(value) > cudasim::max_shared_bytes_optin)
        return fail(cudaErrorInvalidValue,
                    "cudaFuncSetAttribute: %d bytes of dynamic shared memory (the device allows %zu)", value,
                    cudasim::max_shared_bytes_optin);
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    cudasim::g_max_dynamic_shared[func] = value;
    return cudaSuccess;
}

// Streams and events: every operation is synchronous, so a stream is only a handle and an event a time.
struct CUstream_st {
    std::map<int, cudaLaunchAttributeValue> attributes;  // cudaStreamSetAttribute's, read back (dev/cudasim_runtime.h)
};
struct CUevent_st { double ms; };
cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = new CUstream_st{}; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudasim::sticky_error(); }
namespace cudasim {  // stream capture across streams (dev/cudasim_runtime.h)
bool capture_event_record(cudaEvent_t e, cudaStream_t stream);
bool capture_stream_wait(cudaStream_t stream, cudaEvent_t e);
}  // namespace cudasim
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    cudasim::capture_stream_wait(s, e);
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st{0.0}; return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!cudasim::capture_event_record(e, s)) e->ms = cudasim::clock64_impl() * 1e-6;
    return cudaSuccess;
}
cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t s, unsigned) { return cudaEventRecord(e, s); }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudasim::sticky_error(); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    *ms = static_cast<float>(end->ms - start->ms);
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// cuBLAS on OpenBLAS.
struct cublasContext {
    cudaStream_t stream = nullptr;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) { *h = new cublasContext{}; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream_v2(cublasHandle_t h, cudaStream_t* s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    *s = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;  // TF32 and reduced-precision modes compute in full fp32 here
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t* mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    *mode = h->math;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void*, size_t) {
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
const char* cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}
const char* cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_INVALID_VALUE: return "an unsupported value or parameter was passed to the function";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        default: return "an internal operation failed";
    }
}

namespace cudasim {
// cuBLAS validates its arguments before it computes; the same checks, with a message saying which.
static cublasStatus_t check_gemm(const char* fn, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                 int n, int k, int lda, int ldb, int ldc, long long batch) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    auto bad = [&](const char* what) {
        std::fprintf(stderr, "cudasim: %s: %s (m=%d n=%d k=%d lda=%d ldb=%d ldc=%d) (CUBLAS_STATUS_INVALID_VALUE)\n",
                     fn, what, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    };
    if (ta > CUBLAS_OP_C || tb > CUBLAS_OP_C) return bad("transa/transb is not CUBLAS_OP_N/T/C");
    if (m < 0 || n < 0 || k < 0 || batch < 0) return bad("a negative size");
    if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k)) return bad("lda is smaller than the rows of op(A)'s storage");
    if (ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) return bad("ldb is smaller than the rows of op(B)'s storage");
    if (ldc < std::max(1, m)) return bad("ldc < m");
    return CUBLAS_STATUS_SUCCESS;
}

static CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) { return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

// C = alpha·op(A)·op(B) + beta·C in column-major order, as cuBLAS defines it. With beta == 0, C is
// only written, never read (cuBLAS's rule; it matters when C holds NaN).
static void sgemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc) {
    if (m == 0 || n == 0) return;
    if (beta == 0.0f)
        for (int j = 0; j < n; j++)
            std::fill(C + static_cast<size_t>(j) * ldc, C + static_cast<size_t>(j) * ldc + m, 0.0f);
    if (k == 0 || alpha == 0.0f) {
        if (beta != 0.0f && beta != 1.0f)
            for (int j = 0; j < n; j++) for (int i = 0; i < m; i++) C[static_cast<size_t>(j) * ldc + i] *= beta;
        return;
    }
    cblas_sgemm(CblasColMajor, to_cblas(ta), to_cblas(tb), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// A matrix of any supported cudaDataType, as fp32 (bf16 widened exactly).
static std::vector<float> widen(const void* p, cudaDataType t, size_t count) {
    std::vector<float> out(count);
    if (t == CUDA_R_32F) std::memcpy(out.data(), p, count * 4);
    else if (t == CUDA_R_16BF)  // the model's bf16 matmuls widen a 50304-row wte every call: over the cores
#pragma omp parallel for schedule(static) if (count > (1 << 16))
        for (size_t i = 0; i < count; i++) out[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    else
#pragma omp parallel for schedule(static) if (count > (1 << 16))
        for (size_t i = 0; i < count; i++) out[i] = __half2float(static_cast<const __half*>(p)[i]);
    return out;
}
static size_t storage(int rows_of_op, int cols_of_op, cublasOperation_t op, int ld) {
    int cols = op == CUBLAS_OP_N ? cols_of_op : rows_of_op;  // columns of the stored matrix
    (void)rows_of_op;
    return cols == 0 ? 0
                     : static_cast<size_t>(ld) * (cols - 1) +
                           static_cast<size_t>(op == CUBLAS_OP_N ? rows_of_op : cols_of_op);
}

static cublasStatus_t gemm_ex(const char* fn, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                              int n, int k, const void* alpha, const void* A, cudaDataType at, int lda, long long sa,
                              const void* B, cudaDataType bt, int ldb, long long sb, const void* beta, void* C,
                              cudaDataType ct, int ldc, long long sc, int batch, cublasComputeType_t compute) {
    if (cublasStatus_t s = check_gemm(fn, h, ta, tb, m, n, k, lda, ldb, ldc, batch); s != CUBLAS_STATUS_SUCCESS)
        return s;
    auto ok_type = [](cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF || t == CUDA_R_16F; };
    bool ok_compute = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                      compute == CUBLAS_COMPUTE_32F_FAST_16BF || compute == CUBLAS_COMPUTE_32F_FAST_16F ||
                      compute == CUBLAS_COMPUTE_32F_PEDANTIC;
    if (!ok_type(at) || !ok_type(bt) || !ok_type(ct) || !ok_compute) {
        std::fprintf(stderr, "cudasim: %s: only fp32/bf16/fp16 matrices with fp32 compute are emulated "
                     "(A %d, B %d, C %d, compute %d) (CUBLAS_STATUS_NOT_SUPPORTED)\n", fn, at, bt, ct, compute);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    size_t esz_a = at == CUDA_R_32F ? 4 : 2, esz_b = bt == CUDA_R_32F ? 4 : 2, esz_c = ct == CUDA_R_32F ? 4 : 2;
    size_t na = storage(m, k, ta, lda), nb = storage(k, n, tb, ldb),
           nc = n == 0 ? 0 : static_cast<size_t>(ldc) * (n - 1) + m;
    for (int i = 0; i < batch; i++) {
        const char* Ai = static_cast<const char*>(A) + i * sa * esz_a;
        const char* Bi = static_cast<const char*>(B) + i * sb * esz_b;
        char* Ci = static_cast<char*>(C) + i * sc * esz_c;
        if (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F) {
            sgemm(ta, tb, m, n, k, a, reinterpret_cast<const float*>(Ai), lda, reinterpret_cast<const float*>(Bi), ldb,
                  b, reinterpret_cast<float*>(Ci), ldc);
            continue;
        }
        std::vector<float> fa = widen(Ai, at, na), fb = widen(Bi, bt, nb),
                           fc = b == 0.0f ? std::vector<float>(nc) : widen(Ci, ct, nc);
        sgemm(ta, tb, m, n, k, a, fa.data(), lda, fb.data(), ldb, b, fc.data(), ldc);
#pragma omp parallel for schedule(static) if (static_cast<size_t>(m) * n > (1 << 16))
        for (int j = 0; j < n; j++)
            for (int r = 0; r < m; r++) {
                size_t idx = static_cast<size_t>(j) * ldc + r;
                if (ct == CUDA_R_32F) reinterpret_cast<float*>(Ci)[idx] = fc[idx];
                else if (ct == CUDA_R_16BF) reinterpret_cast<__nv_bfloat16*>(Ci)[idx] = __float2bfloat16(fc[idx]);
                else reinterpret_cast<__half*>(Ci)[idx] = __float2half(fc[idx]);
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}
}  // namespace cudasim

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                              float* C, int ldc) {
    if (cublasStatus_t s = cudasim::check_gemm("cublasSgemm", h, ta, tb, m, n, k, lda, ldb, ldc, 1);
        s != CUBLAS_STATUS_SUCCESS)
        return s;
    cudasim::sgemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float* alpha, const float* A, int lda, long long sa,
                                         const float* B, int ldb, long long sb, const float* beta, float* C, int ldc,
                                         long long sc, int batch) {
    if (cublasStatus_t s = cudasim::check_gemm("cublasSgemmStridedBatched", h, ta, tb, m, n, k, lda, ldb, ldc, batch);
        s != CUBLAS_STATUS_SUCCESS)
        return s;
    for (int i = 0; i < batch; i++)
        cudasim::sgemm(ta, tb, m, n, k, *alpha, A + i * sa, lda, B + i * sb, ldb, *beta, C + i * sc, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt,
                            int ldb, const void* beta, void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    return cudasim::gemm_ex("cublasGemmEx", h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc,
                            0, 1, compute);
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType at, int lda,
                                          long long sa, const void* B, cudaDataType bt, int ldb, long long sb,
                                          const void* beta, void* C, cudaDataType ct, int ldc, long long sc, int batch,
                                          cublasComputeType_t compute, cublasGemmAlgo_t) {
    return cudasim::gemm_ex("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb,
                            beta, C, ct, ldc, sc, batch, compute);
}

// ---- the implementation halves of the headers included above
#include "cudasim_intrinsics.h"
#include "cudasim_runtime.h"
#include "cudasim_cublaslt.h"

#include "cudasim_check.h"  // the checks' implementation (needs the Worker and the allocation table)
#endif  // CUDASIM_IMPLEMENTATION
