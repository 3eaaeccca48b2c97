// graph_conditional.cu — conditional graph nodes (CUDA 12.3; IF/ELSE and SWITCH since 12.8), as the CUDA samples'
// graphConditionalNodes builds them: a kernel upstream sets the node's handle with cudaGraphSetConditional, and
// the node runs a body graph by its value. Checked here: IF (both values), IF/ELSE, a WHILE loop that counts
// down to zero (its handle's default starts it: a do-while), SWITCH (each case and one past the last), a WHILE
// whose body holds an IF (nested), and a WHILE node inserted into a stream capture with its body captured by
// cudaStreamBeginCaptureToGraph. Each graph is instantiated once and launched several times.
// Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/graph_conditional.cu
//   on a GPU:    nvcc -O2 -o graph_conditional dev/examples/graph_conditional.cu && ./graph_conditional
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
            std::exit(1);                                                                    \
        }                                                                                    \
    } while (0)

// log[0] counts the entries after it; each kernel a body runs appends its tag
__global__ void append(int* log, int tag) { log[1 + log[0]++] = tag; }

// the handle takes *value
__global__ void set_handle(const int* value, cudaGraphConditionalHandle handle) {
    cudaGraphSetConditional(handle, static_cast<unsigned>(*value));
}

// one loop iteration: log the counter, count it down, and keep looping while it is above zero
__global__ void count_down(int* counter, int* log, cudaGraphConditionalHandle handle) {
    log[1 + log[0]++] = *counter;
    cudaGraphSetConditional(handle, --*counter > 0);
}

// the nested IF's handle: is the counter (after count_down) even?
__global__ void set_if_even(const int* counter, cudaGraphConditionalHandle handle) {
    cudaGraphSetConditional(handle, *counter % 2 == 0);
}

static int* g_log;      // device: (1 + 64) ints
static int* g_value;    // device: the value set_handle reads, or the loop counter
static bool g_ok = true;

static cudaGraphNode_t add_kernel(cudaGraph_t graph, const cudaGraphNode_t* dep, void* func, void** args) {
    cudaGraphNodeParams p = {cudaGraphNodeTypeKernel};
    p.kernel.func = func;
    p.kernel.gridDim = dim3(1);
    p.kernel.blockDim = dim3(1);
    p.kernel.kernelParams = args;
    cudaGraphNode_t node;
    CHECK(cudaGraphAddNode(&node, graph, dep, nullptr, dep ? 1 : 0, &p));
    return node;
}
static cudaGraphNode_t add_append(cudaGraph_t graph, const cudaGraphNode_t* dep, int tag) {
    void* args[] = {&g_log, &tag};
    return add_kernel(graph, dep, (void*)append, args);
}
// a conditional node of `type` with `size` bodies after `dep`: its body graphs
static cudaGraph_t* add_conditional(cudaGraph_t graph, const cudaGraphNode_t* dep, cudaGraphConditionalHandle handle,
                                    cudaGraphConditionalNodeType type, unsigned size, cudaGraphNode_t* node) {
    cudaGraphNodeParams p = {cudaGraphNodeTypeConditional};
    p.conditional.handle = handle;
    p.conditional.type = type;
    p.conditional.size = size;
    CHECK(cudaGraphAddNode(node, graph, dep, nullptr, dep ? 1 : 0, &p));
    return p.conditional.phGraph_out;
}

// Sets *g_value = value, launches `exec`, and checks the tags the bodies logged against `want` (n of them).
static void run(const char* what, cudaGraphExec_t exec, int value, const int* want, int n) {
    CHECK(cudaMemcpy(g_value, &value, sizeof value, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(g_log, 0, sizeof(int)));
    CHECK(cudaGraphLaunch(exec, 0));
    CHECK(cudaDeviceSynchronize());
    int log[1 + 64];
    CHECK(cudaMemcpy(log, g_log, sizeof log, cudaMemcpyDeviceToHost));
    bool ok = log[0] == n;
    for (int i = 0; ok && i < n; i++) ok = log[1 + i] == want[i];
    std::printf("%-28s value %2d: logged", what, value);
    for (int i = 0; i < log[0] && i < 64; i++) std::printf(" %d", log[1 + i]);
    std::printf("%s\n", ok ? "" : "  <- wrong");
    g_ok = g_ok && ok;
}

int main() {
    CHECK(cudaMalloc(&g_log, (1 + 64) * sizeof(int)));
    CHECK(cudaMalloc(&g_value, sizeof(int)));

    // IF with an ELSE body, and IF alone: set_handle -> IF [ append 1 | append 2 ] -> append 0
    for (unsigned size : {2u, 1u}) {
        cudaGraph_t graph;
        CHECK(cudaGraphCreate(&graph, 0));
        cudaGraphConditionalHandle handle;
        CHECK(cudaGraphConditionalHandleCreate(&handle, graph));
        void* args[] = {&g_value, &handle};
        cudaGraphNode_t set = add_kernel(graph, nullptr, (void*)set_handle, args), node;
        cudaGraph_t* bodies = add_conditional(graph, &set, handle, cudaGraphCondTypeIf, size, &node);
        add_append(graph, &node, 0);  // after the IF, whichever body ran
        add_append(bodies[0], nullptr, 1);
        if (size == 2) add_append(bodies[1], nullptr, 2);
        cudaGraphExec_t exec;
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        const int if_true[] = {1, 0}, if_false[] = {2, 0}, neither[] = {0};
        const char* what = size == 2 ? "IF/ELSE" : "IF";
        run(what, exec, 5, if_true, 2);
        run(what, exec, 0, size == 2 ? if_false : neither, size == 2 ? 2 : 1);
        run(what, exec, 7, if_true, 2);
        CHECK(cudaGraphExecDestroy(exec));
        CHECK(cudaGraphDestroy(graph));
    }

    // SWITCH with 3 cases: set_handle -> SWITCH [ append 10 | append 11 | append 12 ]; 3 runs none
    {
        cudaGraph_t graph;
        CHECK(cudaGraphCreate(&graph, 0));
        cudaGraphConditionalHandle handle;
        CHECK(cudaGraphConditionalHandleCreate(&handle, graph));
        void* args[] = {&g_value, &handle};
        cudaGraphNode_t set = add_kernel(graph, nullptr, (void*)set_handle, args), node;
        cudaGraph_t* bodies = add_conditional(graph, &set, handle, cudaGraphCondTypeSwitch, 3, &node);
        for (int c = 0; c < 3; c++) add_append(bodies[c], nullptr, 10 + c);
        cudaGraphExec_t exec;
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (int v = 0; v < 4; v++) {
            int want = 10 + v;
            run("SWITCH", exec, v, &want, v < 3 ? 1 : 0);
        }
        CHECK(cudaGraphExecDestroy(exec));
        CHECK(cudaGraphDestroy(graph));
    }

    // WHILE counting down, started by the handle's default (1): a do-while. Its body: count_down -> IF [ append
    // -1 ], the IF on a handle of the body graph that set_if_even sets. A counter of n logs n, n-1, ..., 1, with
    // -1 after each even value left behind.
    {
        cudaGraph_t graph;
        CHECK(cudaGraphCreate(&graph, 0));
        cudaGraphConditionalHandle loop;
        CHECK(cudaGraphConditionalHandleCreate(&loop, graph, 1, cudaGraphCondAssignDefault));
        cudaGraphNode_t node;
        cudaGraph_t body = add_conditional(graph, nullptr, loop, cudaGraphCondTypeWhile, 1, &node)[0];
        cudaGraphConditionalHandle even;
        CHECK(cudaGraphConditionalHandleCreate(&even, body));
        void* count_args[] = {&g_value, &g_log, &loop};
        cudaGraphNode_t step = add_kernel(body, nullptr, (void*)count_down, count_args);
        void* even_args[] = {&g_value, &even};
        cudaGraphNode_t test = add_kernel(body, &step, (void*)set_if_even, even_args), inner;
        add_append(add_conditional(body, &test, even, cudaGraphCondTypeIf, 1, &inner)[0], nullptr, -1);
        cudaGraphExec_t exec;
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        const int from5[] = {5, -1, 4, 3, -1, 2, 1, -1}, from1[] = {1, -1}, from2[] = {2, 1, -1};
        run("WHILE (nested IF)", exec, 5, from5, 8);
        run("WHILE (nested IF)", exec, 1, from1, 2);
        run("WHILE (nested IF)", exec, 2, from2, 3);
        CHECK(cudaGraphExecDestroy(exec));
        CHECK(cudaGraphDestroy(graph));
    }

    // A WHILE node inserted into a stream capture between two captured kernels, its body captured into it:
    // append 20 -> set_handle(counter > 0) -> WHILE [ count_down ] -> append 21. A counter of 0 skips the loop.
    {
        cudaStream_t stream;
        CHECK(cudaStreamCreate(&stream));
        CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        cudaStreamCaptureStatus status;
        cudaGraph_t graph;
        const cudaGraphNode_t* deps;
        size_t ndeps;
        CHECK(cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph, &deps, nullptr, &ndeps));
        cudaGraphConditionalHandle handle;
        CHECK(cudaGraphConditionalHandleCreate(&handle, graph));
        append<<<1, 1, 0, stream>>>(g_log, 20);
        set_handle<<<1, 1, 0, stream>>>(g_value, handle);  // the counter is not negative: nonzero means "loop"
        CHECK(cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph, &deps, nullptr, &ndeps));
        cudaGraphNodeParams p = {cudaGraphNodeTypeConditional};
        p.conditional.handle = handle;
        p.conditional.type = cudaGraphCondTypeWhile;
        p.conditional.size = 1;
        cudaGraphNode_t node;
        CHECK(cudaGraphAddNode(&node, graph, deps, nullptr, ndeps, &p));
        CHECK(cudaStreamUpdateCaptureDependencies(stream, &node, nullptr, 1, cudaStreamSetCaptureDependencies));
        append<<<1, 1, 0, stream>>>(g_log, 21);
        CHECK(cudaStreamEndCapture(stream, &graph));
        CHECK(cudaStreamBeginCaptureToGraph(stream, p.conditional.phGraph_out[0], nullptr, nullptr, 0,
                                            cudaStreamCaptureModeGlobal));
        count_down<<<1, 1, 0, stream>>>(g_value, g_log, handle);
        CHECK(cudaStreamEndCapture(stream, nullptr));
        cudaGraphExec_t exec;
        CHECK(cudaGraphInstantiate(&exec, graph, 0));
        const int from3[] = {20, 3, 2, 1, 21}, from0[] = {20, 21};
        run("captured WHILE", exec, 3, from3, 5);
        run("captured WHILE", exec, 0, from0, 2);
        CHECK(cudaGraphExecDestroy(exec));
        CHECK(cudaGraphDestroy(graph));
        CHECK(cudaStreamDestroy(stream));
    }

    CHECK(cudaFree(g_log));
    CHECK(cudaFree(g_value));
    std::printf("graph_conditional: %s\n", g_ok ? "PASS" : "FAIL");
    return g_ok ? 0 : 1;
}
