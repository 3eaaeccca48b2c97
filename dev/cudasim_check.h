// cudasim_check.h — what the CPU build checks beyond the execution model: every load and
// store a kernel makes, shared-memory races, host pointers given to a kernel, launch resources.
// Included twice by dev/cudasim.h: the declarations with the header part, the implementation with
// cudasim's implementation (build/cpu/cudasim.o). docs/cpu-execution.md, "What the CPU build checks".
//
// Per-access checks need every load and store of kernel code to tell us its address. The checked build
// (CHECK=1: build/check, and dev/cudarun by default) compiles with GCC's ThreadSanitizer instrumentation
// (CHECK_CFLAGS in the Makefile: -fsanitize=thread --param tsan-instrument-func-entry-exit=0, linked
// without the sanitizer's runtime), so every load or store of N bytes at address a becomes a call to
// __tsan_readN(a) / __tsan_writeN(a), which this file defines. (AddressSanitizer's instrumentation,
// -fsanitize=kernel-address, would do for bounds, but it drops the check of a store that follows a load
// of the same address — `s[t] += x` — which the race check must see.) Outside kernel code a thread-local flag makes the
// call return at once; inside, the address must lie in memory a CUDA thread may touch — a live
// cudaMalloc/cudaMallocHost allocation, the block's shared memory, the thread's own stack, the program's static data
// (__constant__/__device__ variables) or the kernel's parameters — or the run aborts naming kernel, block, thread,
// address, source line and the nearest allocation. With CUDASIM_RACECHECK=1 every shared-memory byte also remembers,
// until the next __syncthreads, which thread last wrote it and which threads read it, so two threads touching the same
// byte without a barrier (or a warp-level sync inside one warp) between them abort as a race. The ASan build
// (SANITIZE=1) does not use these checks (AddressSanitizer checks bounds there).
#ifndef GPTCU_CUDASIM_CHECK_H
#define GPTCU_CUDASIM_CHECK_H

namespace cudasim {
struct LaunchConfig;
namespace check {

// The fiber that calls these is entering / leaving kernel code: per-access checks apply in between.
// (Only the checked build's launches call enter_kernel.) leave_kernel says whether checks were on.
void enter_kernel();
bool leave_kernel();
bool racecheck_enabled();  // CUDASIM_RACECHECK=1

// A static `__shared__` variable, as the rewrite declares it: `__shared__ T cudasim_shared_NAME;
// auto& NAME = *::cudasim::check::shared_variable(&cudasim_shared_NAME, "NAME");`. Every CUDA thread
// calls it where the declaration is; it NaN-fills the variable's copy on this OS thread the first time,
// counts its bytes toward the kernel's static shared memory, and returns the same address through a
// call the compiler cannot see through, so that every access (even `total = x` at a constant offset)
// goes through a pointer and is instrumented in the checked build.
void* shared_variable_at(void* p, size_t bytes, const char* name);
template <class T>
T* shared_variable(T* p, const char* name) {
    return static_cast<T*>(shared_variable_at(p, sizeof(T), name));
}

// `__launch_bounds__(max_threads)`: the rewrite inserts this call at the top of the kernel's body.
void launch_bounds(unsigned max_threads, const char* kernel);

// Refuses a kernel argument that is a pointer to host memory (stack, malloc, std::vector).
void pointer_argument(const LaunchConfig& config, int index, const void* p);
template <class T>
void argument(const LaunchConfig& config, int index, const T& value) {
    if constexpr (std::is_pointer_v<T>)
        pointer_argument(config, index, static_cast<const void*>(value));
    else
        (void)config, (void)index, (void)value;
}

// An atomic read-modify-write at p (the atomics below are not instrumented, so they are never races):
// checked for bounds only.
void atomic_access(const void* p, size_t bytes);

// Hooks for the scheduler.
void on_block_start(unsigned threads);                 // a block starts on this OS thread
void on_barrier();                                     // a __syncthreads was released
void on_warp_sync(unsigned warp);                      // a warp collective completed in this warp
size_t static_shared_bytes(const void* kernel);        // static __shared__ bytes seen for this kernel so far
void on_launch(const LaunchConfig& config);            // a grid starts; CUDASIM_LAUNCH_LOG=FILE: its block size
void on_malloc_host(void* p, size_t bytes, bool add);  // cudaMallocHost / cudaFreeHost
// cudaDeviceSetLimit(cudaLimitMallocHeapSize): false once a kernel has allocated (malloc, new), as on a GPU
bool set_device_heap_size(size_t bytes);

}  // namespace check
}  // namespace cudasim

// Code in this header that kernels inline but that must not be checked access by access: atomics (checked
// for bounds by atomic_access, and never races) and the barrier bookkeeping in cudasim's own structures.
// CUDASIM_CHECKED comes with the checked build's flags. noinline: g++ would otherwise inline the body
// into the kernel and instrument it there.
#if defined(CUDASIM_CHECKED)
#define CUDASIM_UNCHECKED __attribute__((noinline, no_sanitize("thread")))
#else
#define CUDASIM_UNCHECKED
#endif
// Host-only functions (the rewrite's mark_host_functions): a kernel cannot call them, and outside a kernel no
// access is checked, so the checked build does not instrument them and they run at the plain build's speed.
#if defined(CUDASIM_CHECKED)
#define CUDASIM_HOST_CODE __attribute__((no_sanitize("thread")))
#else
#define CUDASIM_HOST_CODE
#endif

#endif  // GPTCU_CUDASIM_CHECK_H

// ============================================================================
// Implementation (with cudasim's, after the scheduler: it reads the Worker and the allocation table).
#if defined(CUDASIM_IMPLEMENTATION) && defined(GPTCU_CUDASIM_IMPLEMENTED) && !defined(GPTCU_CUDASIM_CHECK_IMPLEMENTED)
#define GPTCU_CUDASIM_CHECK_IMPLEMENTED
#include <dlfcn.h>
#include <iterator>
#include <link.h>
#include <pthread.h>
#include <set>

extern "C" char __executable_start[], _end[];  // the program's image: code, constants, static data
extern "C" void* __libc_malloc(size_t bytes);  // glibc's own malloc, calloc and free (ours wrap them, below)
extern "C" void* __libc_calloc(size_t n, size_t size);
extern "C" void __libc_free(void* p);

namespace cudasim::check {

static const bool g_racecheck = [] {
    const char* v = std::getenv("CUDASIM_RACECHECK");
    return v && *v && std::strcmp(v, "0") != 0;
}();
bool racecheck_enabled() { return g_racecheck; }

// Pinned host memory (cudaMallocHost): a GPU kernel may read it through unified addressing.
static std::map<uintptr_t, size_t> g_host_allocations;
void on_malloc_host(void* p, size_t bytes, bool add) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (add)
        g_host_allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
    else
        g_host_allocations.erase(reinterpret_cast<uintptr_t>(p));
}

// Static __shared__ bytes per kernel: kernel -> (variable, as its offset from the thread pointer, which
// is the same on every OS thread) -> bytes.
static std::map<const void*, std::map<ptrdiff_t, size_t>> g_static_shared;
size_t static_shared_bytes(const void* kernel) {
    std::lock_guard<std::mutex> lock(g_mutex);
    size_t total = 0;
    auto it = g_static_shared.find(kernel);
    if (it != g_static_shared.end())
        for (auto& [offset, bytes] : it->second) total += bytes;
    return total;
}

// CUDASIM_LAUNCH_LOG=FILE appends "kernel threads-per-block dynamic-shared-bytes" once per distinct launch
// shape: dev/check_resources.sh multiplies ptxas's registers per thread by these block sizes.
static std::atomic<unsigned long long> g_launches{0};  // grids started: the checks' caches live for one
void on_launch(const LaunchConfig& c) {
    g_launches.fetch_add(1, std::memory_order_relaxed);
    static const char* path = std::getenv("CUDASIM_LAUNCH_LOG");
    if (!path || !*path) return;
    static std::set<std::string> seen;
    char line[512];
    std::snprintf(line, sizeof line, "%s %u %zu\n", c.name, c.block.x * c.block.y * c.block.z, c.shared_bytes);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!seen.insert(line).second) return;
    if (FILE* f = std::fopen(path, "a")) {
        std::fputs(line, f);
        std::fclose(f);
    }
}

// ----------------------------------------------------------------------------
// Per-OS-thread state.

// What one byte of shared memory remembers under racecheck, valid only while `*_epoch` equals the
// block's current barrier epoch (so nothing is ever cleared): the last writer and up to two readers
// since the last barrier, with the warp-sync count of their warp at the time and where they were.
struct ShadowByte {
    uint32_t w_epoch = 0, r_epoch = 0;
    uint16_t writer = 0, reader[2] = {0, 0};  // linear thread ids
    uint8_t readers = 0;                      // 0, 1 or 2 (2: at least two distinct)
    uint32_t w_wsync = 0, r_wsync[2] = {0, 0};
    const void* w_pc = nullptr;
    const void* r_pc[2] = {nullptr, nullptr};
};

struct SharedRange {  // a static __shared__ variable's copy on this OS thread
    char* p;
    size_t bytes;
    const char* name;
    const void* kernel;  // the last kernel that declared it (its bytes are counted for that kernel)
    std::vector<ShadowByte> shadow;
};

struct State {
    bool active = false;  // a fiber of this OS thread is running kernel code
    bool initialised = false;
    char *os_stack_lo = nullptr, *os_stack_hi = nullptr;  // this OS thread's own stack
    char *tls_lo = nullptr, *tls_hi = nullptr;            // this OS thread's static TLS block
    struct Range {
        uintptr_t lo = 0, hi = 0;
    } cache[8];  // ranges recently found whole: allocations; shared variables too when races are not checked
    unsigned next_cache = 0;
    unsigned long long cache_launch = ~0ull;  // the grid (g_launches) the cache was filled in
    std::vector<SharedRange> statics;
    std::vector<ShadowByte> dynamic_shadow;
    uint32_t epoch = 0;       // increases at every block start and every released __syncthreads
    uint32_t wsync[32] = {};  // per warp: warp collectives completed since the block started
};
static thread_local State t_state;
static __thread bool t_active;  // == t_state.active, read first by every instrumented access

// What the fast path of every access reads (access, below), apart from State: a constant-initialised, trivially
// destructible thread-local, so reading it costs no test that it was constructed on this OS thread (State's vectors
// need one, and the call behind that test made every access save and restore registers).
struct Fast {
    uintptr_t stack_lo = 0, stack_bytes = 0;  // the worker's fiber stacks (see enter_kernel)
    // Per access site (the instrumented instruction's return address, hashed), the cached range it hit last: an
    // instruction mostly touches one allocation, so its check is two comparisons the CPU predicts, not a walk over
    // State::cache whose exit varies from one access to the next (mispredicted: 56% of __tsan_read4's samples in
    // llm.c's attention_forward, 2026-11-30). Holds only ranges of State::cache, and is emptied with it.
    State::Range site[256];
};
static __thread Fast t_fast;
static unsigned site_slot(const void* pc) {  // call instructions are 5 bytes: nearby sites get different slots
    return static_cast<unsigned>(reinterpret_cast<uintptr_t>(pc) >> 2) % std::size(t_fast.site);
}
static void forget_cached_ranges(State& s) {
    for (auto& c : s.cache) c = {};
    for (auto& c : t_fast.site) c = {};
}

static int find_tls(struct dl_phdr_info* info, size_t, void* out) {
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            auto* r = static_cast<size_t*>(out);
            r[0] = info->dlpi_phdr[i].p_memsz;
            r[1] = info->dlpi_phdr[i].p_align;
            return 1;  // the executable comes first: its TLS block is the one at the thread pointer
        }
    return 0;
}

static void initialise(State& s) {
    s.initialised = true;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void* addr = nullptr;
        size_t size = 0;
        pthread_attr_getstack(&attr, &addr, &size);
        s.os_stack_lo = static_cast<char*>(addr);
        s.os_stack_hi = s.os_stack_lo + size;
        pthread_attr_destroy(&attr);
    }
    // x86-64 (TLS variant II): the executable's static TLS block ends at the thread pointer.
    size_t tls[2] = {0, 1};
    dl_iterate_phdr(find_tls, tls);
    size_t align = tls[1] ? tls[1] : 1, size = (tls[0] + align - 1) / align * align;
    s.tls_hi = static_cast<char*>(__builtin_thread_pointer());
    s.tls_lo = s.tls_hi - size;
}

void enter_kernel() {
    State& s = t_state;
    if (!s.initialised) initialise(s);
    Worker& w = *this_worker;
    // Any fiber stack of this worker: a thread that reaches no barrier runs on the fiber of the lane before it
    // (the scheduler's chained fibers), so its locals are in that lane's stack slot, not its own.
    t_fast.stack_lo = reinterpret_cast<uintptr_t>(w.stacks);
    t_fast.stack_bytes = w.stack_bytes * max_threads_per_block;
    t_active = s.active = true;
}
bool leave_kernel() {
    bool was = t_active;
    t_active = t_state.active = false;
    return was;
}

void on_block_start(unsigned) {
    State& s = t_state;
    if (!s.initialised) initialise(s);
    s.epoch++;
    std::fill(std::begin(s.wsync), std::end(s.wsync), 0u);
    // Within one grid no allocation is freed (the host waits for it) and the launch's shared memory stays put; an
    // allocation may have been freed since the last grid.
    if (unsigned long long launch = g_launches.load(std::memory_order_relaxed); s.cache_launch != launch) {
        forget_cached_ranges(s);
        s.cache_launch = launch;
    }
}
void on_barrier() { t_state.epoch++; }
void on_warp_sync(unsigned warp) { t_state.wsync[warp % 32]++; }

// ----------------------------------------------------------------------------
// Reports.

// "file:line" of a code address (the instrumented access's return address), through addr2line.
static std::string source_line(const void* pc) {
    Dl_info info;
    if (!pc || !dladdr(pc, &info) || !info.dli_fname) return "an unknown line";
    char cmd[1024];
    auto offset = reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1;
    std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
                  static_cast<unsigned long>(offset));
    std::string line;
    if (FILE* f = popen(cmd, "r")) {
        char buf[512];
        if (std::fgets(buf, sizeof buf, f)) line = buf;  // -i: the innermost inlined frame first
        pclose(f);
    }
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '?') return "an unknown line (build with -g for source lines)";
    size_t disc = line.find(" (discriminator");
    if (disc != std::string::npos) line.erase(disc);
    // The compiled file is the rewritten copy GEN/<absolute original path>: show the original, relative
    // to the working directory when it lies below it.
    size_t gen = line.rfind("/gen/");
    if (gen != std::string::npos) line.erase(0, gen + 4);
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd)) {
        std::string prefix = std::string(cwd) + "/";
        if (line.compare(0, prefix.size(), prefix) == 0) line.erase(0, prefix.size());
    }
    return line;
}

static std::string thread_name(unsigned linear) {
    char b[48];
    std::snprintf(b, sizeof b, "(%u,%u,%u)", linear % blockDim.x, linear / blockDim.x % blockDim.y,
                  linear / blockDim.x / blockDim.y);
    return b;
}

// Where `a` lies relative to the allocation [lo, lo + bytes).
static std::string relative(uintptr_t a, uintptr_t lo, size_t bytes, const char* what) {
    char b[200];
    if (a < lo)
        std::snprintf(b, sizeof b, "%zu bytes before a %zu-byte %s [%p, %p)", static_cast<size_t>(lo - a), bytes, what,
                      reinterpret_cast<void*>(lo), reinterpret_cast<void*>(lo + bytes));
    else
        std::snprintf(b, sizeof b, "%zu bytes past the end of a %zu-byte %s [%p, %p)",
                      static_cast<size_t>(a - lo - bytes), bytes, what, reinterpret_cast<void*>(lo),
                      reinterpret_cast<void*>(lo + bytes));
    return b;
}

static std::string nearest_allocation(uintptr_t a) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_device_allocations.upper_bound(a);
    const std::pair<const uintptr_t, size_t>* best = nullptr;
    uintptr_t best_distance = UINTPTR_MAX;
    if (it != g_device_allocations.end()) {
        best = &*it;
        best_distance = it->first - a;
    }
    if (it != g_device_allocations.begin()) {
        auto below = std::prev(it);
        uintptr_t d = a - (below->first + below->second);
        if (d < best_distance) best = &*below;
    }
    if (!best) return "no cudaMalloc allocation is live";
    return relative(a, best->first, best->second, "cudaMalloc allocation");
}

[[noreturn]] static void out_of_bounds(uintptr_t a, size_t size, bool store, const void* pc, const std::string& where) {
    Worker& w = *this_worker;
    leave_kernel();
    fatal(
        "out of bounds: kernel '%s' block (%u,%u,%u) thread (%u,%u,%u) %s %zu bytes at %p, %s; at %s — on a GPU this "
        "reads garbage, corrupts another buffer or stops the kernel with an illegal address",
        w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
        store ? "writes" : "reads", size, reinterpret_cast<void*>(a), where.c_str(), source_line(pc).c_str());
}

[[noreturn]] static void race(const char* kind, const char* variable, size_t offset, unsigned me, bool my_store,
                              const void* my_pc, unsigned other, bool other_store, const void* other_pc) {
    Worker& w = *this_worker;
    leave_kernel();
    std::string mine = source_line(my_pc), theirs = source_line(other_pc);
    std::string what = variable ? std::string("`") + variable + "`" : "dynamic shared memory (extern __shared__)";
    fatal(
        "race (%s) on shared memory in kernel '%s' block (%u,%u,%u): thread %s %s %s at byte offset %zu at %s, and "
        "thread %s %s it at %s, with no __syncthreads between them (nor a __syncwarp inside one warp) — the result "
        "depends on which thread runs first",
        kind, w.config->name, blockIdx.x, blockIdx.y, blockIdx.z, thread_name(me).c_str(),
        my_store ? "writes" : "reads", what.c_str(), offset, mine.c_str(), thread_name(other).c_str(),
        other_store ? "wrote" : "read", theirs.c_str());
}

// ----------------------------------------------------------------------------
// The race check of one access to shared memory: shadow[i] for the bytes touched.
static void race_check(ShadowByte* shadow, size_t n, bool store, const void* pc, const char* variable, size_t offset) {
    State& s = t_state;
    const unsigned me = this_worker->current->linear, warp = me / 32;
    const uint32_t E = s.epoch, ws = s.wsync[warp % 32];
    // Two accesses by threads of one warp are ordered when a warp collective completed in between.
    auto ordered = [&](unsigned other, uint32_t other_wsync) { return other / 32 == warp && other_wsync != ws; };
    // An access of whole aligned 4-byte words (float, int, float4) is recorded at the first byte of each
    // word only: 4x less work. (A later 1- or 2-byte access to the other bytes of such a word does not
    // see it: a race between accesses of different widths to one word can go unreported.)
    size_t step = offset % 4 == 0 && n % 4 == 0 ? 4 : 1;
    for (size_t i = 0; i < n; i += step) {
        ShadowByte& b = shadow[i];
        if (b.w_epoch == E && b.writer != me && !ordered(b.writer, b.w_wsync))
            race(store ? "write after write" : "read after write", variable, offset + i, me, store, pc, b.writer, true,
                 b.w_pc);
        if (store) {
            if (b.r_epoch == E)
                for (int r = 0; r < b.readers; r++)
                    if (b.reader[r] != me && !ordered(b.reader[r], b.r_wsync[r]))
                        race("write after read", variable, offset + i, me, true, pc, b.reader[r], false, b.r_pc[r]);
            b.w_epoch = E;
            b.writer = static_cast<uint16_t>(me);
            b.w_wsync = ws;
            b.w_pc = pc;
            b.r_epoch = 0;  // the readers before this write are ordered before it
            continue;
        }
        if (b.r_epoch != E) {
            b.r_epoch = E;
            b.readers = 0;
        }
        int slot = b.readers;
        for (int r = 0; r < b.readers; r++)
            if (b.reader[r] == me) slot = r;  // a thread's latest read replaces its earlier one
        if (slot == 2) slot = 1;              // a third reader: keep the first and the latest
        b.reader[slot] = static_cast<uint16_t>(me);
        b.r_wsync[slot] = ws;
        b.r_pc[slot] = pc;
        if (slot == b.readers) b.readers++;
    }
}

// ----------------------------------------------------------------------------
// The check of one access, called by the instrumented code.
static bool in_allocation_table(std::map<uintptr_t, size_t>& table, uintptr_t a, size_t size, State::Range& hit) {
    auto it = table.upper_bound(a);
    if (it == table.begin()) return false;
    --it;
    if (a + size > it->first + it->second) return false;
    hit = {it->first, it->first + it->second};
    return true;
}

// `malloc` and `new` in device code take the GPU's device heap (cudaLimitMallocHeapSize bytes, 8 MB unless set
// before the first kernel that allocates), which every later kernel may use until `free`/`delete`; here it is the
// C heap, so what a kernel thread allocates is recorded (malloc below, while the checks are on), counted against
// the limit (malloc returns NULL past it, as on a GPU) and accepted like a cudaMalloc allocation. Not cached: a
// kernel may free it while the grid runs, and from then on an access is out of bounds.
static std::mutex g_heap_mutex;
// start -> bytes; never destroyed: free reads it while other static objects are destroyed at exit
static std::map<uintptr_t, size_t>& g_device_heap = *new std::map<uintptr_t, size_t>;
static std::atomic<size_t> g_device_heap_blocks{0};     // g_device_heap.size(), read without the lock
static thread_local bool t_heap_busy = false;           // the table's own nodes are not device allocations
// Nor are the checker's own while a kernel runs (race shadows, its tables, reports): host memory, uncounted.
struct OwnAllocations {
    bool was = t_heap_busy;
    OwnAllocations() { t_heap_busy = true; }
    ~OwnAllocations() { t_heap_busy = was; }
};
static bool g_heap_started = false;                    // a kernel has allocated: the limit is fixed
static size_t g_heap_limit = 8 << 20, g_heap_in_use = 0;  // bytes (the limit's default is CUDA's, as g_limits')
bool set_device_heap_size(size_t bytes) {
    std::lock_guard<std::mutex> lock(g_heap_mutex);
    if (g_heap_started) return false;
    g_heap_limit = bytes;
    return true;
}
// A kernel's allocation: NULL once the heap is exhausted.
[[maybe_unused]] static void* device_malloc(size_t bytes) {  // unused under AddressSanitizer
    void* p = nullptr;
    OwnAllocations own;  // the table's node is the checker's
    std::lock_guard<std::mutex> lock(g_heap_mutex);
    g_heap_started = true;
    if (bytes <= g_heap_limit - g_heap_in_use && (p = __libc_malloc(bytes ? bytes : 1))) {
        g_device_heap[reinterpret_cast<uintptr_t>(p)] = bytes;
        g_device_heap_blocks.store(g_device_heap.size(), std::memory_order_relaxed);
        g_heap_in_use += bytes;
    }
    return p;
}
static bool in_device_heap(uintptr_t a, size_t size) {
    if (g_device_heap_blocks.load(std::memory_order_relaxed) == 0) return false;
    std::lock_guard<std::mutex> lock(g_heap_mutex);
    State::Range hit;
    return in_allocation_table(g_device_heap, a, size, hit);
}

static void slow_path(uintptr_t a, size_t size, bool store, const void* pc);

// Not the access site's last range: the cache (the range found becomes the site's), else the full check.
__attribute__((noinline)) static void cached_or_slow(uintptr_t a, size_t size, bool store, const void* pc) {
    for (const auto& c : t_state.cache)
        if (a >= c.lo && a + size <= c.hi) {
            t_fast.site[site_slot(pc)] = c;
            return;
        }
    slow_path(a, size, store, pc);
}

static inline void access(const void* p, size_t size, bool store, const void* pc) {
    if (!t_active) return;  // host code
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const Fast& f = t_fast;
    if (a - f.stack_lo < f.stack_bytes) return;  // the thread's own locals: the most frequent case
    const State::Range& r = f.site[site_slot(pc)];
    if (a >= r.lo && a + size <= r.hi) return;
    cached_or_slow(a, size, store, pc);
}

static void slow_path(uintptr_t a, size_t size, bool store, const void* pc) {
    OwnAllocations own;
    State& s = t_state;
    Worker& w = *this_worker;
    char* c = reinterpret_cast<char*>(a);
    // Dynamic shared memory: the launch's bytes only.
    char* dyn = reinterpret_cast<char*>(w.shared);
    if (c >= dyn && c < dyn + sizeof w.shared) {
        size_t offset = static_cast<size_t>(c - dyn);
        if (offset + size > w.config->shared_bytes) {
            char b[160];
            std::snprintf(b, sizeof b,
                          "byte %zu of the block's dynamic shared memory, of which the launch asked for %zu bytes",
                          offset, w.config->shared_bytes);
            out_of_bounds(a, size, store, pc, b);
        }
        if (g_racecheck) {
            if (s.dynamic_shadow.size() < w.config->shared_bytes) s.dynamic_shadow.resize(w.config->shared_bytes);
            race_check(s.dynamic_shadow.data() + offset, size, store, pc, nullptr, offset);
        } else {  // later accesses inside the launch's bytes pass the fast path (the cache is emptied per block)
            s.cache[s.next_cache++ % std::size(s.cache)] = {a - offset, a - offset + w.config->shared_bytes};
        }
        return;
    }
    for (auto& r : s.statics)
        if (c >= r.p && c < r.p + r.bytes) {
            size_t offset = static_cast<size_t>(c - r.p);
            if (offset + size > r.bytes)
                out_of_bounds(a, size, store, pc,
                              relative(a, reinterpret_cast<uintptr_t>(r.p), r.bytes, "__shared__ variable"));
            if (g_racecheck) {
                if (r.shadow.empty()) r.shadow.resize(r.bytes);
                race_check(r.shadow.data() + offset, size, store, pc, r.name, offset);
            } else {
                s.cache[s.next_cache++ % std::size(s.cache)] = {a - offset, a - offset + r.bytes};
            }
            return;
        }
    // A fiber's stack (locals, arguments), or the OS thread's (a scheduler that runs code there;
    // a pool thread's TLS, and so its shared memory, lies at the top of that range: checked above).
    char* stack = w.stacks;  // any fiber stack of this worker, as in enter_kernel
    const size_t stacks_bytes = w.stack_bytes * max_threads_per_block;
    if (c >= stack && c + size <= stack + stacks_bytes) return;
    // Read by every thread's launch code: cached, but never over the static TLS block, which lies inside a pool
    // thread's stack mapping and holds its __shared__ variables (a cached stretch over it let every later access to
    // them pass unchecked: races were missed in the blocks that pool threads ran).
    if (c >= s.os_stack_lo && c + size <= s.os_stack_hi && (c + size <= s.tls_lo || c >= s.tls_hi)) {
        uintptr_t lo = reinterpret_cast<uintptr_t>(s.os_stack_lo), hi = reinterpret_cast<uintptr_t>(s.os_stack_hi);
        if (c + size <= s.tls_lo) hi = std::min(hi, reinterpret_cast<uintptr_t>(s.tls_lo));
        else lo = std::max(lo, reinterpret_cast<uintptr_t>(s.tls_hi));
        s.cache[s.next_cache++ % std::size(s.cache)] = {lo, hi};
        return;
    }
    // The program's static data (__constant__ and __device__ variables, tables), the OS thread's TLS (threadIdx,
    // blockIdx, ...: read by most kernels, so the range goes into the cache; for TLS, the gap between the shared
    // variables and the dynamic shared memory that holds the access, so those are still checked).
    if (c >= __executable_start && c + size <= _end) {
        s.cache[s.next_cache++ % std::size(s.cache)] = {reinterpret_cast<uintptr_t>(__executable_start),
                                                        reinterpret_cast<uintptr_t>(_end)};
        return;
    }
    if (c >= s.tls_lo && c + size <= s.tls_hi) {
        uintptr_t lo = reinterpret_cast<uintptr_t>(s.tls_lo), hi = reinterpret_cast<uintptr_t>(s.tls_hi);
        bool straddles = false;
        auto exclude = [&](uintptr_t p, size_t bytes) {
            if (p + bytes <= a) lo = std::max(lo, p + bytes);
            else if (p >= a + size) hi = std::min(hi, p);
            else straddles = true;  // an access across a shared variable's first byte: not cached
        };
        exclude(reinterpret_cast<uintptr_t>(dyn), sizeof w.shared);
        for (auto& r : s.statics) exclude(reinterpret_cast<uintptr_t>(r.p), r.bytes);
        if (!straddles) s.cache[s.next_cache++ % std::size(s.cache)] = {lo, hi};
        return;
    }
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        State::Range hit;
        if (in_allocation_table(g_device_allocations, a, size, hit) ||
            in_allocation_table(g_host_allocations, a, size, hit)) {
            s.cache[s.next_cache++ % std::size(s.cache)] = hit;
            return;
        }
    }
    if (in_device_heap(a, size)) return;
    out_of_bounds(a, size, store, pc, nearest_allocation(a));
}

void atomic_access(const void* p, size_t bytes) {
    if (!t_active) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (const auto& c : t_state.cache)
        if (a >= c.lo && a + bytes <= c.hi) return;
    // Bounds only: an atomic in shared memory is never a race, so the shadow is not touched.
    State& s = t_state;
    Worker& w = *this_worker;
    char* c = static_cast<char*>(const_cast<void*>(p));
    char* dyn = reinterpret_cast<char*>(w.shared);
    if (c >= dyn && c + bytes <= dyn + w.config->shared_bytes) return;
    for (auto& r : s.statics)
        if (c >= r.p && c + bytes <= r.p + r.bytes) return;
    slow_path(a, bytes, true, __builtin_return_address(0));
}

void* shared_variable_at(void* p, size_t bytes, const char* name) {
    OwnAllocations own;
    Worker* w = this_worker;
    if (!w || !w->config) fatal("a __shared__ variable (`%s`) was declared outside a kernel", name);
    State& s = t_state;
    SharedRange* range = nullptr;
    for (auto& r : s.statics)
        if (r.p == p) range = &r;
    if (!range) {
        shared_declared(p, bytes);  // NaN-filled now and at every later block start on this OS thread
        forget_cached_ranges(s);  // a cached stretch of TLS may hold the new variable
        s.statics.push_back(SharedRange{static_cast<char*>(p), bytes, name, nullptr, {}});
        range = &s.statics.back();
    }
    if (range->kernel != w->config->function) {
        // Count this variable toward the kernel's static shared memory, and check the block's total.
        range->kernel = w->config->function;
        ptrdiff_t key = static_cast<char*>(p) - static_cast<char*>(__builtin_thread_pointer());
        size_t total = 0;
        {
            std::lock_guard<std::mutex> lock(g_mutex);
            auto& vars = g_static_shared[w->config->function];
            vars[key] = bytes;
            for (auto& [k, b] : vars) total += b;
        }
        if (total > default_shared_bytes)
            fatal(
                "kernel '%s' declares %zu bytes of static __shared__ memory (`%s` has %zu): a GPU allows at most %zu "
                "(ptxas refuses the kernel: \"uses too much shared data\"); use extern __shared__ memory and "
                "cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) to go up to %zu",
                w->config->name, total, name, bytes, default_shared_bytes, max_shared_bytes_optin);
        bool opted_in = false;
        {
            std::lock_guard<std::mutex> lock(g_mutex);
            opted_in = g_max_dynamic_shared.count(w->config->function) > 0;
        }
        if (total + w->config->shared_bytes > (opted_in ? max_shared_bytes_optin : default_shared_bytes))
            fatal(
                "kernel '%s' uses %zu bytes of static __shared__ memory + %zu bytes of dynamic: over the %zu bytes a "
                "block "
                "may have without cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) "
                "(at most %zu with it); the launch fails on a GPU (cudaErrorInvalidValue)",
                w->config->name, total, w->config->shared_bytes, default_shared_bytes, max_shared_bytes_optin);
    }
    // An opaque call: the compiler cannot tell the result is `p`, so every access through it is instrumented.
    return p;
}

void launch_bounds(unsigned max_threads, const char* kernel) {
    unsigned n = blockDim.x * blockDim.y * blockDim.z;
    if (n > max_threads) {
        leave_kernel();
        fatal(
            "kernel '%s' launched with %u threads per block, but it is declared __launch_bounds__(%u): a GPU refuses "
            "the "
            "launch (cudaErrorLaunchOutOfResources: too many resources requested for launch)",
            kernel, n, max_threads);
    }
}

void pointer_argument(const LaunchConfig& config, int index, const void* p) {
    if (!p) return;
    auto a = reinterpret_cast<uintptr_t>(p);
    const char* c = static_cast<const char*>(p);
    if (c >= __executable_start && c <= _end) return;  // a __device__ variable's address
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        for (auto* table : {&g_device_allocations, &g_host_allocations}) {
            auto it = table->upper_bound(a);
            if (it != table->begin() && a <= std::prev(it)->first + std::prev(it)->second)
                return;  // inside, or one past
        }
        // graph memory: a device address from the moment its node is made, though allocated only while
        // the graph runs (a kernel node or captured launch is given it before; accesses are checked when they happen)
        auto g = g_graph_memory.upper_bound(const_cast<void*>(p));
        if (g != g_graph_memory.begin() &&
            c <= static_cast<const char*>(std::prev(g)->first) + std::prev(g)->second.bytes)
            return;
    }
    if (in_device_heap(a, 1)) return;  // an object a kernel made with `new`
    fatal(
        "kernel '%s' argument %d is %p, a host pointer (stack, malloc or std::vector memory, not from cudaMalloc): "
        "a GPU kernel cannot read it (an illegal address, or garbage); copy the data into cudaMalloc memory with "
        "cudaMemcpy and pass that pointer",
        config.name, index + 1, p);
}

}  // namespace cudasim::check

#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer's own malloc and free check more (and no access is checked here)
// The C heap's malloc, calloc (g++ makes one of malloc and a memset of 0) and free: glibc's take over
// (__libc_malloc, __libc_calloc, __libc_free; realloc and the aligned forms stay glibc's, which a kernel cannot call),
// and what kernel threads allocate when the checks are on (t_active, the checked build's kernels) comes from the
// device heap: see g_device_heap. Elsewhere they cost a thread-local test and an atomic load.
extern "C" void* malloc(size_t bytes) noexcept {
    using namespace cudasim::check;
    return t_active && !t_heap_busy ? device_malloc(bytes) : __libc_malloc(bytes);
}
extern "C" void* calloc(size_t n, size_t size) noexcept {
    using namespace cudasim::check;
    if (!t_active || t_heap_busy) return __libc_calloc(n, size);
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes)) return nullptr;
    void* p = device_malloc(bytes);
    if (p) std::memset(p, 0, bytes);
    return p;
}
extern "C" void free(void* p) noexcept {
    using namespace cudasim::check;
    if (p && g_device_heap_blocks.load(std::memory_order_relaxed) > 0 && !t_heap_busy) {
        OwnAllocations own;  // erasing the table's node frees the checker's memory
        std::lock_guard<std::mutex> lock(g_heap_mutex);
        auto it = g_device_heap.find(reinterpret_cast<uintptr_t>(p));
        if (it != g_device_heap.end()) {
            g_heap_in_use -= it->second;
            g_device_heap.erase(it);
            g_device_heap_blocks.store(g_device_heap.size(), std::memory_order_relaxed);
        }
    }
    __libc_free(p);
}
// The C++ heap's operator new and delete (the array, nothrow and sized forms call these) go through them: `new` in
// a kernel takes the device heap too. There an exhausted heap is a NULL on a GPU, which C++ cannot return.
void* operator new(std::size_t bytes) {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p && cudasim::check::t_active)
        cudasim::fatal("`new` of %zu bytes in kernel '%s': the device heap (cudaLimitMallocHeapSize, %zu bytes) is "
                       "exhausted; raise the limit with cudaDeviceSetLimit before the first kernel that allocates",
                       bytes, cudasim::this_worker->config->name, cudasim::check::g_heap_limit);
    if (!p) throw std::bad_alloc();
    return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { ::operator delete(p); }
#endif

// The functions the instrumentation calls (ThreadSanitizer's names; no sanitizer runtime is linked).
// Atomics in instrumented code become __tsan_atomic* calls: they are performed here, unchecked (the
// kernel-side atomics of dev/cudasim.h are not instrumented; these serve host code such as std::atomic).
#define CUDASIM_ACCESS(size)                                                 \
    extern "C" void __tsan_read##size(void* p) {                             \
        cudasim::check::access(p, size, false, __builtin_return_address(0)); \
    }                                                                        \
    extern "C" void __tsan_write##size(void* p) {                            \
        cudasim::check::access(p, size, true, __builtin_return_address(0));  \
    }                                                                        \
    extern "C" void __tsan_unaligned_read##size(void* p) {                   \
        cudasim::check::access(p, size, false, __builtin_return_address(0)); \
    }                                                                        \
    extern "C" void __tsan_unaligned_write##size(void* p) {                  \
        cudasim::check::access(p, size, true, __builtin_return_address(0));  \
    }
CUDASIM_ACCESS(1)
CUDASIM_ACCESS(2)
CUDASIM_ACCESS(4)
CUDASIM_ACCESS(8)
CUDASIM_ACCESS(16)
#undef CUDASIM_ACCESS
extern "C" void __tsan_read_range(void* p, size_t n) {
    if (n) cudasim::check::access(p, n, false, __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* p, size_t n) {
    if (n) cudasim::check::access(p, n, true, __builtin_return_address(0));
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
// Every memory order is performed as seq_cst (at least as strong as asked).
#define CUDASIM_TSAN_ATOMICS(bits, T)                                                                                  \
    extern "C" T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
    extern "C" void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
    extern "C" T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                             \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                            \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                                            \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                             \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                                            \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                             \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                                            \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                             \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                                             \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                              \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                                            \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                             \
    }                                                                                                                  \
    extern "C" int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                 \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
    }                                                                                                                  \
    extern "C" int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                   \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                         \
    }                                                                                                                  \
    extern "C" T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                       \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                              \
        return c;                                                                                                      \
    }
CUDASIM_TSAN_ATOMICS(8, uint8_t)
CUDASIM_TSAN_ATOMICS(16, uint16_t)
CUDASIM_TSAN_ATOMICS(32, uint32_t)
CUDASIM_TSAN_ATOMICS(64, uint64_t)
#undef CUDASIM_TSAN_ATOMICS
#endif  // implementation
