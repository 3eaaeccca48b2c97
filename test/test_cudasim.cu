// Tests of the CUDA execution model. The kernels here run in both builds: on a GPU they show that
// the CPU emulation (dev/cudasim.h) gives what real hardware gives. The tests of what only the
// emulator does (aborting on a stuck barrier, the source rewrite) are CPU-build only.
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>

#include <algorithm>
#include <ctime>  // undefines a clock macro: device clock() must not depend on one
#include <numeric>

#include "test/test_util.h"
#include "dev/cudasim_rewrite.h"

namespace cg = cooperative_groups;

// ----------------------------------------------------------------------------
// Shared-memory tree reduction: one partial sum per block, then atomicAdd across blocks.
__global__ void reduce_shared_kernel(const float* x, float* sum, int n) {
    __shared__ float partial[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int t = threadIdx.x;
    partial[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) atomicAdd(sum, partial[0]);
}

// Integers make the expected result exact whatever the order of the additions.
static std::vector<float> small_integers(int n, Rng& rng) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(static_cast<int>(rng.below(17)) - 8);
    return v;
}

TEST_CASE("shared-memory tree reduction over many blocks") {
    Rng rng(1);
    for (int n : {1, 255, 256, 100003}) {
        std::vector<float> x = small_integers(n, rng);
        float expected = std::accumulate(x.begin(), x.end(), 0.0f);
        for_each_thread_order([&] {
            DeviceBuffer<float> dx(x), dsum(1);
            cuda_check(cudaMemset(dsum, 0, 4));
            reduce_shared_kernel<<<ceil_div(n, 256), 256>>>(dx, dsum, n);
            cuda_check(cudaGetLastError());
            CHECK(dsum.download()[0] == expected);
        });
    }
}

// ----------------------------------------------------------------------------
// Warp shuffles: xor and down reductions, an up-scan, an index broadcast, votes.
__global__ void warp_ops_kernel(const int* x, int* out) {
    int lane = threadIdx.x % 32, v = x[threadIdx.x];
    int sum_xor = v, sum_down = v, scan = v;
    for (int o = 16; o > 0; o /= 2) sum_xor += __shfl_xor_sync(0xffffffffu, sum_xor, o);
    for (int o = 16; o > 0; o /= 2) sum_down += __shfl_down_sync(0xffffffffu, sum_down, o);
    for (int o = 1; o < 32; o *= 2) {
        int up = __shfl_up_sync(0xffffffffu, scan, o);
        if (lane >= o) scan += up;
    }
    int from7 = __shfl_sync(0xffffffffu, v, 7);
    int half_sum = v;  // width 16: two independent halves
    for (int o = 8; o > 0; o /= 2) half_sum += __shfl_xor_sync(0xffffffffu, half_sum, o, 16);
    unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
    int any = __any_sync(0xffffffffu, v == 3), all = __all_sync(0xffffffffu, v > -100);
    int* o = out + threadIdx.x * 8;
    o[0] = sum_xor; o[1] = lane == 0 ? sum_down : 0; o[2] = scan; o[3] = from7;
    o[4] = half_sum; o[5] = static_cast<int>(ballot); o[6] = any; o[7] = all;
}

TEST_CASE("warp shuffles and votes match their definitions") {
    Rng rng(2);
    const int n = 64;  // two warps
    std::vector<int> x(n);
    for (auto& v : x) v = static_cast<int>(rng.below(11)) - 5;
    std::vector<int> ref(n * 8);
    for (int t = 0; t < n; t++) {
        int w = t / 32 * 32, lane = t % 32, h = w + lane / 16 * 16;
        int* r = &ref[t * 8];
        r[0] = std::accumulate(&x[w], &x[w + 32], 0);
        r[1] = lane == 0 ? r[0] : 0;
        r[2] = std::accumulate(&x[w], &x[t + 1], 0);
        r[3] = x[w + 7];
        r[4] = std::accumulate(&x[h], &x[h + 16], 0);
        unsigned b = 0;
        bool any = false;
        for (int l = 0; l < 32; l++) { b |= (x[w + l] > 0 ? 1u : 0u) << l; any = any || x[w + l] == 3; }
        r[5] = static_cast<int>(b); r[6] = any; r[7] = 1;
    }
    for_each_thread_order([&] {
        DeviceBuffer<int> dx(x), dout(n * 8);
        cuda_check(cudaMemset(dout, 0xff, dout.bytes()));
        warp_ops_kernel<<<1, n>>>(dx, dout);
        cuda_check(cudaGetLastError());
        CHECK(dout.download() == ref);
    });
}

// ----------------------------------------------------------------------------
// Dynamic shared memory: a block reverses its slice through `extern __shared__`.
__global__ void reverse_dynamic_shared_kernel(const float* x, float* y, int per_block) {
    extern __shared__ float tile[];
    const float* src = x + blockIdx.x * per_block;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) tile[i] = src[i];
    __syncthreads();
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) y[blockIdx.x * per_block + i] = tile[per_block - 1 - i];
}

TEST_CASE("dynamic shared memory, with and without the opt-in above 48 KiB") {
    Rng rng(3);
    for (int per_block : {1000, 20000}) {  // 4 KB, and 80 KB which needs cudaFuncSetAttribute
        const int blocks = 3;
        std::vector<float> x = random_vector(per_block * blocks, rng), ref(x.size());
        for (int b = 0; b < blocks; b++)
            for (int i = 0; i < per_block; i++) ref[b * per_block + i] = x[b * per_block + per_block - 1 - i];
        size_t bytes = per_block * sizeof(float);
        if (bytes > 48 * 1024)
            cuda_check(cudaFuncSetAttribute(reverse_dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            bytes));
        for_each_thread_order([&] {
            DeviceBuffer<float> dx(x), dy(x.size());
            poison(dy);
            reverse_dynamic_shared_kernel<<<blocks, 128, bytes>>>(dx, dy, per_block);
            cuda_check(cudaGetLastError());
            CHECK(dy.download() == ref);
        });
    }
}

// ----------------------------------------------------------------------------
// Atomics from many blocks at once.
__global__ void atomics_kernel(int* counter, int* maximum, unsigned* cas_sum, const int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(counter, 1);
    atomicMax(maximum, x[i]);
    unsigned old = *cas_sum, assumed;  // an atomicAdd built from atomicCAS, the classic loop
    do {
        assumed = old;
        old = atomicCAS(cas_sum, assumed, assumed + static_cast<unsigned>(x[i]));
    } while (old != assumed);
}

TEST_CASE("atomicAdd, atomicMax and an atomicCAS loop across blocks") {
    Rng rng(4);
    const int n = 50000;
    std::vector<int> x(n);
    for (auto& v : x) v = static_cast<int>(rng.below(1000000));
    DeviceBuffer<int> dx(x), counter(1), maximum(1);
    DeviceBuffer<unsigned> cas_sum(1);
    cuda_check(cudaMemset(counter, 0, 4));
    cuda_check(cudaMemset(maximum, 0, 4));
    cuda_check(cudaMemset(cas_sum, 0, 4));
    atomics_kernel<<<ceil_div(n, 128), 128>>>(counter, maximum, cas_sum, dx, n);
    cuda_check(cudaGetLastError());
    unsigned expected_sum = 0;
    for (int v : x) expected_sum += static_cast<unsigned>(v);
    CHECK(counter.download()[0] == n);
    CHECK(maximum.download()[0] == *std::max_element(x.begin(), x.end()));
    CHECK(cas_sum.download()[0] == expected_sum);
}

// ----------------------------------------------------------------------------
// Cooperative groups: cg::reduce over warp tiles of 32 and 16.
__global__ void cg_reduce_kernel(const float* x, float* sums32, float* max16) {
    cg::thread_block block = cg::this_thread_block();
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(block);
    cg::thread_block_tile<16> half = cg::tiled_partition<16>(block);
    float v = x[block.thread_rank()];
    float s = cg::reduce(warp, v, cg::plus<float>());
    float m = cg::reduce(half, v, cg::greater<float>());
    if (warp.thread_rank() == 0) sums32[warp.meta_group_rank()] = s;
    if (half.thread_rank() == 0) max16[half.meta_group_rank()] = m;
}

TEST_CASE("cooperative groups: reduce over tiles of 32 (plus) and 16 (greater)") {
    Rng rng(5);
    const int n = 128;
    std::vector<float> x = small_integers(n, rng), s32(n / 32), m16(n / 16);
    for (int i = 0; i < n; i++) {
        s32[i / 32] += x[i];
        m16[i / 16] = i % 16 == 0 ? x[i] : std::max(m16[i / 16], x[i]);
    }
    for_each_thread_order([&] {
        DeviceBuffer<float> dx(x), ds(n / 32), dm(n / 16);
        poison(ds);
        poison(dm);
        cg_reduce_kernel<<<1, n>>>(dx, ds, dm);
        cuda_check(cudaGetLastError());
        CHECK(ds.download() == s32);
        CHECK(dm.download() == m16);
    });
}

// ----------------------------------------------------------------------------
// Row softmax with two block barriers per reduction (max, then sum), one block per row.
__global__ void softmax_two_barrier_kernel(const float* x, float* y, int C) {
    __shared__ float scratch[32];
    const float* row = x + blockIdx.x * C;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < C; c += blockDim.x) m = fmaxf(m, row[c]);
    for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) scratch[warp] = m;
    __syncthreads();  // barrier 1: every warp's max is in scratch
    m = scratch[0];
    for (int w = 1; w < nwarps; w++) m = fmaxf(m, scratch[w]);
    __syncthreads();  // barrier 2: everyone has read scratch before it is reused
    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) s += expf(row[c] - m);
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) scratch[warp] = s;
    __syncthreads();
    s = 0.0f;
    for (int w = 0; w < nwarps; w++) s += scratch[w];
    for (int c = threadIdx.x; c < C; c += blockDim.x) y[blockIdx.x * C + c] = expf(row[c] - m) / s;
}

TEST_CASE("softmax with two barriers per reduction") {
    Rng rng(6);
    const int rows = 5, C = 333;
    std::vector<float> x = random_vector(rows * C, rng, 4.0f), ref(x.size());
    for (int r = 0; r < rows; r++) {
        double m = -INFINITY, s = 0;
        for (int c = 0; c < C; c++) m = std::max<double>(m, x[r * C + c]);
        for (int c = 0; c < C; c++) s += std::exp(x[r * C + c] - m);
        for (int c = 0; c < C; c++) ref[r * C + c] = static_cast<float>(std::exp(x[r * C + c] - m) / s);
    }
    for_each_thread_order([&] {
        DeviceBuffer<float> dx(x), dy(x.size());
        poison(dy);
        softmax_two_barrier_kernel<<<rows, 128>>>(dx, dy, C);
        cuda_check(cudaGetLastError());
        check_close("softmax", dy.download(), ref, tolerance_fp32);
    });
}

// ----------------------------------------------------------------------------
// Launch validation: what a GPU rejects, rejected with the GPU's error codes.
__global__ void noop_kernel(float*) {}

// The codes are the GPU's: this test runs in both builds, and CUDA 13.0 on an H200 (driver 580) answered
// cudaErrorInvalidValue for all four bad launches below.
TEST_CASE("launches a GPU rejects return its error codes") {
    cudaGetLastError();
    noop_kernel<<<1, 2048>>>(nullptr);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    noop_kernel<<<0, 32>>>(nullptr);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    noop_kernel<<<dim3(1, 70000), 32>>>(nullptr);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    noop_kernel<<<1, 32, 200 * 1024>>>(nullptr);  // over 48 KiB without the opt-in
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    noop_kernel<<<1, 32>>>(nullptr);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(cudaGetLastError() == cudaSuccess);  // reading the error clears it
}

TEST_CASE("the L2 set-aside is clamped to the device's maximum; stream attributes are checked and read back") {
    cudaDeviceProp prop;
    cuda_check(cudaGetDeviceProperties(&prop, 0));
    REQUIRE(prop.persistingL2CacheMaxSize > 0);
    cuda_check(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, size_t(1) << 40));
    size_t set_aside = 0;
    cuda_check(cudaDeviceGetLimit(&set_aside, cudaLimitPersistingL2CacheSize));
    CHECK(set_aside == static_cast<size_t>(prop.persistingL2CacheMaxSize));

    cudaStream_t stream;
    cuda_check(cudaStreamCreate(&stream));
    DeviceBuffer<float> data(1024);
    cudaStreamAttrValue value{}, got{};
    cuda_check(cudaStreamGetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &got));
    CHECK(got.accessPolicyWindow.num_bytes == 0);  // unset
    value.accessPolicyWindow = {data.ptr, data.bytes(), 0.75f, cudaAccessPropertyPersisting, cudaAccessPropertyNormal};
    cuda_check(cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &value));
    cuda_check(cudaStreamGetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &got));
    CHECK(got.accessPolicyWindow.base_ptr == data.ptr);
    CHECK(got.accessPolicyWindow.num_bytes == data.bytes());
    CHECK(got.accessPolicyWindow.hitRatio == 0.75f);
    CHECK(got.accessPolicyWindow.hitProp == cudaAccessPropertyPersisting);
    cudaStreamAttrValue bad = value;
    bad.accessPolicyWindow.missProp = cudaAccessPropertyPersisting;  // a miss is normal or streaming
    CHECK(cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &bad) == cudaErrorInvalidValue);
    bad = value;
    bad.accessPolicyWindow.num_bytes = static_cast<size_t>(prop.accessPolicyMaxWindowSize) + 1;
    CHECK(cudaStreamSetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &bad) == cudaErrorInvalidValue);
    cudaGetLastError();
    cuda_check(cudaStreamGetAttribute(stream, cudaStreamAttributeAccessPolicyWindow, &got));
    CHECK(got.accessPolicyWindow.hitRatio == 0.75f);  // the refused ones changed nothing
    cuda_check(cudaCtxResetPersistingL2Cache());
    cuda_check(cudaStreamDestroy(stream));
}

// ----------------------------------------------------------------------------
// __CUDA_ARCH__ as nvcc's two passes give it: set in device code (sm_80 and later here), unset in host code.
// Device code guarded by an architecture test exists, and so does host code guarded by its absence.
#if __CUDA_ARCH__ >= 700
__device__ int arch_helper(int x) { return 7 * x; }
#endif
#ifndef __CUDA_ARCH__
static int host_helper(int x) { return 3 * x; }
#endif
static int host_sees_cuda_arch() {
#ifdef __CUDA_ARCH__
    return 1;
#else
    return 0;
#endif
}

__global__ void cuda_arch_kernel(int* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    out[threadIdx.x] = arch_helper(static_cast<int>(threadIdx.x)) + (__CUDA_ARCH__ >= 800);
#elif defined(__CUDA_ARCH__)
    out[threadIdx.x] = -1;  // an older architecture's path
#else
    out[threadIdx.x] = -2;  // the host pass's (empty) kernel body
#endif
}

TEST_CASE("__CUDA_ARCH__ is defined in device code (sm_80 or later) and not in host code") {
    DeviceBuffer<int> out(32);
    cuda_arch_kernel<<<1, 32>>>(out);
    cuda_check(cudaGetLastError());
    std::vector<int> got = out.download();
    for (int t = 0; t < 32; t++) CHECK(got[t] == 7 * t + 1);
    CHECK(host_sees_cuda_arch() == 0);
#ifndef __CUDA_ARCH__  // nvcc's device pass parses host code too, without the host pass's helpers
    CHECK(host_helper(2) == 6);
#endif
}

// ----------------------------------------------------------------------------
// Directed rounding: __fadd/__fsub/__fmul with _rn, _rz, _ru, _rd. The inputs' exponents are at most 17 apart,
// so their sums, differences and products are exact in double, and the expected result is that double rounded
// to a float in the named direction.
__global__ void directed_rounding_kernel(float* out /*(n, 12)*/, const float* a, const float* b, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = a[i], y = b[i], r[12] = {__fadd_rn(x, y), __fadd_rz(x, y), __fadd_ru(x, y), __fadd_rd(x, y),
                                       __fsub_rn(x, y), __fsub_rz(x, y), __fsub_ru(x, y), __fsub_rd(x, y),
                                       __fmul_rn(x, y), __fmul_rz(x, y), __fmul_ru(x, y), __fmul_rd(x, y)};
    for (int k = 0; k < 12; k++) out[i * 12 + k] = r[k];
}

static float round_direction(double exact, int direction) {  // 0 nearest, 1 toward zero, 2 up, 3 down
    float f = static_cast<float>(exact);  // to nearest
    if (direction == 1 && std::fabs(static_cast<double>(f)) > std::fabs(exact)) f = std::nextafter(f, 0.0f);
    if (direction == 2 && static_cast<double>(f) < exact) f = std::nextafter(f, INFINITY);
    if (direction == 3 && static_cast<double>(f) > exact) f = std::nextafter(f, -INFINITY);
    return f;
}

TEST_CASE("directed rounding intrinsics (_rn, _rz, _ru, _rd) round as the named direction says") {
    Rng rng(7);
    const int n = 4096;
    std::vector<float> a(n), b(n);
    auto sample = [&] {  // ±[0.5, 1) · 2^e, e in [-8, 8]: exponents at most 17 apart, so x ± y fits in 41 bits
        float m = rng.uniform(0.5f, 1.0f) * (rng.below(2) ? 1.0f : -1.0f);
        return std::ldexp(m, static_cast<int>(rng.below(17)) - 8);
    };
    for (int i = 0; i < n; i++) a[i] = sample(), b[i] = sample();
    DeviceBuffer<float> da(a), db(b), out(static_cast<size_t>(n) * 12);
    directed_rounding_kernel<<<ceil_div(n, 128), 128>>>(out, da, db, n);
    cuda_check(cudaGetLastError());
    std::vector<float> got = out.download();
    int wrong = 0, inexact = 0;
    for (int i = 0; i < n; i++) {
        double x = a[i], y = b[i], exact[3] = {x + y, x - y, x * y};
        for (int op = 0; op < 3; op++) {
            if (static_cast<double>(static_cast<float>(exact[op])) != exact[op]) inexact++;
            for (int d = 0; d < 4; d++) {
                float want = round_direction(exact[op], d), g = got[i * 12 + op * 4 + d];
                if (std::memcmp(&want, &g, sizeof(float)) != 0 && wrong++ < 5)
                    FAIL_CHECK("element " << i << " op " << op << " direction " << d << ": " << std::hexfloat << g
                                          << ", want " << want << " (a " << a[i] << ", b " << b[i] << ")");
            }
        }
    }
    CHECK(wrong == 0);
    CHECK(inexact > n);  // most results are not floats: the directions really differ
}

// ----------------------------------------------------------------------------
// cuBLAS against naive loops: every transpose combination, padded leading dimensions, batches.
static float at(const std::vector<float>& M, int ld, cublasOperation_t op, int r, int c, size_t offset) {
    return op == CUBLAS_OP_N ? M[offset + static_cast<size_t>(c) * ld + r]
                             : M[offset + static_cast<size_t>(r) * ld + c];
}

TEST_CASE("cuBLAS sgemm, strided batched and GemmEx match naive column-major loops") {
    Rng rng(7);
    cublasHandle_t handle;
    cublas_check(cublasCreate(&handle));
    const int m = 7, n = 5, k = 9, batch = 3;
    for (auto ta : {CUBLAS_OP_N, CUBLAS_OP_T})
        for (auto tb : {CUBLAS_OP_N, CUBLAS_OP_T}) {
            int lda = (ta == CUBLAS_OP_N ? m : k) + 2, ldb = (tb == CUBLAS_OP_N ? k : n) + 1, ldc = m + 3;
            long long sa = static_cast<long long>(lda) * (ta == CUBLAS_OP_N ? k : m) + 5;
            long long sb = static_cast<long long>(ldb) * (tb == CUBLAS_OP_N ? n : k) + 2;
            long long sc = static_cast<long long>(ldc) * n + 1;
            std::vector<float> A = random_vector(sa * batch, rng), B = random_vector(sb * batch, rng),
                               C = random_vector(sc * batch, rng), ref = C;
            const float alpha = 0.75f, beta = -0.5f;
            for (int i = 0; i < batch; i++)
                for (int c = 0; c < n; c++)
                    for (int r = 0; r < m; r++) {
                        double acc = 0;
                        for (int p = 0; p < k; p++) acc += at(A, lda, ta, r, p, i * sa) * at(B, ldb, tb, p, c, i * sb);
                        float& out = ref[i * sc + static_cast<size_t>(c) * ldc + r];
                        out = static_cast<float>(alpha * acc + beta * out);
                    }
            CAPTURE(ta); CAPTURE(tb);
            DeviceBuffer<float> dA(A), dB(B), dC(C);
            cublas_check(cublasSgemmStridedBatched(handle, ta, tb, m, n, k, &alpha, dA, lda, sa, dB, ldb, sb, &beta, dC,
                                                   ldc, sc, batch));
            check_close("strided batched", dC.download(), ref, tolerance_fp32);
            dC.upload(C);
            cublas_check(cublasGemmStridedBatchedEx(handle, ta, tb, m, n, k, &alpha, dA, CUDA_R_32F, lda, sa, dB,
                                                    CUDA_R_32F, ldb, sb, &beta, dC, CUDA_R_32F, ldc, sc, batch,
                                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            check_close("GemmStridedBatchedEx", dC.download(), ref, tolerance_fp32);
            dC.upload(C);
            for (int i = 0; i < batch; i++)
                cublas_check(cublasSgemm(handle, ta, tb, m, n, k, &alpha, dA + i * sa, lda, dB + i * sb, ldb, &beta,
                                         dC + i * sc, ldc));
            check_close("sgemm", dC.download(), ref, tolerance_fp32);
        }
    // beta = 0: C is written, never read, so NaN in C must not leak into the result.
    std::vector<float> A = random_vector(m * k, rng), B = random_vector(k * n, rng), ref(m * n);
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += A[p * m + r] * B[c * k + p];
            ref[c * m + r] = static_cast<float>(acc);
        }
    DeviceBuffer<float> dA(A), dB(B), dC(m * n);
    poison(dC);
    const float one = 1.0f, zero = 0.0f;
    cublas_check(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, m, dB, k, &zero, dC, m));
    check_close("beta=0 over NaN", dC.download(), ref, tolerance_fp32);
    // bf16 inputs, fp32 output: compare with the same loop over bf16-rounded inputs.
    std::vector<__nv_bfloat16> A16(A.size()), B16(B.size());
    std::vector<float> ref16(m * n);
    for (size_t i = 0; i < A.size(); i++) A16[i] = __float2bfloat16(A[i]);
    for (size_t i = 0; i < B.size(); i++) B16[i] = __float2bfloat16(B[i]);
    for (int c = 0; c < n; c++)
        for (int r = 0; r < m; r++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += __bfloat162float(A16[p * m + r]) * __bfloat162float(B16[c * k + p]);
            ref16[c * m + r] = static_cast<float>(acc);
        }
    DeviceBuffer<__nv_bfloat16> dA16(A16), dB16(B16);
    cublas_check(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA16, CUDA_R_16BF, m, dB16, CUDA_R_16BF,
                              k, &zero, dC, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    check_close("GemmEx bf16 -> fp32", dC.download(), ref16, 1e-6);
    // cuBLAS's own argument checks
    CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, m - 1, dB, k, &zero, dC, m) ==
          CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, -1, n, k, &one, dA, m, dB, k, &zero, dC, m) ==
          CUBLAS_STATUS_INVALID_VALUE);
    cublas_check(cublasDestroy(handle));
}

#if defined(CUDASIM)
// ----------------------------------------------------------------------------
// What only the emulator does.
// Directed rounding without a mode switch (dev/cudasim_intrinsics.h: the round-to-nearest result stepped one ulp
// by the sign of its exact error) against its reference, the same operation run under that MXCSR rounding mode
// (cudasim::with_rounding), bit for bit, for every rounded intrinsic and mode. Operands: random bit patterns
// (every exponent, subnormals, inf, NaN), mantissas of a few bits (exact results, ties), edge values (±0, the
// subnormal and normal extremes, the fast path's bounds, ±inf, NaN), and second operands made from the first:
// its negation and near neighbours (cancellation, zero sums), half an ulp of it (ties), and exponents that put
// the product or quotient near overflow, the fast path's bounds or the subnormals.
template <class T>
static T reference_rounded(char op, int mode, T a, T b) {
    volatile T x = a, y = b;
    return cudasim::with_rounding<T>(mode, [&]() -> T {
        return op == '+'   ? x + y
               : op == '-' ? x - y
               : op == '*' ? x * y
               : op == '/' ? x / y
                           : std::sqrt(static_cast<T>(x));
    });
}

template <class T, class Bits>
static void check_rounding_fast_path(uint64_t seed, int n, const std::vector<std::pair<T (*)(T, T), char>>& binary,
                                     const std::vector<T (*)(T)>& sqrts) {
    using L = std::numeric_limits<T>;
    const int modes[4] = {FE_TONEAREST, FE_TOWARDZERO, FE_UPWARD, FE_DOWNWARD};
    const char* mode_names[4] = {"rn", "rz", "ru", "rd"};
    const int p = L::digits, emin = L::min_exponent - 1, emax = L::max_exponent - 1;
    const T edges[] = {T(0), -T(0), L::denorm_min(), -L::denorm_min(), L::min(), -L::min(), L::max(), -L::max(),
                       L::infinity(), -L::infinity(), L::quiet_NaN(), T(1), T(-1), L::epsilon(),
                       cudasim::RoundingRange<T>::tiny, cudasim::RoundingRange<T>::huge, std::ldexp(T(1), emin + p)};
    Rng rng(seed);
    auto from_bits = [](Bits bits) {
        T x;
        std::memcpy(&x, &bits, sizeof x);
        return x;
    };
    auto step = [&](T x, int k) {  // k steps of x's bit pattern
        Bits bits;
        std::memcpy(&bits, &x, sizeof x);
        return from_bits(bits + static_cast<Bits>(k));
    };
    auto sign = [&] { return rng.below(2) ? T(1) : T(-1); };
    auto mantissa = [&] { return T(1) + std::ldexp(static_cast<T>(rng.next_u64() >> (65 - p)), 1 - p); };  // [1, 2)
    auto short_mantissa = [&](int e) {  // an integer of 1..p/2+1 bits, times 2^e
        uint64_t m = (rng.next_u64() >> (63 - p / 2)) | 1;
        return sign() * std::ldexp(static_cast<T>(m), e - p / 2);
    };
    auto operand = [&]() -> T {
        switch (rng.below(4)) {
            case 0: return from_bits(static_cast<Bits>(rng.next_u64()));
            case 1: return sign() * std::ldexp(mantissa(), static_cast<int>(rng.below(17)) - 8);
            case 2: return short_mantissa(static_cast<int>(rng.below(17)) - 8);
            default: return edges[rng.below(sizeof edges / sizeof edges[0])];
        }
    };
    auto related = [&](T a) -> T {  // a second operand made from a
        int ea = std::ilogb(a) == FP_ILOGB0 || !std::isfinite(a) ? 0 : std::ilogb(a);
        const int targets[4] = {emax, emin + 2 * p, emin, emin - p / 2};  // overflow, tiny, subnormals
        int target = targets[rng.below(4)] + static_cast<int>(rng.below(5)) - 2;
        switch (rng.below(6)) {
            case 0: return -a;
            case 1: return -step(a, static_cast<int>(rng.below(9)) - 4);  // a - b cancels to a few ulps or 0
            case 2: return sign() * std::ldexp(static_cast<T>(2 * rng.below(4) + 1), ea - p - 1);  // ties in a + b
            case 3: return short_mantissa(target - ea);  // a * b near 2^target
            case 4: return short_mantissa(ea - target);  // a / b near 2^target
            default: return sign() * std::ldexp(mantissa(), target - ea);
        }
    };
    auto same = [](T x, T y) { return std::memcmp(&x, &y, sizeof x) == 0; };
    auto hex = [](T x) {
        std::ostringstream s;
        s << std::hexfloat << x;
        return s.str();
    };
    int wrong = 0;
    long long directed_differs = 0;  // results not equal to round to nearest: the directions really differ
    for (int i = 0; i < n; i++) {
        T a = operand(), b = rng.below(2) ? operand() : related(a);
        for (size_t f = 0; f < binary.size(); f++) {
            int mode = modes[f % 4];
            T got = binary[f].first(a, b), want = reference_rounded(binary[f].second, mode, a, b);
            directed_differs += !same(want, reference_rounded(binary[f].second, FE_TONEAREST, a, b));
            if (!same(got, want) && wrong++ < 5)
                FAIL_CHECK(hex(a) << " " << std::string(1, binary[f].second) << " " << hex(b) << " _"
                                  << mode_names[f % 4] << " gives " << hex(got) << ", want " << hex(want));
        }
        for (size_t f = 0; f < sqrts.size(); f++) {
            T x = i % 2 ? a : std::fabs(a);
            T got = sqrts[f](x), want = reference_rounded('s', modes[f + 1], x, x);
            if (!same(got, want) && wrong++ < 5)
                FAIL_CHECK("sqrt_" << mode_names[f + 1] << "(" << hex(x) << ") gives " << hex(got) << ", want "
                                   << hex(want));
        }
    }
    CHECK(wrong == 0);
    CHECK(directed_differs > n);
}

TEST_CASE("directed rounding's fast path equals rounding under the MXCSR mode, bit for bit") {
    const int n = 1000000;
    check_rounding_fast_path<float, uint32_t>(
        11, n,
        {{__fadd_rn, '+'}, {__fadd_rz, '+'}, {__fadd_ru, '+'}, {__fadd_rd, '+'},
         {__fsub_rn, '-'}, {__fsub_rz, '-'}, {__fsub_ru, '-'}, {__fsub_rd, '-'},
         {__fmul_rn, '*'}, {__fmul_rz, '*'}, {__fmul_ru, '*'}, {__fmul_rd, '*'},
         {__fdiv_rn, '/'}, {__fdiv_rz, '/'}, {__fdiv_ru, '/'}, {__fdiv_rd, '/'}},
        {__fsqrt_rz, __fsqrt_ru, __fsqrt_rd});
    check_rounding_fast_path<double, uint64_t>(
        12, n,
        {{__dadd_rn, '+'}, {__dadd_rz, '+'}, {__dadd_ru, '+'}, {__dadd_rd, '+'},
         {__dsub_rn, '-'}, {__dsub_rz, '-'}, {__dsub_ru, '-'}, {__dsub_rd, '-'},
         {__dmul_rn, '*'}, {__dmul_rz, '*'}, {__dmul_ru, '*'}, {__dmul_rd, '*'},
         {__ddiv_rn, '/'}, {__ddiv_rz, '/'}, {__ddiv_ru, '/'}, {__ddiv_rd, '/'}},
        {__dsqrt_rz, __dsqrt_ru, __dsqrt_rd});
}

__global__ void divergent_barrier_kernel(float* x) {
    if (threadIdx.x >= 40) return;  // threads 40.. never reach the barrier
    x[threadIdx.x] = 1.0f;
    __syncthreads();
}
__global__ void shuffle_missing_lane_kernel(float* x) {
    float v = x[threadIdx.x];
    if (threadIdx.x % 32 < 31) v += __shfl_down_sync(0xffffffffu, v, 1);  // lane 31 skips it
    x[threadIdx.x] = v;
}
__global__ void missing_barrier_kernel(const float* x, float* y, int n) {
    __shared__ float tile[128];
    tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    // missing __syncthreads(): reads a neighbour's element that may not be written yet
    y[blockIdx.x * blockDim.x + threadIdx.x] = tile[threadIdx.x > 0 ? threadIdx.x - 1 : 0];
    (void)n;
}

TEST_CASE("a barrier that some threads never reach aborts, naming kernel, block and thread") {
    auto [aborted, err] = run_in_child([] {
        DeviceBuffer<float> x(64);
        divergent_barrier_kernel<<<2, 64>>>(x);
    });
    CHECK(aborted);
    CHECK(err.find("divergent_barrier_kernel") != std::string::npos);
    CHECK(err.find("__syncthreads") != std::string::npos);
    CHECK(err.find("(40,0,0)") != std::string::npos);
}

TEST_CASE("a warp shuffle with a lane missing from its mask aborts") {
    auto [aborted, err] = run_in_child([] {
        DeviceBuffer<float> x(32);
        cudaMemset(x, 0, x.bytes());
        shuffle_missing_lane_kernel<<<1, 32>>>(x);
    });
    CHECK(aborted);
    CHECK(err.find("__shfl_down_sync") != std::string::npos);
    CHECK(err.find("lane 31") != std::string::npos);
}

TEST_CASE("a missing barrier gives a wrong answer under one of the two thread orders") {
    const int n = 256;
    Rng rng(8);
    std::vector<float> x = random_vector(n, rng), ref(n);
    for (int i = 0; i < n; i++) ref[i] = x[i % 128 > 0 ? i - 1 : i];
    int wrong = 0;
    for (auto order : {cudasim::Order::forward, cudasim::Order::reverse}) {
        cudasim::set_order(order);
        DeviceBuffer<float> dx(x), dy(n);
        missing_barrier_kernel<<<2, 128>>>(dx, dy, n);
        wrong += dy.download() != ref;
    }
    cudasim::set_order(cudasim::Order::forward);
    // forward: thread t reads t-1, already written, and happens to work; reverse: t-1 runs after t and
    // the read sees the NaN poison. Testing under both orders catches the missing barrier.
    CHECK(wrong == 1);
}

// ----------------------------------------------------------------------------
// The checks every CPU build makes (the per-access ones are in test/test_cudarun.cu).
__global__ void partial_warp_shuffle_kernel(int* out) {  // out: (blockDim.x)
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 4);
}
__global__ void __launch_bounds__(64) bounded_kernel(int* out) { out[threadIdx.x] = 1; }
__global__ void static_shared_kernel(float* out) {  // out: (1)
    __shared__ float big[10240];  // 40 KB
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = big[0];
}

TEST_CASE("a shuffle from a lane past a partial warp gives poison; cudaMalloc memory starts as NaN") {
    DeviceBuffer<int> out(40);
    partial_warp_shuffle_kernel<<<1, 40>>>(out);  // the second warp has lanes 0..7 only
    std::vector<int> got = out.download();
    for (int t = 0; t < 40; t++) {
        // Past lane 31 a shuffle down keeps the lane's own value; lanes 8..31 of warp 1 do not exist.
        int want = t < 32 ? (t + 4 < 32 ? t + 4 : t) : (t + 4 < 40 ? t + 4 : -1);
        CHECK(got[t] == want);
    }
    DeviceBuffer<float> fresh(3);
    for (float v : fresh.download()) CHECK(std::isnan(v));
}

TEST_CASE("__launch_bounds__, static shared memory and host pointers are checked at the launch") {
    auto [too_many, err] = run_in_child([] {
        DeviceBuffer<int> out(128);
        bounded_kernel<<<1, 128>>>(out);
    });
    CHECK(too_many);
    CHECK(err.find("kernel 'bounded_kernel' launched with 128 threads per block, but it is declared "
                   "__launch_bounds__(64)") != std::string::npos);
    DeviceBuffer<int> ok(64);
    bounded_kernel<<<1, 64>>>(ok);
    CHECK(cudaGetLastError() == cudaSuccess);

    // 40 KB static: fine alone; with 16 KB dynamic it is over 48 KB, which the second launch knows.
    DeviceBuffer<float> out(1);
    static_shared_kernel<<<1, 32>>>(out);
    CHECK(cudaGetLastError() == cudaSuccess);
    static_shared_kernel<<<1, 32, 16 * 1024>>>(out);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    cuda_check(cudaFuncSetAttribute(static_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 16 * 1024));
    static_shared_kernel<<<1, 32, 16 * 1024>>>(out);
    CHECK(cudaGetLastError() == cudaSuccess);

    auto [refused, msg] = run_in_child([] {
        std::vector<int> host(64);
        bounded_kernel<<<1, 64>>>(host.data());
    });
    CHECK(refused);
    CHECK(msg.find("kernel 'bounded_kernel' argument 1 is 0x") != std::string::npos);
    CHECK(msg.find("a host pointer") != std::string::npos);
}

TEST_CASE("memcpy outside an allocation and launches from a kernel are refused") {
    DeviceBuffer<float> d(10);
    std::vector<float> h(11);
    CHECK(cudaMemcpy(d, h.data(), 11 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(h.data(), d.ptr + 5, 6 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(h.data(), d.ptr + 5, 5 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    cudaGetLastError();
}

TEST_CASE("the chevron rewrite: templates, nested parentheses, comments and strings") {
    using cudasim::rewrite_cuda_source;
    CHECK(rewrite_cuda_source("k<<<g, b>>>(x);") == "::cudasim::launch(k, \"k\", g, b)(x);");
    CHECK(rewrite_cuda_source("ns::k<float, 4><<<dim3(f(a, b), 2), 64, 0, s>>>(p, q);") ==
          "::cudasim::launch(ns::k<float, 4>, \"ns::k<float, 4>\", dim3(f(a, b), 2), 64, 0, s)(p, q);");
    CHECK(rewrite_cuda_source("k<(N > 2)><<<g, b>>>(x);") == "::cudasim::launch(k<(N > 2)>, \"k<(N > 2)>\", g, b)(x);");
    CHECK(rewrite_cuda_source("k<<<(a >> 1), b>>>(x);") == "::cudasim::launch(k, \"k\", (a >> 1), b)(x);");
    CHECK(rewrite_cuda_source("// k<<<g, b>>>(x);\n") == "// k<<<g, b>>>(x);\n");
    CHECK(rewrite_cuda_source("/* <<< */ s = \"<<<\"; c = '<';") == "/* <<< */ s = \"<<<\"; c = '<';");
    CHECK(rewrite_cuda_source("k<<<g,\n   b>>>(x);\nnext") ==
          "::cudasim::launch(k, \"k\", g,\n   b)(x);\nnext");  // lines kept
    CHECK(rewrite_cuda_source("extern __shared__ __align__(16) float4 smem[];") ==
          "static thread_local float4* const smem = reinterpret_cast<float4*>(::cudasim::dynamic_shared_memory());");
    CHECK(rewrite_cuda_source("extern __shared__ half rows[][K + 8];") ==  // rows of K + 8: rows[i][j] as on a GPU
          "static thread_local half (* const rows)[K + 8] = reinterpret_cast<half (*)[K + 8]>"
          "(::cudasim::dynamic_shared_memory());");
    CHECK(rewrite_cuda_source("asm volatile(\"mov\");").find("GCC error") != std::string::npos);
    CHECK(rewrite_cuda_source("int plasma = 1;") == "int plasma = 1;");
    CHECK(rewrite_cuda_source("__shared__ float t[32][33];") ==
          "__shared__ float cudasim_shared_t[32][33]; auto& t = *::cudasim::check::shared_variable(&cudasim_shared_t, "
          "\"t\");");
    CHECK(rewrite_cuda_source("__shared__ __align__(16) int n;") ==
          "__shared__ __align__(16) int cudasim_shared_n; auto& n = "
          "*::cudasim::check::shared_variable(&cudasim_shared_n, \"n\");");
    CHECK(rewrite_cuda_source("__shared__ float a[2], b[2];") == "__shared__ float a[2], b[2];");  // left as it is
    CHECK(rewrite_cuda_source("__shared__ alignas(alignof(float4)) float t[4];") ==  // attributes first, as C++ wants
          "alignas(alignof(float4)) __shared__ float cudasim_shared_t[4]; auto& t = "
          "*::cudasim::check::shared_variable(&cudasim_shared_t, \"t\");");
    CHECK(rewrite_cuda_source("__shared__ alignas(16) float a[2], b[2];") ==
          "alignas(16) __shared__ float a[2], b[2];");
    CHECK(rewrite_cuda_source("__global__ void __launch_bounds__(N, 2) k(float* x) { x[0] = 1; }") ==
          "__global__ void __launch_bounds__(N, 2) k(float* x) { ::cudasim::check::launch_bounds(N, __func__); x[0] = "
          "1; }");
    CHECK(rewrite_cuda_source("__global__ void __launch_bounds__(256) k(float* x);") ==
          "__global__ void __launch_bounds__(256) k(float* x);");  // a declaration: no body to check in
    CHECK_THROWS(rewrite_cuda_source("k<<<g, b(x);"));
    CHECK(rewrite_cuda_source("extern float __shared__ s[];") ==  // the qualifier after the type
          "static thread_local float* const s = reinterpret_cast<float*>(::cudasim::dynamic_shared_memory());");
    CHECK(rewrite_cuda_source("extern \"C\" int f();") == "extern \"C\" int f();");
    CHECK(rewrite_cuda_source("k<<<g, b>>>(NULL, x_NULL);") == "::cudasim::launch(k, \"k\", g, b)(nullptr, x_NULL);");
}

TEST_CASE("__CUDA_ARCH__ conditionals: device bodies as the device pass, host bodies as written, files as both") {
    using cudasim::resolve_cuda_arch;
    // in a device-only body: the device pass's value; in a __host__ __device__ or host body: unchanged
    CHECK(
        resolve_cuda_arch("__global__ void k(int* p) {\n#if __CUDA_ARCH__ >= 700\np[0] = __CUDA_ARCH__;\n#endif\n}") ==
        "__global__ void k(int* p) {\n#if ( CUDASIM_CUDA_ARCH >= 700)\np[0] = CUDASIM_CUDA_ARCH;\n#endif\n}");
    const std::string hd = "__host__ __device__ int f() {\n#ifdef __CUDA_ARCH__\nreturn 1;\n#endif\nreturn 0; }";
    CHECK(resolve_cuda_arch(hd) == hd);
    const std::string host = "int g() {\n#if defined(__CUDA_ARCH__)\nreturn 1;\n#endif\nreturn 0; }";
    CHECK(resolve_cuda_arch(host) == host);
    // a multi-line directive stays as many lines; comments in a condition do not matter
    std::string multi = resolve_cuda_arch("__device__ int h() {\n#if __CUDA_ARCH__ /* x */ \\\n >= 900\nreturn 9;\n"
                                          "#endif\nreturn 8; }");
    CHECK(std::count(multi.begin(), multi.end(), '\n') == 5);
    CHECK(multi.find("#if ( CUDASIM_CUDA_ARCH") != std::string::npos);
    // declaration level: the host pass's branch, or the device pass's where the host's is empty or absent
    CHECK(resolve_cuda_arch("#if __CUDA_ARCH__ >= 700\n__device__ int a();\n#endif\n") ==
          "#if ((( 0 >= 700)) || ((( CUDASIM_CUDA_ARCH >= 700)) && !((( 0 >= 700)))))\n__device__ int a();\n#endif\n");
    const std::string both = "#ifdef __CUDA_ARCH__\n#define X 1\n#else\n#define X 2\n#endif\n";
    CHECK(resolve_cuda_arch(both).find("#elif ((!( 0 ) && (1)) ||") != std::string::npos);  // the host's #else wins
    CHECK(resolve_cuda_arch("int x;\n") == "int x;\n");
}

// clock() and clock64() read one cycle counter, clock() at least its low 32 bits.
__global__ void clocks_kernel(long long* out) {  // out: (3)
    out[0] = clock64();
    out[1] = clock();
    out[2] = clock64();
}

TEST_CASE("clock() in device code is the device's cycle counter, wherever <ctime> was included") {
    using cudasim::resolve_device_clock;
    DeviceBuffer<long long> out(3);
    clocks_kernel<<<1, 1>>>(out);
    cuda_check(cudaGetLastError());
    std::vector<long long> got = out.download();
    // clock()'s low 32 bits lie between the two clock64() reads around it (modulo 2^32); the C library's clock()
    // (the process's CPU time in microseconds) would not, but by a chance of (cycles between the reads) / 2^32
    auto low = [](long long x) { return static_cast<uint32_t>(x); };
    CHECK(low(got[1]) - low(got[0]) <= low(got[2]) - low(got[0]));
    CHECK(resolve_device_clock("__global__ void k(clock_t* t) { t[0] = clock (); }") ==
          "__global__ void k(clock_t* t) { t[0] = cudasim_clock (); }");
    CHECK(resolve_device_clock("__host__ __device__ long f() { return std::clock(); }") ==
          "__host__ __device__ long f() { return std::cudasim_clock(); }");
    for (std::string kept : {"int main() { return clock(); }",
                             "__device__ int f(S s) { return s.clock() + p->clock(); }",
                             "__device__ int g() { int clock = 1; return clock; /* clock() */ }",
                             "__device__ clock_t clock_of(); clock_t t = clock();"})
        CHECK(resolve_device_clock(kept) == kept);
}

// Each thread spins until `cycles` of its clock have passed, as the CUDA samples' clockBlock kernels do.
__global__ void spin_kernel(long long cycles, long long* start, long long* end) {  // start, end: (threads)
    long long t0 = clock64(), t = t0;
    while (t - t0 < cycles) t = clock64();
    start[threadIdx.x] = t0;
    end[threadIdx.x] = t;
}

TEST_CASE("a block's clock runs as if its threads ran side by side: n spinning threads take the time of one") {
    const int n = 256;
    const long long cycles = 1410000;  // 1 ms of the virtual device's 1410 MHz clock
    DeviceBuffer<long long> start(n), end(n);
    spin_kernel<<<1, n>>>(cycles, start, end);  // a first launch starts the OS threads: not in the time below
    cuda_check(cudaDeviceSynchronize());
    auto t0 = std::chrono::steady_clock::now();
    spin_kernel<<<1, n>>>(cycles, start, end);
    cuda_check(cudaDeviceSynchronize());
    double real_cycles = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1.41e9;
    std::vector<long long> s = start.download(), e = end.download();
    for (int i = 0; i < n; i++) {
        CHECK(e[i] - s[i] >= cycles);           // each thread spun its whole time
        if (i > 0) CHECK(s[i] >= e[i - 1]);     // here the threads run one after another: the clock never goes back
    }
    // The block's clock advanced by n times the cycles, in about one thread's spin of real time: n times as fast as
    // the host's clock (which also counts the launch, and whatever else the machine runs meanwhile: 8 times is
    // asked here). With a real-time clock each thread would spin its own millisecond, at the host's pace.
    CHECK(static_cast<double>(e[n - 1] - s[0]) >= n * cycles);
    CHECK(static_cast<double>(e[n - 1] - s[0]) >= real_cycles * 8);
}

TEST_CASE("one device: peer access and inter-process sharing are refused with the error a program can test") {
    DeviceBuffer<float> x(4);
    cudaIpcMemHandle_t handle;
    CHECK(cudaIpcGetMemHandle(&handle, x.ptr) == cudaErrorNotSupported);
    CHECK(cudaGetLastError() == cudaErrorNotSupported);  // and the last error says so, once
    CHECK(cudaGetLastError() == cudaSuccess);
    void* opened = nullptr;
    CHECK(cudaIpcOpenMemHandle(&opened, handle, cudaIpcMemLazyEnablePeerAccess) == cudaErrorNotSupported);
    CHECK(opened == nullptr);
    cudaMemPoolPtrExportData data;
    CHECK(cudaMemPoolExportPointer(&data, x.ptr) == cudaErrorNotSupported);
    CHECK(cudaDeviceEnablePeerAccess(1, 0) == cudaErrorInvalidDevice);
    (void)cudaGetLastError();
}

TEST_CASE("host-only function definitions are marked (not instrumented by the checked build); others are not") {
    using cudasim::mark_host_functions;
    CHECK(mark_host_functions("void ref(float* out, int B, int OC) { out[0] = 0; }") ==
          "CUDASIM_HOST_CODE void ref(float* out, int B, int OC) { out[0] = 0; }");
    CHECK(mark_host_functions("template <class T>\nstatic T twice(T x) { return 2 * x; }") ==
          "template <class T>\nCUDASIM_HOST_CODE static T twice(T x) { return 2 * x; }");
    CHECK(mark_host_functions("class S {\npublic:\n  int get() const { return 1; }\n};") ==
          "class S {\npublic:\n  CUDASIM_HOST_CODE int get() const { return 1; }\n};");
    CHECK(mark_host_functions("extern \"C\" int c() { return 0; }") ==
          "extern \"C\" CUDASIM_HOST_CODE int c() { return 0; }");
    // what a kernel may call, or might: left instrumented
    for (const char* kept : {"__global__ void k(float* x) { x[0] = 1; }", "__device__ float d(float x) { return x; }",
                             "__host__ __device__ float hd(float x) { return x; }",
                             "#define HD __host__ __device__\nHD float hd(float x) { return x; }",
                             "constexpr int c(int x) { return x; }", "auto f = [](int x) { return x; };",
                             "template <class T> __global__ void tk(T* x) { x[0] = 1; }"})
        CHECK(mark_host_functions(kept) == kept);
    // a multi-line macro before a function is not part of its declaration
    CHECK(mark_host_functions("#define CHECK(x) \\\n    do { x; } while (0)\nint main() { return 0; }") ==
          "#define CHECK(x) \\\n    do { x; } while (0)\nCUDASIM_HOST_CODE int main() { return 0; }");
    // only declaration-level functions: a lambda inside one is part of its body
    CHECK(mark_host_functions("void h() { auto l = [](int x) { return x; }; }") ==
          "CUDASIM_HOST_CODE void h() { auto l = [](int x) { return x; }; }");
}

// What the rewrite knows about a file's kernels decides how a launch is written.
TEST_CASE("the chevron rewrite: deduced templates, default arguments, a host function of the kernel's name") {
    using namespace cudasim;
    const std::string src =
        "template <class T> __global__ void tk(T* x, int n) {}\n"
        "__global__ void dk(float* x, int n = 4) {}\n"
        "__global__ void __launch_bounds__(256) same(float* x, int n) {}\n"
        "void same(float* x, int n, int block_size) { same<<<1, block_size>>>(x, n); }\n"
        "__global__ void plain(int* p) {}\n";
    KernelTable table;
    scan_kernels(src, table);
    CHECK(table.at("tk").is_template);
    CHECK(table.at("dk").has_defaults);
    CHECK(table.at("same").host_same_name);
    CHECK(table.at("same").params == "float* x, int n");
    CHECK_FALSE(table.at("plain").host_same_name);
    CHECK(rewrite_cuda_source("tk<<<g, b>>>(x, n);", &table) ==
          "::cudasim::launch_call([](auto&... cudasim_args) { tk(cudasim_args...); }, \"tk\", g, b)(x, n);");
    CHECK(rewrite_cuda_source("tk<float><<<g, b>>>(x, n);", &table) ==
          "::cudasim::launch(tk<float>, \"tk<float>\", g, b)(x, n);");
    CHECK(rewrite_cuda_source("dk<<<g, b>>>(x);", &table) ==
          "::cudasim::launch_call([](auto&... cudasim_args) { dk(cudasim_args...); }, \"dk\", g, b)(x);");
    CHECK(rewrite_cuda_source("same<<<g, b>>>(x, n);", &table) ==
          "::cudasim::launch(static_cast<void (*)(float* x, int n)>(same), \"same\", g, b)(x, n);");
    CHECK(rewrite_cuda_source("plain<<<g, b>>>(p);", &table) == "::cudasim::launch(plain, \"plain\", g, b)(p);");
    // a non-template kernel is registered for launches with void** args, on its closing line
    CHECK(rewrite_cuda_source("__global__ void plain(int* p) {\n}", &table) ==
          "__global__ void plain(int* p) {\n} [[maybe_unused]] static const bool cudasim_registered_plain = "
          "::cudasim::register_kernel(static_cast<void (*)(int* p)>(plain), \"plain\");");
}
#endif
