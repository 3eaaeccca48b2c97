// CPU version of <cooperative_groups.h> for the CPU build (dev/cudasim.h): thread blocks and
// warp tiles on top of cudasim's __syncthreads and warp shuffles. Grid groups are not supported.
#pragma once
#include <type_traits>

namespace cooperative_groups {

class thread_block {
public:
    void sync() const { __syncthreads(); }
    unsigned thread_rank() const { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
    unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
    unsigned num_threads() const { return size(); }
    dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
    dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
    dim3 group_dim() const { return blockDim; }
    dim3 dim_threads() const { return blockDim; }
};
inline thread_block this_thread_block() { return {}; }
inline void sync(const thread_block& g) { g.sync(); }

// A tile of Size consecutive threads (Size a power of two, at most 32) inside one warp.
template <unsigned Size, class Parent = void>
class thread_block_tile {
    static_assert(Size >= 1 && Size <= 32 && (Size & (Size - 1)) == 0, "tile size must be a power of two <= 32");
    unsigned rank_in_block() const { return thread_block().thread_rank(); }
public:
    unsigned mask() const {
        unsigned lane = rank_in_block() % 32;
        return Size == 32 ? 0xffffffffu : ((1u << Size) - 1u) << (lane / Size * Size);
    }
    unsigned thread_rank() const { return rank_in_block() % Size; }
    unsigned size() const { return Size; }
    unsigned num_threads() const { return Size; }
    unsigned meta_group_rank() const { return rank_in_block() / Size; }
    unsigned meta_group_size() const { return (thread_block().size() + Size - 1) / Size; }
    void sync() const { __syncwarp(mask()); }
    template <class T> T shfl(T v, int src) const { return __shfl_sync(mask(), v, src, Size); }
    template <class T> T shfl_up(T v, unsigned d) const { return __shfl_up_sync(mask(), v, d, Size); }
    template <class T> T shfl_down(T v, unsigned d) const { return __shfl_down_sync(mask(), v, d, Size); }
    template <class T> T shfl_xor(T v, int m) const { return __shfl_xor_sync(mask(), v, m, Size); }
    int any(int p) const { return __any_sync(mask(), p); }
    int all(int p) const { return __all_sync(mask(), p); }
    unsigned ballot(int p) const { return __ballot_sync(mask(), p) >> (Size == 32 ? 0 : rank_in_block() % 32 / Size * Size); }
};
template <unsigned Size, class Parent>
thread_block_tile<Size> tiled_partition(const Parent&) { return {}; }
template <class Group> inline void sync(const Group& g) { g.sync(); }

// Grid-wide groups need every block resident at once, which the CPU schedule does not give: using one
// fails to compile with a message naming the feature.
using grid_group = cudasim::unsupported_grid_sync<>;
template <class T = void> cudasim::unsupported_grid_sync<T> this_grid() { return {}; }
template <class T = void> cudasim::unsupported_grid_sync<T> this_multi_grid() { return {}; }

}  // namespace cooperative_groups
