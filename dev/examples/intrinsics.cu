// intrinsics.cu — device intrinsics beyond the everyday ones, each checked against the host's own
// computation: atomicInc/atomicDec (wrapping counters), atomicAdd on __half2 and __nv_bfloat162 pairs,
// __mul24/__umul24, __byte_perm, __funnelshift_l, __match_any_sync, and half2/bf16 arithmetic (__hfma2,
// __hmul2, h2sqrt). Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/intrinsics.cu
//   on a GPU:    nvcc -O2 -arch=sm_80 -o intrinsics dev/examples/intrinsics.cu && ./intrinsics
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

constexpr int n = 4096, block = 256, wrap = 100;

// counters[0] counts up to `wrap` and wraps to 0; counters[1] counts down from `wrap`, wrapping to wrap
__global__ void wrap_counters_kernel(unsigned* counters) {
    atomicInc(&counters[0], wrap);
    atomicDec(&counters[1], wrap);
}

// pair sums: half_sum += (1, 2)·(x[i] % 8)/4 for all i, likewise in bf16
__global__ void pair_sum_kernel(__half2* half_sum, __nv_bfloat162* bf_sum, const int* x) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = (x[i] % 8) / 4.0f;
    atomicAdd(half_sum, __floats2half2_rn(v, 2.0f * v));
    atomicAdd(bf_sum, __floats2bfloat162_rn(v, 2.0f * v));
}

// integer intrinsics, one output per kind
__global__ void integer_kernel(int* mul24, unsigned* umul24, unsigned* perm, unsigned* funnel, unsigned* match,
                               const int* x) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int a = x[i], b = x[(i + 1) % n];
    mul24[i] = __mul24(a, b);
    umul24[i] = __umul24(static_cast<unsigned>(a), static_cast<unsigned>(b));
    perm[i] = __byte_perm(static_cast<unsigned>(a), static_cast<unsigned>(b), 0x7351);
    funnel[i] = __funnelshift_l(static_cast<unsigned>(a), static_cast<unsigned>(b), i % 32);
    match[i] = __match_any_sync(0xffffffffu, a % 3);
}

// y = a·b + c on pairs, then a product and a square root, in half2 and bf162
__global__ void pair_math_kernel(__half2* h, __nv_bfloat162* bf, const int* x) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = (x[i] % 16) / 4.0f;
    __half2 a = __floats2half2_rn(v, v + 1.0f);
    h[i] = h2sqrt(__hmul2(__hfma2(a, a, a), __floats2half2_rn(1.0f, 0.5f)));
    __nv_bfloat162 b = __floats2bfloat162_rn(v, v + 1.0f);
    bf[i] = h2sqrt(__hmul2(__hfma2(b, b, b), __floats2bfloat162_rn(1.0f, 0.5f)));
}

template <class T>
static T* device(size_t count) {
    T* d;
    CHECK(cudaMalloc(&d, count * sizeof(T)));
    CHECK(cudaMemset(d, 0, count * sizeof(T)));
    return d;
}
template <class T>
static std::vector<T> host(const T* d, size_t count) {
    std::vector<T> h(count);
    CHECK(cudaMemcpy(h.data(), d, count * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

int main() {
    std::vector<int> x(n);
    for (int i = 0; i < n; i++) x[i] = ((i * 2654435761u) >> 7) % 2001 - 1000;
    int* d_x = device<int>(n);
    CHECK(cudaMemcpy(d_x, x.data(), n * sizeof(int), cudaMemcpyHostToDevice));
    int wrong = 0;
    auto check = [&](const char* what, int i, double got, double want) {
        if (got != want && wrong++ < 5) std::printf("%s: element %d is %.9g, expected %.9g\n", what, i, got, want);
    };

    unsigned* d_counters = device<unsigned>(2);
    CHECK(cudaMemcpy(d_counters + 1, &wrap, sizeof(unsigned), cudaMemcpyHostToDevice));
    wrap_counters_kernel<<<n / block, block>>>(d_counters);
    CHECK(cudaGetLastError());
    std::vector<unsigned> counters = host(d_counters, 2);
    // atomicInc: old >= wrap ? 0 : old + 1, so it cycles through 0..wrap (wrap + 1 values); atomicDec likewise
    check("atomicInc", 0, counters[0], n % (wrap + 1));
    check("atomicDec", 1, counters[1], (wrap - n % (wrap + 1) + wrap + 1) % (wrap + 1));

    __half2* d_hs = device<__half2>(1);
    __nv_bfloat162* d_bs = device<__nv_bfloat162>(1);
    pair_sum_kernel<<<2, 32>>>(d_hs, d_bs, d_x);
    double want_lo = 0;
    for (int i = 0; i < 64; i++) want_lo += (x[i] % 8) / 4.0;
    __half2 hs = host(d_hs, 1)[0];
    __nv_bfloat162 bs = host(d_bs, 1)[0];
    // 64 terms, multiples of 1/4 below 2 in magnitude: every partial sum (below 128) is exact in fp16 (11 bits,
    // 1/16 apart there) but not in bf16 (8 bits, 1/2 apart), which is compared within its rounding
    check("atomicAdd(__half2).x", 0, __low2float(hs), want_lo);
    check("atomicAdd(__half2).y", 0, __high2float(hs), 2 * want_lo);
    if (std::fabs(__low2float(bs) - want_lo) > 64 * 0.25 + 1e-9 && wrong++ < 5)
        std::printf("atomicAdd(__nv_bfloat162).x is %g, expected %g\n", __low2float(bs), want_lo);

    int* d_m24 = device<int>(n);
    unsigned *d_u24 = device<unsigned>(n), *d_perm = device<unsigned>(n), *d_fun = device<unsigned>(n),
             *d_match = device<unsigned>(n);
    integer_kernel<<<n / block, block>>>(d_m24, d_u24, d_perm, d_fun, d_match, d_x);
    std::vector<int> m24 = host(d_m24, n);
    std::vector<unsigned> u24 = host(d_u24, n), perm = host(d_perm, n), fun = host(d_fun, n), match = host(d_match, n);
    for (int i = 0; i < n; i++) {
        int a = x[i], b = x[(i + 1) % n];
        check("__mul24", i, m24[i], static_cast<int>(static_cast<long long>(a) * b));  // |a|, |b| < 2^23: exact
        unsigned ua = static_cast<unsigned>(a), ub = static_cast<unsigned>(b);
        check("__umul24", i, u24[i], static_cast<unsigned>((ua & 0xffffffu) * (ub & 0xffffffu)));
        unsigned long long bytes = static_cast<unsigned long long>(ub) << 32 | ua;
        unsigned want_perm = 0;
        for (int k = 0; k < 4; k++)
            want_perm |= static_cast<unsigned>(bytes >> (((0x7351u >> (4 * k)) & 7u) * 8) & 0xffu) << (8 * k);
        check("__byte_perm", i, perm[i], want_perm);
        check("__funnelshift_l", i, fun[i], static_cast<unsigned>(bytes << (i % 32) >> 32));
        unsigned want_match = 0;
        for (int l = 0; l < 32; l++) want_match |= static_cast<unsigned>(x[i / 32 * 32 + l] % 3 == a % 3) << l;
        check("__match_any_sync", i, match[i], want_match);
    }

    __half2* d_h = device<__half2>(n);
    __nv_bfloat162* d_b = device<__nv_bfloat162>(n);
    pair_math_kernel<<<n / block, block>>>(d_h, d_b, d_x);
    std::vector<__half2> hm = host(d_h, n);
    std::vector<__nv_bfloat162> bm = host(d_b, n);
    for (int i = 0; i < n; i++) {
        float v = (x[i] % 16) / 4.0f;
        // the exact result; fp16 and bf16 round each step, so compare within a few units of their last place
        double lo = std::sqrt((v * v + v) * 1.0), hi = std::sqrt(((v + 1) * (v + 1) + v + 1) * 0.5);
        if ((std::fabs(__low2float(hm[i]) - lo) > 4e-3 * (1 + lo) ||
             std::fabs(__high2float(hm[i]) - hi) > 4e-3 * (1 + hi)) &&
            wrong++ < 5)
            std::printf("half2 math: element %d is (%g, %g), expected (%g, %g)\n", i, __low2float(hm[i]),
                        __high2float(hm[i]), lo, hi);
        if ((std::fabs(__low2float(bm[i]) - lo) > 3e-2 * (1 + lo) ||
             std::fabs(__high2float(bm[i]) - hi) > 3e-2 * (1 + hi)) &&
            wrong++ < 5)
            std::printf("bf162 math: element %d is (%g, %g), expected (%g, %g)\n", i, __low2float(bm[i]),
                        __high2float(bm[i]), lo, hi);
    }
    for (void* p : {(void*)d_x, (void*)d_counters, (void*)d_hs, (void*)d_bs, (void*)d_m24, (void*)d_u24, (void*)d_perm,
                    (void*)d_fun, (void*)d_match, (void*)d_h, (void*)d_b})
        CHECK(cudaFree(p));
    std::printf("intrinsics: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
