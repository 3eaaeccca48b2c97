// graphs.cu — CUDA graphs, both ways the CUDA samples' simpleCudaGraphs builds them: by stream capture
// (a fork onto a second stream and a join through events, kernels, an async copy, a host function) and
// by explicit nodes (kernel nodes with `void** kernelParams`, a memset node, a memcpy node, edges), and a
// graph that allocates memory it leaves to the stream to free (an allocation node, as graphMemoryNodes has).
// Each graph is instantiated once and launched several times. Self-checking: prints PASS or FAIL,
// exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/graphs.cu
//   on a GPU:    nvcc -O2 -o graphs dev/examples/graphs.cu && ./graphs
#include <cuda_runtime.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

__global__ void add_scalar(float* x, float v, int n) {  // x += v
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += v;
}
__global__ void multiply(float* y, const float* a, const float* b, int n) {  // y = a·b
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] * b[i];
}

static void count_launch(void* counter) { ++*static_cast<int*>(counter); }

int main() {
    const int n = 4096, block = 256, grid = n / block, launches = 3;
    // pinned host buffers: a captured copy must not be from pageable memory
    float *h_a, *h_b, *h_out;
    CHECK(cudaMallocHost(&h_a, n * sizeof(float)));
    CHECK(cudaMallocHost(&h_b, n * sizeof(float)));
    CHECK(cudaMallocHost(&h_out, n * sizeof(float)));
    for (int i = 0; i < n; i++) {
        h_a[i] = static_cast<float>(i % 13);
        h_b[i] = static_cast<float>(i % 7) - 3.0f;
    }
    float *a, *b, *y;
    CHECK(cudaMalloc(&a, n * sizeof(float)));
    CHECK(cudaMalloc(&b, n * sizeof(float)));
    CHECK(cudaMalloc(&y, n * sizeof(float)));
    int wrong = 0;

    // 1. capture: on s1, a = h_a, then fork: s2 adds 1 to b while s1 adds 2 to a; join; y = a·b; copy out.
    cudaStream_t s1, s2;
    CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t fork, join;
    CHECK(cudaEventCreate(&fork));
    CHECK(cudaEventCreate(&join));
    int host_calls = 0;
    cudaGraph_t captured;
    CHECK(cudaStreamBeginCapture(s1, cudaStreamCaptureModeGlobal));
    CHECK(cudaMemcpyAsync(a, h_a, n * sizeof(float), cudaMemcpyHostToDevice, s1));
    CHECK(cudaMemcpyAsync(b, h_b, n * sizeof(float), cudaMemcpyHostToDevice, s1));
    CHECK(cudaEventRecord(fork, s1));
    CHECK(cudaStreamWaitEvent(s2, fork, 0));
    add_scalar<<<grid, block, 0, s2>>>(b, 1.0f, n);
    add_scalar<<<grid, block, 0, s1>>>(a, 2.0f, n);
    CHECK(cudaEventRecord(join, s2));
    CHECK(cudaStreamWaitEvent(s1, join, 0));
    multiply<<<grid, block, 0, s1>>>(y, a, b, n);
    CHECK(cudaMemcpyAsync(h_out, y, n * sizeof(float), cudaMemcpyDeviceToHost, s1));
    CHECK(cudaLaunchHostFunc(s1, count_launch, &host_calls));
    CHECK(cudaStreamEndCapture(s1, &captured));
    if (host_calls != 0) {
        std::printf("captured work ran during the capture\n");
        wrong++;
    }
    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, captured, 0));
    for (int l = 0; l < launches; l++) {
        std::fill(h_out, h_out + n, 0.0f);
        CHECK(cudaGraphLaunch(exec, s1));
        CHECK(cudaStreamSynchronize(s1));
        for (int i = 0; i < n; i++) {
            float want = (h_a[i] + 2.0f) * (h_b[i] + 1.0f);
            if (h_out[i] != want && wrong++ < 5)
                std::printf("captured graph, launch %d: y[%d] = %g, expected %g\n", l, i, h_out[i], want);
        }
    }
    if (host_calls != launches) {
        std::printf("the host node ran %d times, expected %d\n", host_calls, launches);
        wrong++;
    }

    // 2. explicit nodes: memset a = 0 -> kernel a += 5 -> kernel y = a·b (b as left by the capture) -> copy out
    cudaGraph_t graph;
    CHECK(cudaGraphCreate(&graph, 0));
    cudaMemsetParams memset_params = {};
    memset_params.dst = a;
    memset_params.value = 0;
    memset_params.elementSize = sizeof(float);
    memset_params.width = n;
    memset_params.height = 1;
    cudaGraphNode_t zero, add, mul, copy;
    CHECK(cudaGraphAddMemsetNode(&zero, graph, nullptr, 0, &memset_params));
    float five = 5.0f;
    int count = n;
    void* add_args[] = {&a, &five, &count};
    cudaKernelNodeParams add_params = {};
    add_params.func = reinterpret_cast<void*>(add_scalar);
    add_params.gridDim = dim3(grid);
    add_params.blockDim = dim3(block);
    add_params.kernelParams = add_args;
    CHECK(cudaGraphAddKernelNode(&add, graph, &zero, 1, &add_params));
    void* mul_args[] = {&y, &a, &b, &count};
    cudaKernelNodeParams mul_params = add_params;
    mul_params.func = reinterpret_cast<void*>(multiply);
    mul_params.kernelParams = mul_args;
    CHECK(cudaGraphAddKernelNode(&mul, graph, &add, 1, &mul_params));
    CHECK(cudaGraphAddMemcpyNode1D(&copy, graph, &mul, 1, h_out, y, n * sizeof(float), cudaMemcpyDeviceToHost));
    five = -100.0f;  // the node copied its arguments when it was added: this does not change it
    size_t nodes = 0;
    CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
    if (nodes != 4) {
        std::printf("the graph has %zu nodes, expected 4\n", nodes);
        wrong++;
    }
    cudaGraphExec_t exec2;
    CHECK(cudaGraphInstantiate(&exec2, graph, 0));
    for (int l = 0; l < launches; l++) {
        std::fill(h_out, h_out + n, 0.0f);
        CHECK(cudaGraphLaunch(exec2, s1));
        CHECK(cudaStreamSynchronize(s1));
        for (int i = 0; i < n; i++) {
            float want = 5.0f * (h_b[i] + 1.0f);
            if (h_out[i] != want && wrong++ < 5)
                std::printf("explicit graph, launch %d: y[%d] = %g, expected %g\n", l, i, h_out[i], want);
        }
    }

    // 3. Graph memory (the graphMemoryNodes sample's pattern): an allocation node whose memory the graph does not
    // free. It stays allocated after the launch, at the address the node was given, until it is freed outside the
    // graph; launching the graph again before that fails, and after it allocates the memory again.
    cudaGraph_t mem_graph;
    CHECK(cudaGraphCreate(&mem_graph, 0));
    cudaMemAllocNodeParams alloc_params = {};
    alloc_params.bytesize = n * sizeof(float);
    alloc_params.poolProps.allocType = cudaMemAllocationTypePinned;
    alloc_params.poolProps.location.type = cudaMemLocationTypeDevice;
    alloc_params.poolProps.location.id = 0;
    cudaGraphNode_t alloc, zero_m, add_m;
    CHECK(cudaGraphAddMemAllocNode(&alloc, mem_graph, nullptr, 0, &alloc_params));
    float* m = static_cast<float*>(alloc_params.dptr);  // (n): fixed from now on
    memset_params.dst = m;
    CHECK(cudaGraphAddMemsetNode(&zero_m, mem_graph, &alloc, 1, &memset_params));
    float two = 2.0f;
    void* add_m_args[] = {&m, &two, &count};
    cudaKernelNodeParams add_m_params = add_params;
    add_m_params.kernelParams = add_m_args;
    CHECK(cudaGraphAddKernelNode(&add_m, mem_graph, &zero_m, 1, &add_m_params));
    cudaGraphExec_t exec3;
    CHECK(cudaGraphInstantiate(&exec3, mem_graph, 0));
    for (int l = 0; l < launches; l++) {
        CHECK(cudaGraphLaunch(exec3, s1));
        if (cudaGraphLaunch(exec3, s1) != cudaErrorInvalidValue && wrong++ < 5)  // m is still allocated
            std::printf("graph memory, launch %d: a second launch before the free did not fail\n", l);
        cudaGetLastError();
        add_scalar<<<grid, block, 0, s1>>>(m, 1.0f, n);  // stream work after the graph may use the memory
        CHECK(cudaMemcpyAsync(h_out, m, n * sizeof(float), cudaMemcpyDeviceToHost, s1));
        CHECK(cudaStreamSynchronize(s1));
        for (int i = 0; i < n; i++)
            if (h_out[i] != 3.0f && wrong++ < 5)
                std::printf("graph memory, launch %d: m[%d] = %g, expected 3\n", l, i, h_out[i]);
        CHECK(cudaFree(m));  // freed outside the graph: the next launch allocates it again
    }

    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphExecDestroy(exec2));
    CHECK(cudaGraphExecDestroy(exec3));
    CHECK(cudaGraphDestroy(mem_graph));
    CHECK(cudaGraphDestroy(captured));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaEventDestroy(fork));
    CHECK(cudaEventDestroy(join));
    CHECK(cudaStreamDestroy(s1));
    CHECK(cudaStreamDestroy(s2));
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    CHECK(cudaFree(y));
    CHECK(cudaFreeHost(h_a));
    CHECK(cudaFreeHost(h_b));
    CHECK(cudaFreeHost(h_out));
    std::printf("graphs: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
