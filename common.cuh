// common.cuh — the few utilities every file of gpt.cu shares, one version of each:
// the element type, error checks with file:line, where an op runs (Exec) and how an op is dispatched to its
// kernel or its CPU reference, checked file I/O, the RNG, a timer, device buffers, the scratch workspace,
// and the warp/block reductions the kernels share.
#pragma once
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// ----------------------------------------------------------------------------
// Element types. The model runs in one of two precisions, chosen at run time (--precision; gpt.cuh's
// GPT<Ops, FloatX>): every op of layers.cuh, attention.cuh and paged_kv.cuh is ONE kernel templated on its
// element type (float or __nv_bfloat16), which loads it, computes in fp32 and rounds once when it stores. Which
// buffers are bf16 and which stay fp32 is written at the top of layers.cuh.

// The only two conversions the kernels use: loads widen exactly (a bf16 is an fp32 with the low 16 bits of
// the mantissa zero), stores round to the nearest bf16, ties to even, as the GPU's cvt.rn.bf16.f32 does.
template <class T>
__host__ __device__ inline float to_fp32(T x) { return static_cast<float>(x); }
template <class T>
__host__ __device__ inline T from_fp32(float x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else return __float2bfloat16_rn(x);
}

// ----------------------------------------------------------------------------
// Errors. Every CUDA and cuBLAS call is checked; a failure throws with the call, file and line, so a
// test can catch it and a program's main prints it and exits non-zero.
[[noreturn]] inline void throw_error(const std::string& what, const char* file, int line) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what);
}
inline void cuda_check_impl(cudaError_t e, const char* call, const char* file, int line) {
    if (e != cudaSuccess)
        throw_error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " + call,
                    file, line);
}
inline void cublas_check_impl(cublasStatus_t s, const char* call, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw_error(
            std::string("cuBLAS error ") + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ") in " + call,
            file, line);
}
#define cuda_check(call) cuda_check_impl((call), #call, __FILE__, __LINE__)
#define cublas_check(call) cublas_check_impl((call), #call, __FILE__, __LINE__)

template <class T>
constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------
// Where an op runs. Every op (layers.cuh, attention.cuh, paged_kv.cuh) has two implementations that take
// the same arguments in the same order: the plain CPU reference `op_cpu(args...)` on host memory, and the
// launcher `op(args..., stream)` of its CUDA kernels (on a GPU; on cudasim's fibers in the CPU build).
// The model calls `op(exec, args...)`, and one line in the op's file, GPTCU_OP(op), turns that into the
// right one. So adding an op touches the op's file and the block that calls it, nothing else.
struct Exec {
    bool on_device = true;    // kernels (true) or CPU references (false)
    cudaStream_t stream = 0;  // the kernels' stream
};

// op(exec, args...) → op(args..., exec.stream) or cpu(args...). `cpu` is the op's reference op_cpu
// (GPTCU_OP), or a faster host version with the same arguments (GPTCU_OP_WITH: matmul through OpenBLAS).
// Write it after both implementations are declared. Pass typed null pointers (not a bare nullptr) to an op
// whose reference is a template: a template cannot deduce its scalar from nullptr.
// The CPU path computes in fp32 only: an op called with a bf16 buffer compiles (the kernels take either) and
// throws if exec runs on the host.
template <class... Args>
constexpr bool has_bf16_buffer =
    (std::is_same_v<std::remove_cv_t<std::remove_pointer_t<std::decay_t<Args>>>, __nv_bfloat16> || ...);
#define GPTCU_OP_WITH(op, cpu)                                                                                   \
    template <class... Args>                                                                                     \
    void op(const Exec& exec, Args&&... args) {                                                                  \
        if (exec.on_device) op(std::forward<Args>(args)..., exec.stream);                                        \
        else if constexpr (!has_bf16_buffer<Args...>) cpu(std::forward<Args>(args)...);                         \
        else throw std::runtime_error(#op ": the CPU path computes in fp32 only; run bf16 with the CUDA kernels " \
                                      "(--device cuda)");                                                        \
    }
#define GPTCU_OP(op) GPTCU_OP_WITH(op, op##_cpu)

// Zeroes memory where exec's ops run: the device's (on its stream) or the host's.
// On the host the memset is split over the cores in 1 MiB chunks (the gradients are zeroed every step:
// 0.5 GB at GPT-2 124M).
inline void zero_memory(const Exec& exec, void* p, size_t bytes) {
    if (exec.on_device) return cuda_check(cudaMemsetAsync(p, 0, bytes, exec.stream));
    const size_t chunk = size_t(1) << 20;
    const long chunks = static_cast<long>((bytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (chunks > 4)
    for (long i = 0; i < chunks; i++)
        std::memset(static_cast<char*>(p) + i * chunk, 0, std::min(chunk, bytes - i * chunk));
}

// A small index array the host builds and an op reads (tokens, positions, slots, block tables): the host
// copy and the backend copy travel together, so no op takes a host/device pair of pointers.
struct Mirrored {
    std::vector<int> host;
    int* backend = nullptr;  // on the device (DeviceOps) or in host memory (HostOps); owned by whoever made it
};

// The process's one cuBLAS handle, created on first use (layers.cuh's matmul, attention.cuh's naive
// path). TF32 stays off: CUBLAS_DEFAULT_MATH computes fp32 GEMMs in full fp32 (TF32 would need
// CUBLAS_TF32_TENSOR_OP_MATH), so cuBLAS and the hand-written kernels agree to fp32 rounding.
inline cublasHandle_t cublas_handle() {
    static cublasHandle_t handle = [] {
        cublasHandle_t h;
        cublas_check(cublasCreate(&h));
        cublas_check(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
        return h;
    }();
    return handle;
}
// cuBLAS's name for an element type: fp32 or bf16 matrices; the compute type is fp32 for both
// (CUBLAS_COMPUTE_32F: for fp32 matrices no TF32, for bf16 matrices bf16 tensor-core products summed in fp32).
template <class T>
constexpr cudaDataType_t cublas_data_type() { return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF; }

// True when CUDA kernels run on a real GPU, false in the CPU build (cudasim names itself in the
// device name) or without a device; `name` gets the device's name. The programs pick their default
// backend with it.
inline bool have_real_gpu(std::string& name) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        name = "none";
        return false;
    }
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
    name = prop.name;
    return name.find("cudasim") == std::string::npos;
}

// ----------------------------------------------------------------------------
// Checked file I/O: every failure says which file and what went wrong.
struct File {
    FILE* f = nullptr;
    std::string path;
    File(const std::string& p, const char* mode) : path(p) {
        f = std::fopen(p.c_str(), mode);
        if (!f) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
    }
    File(const File&) = delete;
    File& operator=(const File&) = delete;
    ~File() { if (f) std::fclose(f); }
    // Reads exactly `bytes` or throws, naming how much was there: a truncated file is an error.
    void read(void* dst, size_t bytes, const char* what) {
        size_t got = std::fread(dst, 1, bytes, f);
        if (got != bytes)
            throw std::runtime_error(path + ": truncated while reading " + what + " (wanted " + std::to_string(bytes) +
                                     " bytes, got " + std::to_string(got) + ")");
    }
    void write(const void* src, size_t bytes) {
        if (std::fwrite(src, 1, bytes, f) != bytes)
            throw std::runtime_error(path + ": write failed (" + std::strerror(errno) + ")");
    }
    // Flushes to disk and closes; a full disk shows up here rather than as a silently short file.
    void close() {
        if (std::fflush(f) != 0 || std::fclose(f) != 0) {
            f = nullptr;
            throw std::runtime_error(path + ": close failed (" + std::strerror(errno) + ")");
        }
        f = nullptr;
    }
    size_t size() {
        long here = std::ftell(f);
        std::fseek(f, 0, SEEK_END);
        long end = std::ftell(f);
        std::fseek(f, here, SEEK_SET);
        return static_cast<size_t>(end);
    }
};

// Writes a file so that a crash or a power cut at any moment leaves either the old file or the new one,
// never a partial one: write PATH.tmp, flush, fsync it (its bytes are on the disk), rename it over PATH
// (atomic on POSIX), then fsync the directory (the rename itself is on the disk). Without the first fsync
// the file system may commit the rename before the data, so after a power cut PATH can be empty or torn;
// without the second, the rename may be lost and the old file come back. test/test_train.cu kills the
// writer at several points and always finds a whole file.
inline void fsync_path(const std::string& path, bool directory) {
    int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) throw std::runtime_error(path + ": cannot open to fsync (" + std::strerror(errno) + ")");
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) throw std::runtime_error(path + ": fsync failed (" + std::strerror(err) + ")");
}
template <class WriteFn>
void write_file_atomically(const std::string& path, WriteFn write_contents) {
    std::string tmp = path + ".tmp";
    {
        File out(tmp, "wb");
        write_contents(out);
        if (std::fflush(out.f) != 0 || ::fsync(fileno(out.f)) != 0)
            throw std::runtime_error(tmp + ": flush to disk failed (" + std::strerror(errno) + ")");
        out.close();
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error(path + ": cannot rename " + tmp + " into place (" + std::strerror(errno) + ")");
    size_t slash = path.find_last_of('/');
    fsync_path(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash), true);
}

// ----------------------------------------------------------------------------
// The project's one random number generator (SplitMix64 seeding a xoshiro256**): the same sequence
// on every machine and in both builds, so initial weights and test inputs are reproducible.
struct Rng {
    uint64_t s[4];
    explicit Rng(uint64_t seed = 1337) { reseed(seed); }
    void reseed(uint64_t seed) {
        for (auto& x : s) {  // SplitMix64
            uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            x = z ^ (z >> 31);
        }
    }
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t next_u64() {
        uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
        return result;
    }
    float uniform() { return static_cast<float>(next_u64() >> 40) * (1.0f / 16777216.0f); }  // [0, 1), 24 bits
    float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
    uint32_t below(uint32_t n) { return static_cast<uint32_t>((next_u64() >> 32) * n >> 32); }  // [0, n)
    float normal() {  // Box-Muller; one of the pair is dropped for simplicity
        float u1 = uniform(), u2 = uniform();
        return std::sqrt(-2.0f * std::log(1.0f - u1)) * std::cos(6.2831853071795864f * u2);
    }
};

// ----------------------------------------------------------------------------
// Wall-clock timer.
struct Timer {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    double elapsed_ms() const {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
};

// ----------------------------------------------------------------------------
// A device allocation that frees itself: used by tests, benchmarks and the programs' setup code.
template <class T>
struct DeviceBuffer {
    T* ptr = nullptr;
    size_t count = 0;
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : count(n) {
        cuda_check(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
    }
    explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), count(o.count) { o.ptr = nullptr; o.count = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(ptr, o.ptr);
        std::swap(count, o.count);
        return *this;
    }
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
    size_t bytes() const { return count * sizeof(T); }
    void upload(const std::vector<T>& host) {
        if (host.size() != count) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
        cuda_check(cudaMemcpy(ptr, host.data(), bytes(), cudaMemcpyHostToDevice));
    }
    std::vector<T> download() const {
        std::vector<T> host(count);
        cuda_check(cudaMemcpy(host.data(), ptr, bytes(), cudaMemcpyDeviceToHost));
        return host;
    }
    operator T*() const { return ptr; }
};

// ----------------------------------------------------------------------------
// Scratch memory: a grow-only device buffer that a launcher keeps for the process (the partial sums of a
// two-pass reduction, split-K partial results, attention's D and dQ). It only grows, so after the first
// step it is never reallocated. Whoever owns one must not run on two streams at once (gpt.cu runs every op
// on one stream): layers.cuh gives each launcher its own; attention.cuh and paged_kv.cuh share
// attention_workspace() (one attention op runs at a time).
struct ScratchBuffer {
    DeviceBuffer<unsigned char> buffer;
    unsigned char* get(size_t bytes) {
        if (bytes > buffer.count) {
            buffer = DeviceBuffer<unsigned char>();  // free first (cudaFree waits for its kernels): peak = new size
            buffer = DeviceBuffer<unsigned char>(bytes);
        }
        return buffer.ptr;
    }
    template <class X>
    X* get(size_t count) { return reinterpret_cast<X*>(get(count * sizeof(X))); }
    size_t bytes() const { return buffer.bytes(); }
    void release() { buffer = DeviceBuffer<unsigned char>(); }
};

// Carves consecutive, 256-byte aligned pieces out of one ScratchBuffer: first count the sizes (base null),
// then hand out pointers from the real base.
struct WorkspaceCarver {
    unsigned char* base;
    size_t used = 0;
    template <class X>
    X* take(size_t count) {
        X* p = reinterpret_cast<X*>(base + used);
        used += (count * sizeof(X) + 255) / 256 * 256;
        return p;
    }
};

// ----------------------------------------------------------------------------
// Reductions the kernels share.
// Sum / max over the 32 lanes of a warp by butterfly shuffles: after log2(32) = 5 steps every lane holds
// the result. All 32 lanes must call it.
__device__ inline float warp_reduce_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}
__device__ inline float warp_reduce_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}

// Sum / max over a whole block (blockDim.x a multiple of 32, at most 1024): shuffles within each warp,
// then every thread combines the per-warp results in warp order, so every thread gets the same,
// fixed-order result. All threads of the block must call it. Its barriers also publish every shared
// memory write made before the call to the whole block.
template <bool IS_MAX>
__device__ inline float block_reduce(float x) {
    __shared__ float warp_results[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = IS_MAX ? warp_reduce_max(x) : warp_reduce_sum(x);
    __syncthreads();  // a previous call's readers are done with warp_results
    if (lane == 0) warp_results[warp] = x;
    __syncthreads();
    float r = warp_results[0];
    for (int w = 1; w < warps; w++) r = IS_MAX ? fmaxf(r, warp_results[w]) : r + warp_results[w];
    return r;
}
__device__ inline float block_reduce_sum(float x) { return block_reduce<false>(x); }
__device__ inline float block_reduce_max(float x) { return block_reduce<true>(x); }
