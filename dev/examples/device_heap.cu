// device_heap.cu — `new` and `delete` in device code. On a GPU they allocate from the device heap
// (cudaLimitMallocHeapSize), and an object one kernel makes stays valid for every later kernel until one deletes
// it, as the CUDA samples' newdelete does with its containers. The checked CPU build accepts such an object's
// bytes like a cudaMalloc allocation's, and no longer after `delete`.
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/device_heap.cu
//   on a GPU:    nvcc -O2 -o device_heap dev/examples/device_heap.cu && ./device_heap
#include <cstdio>
#include <cuda_runtime.h>

struct Node {
    int value;
    Node* next;
};

// one thread pushes n nodes (values 0..n-1) onto a list kept in device memory: *head
__global__ void build_list(Node** head, int n) {
    for (int i = 0; i < n; i++) *head = new Node{i, *head};
}

// each thread walks the list and adds up the values times its own index
__global__ void sum_list(Node* const* head, long long* sums) {  // sums: (blockDim.x)
    long long s = 0;
    for (const Node* p = *head; p; p = p->next) s += p->value;
    sums[threadIdx.x] = s * threadIdx.x;
}

__global__ void free_list(Node** head) {
    while (Node* p = *head) {
        *head = p->next;
        delete p;
    }
}

int main() {
    const int n = 100, threads = 64;
    Node** d_head;
    long long* d_sums;
    if (cudaMalloc(&d_head, sizeof(Node*)) != cudaSuccess || cudaMalloc(&d_sums, threads * sizeof(long long)))
        return 1;
    cudaMemset(d_head, 0, sizeof(Node*));
    build_list<<<1, 1>>>(d_head, n);
    sum_list<<<1, threads>>>(d_head, d_sums);
    free_list<<<1, 1>>>(d_head);
    long long sums[threads];
    cudaError_t e = cudaMemcpy(sums, d_sums, sizeof sums, cudaMemcpyDeviceToHost);
    bool ok = e == cudaSuccess;
    for (int t = 0; t < threads; t++) ok = ok && sums[t] == 1LL * n * (n - 1) / 2 * t;  // 0 + 1 + ... + n-1
    std::printf("sum over the list: %lld (thread 1), %s\n", sums[1], cudaGetErrorString(e));
    std::printf("device_heap: %s\n", ok ? "PASS" : "FAIL");
    cudaFree(d_head);
    cudaFree(d_sums);
    return ok ? 0 : 1;
}
