// bench_util.h — what the kernel benchmarks in dev/ share: the median, GPU-event timing with the L2
// flushed before every timed call, and the host's measured copy bandwidth (the memory floor in the CPU
// build, where the "device" is this CPU's memory).
#pragma once
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include <sys/mman.h>

#include "common.cuh"

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median time in ms of `fn` over `repeats` calls after `warmup` calls, timed with CUDA events. Before
// each timed call `flush` (a buffer larger than the L2, or empty) is overwritten outside the timed
// region, so no operand is still in the L2 from the previous call.
template <class T>
double median_ms(const std::function<void()>& fn, int warmup, int repeats, DeviceBuffer<T>& flush) {
    for (int i = 0; i < warmup; i++) fn();
    cudaEvent_t start, stop;
    cuda_check(cudaEventCreate(&start));
    cuda_check(cudaEventCreate(&stop));
    std::vector<double> times;
    for (int i = 0; i < repeats; i++) {
        if (flush.count) cuda_check(cudaMemset(flush, i & 0xff, flush.bytes()));
        cuda_check(cudaEventRecord(start, nullptr));
        fn();
        cuda_check(cudaEventRecord(stop, nullptr));
        cuda_check(cudaEventSynchronize(stop));
        float ms = 0;
        cuda_check(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    cuda_check(cudaEventDestroy(start));
    cuda_check(cudaEventDestroy(stop));
    return median(times);
}

// This CPU's memory bandwidth in bytes per ms: median of 5 copies of 256 MB, counting read and write.
inline double host_copy_bytes_per_ms() {
    size_t n = 64 << 20;
    std::vector<float> a(n, 1.0f), b(n);
    std::vector<double> t;
    for (int i = 0; i < 5; i++) {
        Timer timer;
        std::memcpy(b.data(), a.data(), n * sizeof(float));
        t.push_back(timer.elapsed_ms());
    }
    return 2.0 * n * sizeof(float) / median(t);
}

// This CPU's read bandwidth in bytes per ms, the floor of a memory-bound op that only reads (decode reads every
// weight once per token): all OpenMP threads sum a 1 GiB buffer (far beyond any cache), on 2 MiB pages as the
// model's weights are (HostOps::alloc), in 16 KiB chunks of SIMD adds (one scalar float sum would measure the add
// latency, not the memory). The best of 9 passes: a floor is what the memory can do, not what it did on average.
inline double host_read_bytes_per_ms() {
    const long n = 256 << 20, chunk = 4096;
    void* mem = nullptr;
    if (posix_memalign(&mem, size_t{2} << 20, n * sizeof(float)) != 0)
        throw std::runtime_error("host_read_bytes_per_ms: out of memory");
    madvise(mem, n * sizeof(float), MADV_HUGEPAGE);
    float* x = static_cast<float*>(mem);
    for (long k = 0; k < n; k++) x[k] = 1.0f;
    std::vector<double> t;
    volatile float sink = 0;
    for (int i = 0; i < 9; i++) {
        Timer timer;
        float total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (long b = 0; b < n; b += chunk) {
            float s = 0;
#pragma omp simd reduction(+ : s)
            for (long k = b; k < b + chunk; k++) s += x[k];
            total += s;
        }
        t.push_back(timer.elapsed_ms());
        sink = sink + total;
    }
    std::free(mem);
    return n * sizeof(float) / *std::min_element(t.begin(), t.end());
}
