// cudasim_intrinsics.h — device intrinsics of the CPU build beyond dev/cudasim.h's core set:
// the remaining atomics (atomicInc/Dec, 16-bit float and bf16 pairs, 64-bit min/max/and/or/xor, the
// _system/_block scopes), integer intrinsics (__mul24, __umulhi, __byte_perm, funnel shifts, ...), float
// arithmetic with explicit rounding (__fadd_rd, ...), the half/bf16 math the CUDA headers give only to
// device code (__hfma2, hexp, h2sqrt, ...), and __trap and device-side assert, which stop the kernel and
// leave a sticky error (cudaErrorLaunchFailure, cudaErrorAssert) as on a GPU.
//
// Included by dev/cudasim.h; the implementation half (the __assert_fail override) goes into
// build/cpu/cudasim.o.
#ifndef GPTCU_CUDASIM_INTRINSICS_H
#define GPTCU_CUDASIM_INTRINSICS_H

#include <cerrno>
#include <cfenv>
#include <ctime>

// ----------------------------------------------------------------------------
// Atomics.
// atomicInc: old >= limit ? 0 : old + 1; atomicDec: (old == 0 || old > limit) ? limit : old - 1.
inline unsigned atomicInc(unsigned* a, unsigned limit) {
    return cudasim_atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
    return cudasim_atomic_update(a, [limit](unsigned o) { return o == 0 || o > limit ? limit : o - 1; });
}
inline long long atomicAdd(long long* a, long long v) { return cudasim_atomic_add(a, v); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
    return cudasim_atomic_update(a, [v](unsigned long long o) { return o > v ? o : v; });
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
    return cudasim_atomic_update(a, [v](unsigned long long o) { return o < v ? o : v; });
}
inline long long atomicMin(long long* a, long long v) {
    return cudasim_atomic_update(a, [v](long long o) { return o < v ? o : v; });
}
inline unsigned short atomicCAS(unsigned short* a, unsigned short c, unsigned short v) {
    return cudasim_atomic_cas(a, c, v);
}
inline float atomicMax(float* a, float v) {
    return cudasim_atomic_update(a, [v](float o) { return o > v ? o : v; });
}
inline float atomicMin(float* a, float v) {
    return cudasim_atomic_update(a, [v](float o) { return o < v ? o : v; });
}

// 16-bit floats and their pairs: a compare-and-swap loop on the bits, each element rounded once (as the
// GPU's atomicAdd on __half2 adds both halves, each atomically, with one rounding).
template <class T, class F>
T cudasim_atomic_update_bits(T* a, F f) {
    using Bits = std::conditional_t<sizeof(T) == 2, unsigned short, unsigned>;
    static_assert(sizeof(T) == sizeof(Bits), "16- or 32-bit values");
    cudasim::atomic_ref<Bits> ref(*reinterpret_cast<Bits*>(a));
    Bits old_bits = ref.load();
    for (;;) {
        T old, updated;
        std::memcpy(static_cast<void*>(&old), &old_bits, sizeof(T));
        updated = f(old);
        Bits new_bits;
        std::memcpy(&new_bits, static_cast<const void*>(&updated), sizeof(T));
        if (ref.compare_exchange_weak(old_bits, new_bits)) return old;
    }
}
inline __half atomicAdd(__half* a, __half v) {
    return cudasim_atomic_update_bits(a, [v](__half o) { return __float2half(__half2float(o) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
    return cudasim_atomic_update_bits(
        a, [v](__nv_bfloat16 o) { return __float2bfloat16(__bfloat162float(o) + __bfloat162float(v)); });
}
inline __half2 atomicAdd(__half2* a, __half2 v) {
    return cudasim_atomic_update_bits(a, [v](__half2 o) {
        return __floats2half2_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
    });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* a, __nv_bfloat162 v) {
    return cudasim_atomic_update_bits(a, [v](__nv_bfloat162 o) {
        return __floats2bfloat162_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
    });
}

// Scoped atomics: every scope is the whole machine here (memory is shared by all of it).
#define CUDASIM_SCOPED_ATOMIC(name)                    \
    template <class... A>                              \
    auto name##_system(A... a)->decltype(name(a...)) { \
        return name(a...);                             \
    }                                                  \
    template <class... A>                              \
    auto name##_block(A... a)->decltype(name(a...)) {  \
        return name(a...);                             \
    }
CUDASIM_SCOPED_ATOMIC(atomicAdd)
CUDASIM_SCOPED_ATOMIC(atomicSub)
CUDASIM_SCOPED_ATOMIC(atomicExch)
CUDASIM_SCOPED_ATOMIC(atomicMin)
CUDASIM_SCOPED_ATOMIC(atomicMax)
CUDASIM_SCOPED_ATOMIC(atomicInc)
CUDASIM_SCOPED_ATOMIC(atomicDec)
CUDASIM_SCOPED_ATOMIC(atomicCAS)
CUDASIM_SCOPED_ATOMIC(atomicAnd)
CUDASIM_SCOPED_ATOMIC(atomicOr)
CUDASIM_SCOPED_ATOMIC(atomicXor)
#undef CUDASIM_SCOPED_ATOMIC
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ----------------------------------------------------------------------------
// Integer intrinsics.
inline int __mul24(int a, int b) {  // the low 32 bits of the product of the low 24 bits (sign-extended)
    return static_cast<int>(static_cast<long long>((a << 8) >> 8) * ((b << 8) >> 8));
}
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>(static_cast<long long>(a) * b >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>(static_cast<unsigned long long>(a) * b >> 32);
}
inline long long __mul64hi(long long a, long long b) {
    return static_cast<long long>(static_cast<__int128>(a) * b >> 64);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>(static_cast<unsigned __int128>(a) * b >> 64);
}
inline int __hadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b) >> 1); }
inline int __rhadd(int a, int b) { return static_cast<int>((static_cast<long long>(a) + b + 1) >> 1); }
inline unsigned __uhadd(unsigned a, unsigned b) { return static_cast<unsigned>((0ull + a + b) >> 1); }
inline unsigned __urhadd(unsigned a, unsigned b) { return static_cast<unsigned>((0ull + a + b + 1) >> 1); }
inline unsigned __sad(int a, int b, unsigned c) {
    return (a > b ? static_cast<unsigned>(a - b) : static_cast<unsigned>(b - a)) + c;
}
inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return (a > b ? a - b : b - a) + c; }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned long long __brevll(unsigned long long x) {
    return static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32 |
           __brev(static_cast<unsigned>(x >> 32));
}
// byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {y:x}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long bytes = static_cast<unsigned long long>(y) << 32 | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= static_cast<unsigned>(bytes >> ((s >> (4 * i) & 7u) * 8) & 0xffu) << (8 * i);
    return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
    return static_cast<unsigned>((static_cast<unsigned long long>(hi) << 32 | lo) << (shift & 31) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
    return static_cast<unsigned>((static_cast<unsigned long long>(hi) << 32 | lo) >> (shift & 31));
}
inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {
    return shift >= 32 ? hi : __funnelshift_l(lo, hi, shift);
}
inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
    return shift >= 32 ? hi : __funnelshift_r(lo, hi, shift);
}
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += static_cast<signed char>(a >> (8 * i)) * static_cast<signed char>(b >> (8 * i));
    return c;
}

// ----------------------------------------------------------------------------
// Float arithmetic with an explicit rounding mode. The reference, with_rounding, runs the operation under that
// mode of the CPU's FPU (volatile keeps the compiler from folding it under the default mode). On x86-64, float
// and double arithmetic is SSE/AVX, whose rounding is MXCSR's bits 13-14: two instructions to switch, where
// glibc's fesetround also rewrites the x87 control word and took 92% of an interval-arithmetic sample's time.
namespace cudasim {
template <class T, class F>
T with_rounding(int mode, F f) {
#if defined(__x86_64__) && defined(__SSE2__)
    static_assert(FE_TONEAREST == 0 && FE_DOWNWARD == 0x400 && FE_UPWARD == 0x800 && FE_TOWARDZERO == 0xc00,
                  "glibc's x86 FE_* values: MXCSR's rounding field is the same two bits shifted left by 3");
    const unsigned old = __builtin_ia32_stmxcsr();
    __builtin_ia32_ldmxcsr((old & ~0x6000u) | (static_cast<unsigned>(mode) << 3));
    volatile T r = f();
    __builtin_ia32_ldmxcsr(old);
    return r;
#else
    int old = std::fegetround();
    std::fesetround(mode);
    volatile T r = f();
    std::fesetround(old);
    return r;
#endif
}

// The fast path, with no mode switch (the MXCSR switch still took most of that sample's time): r = RN(x), the
// round-to-nearest result of the exact x, and err, which has the sign of x - r (0 when r is exact). The
// directed result is r, or r's neighbour one ulp toward +inf (up with err > 0; toward zero with r < 0 < err)
// or toward -inf (down with err < 0; toward zero with err < 0 < r): x lies strictly between r and that
// neighbour. r is finite and nonzero, and one ulp is one step of its bit pattern (up in magnitude or down, to
// ±inf past the largest float, to ±0 below the smallest subnormal, as the hardware rounds). Like every other
// operation of a kernel, it assumes the thread runs in round to nearest, the default.
template <class T>
__forceinline__ T round_from_nearest(int mode, T r, T err) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    int step = 0;  // +1 toward +inf, -1 toward -inf
    if (mode == FE_UPWARD) step = err > 0;
    else if (mode == FE_DOWNWARD) step = -(err < 0);
    else if (mode == FE_TOWARDZERO) step = r > 0 ? -(err < 0) : (err > 0);
    if (step == 0) return r;
    Bits bits;
    std::memcpy(&bits, &r, sizeof r);
    bits += (r > 0) == (step > 0) ? Bits(1) : ~Bits(0);  // +1: the next magnitude up, -1: the next one down
    std::memcpy(&r, &bits, sizeof r);
    return r;
}
// Where the error terms below are exact: operands and results in [tiny, huge) in magnitude, tiny = 2^(emin+2p)
// and huge = 2^(emax-1). huge keeps TwoSum's intermediates finite; tiny keeps a product's, a quotient's
// remainder's and a square root's remainder above the subnormals (the error of RN(ab) is exact when
// e_a + e_b >= emin + p - 1). Outside that, and for zero sums (x + (-x) is -0 rounding down, +0 otherwise),
// inf and NaN, the operation takes the MXCSR path.
template <class T>
struct RoundingRange;
template <>
struct RoundingRange<float> {
    static constexpr float tiny = 0x1p-78f, huge = 0x1p126f;  // emin -126, p 24, emax 127
};
template <>
struct RoundingRange<double> {
    static constexpr double tiny = 0x1p-916, huge = 0x1p1022;  // emin -1022, p 53, emax 1023
};
// a op b rounded as mode says (op '+', '-', '*' or '/')
template <class T>
__forceinline__ T rounded_arith(char op, int mode, T a, T b) {
    using R = RoundingRange<T>;
    const T r = op == '+' ? a + b : op == '-' ? a - b : op == '*' ? a * b : a / b;
    const T fa = std::fabs(a), fb = std::fabs(b), fr = std::fabs(r);
    if (op == '+' || op == '-') {
        if (r != 0 && fa < R::huge && fb < R::huge) {
            const T c = op == '+' ? b : -b, v = r - a, err = (a - (r - v)) + (c - v);  // TwoSum: a + c = r + err
            return round_from_nearest(mode, r, err);
        }
    } else if (op == '*') {
        if (fr >= R::tiny && fr < R::huge) return round_from_nearest(mode, r, std::fma(a, b, -r));  // ab - r
    } else if (fr >= R::tiny && fr < R::huge && fa >= R::tiny && fa < R::huge && fb >= R::tiny && fb < R::huge) {
        const T rem = std::fma(-r, b, a);  // a - rb = b (a/b - r), exact for a round-to-nearest quotient
        return round_from_nearest(mode, r, b > 0 ? rem : -rem);
    }
    volatile T x = a, y = b;
    return with_rounding<T>(mode, [&] { return op == '+' ? x + y : op == '-' ? x - y : op == '*' ? x * y : x / y; });
}
template <class T>
__forceinline__ T rounded_sqrt(int mode, T a) {
    const T s = std::sqrt(a);
    if (a >= RoundingRange<T>::tiny && a < RoundingRange<T>::huge)
        return round_from_nearest(mode, s, std::fma(-s, s, a));  // a - s^2 has the sign of sqrt(a) - s
    volatile T x = a;
    return with_rounding<T>(mode, [&] { return std::sqrt(static_cast<T>(x)); });
}
}  // namespace cudasim
#define CUDASIM_ROUNDED_DIRECTED(T, name, op)                                                   \
    inline T name##_rz(T a, T b) { return cudasim::rounded_arith<T>(op, FE_TOWARDZERO, a, b); } \
    inline T name##_ru(T a, T b) { return cudasim::rounded_arith<T>(op, FE_UPWARD, a, b); }     \
    inline T name##_rd(T a, T b) { return cudasim::rounded_arith<T>(op, FE_DOWNWARD, a, b); }
#define CUDASIM_ROUNDED(T, name, op)                                                           \
    inline T name##_rn(T a, T b) { return cudasim::rounded_arith<T>(op, FE_TONEAREST, a, b); } \
    CUDASIM_ROUNDED_DIRECTED(T, name, op)
// __fadd_rn and __fmul_rn are in dev/cudasim.h
CUDASIM_ROUNDED_DIRECTED(float, __fadd, '+')
CUDASIM_ROUNDED_DIRECTED(float, __fmul, '*')
CUDASIM_ROUNDED(float, __fsub, '-')
CUDASIM_ROUNDED(float, __fdiv, '/')
CUDASIM_ROUNDED(double, __dadd, '+')
CUDASIM_ROUNDED(double, __dsub, '-')
CUDASIM_ROUNDED(double, __dmul, '*')
CUDASIM_ROUNDED(double, __ddiv, '/')
#undef CUDASIM_ROUNDED
#undef CUDASIM_ROUNDED_DIRECTED
inline float __fsqrt_rz(float a) { return cudasim::rounded_sqrt(FE_TOWARDZERO, a); }
inline float __fsqrt_ru(float a) { return cudasim::rounded_sqrt(FE_UPWARD, a); }
inline float __fsqrt_rd(float a) { return cudasim::rounded_sqrt(FE_DOWNWARD, a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __dsqrt_rz(double a) { return cudasim::rounded_sqrt(FE_TOWARDZERO, a); }
inline double __dsqrt_ru(double a) { return cudasim::rounded_sqrt(FE_UPWARD, a); }
inline double __dsqrt_rd(double a) { return cudasim::rounded_sqrt(FE_DOWNWARD, a); }
inline double __drcp_rz(double a) { return __ddiv_rz(1.0, a); }
inline double __drcp_ru(double a) { return __ddiv_ru(1.0, a); }
inline double __drcp_rd(double a) { return __ddiv_rd(1.0, a); }
inline float __frcp_rz(float a) { return __fdiv_rz(1.0f, a); }
inline float __frcp_ru(float a) { return __fdiv_ru(1.0f, a); }
inline float __frcp_rd(float a) { return __fdiv_rd(1.0f, a); }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fmaf_rz(float a, float b, float c) {
    volatile float x = a;
    return cudasim::with_rounding<float>(FE_TOWARDZERO, [&] { return std::fma(static_cast<float>(x), b, c); });
}
inline float __fmaf_ru(float a, float b, float c) {
    volatile float x = a;
    return cudasim::with_rounding<float>(FE_UPWARD, [&] { return std::fma(static_cast<float>(x), b, c); });
}
inline float __fmaf_rd(float a, float b, float c) {
    volatile float x = a;
    return cudasim::with_rounding<float>(FE_DOWNWARD, [&] { return std::fma(static_cast<float>(x), b, c); });
}
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline long long __double_as_longlong(double x) {
    long long i;
    std::memcpy(&i, &x, 8);
    return i;
}
inline double __longlong_as_double(long long i) {
    double x;
    std::memcpy(&x, &i, 8);
    return x;
}
inline int __double2int_rn(double x) { return static_cast<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

// ----------------------------------------------------------------------------
// Half and bf16 math that <cuda_fp16.h> / <cuda_bf16.h> declare for device code only: computed in fp32
// and rounded once to the 16-bit type (round to nearest even, the conversions of those headers).
#define CUDASIM_HALF_MATH(H, H2, to_f, from_f, pair_from_f)                                                         \
    inline H __hfma(H a, H b, H c) { return from_f(std::fma(to_f(a), to_f(b), to_f(c))); }                          \
    inline H __hfma_relu(H a, H b, H c) {                                                                           \
        float r = std::fma(to_f(a), to_f(b), to_f(c));                                                              \
        return from_f(r > 0.0f || r != r ? r : 0.0f);                                                               \
    }                                                                                                               \
    inline H2 __hfma2(H2 a, H2 b, H2 c) { return H2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }                \
    inline H2 __hfma2_relu(H2 a, H2 b, H2 c) { return H2(__hfma_relu(a.x, b.x, c.x), __hfma_relu(a.y, b.y, c.y)); } \
    inline H hsqrt(H a) { return from_f(std::sqrt(to_f(a))); }                                                      \
    inline H hrsqrt(H a) { return from_f(1.0f / std::sqrt(to_f(a))); }                                              \
    inline H hrcp(H a) { return from_f(1.0f / to_f(a)); }                                                           \
    inline H hexp(H a) { return from_f(std::exp(to_f(a))); }                                                        \
    inline H hexp2(H a) { return from_f(std::exp2(to_f(a))); }                                                      \
    inline H hexp10(H a) { return from_f(std::pow(10.0f, to_f(a))); }                                               \
    inline H hlog(H a) { return from_f(std::log(to_f(a))); }                                                        \
    inline H hlog2(H a) { return from_f(std::log2(to_f(a))); }                                                      \
    inline H hlog10(H a) { return from_f(std::log10(to_f(a))); }                                                    \
    inline H hsin(H a) { return from_f(std::sin(to_f(a))); }                                                        \
    inline H hcos(H a) { return from_f(std::cos(to_f(a))); }                                                        \
    inline H htanh(H a) { return from_f(std::tanh(to_f(a))); }                                                      \
    inline H hceil(H a) { return from_f(std::ceil(to_f(a))); }                                                      \
    inline H hfloor(H a) { return from_f(std::floor(to_f(a))); }                                                    \
    inline H hrint(H a) { return from_f(std::nearbyint(to_f(a))); }                                                 \
    inline H htrunc(H a) { return from_f(std::trunc(to_f(a))); }                                                    \
    inline H2 h2sqrt(H2 a) { return H2(hsqrt(a.x), hsqrt(a.y)); }                                                   \
    inline H2 h2rsqrt(H2 a) { return H2(hrsqrt(a.x), hrsqrt(a.y)); }                                                \
    inline H2 h2rcp(H2 a) { return H2(hrcp(a.x), hrcp(a.y)); }                                                      \
    inline H2 h2exp(H2 a) { return H2(hexp(a.x), hexp(a.y)); }                                                      \
    inline H2 h2exp2(H2 a) { return H2(hexp2(a.x), hexp2(a.y)); }                                                   \
    inline H2 h2log(H2 a) { return H2(hlog(a.x), hlog(a.y)); }                                                      \
    inline H2 h2log2(H2 a) { return H2(hlog2(a.x), hlog2(a.y)); }                                                   \
    inline H2 h2sin(H2 a) { return H2(hsin(a.x), hsin(a.y)); }                                                      \
    inline H2 h2cos(H2 a) { return H2(hcos(a.x), hcos(a.y)); }                                                      \
    inline H2 h2tanh(H2 a) { return H2(htanh(a.x), htanh(a.y)); }                                                   \
    inline H2 h2ceil(H2 a) { return H2(hceil(a.x), hceil(a.y)); }                                                   \
    inline H2 h2floor(H2 a) { return H2(hfloor(a.x), hfloor(a.y)); }                                                \
    inline H2 h2rint(H2 a) { return H2(hrint(a.x), hrint(a.y)); }                                                   \
    inline H2 h2trunc(H2 a) { return H2(htrunc(a.x), htrunc(a.y)); }
CUDASIM_HALF_MATH(__half, __half2, __half2float, __float2half_rn, __floats2half2_rn)
CUDASIM_HALF_MATH(__nv_bfloat16, __nv_bfloat162, __bfloat162float, __float2bfloat16_rn, __floats2bfloat162_rn)
#undef CUDASIM_HALF_MATH

// ----------------------------------------------------------------------------
// clock() in a kernel is the multiprocessor's cycle counter (clock64's low bits), not the C library's
// process CPU time: a kernel that spins `while (clock() - start < cycles)` must see the virtual clock.
// The rewrite (resolve_device_clock in dev/cudasim_rewrite.h) turns clock() in device code into
// cudasim_clock(), which is the virtual clock inside a kernel and the C library's clock() outside one (a
// `__host__ __device__` function called from the host).
clock_t cudasim_clock();
namespace std {
using ::cudasim_clock;  // `std::clock()` in device code
}

// ----------------------------------------------------------------------------
// __trap: the kernel stops; the next synchronisation (and every later call) returns the launch failure.
[[noreturn]] void __trap();
inline void __brkpt() {}
inline void __prof_trigger(int) {}

#endif  // GPTCU_CUDASIM_INTRINSICS_H

// ============================================================================
#if defined(GPTCU_CUDASIM_IMPLEMENTED) && !defined(GPTCU_CUDASIM_INTRINSICS_IMPLEMENTED)
#define GPTCU_CUDASIM_INTRINSICS_IMPLEMENTED

namespace cudasim {
[[noreturn]] static void trap_thread(cudaError_t error);  // dev/cudasim_runtime.h
}
clock_t cudasim_clock() {
    if (cudasim::this_worker && cudasim::this_worker->current) return static_cast<clock_t>(clock64());
    return std::clock();
}
void __trap() {
    if (!cudasim::this_worker || !cudasim::this_worker->current) cudasim::fatal("__trap() called outside a kernel");
    std::fprintf(stderr,
                 "cudasim: kernel '%s' block (%u,%u,%u) thread (%u,%u,%u): __trap(); the kernel stops and every "
                 "later CUDA call returns cudaErrorLaunchFailure\n",
                 cudasim::this_worker->config->name, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                 threadIdx.z);
    cudasim::trap_thread(cudaErrorLaunchFailure);
}

// assert() in device code: glibc's assert calls __assert_fail, which a program's own definition replaces.
// Inside a kernel it prints what a GPU prints and stops the kernel with the sticky cudaErrorAssert;
// in host code it does what glibc does.
extern "C" void __assert_fail(const char* expr, const char* file, unsigned line, const char* function) noexcept {
    cudasim::Worker* w = cudasim::this_worker;
    if (w && w->current) {
        std::fprintf(stderr, "%s:%u: %s: block: [%u,%u,%u], thread: [%u,%u,%u] Assertion `%s` failed.\n", file, line,
                     function, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, expr);
        cudasim::trap_thread(cudaErrorAssert);
    }
    std::fprintf(stderr, "%s: %s:%u: %s: Assertion `%s' failed.\n", program_invocation_short_name, file, line, function,
                 expr);
    std::fflush(stderr);
    std::abort();
}
#endif  // GPTCU_CUDASIM_INTRINSICS_IMPLEMENTED
