// CPU version of <cooperative_groups.h> for the CPU build (dev/cudasim.h), on top of cudasim's
// __syncthreads, warp collectives and group barriers:
//   thread_block, thread_group (any group, by value), thread_block_tile<N> for N = 1..32 (warp
//   collectives) and N = 64..1024 (a barrier of N threads; block_tile_memory is accepted and not needed),
//   tiled_partition(g, n) with n known at run time, coalesced_threads() (the lanes that reach the same
//   call together), binary_partition and labeled_partition, shuffles of any trivially copyable type
//   (moved 8 bytes at a time), and this_grid() for its indices.
// Grid-wide synchronisation (grid_group::sync, cg::sync(grid)) fails to compile with a message: the CPU
// does not run all blocks at once.
#pragma once
#include <cstring>
#include <type_traits>

namespace cooperative_groups {

namespace details {
inline unsigned block_rank() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline unsigned block_size() { return blockDim.x * blockDim.y * blockDim.z; }
inline unsigned lanes_below(unsigned lane) { return lane == 0 ? 0u : (0xffffffffu >> (32 - lane)); }
// the lane of the `rank`-th set bit of `mask`
inline int lane_of_rank(unsigned mask, unsigned rank) {
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) {
            if (rank == 0) return l;
            rank--;
        }
    return -1;
}
// A warp shuffle of any trivially copyable type: 8 bytes at a time (cudasim's shuffles move up to 8).
template <class T, class Shuffle>
T shuffle_any(const T& v, Shuffle shfl) {
    static_assert(std::is_trivially_copyable_v<T>, "cooperative groups shuffle trivially copyable types");
    if constexpr (sizeof(T) <= 8) {
        return shfl(v);
    } else {
        unsigned long long words[(sizeof(T) + 7) / 8] = {};
        std::memcpy(words, &v, sizeof(T));
        for (auto& word : words) word = shfl(word);
        T r;
        std::memcpy(static_cast<void*>(&r), words, sizeof(T));
        return r;
    }
}
}  // namespace details

// Any group, by value. The kinds: the block, a tile of `size_` consecutive threads, or the coalesced
// lanes `mask_` of one warp.
class thread_group {
protected:
    enum kind_t { block_kind, tile_kind, coalesced_kind };
    kind_t kind_;
    unsigned size_;  // tile: threads per tile
    unsigned mask_;  // coalesced: the lanes
    thread_group(kind_t k, unsigned size, unsigned mask) : kind_(k), size_(size), mask_(mask) {}
    unsigned tile_first() const { return details::block_rank() / size_ * size_; }
    unsigned tile_threads() const {  // the last tile of a block may be partial
        unsigned first = tile_first(), n = details::block_size();
        return first + size_ <= n ? size_ : n - first;
    }
    unsigned tile_mask() const {  // tiles of at most 32: the lanes of this thread's tile
        unsigned lane = details::block_rank() % 32;
        return size_ >= 32 ? 0xffffffffu : ((1u << size_) - 1u) << (lane / size_ * size_);
    }

public:
    void sync() const {
        if (kind_ == block_kind)
            __syncthreads();
        else if (kind_ == coalesced_kind)
            __syncwarp(mask_);
        else if (size_ <= 32)
            __syncwarp(tile_mask());
        else if (size_ >= details::block_size())
            __syncthreads();
        else
            cudasim::group_barrier(tile_first(), size_);
    }
    unsigned thread_rank() const {
        if (kind_ == block_kind) return details::block_rank();
        if (kind_ == coalesced_kind)
            return __builtin_popcount(mask_ & details::lanes_below(details::block_rank() % 32));
        return details::block_rank() % size_;
    }
    unsigned size() const {
        if (kind_ == block_kind) return details::block_size();
        if (kind_ == coalesced_kind) return __builtin_popcount(mask_);
        return tile_threads();
    }
    unsigned num_threads() const { return size(); }
    unsigned meta_group_rank() const { return kind_ == tile_kind ? details::block_rank() / size_ : 0; }
    unsigned meta_group_size() const { return kind_ == tile_kind ? (details::block_size() + size_ - 1) / size_ : 1; }
    bool is_valid() const { return true; }
};

class thread_block : public thread_group {
public:
    thread_block() : thread_group(block_kind, 0, 0) {}
    void sync() const { __syncthreads(); }
    unsigned thread_rank() const { return details::block_rank(); }
    unsigned size() const { return details::block_size(); }
    unsigned num_threads() const { return size(); }
    dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
    dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
    dim3 group_dim() const { return blockDim; }
    dim3 dim_threads() const { return blockDim; }
};
inline thread_block this_thread_block() { return {}; }
// Tiles of more than 32 threads take a scratch buffer on the GPU; the CPU build needs none. (CUDA 12+:
// block_tile_memory<MaxBlockSize>; CUDA 11: <TileCount, MaxBlockSize>.)
template <unsigned MaxBlockSize = 1024, unsigned CUDA11MaxBlockSize = 0>
struct block_tile_memory {};
template <unsigned A, unsigned B>
thread_block this_thread_block(block_tile_memory<A, B>&) {
    return {};
}
inline void sync(const thread_block& g) { g.sync(); }

// A tile of Size consecutive threads of the block (Size a power of two, at most 1024). Tiles of at most
// 32 threads lie inside one warp and have the warp collectives; larger ones have sync and the indices.
template <unsigned Size, class Parent = void>
class thread_block_tile : public thread_group {
    static_assert(Size >= 1 && Size <= 1024 && (Size & (Size - 1)) == 0, "tile size must be a power of two <= 1024");

public:
    thread_block_tile() : thread_group(tile_kind, Size, 0) {}
    template <class P>
    thread_block_tile(const thread_block_tile<Size, P>&) : thread_group(tile_kind, Size, 0) {}
    unsigned mask() const { return tile_mask(); }
    unsigned thread_rank() const { return details::block_rank() % Size; }
    unsigned size() const { return tile_threads(); }
    unsigned num_threads() const { return size(); }
    unsigned meta_group_rank() const { return details::block_rank() / Size; }
    unsigned meta_group_size() const { return (details::block_size() + Size - 1) / Size; }
    void sync() const { thread_group::sync(); }
    template <class T>
    T shfl(T v, int src) const {
        static_assert(Size <= 32, "shuffles need a tile of at most 32 threads");
        return details::shuffle_any(v, [&](auto x) { return __shfl_sync(mask(), x, src, Size); });
    }
    template <class T>
    T shfl_up(T v, unsigned d) const {
        static_assert(Size <= 32, "shuffles need a tile of at most 32 threads");
        return details::shuffle_any(v, [&](auto x) { return __shfl_up_sync(mask(), x, d, Size); });
    }
    template <class T>
    T shfl_down(T v, unsigned d) const {
        static_assert(Size <= 32, "shuffles need a tile of at most 32 threads");
        return details::shuffle_any(v, [&](auto x) { return __shfl_down_sync(mask(), x, d, Size); });
    }
    template <class T>
    T shfl_xor(T v, int m) const {
        static_assert(Size <= 32, "shuffles need a tile of at most 32 threads");
        return details::shuffle_any(v, [&](auto x) { return __shfl_xor_sync(mask(), x, m, Size); });
    }
    int any(int p) const { return __any_sync(mask(), p); }
    int all(int p) const { return __all_sync(mask(), p); }
    unsigned ballot(int p) const {
        return __ballot_sync(mask(), p) >> (Size >= 32 ? 0 : details::block_rank() % 32 / Size * Size);
    }
    template <class T>
    unsigned match_any(T v) const {
        return __match_any_sync(mask(), v) >> (Size >= 32 ? 0 : details::block_rank() % 32 / Size * Size);
    }
    template <class T>
    unsigned match_all(T v, int& pred) const {
        return __match_all_sync(mask(), v, &pred) >> (Size >= 32 ? 0 : details::block_rank() % 32 / Size * Size);
    }
};
template <unsigned Size, class Parent>
thread_block_tile<Size> tiled_partition(const Parent&) {
    return {};
}

// A tile whose size is known at run time (a power of two dividing the parent's size).
class runtime_tile : public thread_group {
public:
    explicit runtime_tile(unsigned size) : thread_group(tile_kind, size, 0) {}
};
inline thread_group tiled_partition(const thread_group& parent, unsigned size) {
    if (size == 0 || (size & (size - 1)) != 0 || size > 1024)
        cudasim::fatal("cooperative_groups::tiled_partition(group, %u): the size must be a power of two <= 1024", size);
    (void)parent;
    return runtime_tile(size);
}

// The lanes of one warp that are together at the moment: from coalesced_threads(), binary_partition,
// labeled_partition. Ranks count the group's lanes in order; shuffles name ranks, not lanes.
class coalesced_group : public thread_group {
public:
    explicit coalesced_group(unsigned mask) : thread_group(coalesced_kind, 0, mask) {}
    unsigned mask() const { return mask_; }
    unsigned thread_rank() const { return thread_group::thread_rank(); }
    unsigned size() const { return __builtin_popcount(mask_); }
    unsigned num_threads() const { return size(); }
    unsigned meta_group_rank() const { return 0; }
    unsigned meta_group_size() const { return 1; }
    void sync() const { __syncwarp(mask_); }
    template <class T>
    T shfl(T v, unsigned src_rank) const {
        int lane = details::lane_of_rank(mask_, src_rank % size());
        return details::shuffle_any(v, [&](auto x) { return __shfl_sync(mask_, x, lane); });
    }
    template <class T>
    T shfl_down(T v, unsigned d) const {
        unsigned r = thread_rank() + d;
        int lane = r < size() ? details::lane_of_rank(mask_, r) : static_cast<int>(details::block_rank() % 32);
        return details::shuffle_any(v, [&](auto x) { return __shfl_sync(mask_, x, lane); });
    }
    template <class T>
    T shfl_up(T v, unsigned d) const {
        unsigned r = thread_rank();
        int lane = r >= d ? details::lane_of_rank(mask_, r - d) : static_cast<int>(details::block_rank() % 32);
        return details::shuffle_any(v, [&](auto x) { return __shfl_sync(mask_, x, lane); });
    }
    // the predicate bits of the group's lanes, packed by rank
    unsigned ballot(int p) const {
        unsigned b = __ballot_sync(mask_, p), packed = 0, rank = 0;
        for (int l = 0; l < 32; l++)
            if (mask_ >> l & 1u) packed |= (b >> l & 1u) << rank++;
        return packed;
    }
    int any(int p) const { return __any_sync(mask_, p); }
    int all(int p) const { return __all_sync(mask_, p); }
};
// The lanes that call it at the same place (file and line) together, as a GPU's converged lanes.
inline coalesced_group coalesced_threads(unsigned line = __builtin_LINE(), const char* file = __builtin_FILE()) {
    unsigned long long site = reinterpret_cast<unsigned long long>(file) * 1000003ull + line;
    return coalesced_group(static_cast<unsigned>(
        cudasim::warp_collective<unsigned long long>(cudasim::WarpOp::coalesce, 0xffffffffu, site, 0, 32)));
}
namespace details {
template <class Group>
unsigned warp_mask_of(const Group& g) {
    if constexpr (std::is_same_v<Group, coalesced_group>)
        return g.mask();
    else
        return g.mask();
}
inline unsigned warp_mask_of(const thread_block&) { return 0xffffffffu; }
}  // namespace details
// Splits a warp-sized (or smaller) group by a predicate / a label: the lanes with the same value.
template <class Group>
coalesced_group binary_partition(const Group& g, bool pred) {
    unsigned m = details::warp_mask_of(g), b = __ballot_sync(m, pred);
    return coalesced_group(pred ? (b & m) : (m & ~b));
}
template <class Group, class Label>
coalesced_group labeled_partition(const Group& g, Label label) {
    return coalesced_group(__match_any_sync(details::warp_mask_of(g), label));
}
template <class Group>
inline void sync(const Group& g) {
    g.sync();
}

// The grid: its indices work; its sync needs every block resident at once, which the CPU schedule does
// not give, so it fails to compile with a message naming the feature.
class grid_group {
public:
    unsigned long long thread_rank() const {
        unsigned long long block = blockIdx.x + 1ull * gridDim.x * (blockIdx.y + 1ull * gridDim.y * blockIdx.z);
        return block * details::block_size() + details::block_rank();
    }
    unsigned long long size() const { return 1ull * gridDim.x * gridDim.y * gridDim.z * details::block_size(); }
    unsigned long long num_threads() const { return size(); }
    unsigned long long block_rank() const {
        return blockIdx.x + 1ull * gridDim.x * (blockIdx.y + 1ull * gridDim.y * blockIdx.z);
    }
    unsigned long long num_blocks() const { return 1ull * gridDim.x * gridDim.y * gridDim.z; }
    dim3 group_dim() const { return gridDim; }
    dim3 dim_blocks() const { return gridDim; }
    dim3 block_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
    bool is_valid() const { return true; }
    template <class T = void>
    void sync() const {
        cudasim::unsupported_grid_sync<T>{};
    }
};
inline grid_group this_grid() { return {}; }
template <class T = void>
void sync(const grid_group&) {
    cudasim::unsupported_grid_sync<T>{};
}
template <class T = void>
cudasim::unsupported_grid_sync<T> this_multi_grid() {
    return {};
}

}  // namespace cooperative_groups
