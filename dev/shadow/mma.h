// CPU build: warp matrix (tensor core) fragments are not emulated; using them fails to compile here.
#pragma once
namespace nvcuda { namespace wmma {
template <class... T> struct fragment { static_assert(sizeof...(T) == 0, "cudasim: nvcuda::wmma (tensor cores) is not supported on the CPU"); };
} }
