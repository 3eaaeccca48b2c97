// CPU build: warp matrix (tensor core) operations are not emulated. The names exist so that a program
// using them fails to compile with one message naming the feature, not with unknown-name errors.
#pragma once
namespace nvcuda { namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32 {}; struct u4 {}; struct s4 {}; struct b1 {}; }
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment : cudasim::unsupported_wmma<Use> {};
template <class F, class... A> cudasim::unsupported_wmma<F> fill_fragment(F&&, A&&...) { return {}; }
template <class F, class... A> cudasim::unsupported_wmma<F> load_matrix_sync(F&&, A&&...) { return {}; }
template <class F, class... A> cudasim::unsupported_wmma<F> store_matrix_sync(F&&, A&&...) { return {}; }
template <class F, class... A> cudasim::unsupported_wmma<F> mma_sync(F&&, A&&...) { return {}; }
} }
