// <mma.h> for the CPU build: nvcuda::wmma, the warp matrix multiply-accumulate API of the tensor cores, as
// warp collectives of dev/cudasim.h. docs/cpu-execution.md, "Tensor cores (wmma)".
//
// On a GPU the 32 lanes of a warp together hold a tile — matrix_a m×k, matrix_b k×n, accumulator m×n — in
// registers, each lane `num_elements` of its elements in a layout the API leaves unspecified; load_matrix_sync,
// store_matrix_sync and mma_sync are warp-wide: every lane calls them, with the same arguments.
//
// Here:
//   - A fragment is a plain per-lane array x[num_elements], with the GPU's num_elements (CUDA 13 <crt/mma.h>), so
//     per-element code (`for (int i = 0; i < f.num_elements; i++) f.x[i] *= s;`) runs as on a GPU. cudasim's
//     layout: lane l holds elements l·E .. l·E+E−1 of the tile in row-major order (E = num_elements); the fp16
//     A and B fragments hold each element twice, as the GPU's do (lanes 16..31 repeat lanes 0..15, and mma_sync
//     reads the first copy). Code that depends on the layout is wrong on a GPU and gets other numbers here.
//   - load_matrix_sync, store_matrix_sync and mma_sync are warp collectives (WarpOp::wmma_*): all 32 lanes of a
//     full warp must arrive, with the same pointer, ldm and layout, or the run stops naming kernel, block and lane.
//     The pointer must be 32-byte aligned and ldm a multiple of 16 bytes, as the GPU requires.
//   - After all lanes have arrived, each lane loads or stores its own elements, in kernel code: the checked build
//     checks those accesses like any other. A wmma call is no __syncwarp: a lane that reads what another lane's
//     store_matrix_sync wrote needs a __syncwarp (or __syncthreads) in between, on a GPU and under --racecheck.
//   - mma_sync computes D = A·B + C for the whole warp when the last lane arrives (mma_compute, called by the
//     scheduler). The products of two fp16/bf16 numbers are exact in fp32 (at most 11+11 significant bits ≤ 24),
//     and each is added with one fp32 rounding (round to nearest even), k ascending, C first:
//         d[i][j] = c[i][j];  for k = 0 .. K−1:  d[i][j] = fma(a[i][k], b[k][j], d[i][j])
//     (fma: the exact product even where it falls below fp32's normal range). An fp16 accumulator is summed in fp32
//     and rounded to fp16 once. A GPU's tensor core adds several products at a time with its own alignment and
//     rounding of the partial sums, so its results can differ from these in the last bits of fp32.
//   - Supported: __half and __nv_bfloat16 inputs with float accumulators (and __half ones for __half inputs), at
//     m16n16k16, m32n8k16 and m8n32k16. tf32, double, integer and sub-byte fragments fail to compile with a message.
#pragma once
#include <cstdint>
#include <type_traits>

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32 {}; }
namespace experimental { namespace precision { struct u4 {}; struct s4 {}; struct b1 {}; } }

template <class T, int size>
struct __frag_base {
    enum { num_elements = size };
    typedef T element_type;
    T x[size];
};
template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment;
}  // namespace wmma
}  // namespace nvcuda

namespace cudasim::wmma {
namespace w = nvcuda::wmma;
template <class T> struct same { using type = T; };  // a parameter that does not take part in deduction

template <class T> constexpr bool is_input_type = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// The tile of one fragment: rows × cols of matrix_a (m×k), matrix_b (k×n) or the accumulator (m×n), and how
// many of its elements each lane holds (the GPU's num_elements).
template <class Use, int M, int N, int K, class T, class Layout>
struct Shape {
    static constexpr bool accumulator = std::is_same_v<Use, w::accumulator>;
    static_assert(accumulator || std::is_same_v<Use, w::matrix_a> || std::is_same_v<Use, w::matrix_b>,
                  "cudasim: a wmma fragment is a matrix_a, a matrix_b or an accumulator");
    static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16),
                  "cudasim: wmma shapes supported on the CPU: m16n16k16, m32n8k16, m8n32k16");
    static_assert(accumulator ? std::is_same_v<T, float> || std::is_same_v<T, __half> : is_input_type<T>,
                  "cudasim: wmma on the CPU supports __half and __nv_bfloat16 inputs with float (or __half) "
                  "accumulators; not tf32, double, integer or sub-byte fragments");
    static_assert(accumulator ? std::is_void_v<Layout>
                              : std::is_same_v<Layout, w::row_major> || std::is_same_v<Layout, w::col_major>,
                  "cudasim: a matrix_a/matrix_b fragment needs row_major or col_major; an accumulator takes none "
                  "(its layout is given to load/store_matrix_sync)");
    static constexpr int rows = std::is_same_v<Use, w::matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, w::matrix_a> ? K : N;
    static constexpr int elements = rows * cols;
    static constexpr int per_lane = std::is_same_v<T, __half> && !accumulator ? 16 : elements / 32;
};

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> T from_float(float x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
    else return __float2bfloat16_rn(x);
}

// Every lane of a full warp arrives with the same pointer, ldm and layout (the scheduler checks, and checks the
// GPU's alignment rules: width carries the element bytes for that).
inline void arrive(WarpOp op, const void* p, unsigned ldm, bool col_major, int element_bytes) {
    warp_collective<uint64_t>(op, 0xffffffffu, reinterpret_cast<uintptr_t>(p), static_cast<int>(ldm),
                              element_bytes * 2 + (col_major ? 1 : 0));
}

// Element e = l·E + i of the tile in row-major order is x[i] of lane l (the second copy of a duplicated fp16
// element wraps around: e mod rows·cols).
template <class S>
inline int element_of(int lane, int i) { return (lane * S::per_lane + i) % S::elements; }
inline int lane_id() { return static_cast<int>((threadIdx.x + threadIdx.y * blockDim.x +
                                                threadIdx.z * blockDim.x * blockDim.y) % 32); }

template <class F> struct Traits;
template <class Use, int M, int N, int K, class T, class Layout>
struct Traits<nvcuda::wmma::fragment<Use, M, N, K, T, Layout>> {
    using S = Shape<Use, M, N, K, T, Layout>;
    using element = T;
};

// D = A·B + C over the warp's 32 lanes (see the top of the file for the order of the sums).
template <class FD, class FA, class FB, class FC>
void mma_compute(const WmmaMma* const lanes[32]) {
    using SA = typename Traits<FA>::S;
    using SB = typename Traits<FB>::S;
    using SC = typename Traits<FC>::S;
    constexpr int M = SA::rows, K = SA::cols, N = SB::cols;
    float a[M][K], b[K][N], c[M][N];
    for (int e = 0; e < SA::elements; e++)  // the first copy of each element
        a[e / K][e % K] = to_float(static_cast<const FA*>(lanes[e / SA::per_lane]->a)->x[e % SA::per_lane]);
    for (int e = 0; e < SB::elements; e++)
        b[e / N][e % N] = to_float(static_cast<const FB*>(lanes[e / SB::per_lane]->b)->x[e % SB::per_lane]);
    for (int e = 0; e < SC::elements; e++)
        c[e / N][e % N] = to_float(static_cast<const FC*>(lanes[e / SC::per_lane]->c)->x[e % SC::per_lane]);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float d = c[i][j];
            for (int k = 0; k < K; k++) d = std::fma(a[i][k], b[k][j], d);
            c[i][j] = d;  // c is a copy: D may be the same fragment as C
        }
    for (int e = 0; e < SC::elements; e++)
        static_cast<FD*>(lanes[e / SC::per_lane]->d)->x[e % SC::per_lane] =
            from_float<typename Traits<FD>::element>(c[e / N][e % N]);
}
}  // namespace cudasim::wmma

namespace nvcuda {
namespace wmma {
template <class Use, int M, int N, int K, class T, class Layout>
class fragment : public __frag_base<T, cudasim::wmma::Shape<Use, M, N, K, T, Layout>::per_lane> {};

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const typename cudasim::wmma::same<T>::type& v) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}

// matrix_a / matrix_b: element (r, c) of the tile is p[r·ldm + c] (row_major) or p[c·ldm + r] (col_major).
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const typename cudasim::wmma::same<T>::type* p,
                             unsigned ldm) {
    using S = cudasim::wmma::Shape<Use, M, N, K, T, Layout>;
    static_assert(!S::accumulator,
                  "cudasim: an accumulator's load_matrix_sync takes a layout: (c, p, ldm, mem_row_major)");
    constexpr bool col = std::is_same_v<Layout, col_major>;
    cudasim::wmma::arrive(cudasim::WarpOp::wmma_load, p, ldm, col, sizeof(T));
    const int lane = cudasim::wmma::lane_id();
    for (int i = 0; i < S::per_lane; i++) {
        int e = cudasim::wmma::element_of<S>(lane, i), r = e / S::cols, c = e % S::cols;
        f.x[i] = col ? p[static_cast<size_t>(c) * ldm + r] : p[static_cast<size_t>(r) * ldm + c];
    }
}

// Accumulators: the layout is given at the call.
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const typename cudasim::wmma::same<T>::type* p,
                             unsigned ldm, layout_t layout) {
    using S = cudasim::wmma::Shape<accumulator, M, N, K, T, void>;
    const bool col = layout == mem_col_major;
    cudasim::wmma::arrive(cudasim::WarpOp::wmma_load, p, ldm, col, sizeof(T));
    const int lane = cudasim::wmma::lane_id();
    for (int i = 0; i < S::per_lane; i++) {
        int e = cudasim::wmma::element_of<S>(lane, i), r = e / S::cols, c = e % S::cols;
        f.x[i] = col ? p[static_cast<size_t>(c) * ldm + r] : p[static_cast<size_t>(r) * ldm + c];
    }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(typename cudasim::wmma::same<T>::type* p, const fragment<accumulator, M, N, K, T>& f,
                              unsigned ldm, layout_t layout) {
    using S = cudasim::wmma::Shape<accumulator, M, N, K, T, void>;
    const bool col = layout == mem_col_major;
    cudasim::wmma::arrive(cudasim::WarpOp::wmma_store, p, ldm, col, sizeof(T));
    const int lane = cudasim::wmma::lane_id();
    for (int i = 0; i < S::per_lane; i++) {
        int e = cudasim::wmma::element_of<S>(lane, i), r = e / S::cols, c = e % S::cols;
        (col ? p[static_cast<size_t>(c) * ldm + r] : p[static_cast<size_t>(r) * ldm + c]) = f.x[i];
    }
}

// d = a·b + c. The lane brings the addresses of its fragments; the scheduler calls mma_compute once all 32 are here.
// fp16 inputs may mix fp16 and fp32 accumulators for c and d, as on the GPU.
template <int M, int N, int K, class Tin, class LayoutA, class LayoutB, class Td, class Tc>
inline void mma_sync(fragment<accumulator, M, N, K, Td>& d, const fragment<matrix_a, M, N, K, Tin, LayoutA>& a,
                     const fragment<matrix_b, M, N, K, Tin, LayoutB>& b, const fragment<accumulator, M, N, K, Tc>& c) {
    static_assert((std::is_same_v<Td, float> && std::is_same_v<Tc, float>) || std::is_same_v<Tin, __half>,
                  "cudasim: __nv_bfloat16 wmma accumulates in float only (as on the GPU)");
    using FD = fragment<accumulator, M, N, K, Td>;
    using FA = fragment<matrix_a, M, N, K, Tin, LayoutA>;
    using FB = fragment<matrix_b, M, N, K, Tin, LayoutB>;
    using FC = fragment<accumulator, M, N, K, Tc>;
    cudasim::WmmaMma me{&cudasim::wmma::mma_compute<FD, FA, FB, FC>, &a, &b, &c, &d};
    cudasim::warp_collective<uint64_t>(cudasim::WarpOp::wmma_mma, 0xffffffffu, reinterpret_cast<uintptr_t>(&me), 0, 0);
}
}  // namespace wmma
}  // namespace nvcuda
