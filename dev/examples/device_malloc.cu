// device_malloc.cu — malloc and free in device code. On a GPU they allocate from the device heap, whose size
// (cudaLimitMallocHeapSize, 8 MB by default) is set before the first kernel that allocates; a block one kernel
// allocates stays valid for every later kernel until some thread frees it, and malloc returns NULL once the heap
// is exhausted. Checked here: each thread mallocs a buffer of its own size and fills it (memset, then stores), a
// later kernel copies a neighbour's buffer (memcpy into a buffer of its own) and checks it, a third kernel frees
// them from other threads than the ones that allocated, one thread then allocates until malloc says NULL (within
// the heap's size), and the freed heap serves again. The checked CPU build counts the limit and accepts a block's
// bytes like a cudaMalloc allocation's, and no longer after `free`.
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/device_malloc.cu
//   on a GPU:    nvcc -O2 -o device_malloc dev/examples/device_malloc.cu && ./device_malloc
#include <cstdio>
#include <cuda_runtime.h>

constexpr int kThreads = 256, kBlock = 64;
constexpr size_t kHeap = 1 << 20, kChunk = 64 << 10;  // the heap we ask for; what the exhausting thread takes

__device__ int length_of(int t) { return 16 + t % 5; }  // ints in thread t's buffer

// thread t: buffers[t] = malloc'd length_of(t) ints, zeroed, then t * 1000 + j in every other entry
__global__ void allocate(int** buffers) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int* b = static_cast<int*>(malloc(length_of(t) * sizeof(int)));
    if (b) {
        memset(b, 0, length_of(t) * sizeof(int));
        for (int j = 0; j < length_of(t); j += 2) b[j] = t * 1000 + j;
    }
    buffers[t] = b;
}

// thread t: copies its neighbour's buffer into one of its own, and counts the entries that are wrong
__global__ void check_neighbour(int* const* buffers, int* wrong) {
    int t = blockIdx.x * blockDim.x + threadIdx.x, u = (t + 1) % kThreads, n = length_of(u);
    int* copy = static_cast<int*>(malloc(n * sizeof(int)));
    if (!buffers[u] || !copy) {
        wrong[t] = -1;
        return;
    }
    memcpy(copy, buffers[u], n * sizeof(int));
    int bad = 0;
    for (int j = 0; j < n; j++) bad += copy[j] != (j % 2 == 0 ? u * 1000 + j : 0);
    free(copy);
    wrong[t] = bad;
}

// thread t frees the buffer thread t + 7 allocated
__global__ void free_others(int** buffers) {
    int t = blockIdx.x * blockDim.x + threadIdx.x, u = (t + 7) % kThreads;
    free(buffers[u]);
    buffers[u] = nullptr;
}

// one thread: kChunk-byte blocks until malloc returns NULL (at most `cap`); *count = how many it got, all freed
__global__ void exhaust(int* count, int cap) {
    void* blocks[64];
    int n = 0;
    while (n < cap && (blocks[n] = malloc(kChunk))) n++;
    for (int i = 0; i < n; i++) free(blocks[i]);
    *count = n;
}

int main() {
    bool ok = true;
    // the heap's size, before any kernel allocates
    size_t heap = 0;
    ok = ok && cudaDeviceSetLimit(cudaLimitMallocHeapSize, kHeap) == cudaSuccess;
    ok = ok && cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize) == cudaSuccess && heap >= kHeap;
    int **buffers, *wrong, *count;
    if (cudaMalloc(&buffers, kThreads * sizeof(int*)) || cudaMalloc(&wrong, kThreads * sizeof(int)) ||
        cudaMalloc(&count, sizeof(int)))
        return 1;
    allocate<<<kThreads / kBlock, kBlock>>>(buffers);
    check_neighbour<<<kThreads / kBlock, kBlock>>>(buffers, wrong);
    free_others<<<kThreads / kBlock, kBlock>>>(buffers);
    int h_wrong[kThreads];
    ok = ok && cudaMemcpy(h_wrong, wrong, sizeof h_wrong, cudaMemcpyDeviceToHost) == cudaSuccess;
    int bad = 0;
    for (int t = 0; t < kThreads; t++) bad += h_wrong[t] != 0;
    std::printf("buffers allocated by one kernel, copied and checked by the next, freed by other threads: "
                "%d of %d wrong\n", bad, kThreads);
    ok = ok && bad == 0;

    // Exhaustion: the heap holds at most heap / kChunk such blocks; a GPU's heap keeps some bytes for itself.
    int cap = 64, got = 0, again = 0;
    exhaust<<<1, 1>>>(count, cap);
    ok = ok && cudaMemcpy(&got, count, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess;
    exhaust<<<1, 1>>>(count, cap);  // the freed blocks serve again
    ok = ok && cudaMemcpy(&again, count, sizeof again, cudaMemcpyDeviceToHost) == cudaSuccess;
    std::printf("a %zu-byte heap gave %d then %d blocks of %zu bytes before malloc returned NULL\n", heap, got, again,
                kChunk);
    ok = ok && got >= 1 && static_cast<size_t>(got) <= heap / kChunk && got == again;

    // Too late: a kernel has allocated, the heap's size is fixed.
    cudaError_t late = cudaDeviceSetLimit(cudaLimitMallocHeapSize, 2 * kHeap);
    cudaGetLastError();
    std::printf("cudaDeviceSetLimit after the first allocating kernel: %s\n", cudaGetErrorName(late));
    ok = ok && late == cudaErrorInvalidValue;

    cudaFree(buffers);
    cudaFree(wrong);
    cudaFree(count);
    std::printf("device_malloc: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
