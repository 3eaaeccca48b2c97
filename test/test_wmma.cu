// Tests of bf16/fp16 numbers and of the warp matrix API (nvcuda::wmma, tensor cores).
// The kernels run in both builds: on a GPU they show that the emulation (dev/shadow/mma.h, dev/cudasim.h) gives
// what the hardware gives. Bit-for-bit comparisons of wmma sums, and the tests of what only the emulator does
// (aborting a wmma call a lane misses), are CPU-build only: a tensor core rounds its partial sums its own way.
#include <mma.h>

#include <cstring>
#include <ios>

#include "test/test_util.h"

namespace wmma = nvcuda::wmma;

// ----------------------------------------------------------------------------
// fp32 -> bf16 rounding: round to nearest, ties to even (cvt.rn.bf16.f32), NaN to the canonical 0x7fff.
__global__ void float_to_bf16_kernel(unsigned short* out, const float* in, int n) {  // out, in: (n)
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    __nv_bfloat16 r = __float2bfloat16_rn(in[i]);
    out[i] = *reinterpret_cast<unsigned short*>(&r);
}

static float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

TEST_CASE("fp32 to bf16 rounds to nearest even, as cvt.rn.bf16.f32 does") {
    // bf16 is the upper 16 bits of an fp32; the lower 16 decide the rounding (0x8000 is the tie).
    struct Case { uint32_t in; unsigned short want; };
    const Case cases[] = {
        {0x3f800000, 0x3f80},  // 1.0: exact
        {0x3f807fff, 0x3f80},  // just below the tie: down
        {0x3f808000, 0x3f80},  // tie, even below (0x3f80): down
        {0x3f818000, 0x3f82},  // tie, odd below (0x3f81): up to even
        {0x3f808001, 0x3f81},  // just above the tie: up
        {0xbf818000, 0xbf82},  // negative: the magnitude rounds the same way
        {0x7f7fffff, 0x7f80},  // FLT_MAX rounds up to +inf (past bf16's largest finite, 0x7f7f)
        {0x7f7f7fff, 0x7f7f},  // ... just below the tie stays bf16's largest finite
        {0x00018000, 0x0002},  // subnormals round too (no flush to zero): tie, odd below -> up
        {0x00008000, 0x0000},  // tie, even below -> 0
        {0x7f800000, 0x7f80},  // +inf
        {0xff800000, 0xff80},  // -inf
        {0x7fc00001, 0x7fff},  // a NaN becomes the canonical NaN
        {0xffa00000, 0x7fff},  // a negative signalling NaN too
    };
    const int n = sizeof cases / sizeof cases[0];
    std::vector<float> in(n);
    for (int i = 0; i < n; i++) in[i] = bits_to_float(cases[i].in);
    DeviceBuffer<float> d_in(in);
    DeviceBuffer<unsigned short> d_out(n);
    float_to_bf16_kernel<<<1, 32>>>(d_out, d_in, n);
    cuda_check(cudaGetLastError());
    std::vector<unsigned short> got = d_out.download();
    for (int i = 0; i < n; i++) {
        CAPTURE(i);
        CHECK(got[i] == cases[i].want);
    }
}

// ----------------------------------------------------------------------------
// One warp computes D = A·B + C for one tile, each operand in the layout the template says.
template <class T, class LayoutA, class LayoutB, int M, int N, int K>
__global__ void wmma_tile_kernel(float* d,        // (M, N) row-major, leading dimension ldd
                                 const T* a,      // (M, K) in LayoutA, leading dimension lda
                                 const T* b,      // (K, N) in LayoutB, leading dimension ldb
                                 const float* c,  // (M, N), row- or column-major, leading dimension ldc
                                 int lda, int ldb, int ldc, bool c_col_major, int ldd) {
    wmma::fragment<wmma::matrix_a, M, N, K, T, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, M, N, K, T, LayoutB> fb;
    wmma::fragment<wmma::accumulator, M, N, K, float> acc;
    wmma::load_matrix_sync(fa, a, lda);
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::load_matrix_sync(acc, c, ldc, c_col_major ? wmma::mem_col_major : wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);  // d may be c: the usual accumulate-in-place
    wmma::store_matrix_sync(d, acc, ldd, wmma::mem_row_major);
}

// A logical rows×cols matrix stored row- or column-major with leading dimension ld (padding poisoned).
template <class T>
static std::vector<T> store(const std::vector<float>& m, int rows, int cols, bool col_major, int ld) {
    std::vector<T> s(static_cast<size_t>(ld) * (col_major ? cols : rows), T(NAN));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            s[col_major ? static_cast<size_t>(c) * ld + r : static_cast<size_t>(r) * ld + c] = T(m[r * cols + c]);
    return s;
}

// The emulation's definition of mma_sync, written independently of it: products exact (in double: two 8- or
// 11-bit significands), each added to the fp32 sum with one rounding, k ascending, C first.
static std::vector<float> mma_reference(const std::vector<float>& a, const std::vector<float>& b,
                                        const std::vector<float>& c, int M, int N, int K) {
    std::vector<float> d(c);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            for (int k = 0; k < K; k++)
                d[i * N + j] = static_cast<float>(static_cast<double>(d[i * N + j]) +
                                                  static_cast<double>(a[i * K + k]) * b[k * N + j]);
    return d;
}

template <class T, class LayoutA, class LayoutB, int M, int N, int K>
static void check_wmma_tile(Rng& rng, bool c_col_major) {
    constexpr bool a_col = std::is_same_v<LayoutA, wmma::col_major>, b_col = std::is_same_v<LayoutB, wmma::col_major>;
    CAPTURE(M); CAPTURE(N); CAPTURE(K); CAPTURE(a_col); CAPTURE(b_col); CAPTURE(c_col_major);
    // Inputs rounded to T first, so the reference sees exactly what the kernel sees.
    auto rounded = [&](int n) {
        std::vector<float> v = random_vector(n, rng);
        for (auto& x : v) x = static_cast<float>(T(x));
        return v;
    };
    std::vector<float> a = rounded(M * K), b = rounded(K * N), c = random_vector(M * N, rng);
    const int lda = (a_col ? M : K) + 8, ldb = (b_col ? K : N) + 8, ldc = (c_col_major ? M : N) + 4, ldd = N + 4;
    DeviceBuffer<T> d_a(store<T>(a, M, K, a_col, lda)), d_b(store<T>(b, K, N, b_col, ldb));
    DeviceBuffer<float> d_c(store<float>(c, M, N, c_col_major, ldc)), d_d(static_cast<size_t>(M) * ldd);
    poison(d_d);
    wmma_tile_kernel<T, LayoutA, LayoutB, M, N, K><<<1, 32>>>(d_d, d_a, d_b, d_c, lda, ldb, ldc, c_col_major, ldd);
    cuda_check(cudaGetLastError());
    std::vector<float> stored = d_d.download(), got(M * N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) got[i * N + j] = stored[static_cast<size_t>(i) * ldd + j];
    std::vector<float> want = mma_reference(a, b, c, M, N, K);
    if (cpu_build) {
        CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
        for (int i = 0; i < M * N; i++)
            if (std::memcmp(&got[i], &want[i], 4) != 0) {
                FAIL_CHECK("element (" << i / N << ", " << i % N << "): " << std::hexfloat << got[i] << ", reference "
                                       << want[i]);
                break;
            }
    } else {
        // A tensor core sums in its own order and rounding: within a few fp32 roundings of Σ|a||b| + |c|.
        check_close("wmma tile", got, want, Tolerance{1e-5, 1e-5, 1e-6});
    }
}

template <class T, int M, int N, int K>
static void check_wmma_layouts(Rng& rng) {
    check_wmma_tile<T, wmma::row_major, wmma::col_major, M, N, K>(rng, false);
    check_wmma_tile<T, wmma::row_major, wmma::row_major, M, N, K>(rng, true);
    check_wmma_tile<T, wmma::col_major, wmma::col_major, M, N, K>(rng, true);
    check_wmma_tile<T, wmma::col_major, wmma::row_major, M, N, K>(rng, false);
}

TEST_CASE("wmma mma_sync: bf16 and fp16 tiles, every layout, match the fp32 scalar loop (bit for bit on the CPU)") {
    Rng rng(1501);
    SUBCASE("bf16") {
        check_wmma_layouts<__nv_bfloat16, 16, 16, 16>(rng);
        check_wmma_layouts<__nv_bfloat16, 32, 8, 16>(rng);
        check_wmma_layouts<__nv_bfloat16, 8, 32, 16>(rng);
    }
    SUBCASE("fp16") {
        check_wmma_layouts<__half, 16, 16, 16>(rng);
        check_wmma_layouts<__half, 32, 8, 16>(rng);
        check_wmma_layouts<__half, 8, 32, 16>(rng);
    }
}

// fp16 inputs with an fp16 result: D (fp16) = A·B + C (fp32), summed in fp32 and rounded to fp16 once here.
__global__ void wmma_half_result_kernel(__half* d, const __half* a, const __half* b, const float* c) {  // all (16, 16)
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fragment<wmma::accumulator, 16, 16, 16, __half> fd;
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
    wmma::mma_sync(fd, fa, fb, fc);
    wmma::store_matrix_sync(d, fd, 16, wmma::mem_row_major);
}

TEST_CASE("wmma mma_sync: fp16 inputs, fp32 C, fp16 D") {
    Rng rng(1502);
    std::vector<float> a = random_vector(256, rng), b = random_vector(256, rng), c = random_vector(256, rng);
    for (auto* v : {&a, &b})
        for (float& x : *v) x = __half2float(__float2half_rn(x));
    std::vector<__half> a16(a.begin(), a.end()), b16(b.begin(), b.end());
    DeviceBuffer<__half> d_a(a16), d_b(b16), d_d(256);
    DeviceBuffer<float> d_c(c);
    wmma_half_result_kernel<<<1, 32>>>(d_d, d_a, d_b, d_c);
    cuda_check(cudaGetLastError());
    std::vector<__half> d = d_d.download();
    std::vector<float> want = mma_reference(a, b, c, 16, 16, 16), got(256);
    for (int i = 0; i < 256; i++) got[i] = __half2float(d[i]);
    if (cpu_build) {
        for (int i = 0; i < 256; i++) CHECK(got[i] == __half2float(__float2half_rn(want[i])));
    } else {
        check_close("wmma fp16 result", got, want, Tolerance{1e-3, 1e-3, 1e-3});  // fp16: 11 significant bits
    }
}

// ----------------------------------------------------------------------------
// Per-element arithmetic on fragments (x[], num_elements), as the CUDA samples scale C by beta, with the GPU's
// num_elements; fill_fragment.
__global__ void wmma_elementwise_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b, int* sizes) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fh;
    wmma::fill_fragment(acc, 0.5f);
    for (int i = 0; i < acc.num_elements; i++) acc.x[i] *= 4.0f;  // C = 2 everywhere
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_col_major);
    if (threadIdx.x == 0) {
        sizes[0] = fa.num_elements; sizes[1] = fb.num_elements; sizes[2] = acc.num_elements; sizes[3] = fh.num_elements;
    }
}

TEST_CASE("wmma fragments: num_elements as on the GPU, fill_fragment and per-element arithmetic") {
    std::vector<float> a(256), b(256);
    for (int i = 0; i < 256; i++) a[i] = static_cast<float>(i % 16 - 8), b[i] = i / 16 == i % 16 ? 1.0f : 0.0f;
    std::vector<__nv_bfloat16> a16(a.begin(), a.end()), b16(b.begin(), b.end());
    DeviceBuffer<__nv_bfloat16> d_a(a16), d_b(b16);  // b is the identity (column-major = row-major)
    DeviceBuffer<float> d_d(256);
    DeviceBuffer<int> d_sizes(4);
    wmma_elementwise_kernel<<<1, 32>>>(d_d, d_a, d_b, d_sizes);
    cuda_check(cudaGetLastError());
    std::vector<float> d = d_d.download();
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) CHECK(d[j * 16 + i] == a[i * 16 + j] + 2.0f);  // stored column-major: D = A + 2
    CHECK(d_sizes.download() == std::vector<int>{8, 8, 8, 16});  // CUDA 13 <crt/mma.h>: bf16 8, fp32 8, fp16 16
}

// ----------------------------------------------------------------------------
// What only the emulator does: the order of the sums is defined, and a misused wmma stops the run.
#if defined(CUDASIM)
TEST_CASE("wmma mma_sync sums C first, then the products k ascending, one fp32 rounding each") {
    // Row 0 of A·B: the products are 1·1 (k = 0) and 2^-12·2^-12 = 2^-24 (k = 1..15), C = 0. Ascending:
    // 1 + 2^-24 is a tie between 1 and 1 + 2^-23 and rounds to even (1), fifteen times: exactly 1. Summed
    // smallest first it would be 1 + 2^-20, pairwise 1 + 2^-20 too. Row 1: the same products with C = 1 and
    // a first product of 0: C first keeps 1, C last would give 1 + 2^-20.
    std::vector<float> a(256, 0.0f), b(256, 0.0f), c(256, 0.0f);
    for (int k = 0; k < 16; k++) {
        a[0 * 16 + k] = k == 0 ? 1.0f : std::ldexp(1.0f, -12);
        a[1 * 16 + k] = k == 0 ? 0.0f : std::ldexp(1.0f, -12);
        b[k * 16 + 0] = k == 0 ? 1.0f : std::ldexp(1.0f, -12);
    }
    c[1 * 16 + 0] = 1.0f;
    std::vector<__nv_bfloat16> a16(a.begin(), a.end()), b16(b.begin(), b.end());
    DeviceBuffer<__nv_bfloat16> d_a(a16), d_b(b16);
    DeviceBuffer<float> d_c(c), d_d(256);
    wmma_tile_kernel<__nv_bfloat16, wmma::row_major, wmma::row_major, 16, 16, 16><<<1, 32>>>(d_d, d_a, d_b, d_c, 16, 16,
                                                                                          16, false, 16);
    std::vector<float> d = d_d.download();
    CHECK(d[0] == 1.0f);
    CHECK(d[16] == 1.0f);
}

__global__ void wmma_missing_lane_kernel(float* d, const __nv_bfloat16* a) {  // lane 31 skips the product
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, a, 16);
    if (threadIdx.x % 32 != 31) wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void wmma_load_kernel(const __nv_bfloat16* a, int offset, int ldm) {  // lane 3 may pass another pointer
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + (offset >= 0 ? offset : threadIdx.x == 3 ? 16 : 0), ldm);
}

TEST_CASE("a misused wmma call aborts: a missing lane, a partial warp, unaligned or differing arguments") {
    DeviceBuffer<__nv_bfloat16> a(1024);
    cuda_check(cudaMemset(a, 0, a.bytes()));
    auto [missing, err1] = run_in_child([&] {
        DeviceBuffer<float> d(256);
        wmma_missing_lane_kernel<<<1, 32>>>(d, a);
        cudaDeviceSynchronize();
    });
    CHECK(missing);
    CHECK(err1.find("nvcuda::wmma::mma_sync") != std::string::npos);
    CHECK(err1.find("(lane 31)") != std::string::npos);
    auto [partial, err2] = run_in_child([&] {
        wmma_load_kernel<<<1, 48>>>(a, 0, 16);
        cudaDeviceSynchronize();
    });
    CHECK(partial);
    CHECK(err2.find("warp 1, which has 16 threads") != std::string::npos);
    CHECK(err2.find("all 32 lanes of a full warp") != std::string::npos);
    auto [unaligned, err3] = run_in_child([&] {
        wmma_load_kernel<<<1, 32>>>(a, 8, 16);  // 16 bytes past an aligned start
        cudaDeviceSynchronize();
    });
    CHECK(unaligned);
    CHECK(err3.find("must be 32-byte aligned") != std::string::npos);
    auto [bad_ldm, err4] = run_in_child([&] {
        wmma_load_kernel<<<1, 32>>>(a, 0, 20);  // 40 bytes: not a multiple of 16
        cudaDeviceSynchronize();
    });
    CHECK(bad_ldm);
    CHECK(err4.find("ldm = 20") != std::string::npos);
    auto [differ, err5] = run_in_child([&] {
        wmma_load_kernel<<<1, 32>>>(a, -1, 16);
        cudaDeviceSynchronize();
    });
    CHECK(differ);
    CHECK(err5.find("thread (3,0,0) calls nvcuda::wmma::load_matrix_sync") != std::string::npos);
    CHECK(err5.find("all lanes of the warp must pass the same arguments") != std::string::npos);
    wmma_load_kernel<<<1, 64>>>(a, 0, 16);  // and the correct call runs
    CHECK(cudaGetLastError() == cudaSuccess);
}
#endif
