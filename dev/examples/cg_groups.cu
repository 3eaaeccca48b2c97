// cg_groups.cu — cooperative groups beyond the block and fixed warp tiles: a thread_group passed by
// value, a tile whose size is chosen at run time, tiles of 64 threads (larger than a warp), a shuffle of
// a 16-byte struct, coalesced_threads() for warp-aggregated atomics, binary_partition and
// labeled_partition, cg::inclusive_scan, and this_grid()'s indices (its sync is the one thing the CPU
// cannot do).
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/cg_groups.cu
//   on a GPU:    nvcc -O2 -arch=sm_80 -o cg_groups dev/examples/cg_groups.cu && ./cg_groups
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cooperative_groups/scan.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace cg = cooperative_groups;

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

constexpr int block_size = 256;

// The sum of x over a group, through shared memory: any group, by value, as in the CUDA samples.
__device__ int group_sum(cg::thread_group g, int* scratch, int x) {
    int rank = g.thread_rank();
    for (int half = g.size() / 2; half > 0; half /= 2) {
        scratch[rank] = x;
        g.sync();
        if (rank < half) x += scratch[rank + half];
        g.sync();
    }
    return x;  // valid in rank 0
}

// tile_sums[t] = sum of x over run-time tile t (tile = `tile` consecutive threads of the grid)
__global__ void runtime_tile_kernel(int* tile_sums, const int* x, int tile) {
    __shared__ int scratch[block_size];
    cg::thread_block block = cg::this_thread_block();
    cg::thread_group t = cg::tiled_partition(block, tile);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int base = threadIdx.x / tile * tile;  // this tile's slice of scratch
    int s = group_sum(t, scratch + base, x[i]);
    if (t.thread_rank() == 0) tile_sums[i / tile] = s;
}

// tiles of 64 threads: each tile writes, syncs, then reads what its other warp wrote
__global__ void tile64_kernel(int* out, const int* x) {
    __shared__ cg::block_tile_memory<block_size> scratch_space;
    __shared__ int tile_data[block_size];
    cg::thread_block block = cg::this_thread_block(scratch_space);
    cg::thread_block_tile<64> tile = cg::tiled_partition<64>(block);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    tile_data[threadIdx.x] = x[i];
    tile.sync();
    int partner = tile.meta_group_rank() * 64 + (tile.thread_rank() + 32) % 64;  // the same lane of the other warp
    out[i] = tile_data[partner];
}

struct Quad {
    float a, b, c, d;
};  // 16 bytes: more than one shuffle moves

__global__ void big_shuffle_kernel(Quad* out, const Quad* in) {
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = warp.shfl(in[i], (warp.thread_rank() + 5) % 32);
}

// prefix[i] = x[first lane of i's warp] + ... + x[i]
__global__ void scan_kernel(int* prefix, const int* x) {
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    prefix[i] = cg::inclusive_scan(warp, x[i]);
}

// Warp-aggregated atomic increment: the lanes that reach it together take one atomicAdd.
__device__ int aggregated_increment(int* counter) {
    cg::coalesced_group active = cg::coalesced_threads();
    int first = 0;
    if (active.thread_rank() == 0) first = atomicAdd(counter, active.size());
    return active.shfl(first, 0) + active.thread_rank();
}
// out[slot] = x[i] for the positive x: a compaction whose slots come from the aggregated counter
__global__ void compact_kernel(int* out, int* counter, const int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] > 0) out[aggregated_increment(counter)] = x[i];
}

// per lane: how many lanes of its warp share its parity (binary_partition) and its x % 5 (labeled_partition)
__global__ void partition_kernel(int* parity_count, int* label_count, int* label_sum, const int* x) {
    cg::thread_block_tile<32> warp = cg::tiled_partition<32>(cg::this_thread_block());
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    cg::coalesced_group same_parity = cg::binary_partition(warp, x[i] % 2 == 0);
    parity_count[i] = same_parity.size();
    cg::coalesced_group same_label = cg::labeled_partition(warp, x[i] % 5);
    label_count[i] = same_label.size();
    label_sum[i] = cg::reduce(same_label, x[i], cg::plus<int>());
}

__global__ void grid_rank_kernel(unsigned long long* rank, unsigned long long* size) {
    cg::grid_group grid = cg::this_grid();
    rank[grid.thread_rank()] = grid.thread_rank();
    if (grid.thread_rank() == 0) *size = grid.size();
}

template <class T>
static T* upload(const std::vector<T>& h) {
    T* d;
    CHECK(cudaMalloc(&d, h.size() * sizeof(T)));
    CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <class T>
static std::vector<T> download(const T* d, size_t n) {
    std::vector<T> h(n);
    CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

int main() {
    const int blocks = 8, n = blocks * block_size;
    std::vector<int> x(n);
    for (int i = 0; i < n; i++) x[i] = (i * 7919) % 23 - 11;
    int* d_x = upload(x);
    int wrong = 0;
    auto fail = [&](const char* what, int i, long long got, long long want) {
        if (wrong++ < 5) std::printf("%s: element %d is %lld, expected %lld\n", what, i, got, want);
    };

    for (int tile : {4, 32, 128}) {
        int* d_sums = upload(std::vector<int>(n / tile));
        runtime_tile_kernel<<<blocks, block_size>>>(d_sums, d_x, tile);
        CHECK(cudaGetLastError());
        std::vector<int> sums = download(d_sums, n / tile);
        for (int t = 0; t < n / tile; t++) {
            int want = 0;
            for (int k = 0; k < tile; k++) want += x[t * tile + k];
            if (sums[t] != want) fail("tiled_partition(block, n)", t, sums[t], want);
        }
        CHECK(cudaFree(d_sums));
    }

    int* d_out = upload(std::vector<int>(n));
    tile64_kernel<<<blocks, block_size>>>(d_out, d_x);
    std::vector<int> out = download(d_out, n);
    for (int i = 0; i < n; i++) {
        int want = x[i / 64 * 64 + (i % 64 + 32) % 64];
        if (out[i] != want) fail("thread_block_tile<64>", i, out[i], want);
    }

    std::vector<Quad> q(n);
    for (int i = 0; i < n; i++) q[i] = Quad{float(i), float(-i), float(2 * i), float(i % 7)};
    Quad* d_q = upload(q);
    Quad* d_qo = upload(std::vector<Quad>(n));
    big_shuffle_kernel<<<blocks, block_size>>>(d_qo, d_q);
    std::vector<Quad> qo = download(d_qo, n);
    for (int i = 0; i < n; i++) {
        int src = i / 32 * 32 + (i % 32 + 5) % 32;
        if (qo[i].a != q[src].a || qo[i].b != q[src].b || qo[i].c != q[src].c || qo[i].d != q[src].d)
            fail("shfl of a 16-byte struct", i, static_cast<long long>(qo[i].a), src);
    }

    scan_kernel<<<blocks, block_size>>>(d_out, d_x);
    out = download(d_out, n);
    for (int i = 0, sum = 0; i < n; i++) {
        sum = (i % 32 == 0 ? 0 : sum) + x[i];
        if (out[i] != sum) fail("cg::inclusive_scan", i, out[i], sum);
    }

    int* d_counter = upload(std::vector<int>(1, 0));
    CHECK(cudaMemset(d_out, 0, n * sizeof(int)));
    compact_kernel<<<blocks, block_size>>>(d_out, d_counter, d_x, n);
    int positives = 0;
    long long want_sum = 0, got_sum = 0;
    for (int v : x)
        if (v > 0) {
            positives++;
            want_sum += v;
        }
    int counter = download(d_counter, 1)[0];
    out = download(d_out, n);
    for (int k = 0; k < positives; k++) got_sum += out[k];
    if (counter != positives) fail("coalesced_threads: count", 0, counter, positives);
    if (got_sum != want_sum) fail("coalesced_threads: compacted sum", 0, got_sum, want_sum);

    int *d_pc = upload(std::vector<int>(n)), *d_lc = upload(std::vector<int>(n)), *d_ls = upload(std::vector<int>(n));
    partition_kernel<<<blocks, block_size>>>(d_pc, d_lc, d_ls, d_x);
    std::vector<int> pc = download(d_pc, n), lc = download(d_lc, n), ls = download(d_ls, n);
    for (int i = 0; i < n; i++) {
        int same_parity = 0, same_label = 0, label_sum = 0;
        for (int j = i / 32 * 32; j < i / 32 * 32 + 32; j++) {
            same_parity += (x[j] % 2 == 0) == (x[i] % 2 == 0);
            if (x[j] % 5 == x[i] % 5) {
                same_label++;
                label_sum += x[j];
            }
        }
        if (pc[i] != same_parity) fail("binary_partition", i, pc[i], same_parity);
        if (lc[i] != same_label) fail("labeled_partition: size", i, lc[i], same_label);
        if (ls[i] != label_sum) fail("labeled_partition: cg::reduce", i, ls[i], label_sum);
    }

    unsigned long long *d_rank = upload(std::vector<unsigned long long>(n)),
                       *d_size = upload(std::vector<unsigned long long>(1));
    grid_rank_kernel<<<blocks, block_size>>>(d_rank, d_size);
    std::vector<unsigned long long> rank = download(d_rank, n);
    for (int i = 0; i < n; i++)
        if (rank[i] != static_cast<unsigned long long>(i)) fail("this_grid().thread_rank()", i, rank[i], i);
    if (download(d_size, 1)[0] != static_cast<unsigned long long>(n))
        fail("this_grid().size()", 0, download(d_size, 1)[0], n);

    for (void* p : {(void*)d_x, (void*)d_out, (void*)d_q, (void*)d_qo, (void*)d_counter, (void*)d_pc, (void*)d_lc,
                    (void*)d_ls, (void*)d_rank, (void*)d_size})
        CHECK(cudaFree(p));
    std::printf("cg_groups: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
