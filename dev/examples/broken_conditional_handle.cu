// broken_conditional_handle.cu — an IF node whose handle has no default value, set by the kernel upstream only when
// there is work (`if (*pending > 0)`). With no work, nothing sets it: on a GPU the node then reads an undefined
// value (left over from the last launch, or anything), so the body may run or not. cudasim stops at that read:
//
//   dev/cudarun dev/examples/broken_conditional_handle.cu
//   cudasim: a conditional graph node reads handle 0x..., which has no default (cudaGraphCondAssignDefault) and
//   which no kernel has set (cudaGraphSetConditional) since its graph's run began ...
#include <cuda_runtime.h>

#include <cstdio>

__global__ void check_pending(const int* pending, cudaGraphConditionalHandle handle) {
    if (*pending > 0) cudaGraphSetConditional(handle, 1);  // the bug: no `else` sets 0 (nor a default)
}
__global__ void process(int* pending) { --*pending; }

int main() {
    int* pending;
    cudaMalloc(&pending, sizeof(int));
    cudaGraph_t graph;
    cudaGraphCreate(&graph, 0);
    cudaGraphConditionalHandle handle;
    cudaGraphConditionalHandleCreate(&handle, graph);  // no default
    void* args[] = {&pending, &handle};
    cudaGraphNodeParams p = {cudaGraphNodeTypeKernel};
    p.kernel.func = (void*)check_pending;
    p.kernel.gridDim = p.kernel.blockDim = dim3(1);
    p.kernel.kernelParams = args;
    cudaGraphNode_t check, node, body_node;
    cudaGraphAddNode(&check, graph, nullptr, nullptr, 0, &p);
    cudaGraphNodeParams c = {cudaGraphNodeTypeConditional};
    c.conditional.handle = handle;
    c.conditional.type = cudaGraphCondTypeIf;
    c.conditional.size = 1;
    cudaGraphAddNode(&node, graph, &check, nullptr, 1, &c);
    p.kernel.func = (void*)process;
    p.kernel.kernelParams = args;  // process takes the first argument only
    cudaGraphAddNode(&body_node, c.conditional.phGraph_out[0], nullptr, nullptr, 0, &p);
    cudaGraphExec_t exec;
    cudaGraphInstantiate(&exec, graph, 0);
    for (int work : {1, 0}) {  // the second launch has no work
        cudaMemcpy(pending, &work, sizeof work, cudaMemcpyHostToDevice);
        cudaGraphLaunch(exec, 0);
        cudaDeviceSynchronize();
        int left = -1;
        cudaMemcpy(&left, pending, sizeof left, cudaMemcpyDeviceToHost);
        std::printf("pending %d -> %d\n", work, left);
    }
    return 0;
}
