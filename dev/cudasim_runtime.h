// cudasim_runtime.h — the wider CUDA runtime API of the CPU build, included by dev/cudasim.h:
// the virtual device every query answers about, CUDA graphs (stream capture and explicit nodes), zero-copy
// host memory, occupancy, kernel attributes, limits, the profiler switches, kernel launches through
// `void** args` (cudaLaunchKernel, graph kernel nodes), device assert and __trap (a sticky error, as on a
// GPU), and the C++ overloads <cuda_runtime.h> gives only to nvcc (`cudaMemcpyToSymbol(symbol, ...)`,
// `cudaOccupancyMaxPotentialBlockSize(&grid, &block, kernel)`).
//
// Like dev/cudasim.h it has two halves: declarations and templates for every translation unit, and the
// implementation, compiled once into build/cpu/cudasim.o (under CUDASIM_IMPLEMENTATION).
//
// The virtual device is an A100-like part (sm_80, 108 SMs; the numbers are in `device_profile` below):
// cudaGetDeviceProperties and every cudaDeviceGetAttribute answer from that one table, so a program sees
// the same device whichever way it asks. Memory is the host's: totalGlobalMem and cudaMemGetInfo report
// the machine's physical memory, and "device" memory is host memory (so zero-copy is the identity).
#ifndef GPTCU_CUDASIM_RUNTIME_H
#define GPTCU_CUDASIM_RUNTIME_H

#include <cuda_profiler_api.h>

namespace cudasim {

// ----------------------------------------------------------------------------
// Launches with `void** args` (cudaLaunchKernel, graph kernel nodes) need the kernel's parameter types,
// which a function pointer does not carry. dev/cudasim_rewrite registers every non-template __global__
// function it sees with `register_kernel`, which records how to read its arguments from `void** args`.
using BoundLaunch = std::function<void()>;
using KernelBinder = BoundLaunch (*)(const void* kernel, const LaunchConfig&, void** args);
bool register_kernel_binder(const void* kernel, const char* name, KernelBinder binder);

template <class... Params>
struct KernelBinderFor {
    template <size_t... I>
    static std::tuple<std::decay_t<Params>...> read(void** args, std::index_sequence<I...>) {
        return std::tuple<std::decay_t<Params>...>(*static_cast<std::decay_t<Params>*>(args[I])...);
    }
    // The arguments are copied now (CUDA copies kernelParams when the node or launch is created).
    static BoundLaunch bind(const void* kernel, const LaunchConfig& config, void** args) {
        auto k = reinterpret_cast<void (*)(Params...)>(const_cast<void*>(kernel));
        std::tuple<std::decay_t<Params>...> params = read(args, std::index_sequence_for<Params...>{});
        return [k, config, params] { run_grid(config, [&] { std::apply(k, params); }); };
    }
};
template <class... Params>
bool register_kernel(void (*kernel)(Params...), const char* name) {
    return register_kernel_binder(reinterpret_cast<const void*>(kernel), name, &KernelBinderFor<Params...>::bind);
}

// Stream capture: while a stream captures, work issued to it becomes a node of the graph being built
// instead of running. `capture_node` records `work` and returns true when `stream` is capturing.
extern std::atomic<int> g_capturing_streams;
bool capture_node_slow(cudaStream_t stream, const char* what, BoundLaunch work);
inline bool capture_node(cudaStream_t stream, const char* what, const std::function<BoundLaunch()>& make) {
    return g_capturing_streams.load(std::memory_order_relaxed) > 0 && capture_node_slow(stream, what, make());
}

// Occupancy of the virtual device (used by the occupancy API and its C++ overloads).
int max_active_blocks_per_sm(const void* kernel, int block_size, size_t dynamic_shared_bytes);

}  // namespace cudasim

// Device code's half of conditional graph nodes (<cuda_device_runtime_api.h> declares it for nvcc only): the value
// the conditional node of `handle` reads next.
void cudaGraphSetConditional(cudaGraphConditionalHandle handle, unsigned value);

// ----------------------------------------------------------------------------
// The C++ overloads of <cuda_runtime.h> that only nvcc sees (they sit under __CUDACC__ there).
template <class T>
cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count, size_t offset = 0,
                               cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    return cudaMemcpyToSymbol(static_cast<const void*>(&symbol), src, count, offset, kind);
}
template <class T>
cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                 cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    return cudaMemcpyFromSymbol(dst, static_cast<const void*>(&symbol), count, offset, kind);
}
template <class T>
cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                    cudaMemcpyKind kind = cudaMemcpyHostToDevice, cudaStream_t stream = nullptr) {
    return cudaMemcpyToSymbolAsync(static_cast<const void*>(&symbol), src, count, offset, kind, stream);
}
template <class T>
cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                      cudaMemcpyKind kind = cudaMemcpyDeviceToHost, cudaStream_t stream = nullptr) {
    return cudaMemcpyFromSymbolAsync(dst, static_cast<const void*>(&symbol), count, offset, kind, stream);
}
template <class T>
cudaError_t cudaGetSymbolAddress(void** address, const T& symbol) {
    return cudaGetSymbolAddress(address, static_cast<const void*>(&symbol));
}
template <class T>
cudaError_t cudaGetSymbolSize(size_t* size, const T& symbol) {
    *size = sizeof(T);
    return cudaSuccess;
}
template <class T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* kernel) {
    return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(kernel));
}
template <class T>
cudaError_t cudaFuncSetCacheConfig(T* kernel, cudaFuncCache config) {
    return cudaFuncSetCacheConfig(reinterpret_cast<const void*>(kernel), config);
}
// cudaOccupancyMaxPotentialBlockSize(&grid, &block, kernel) and its variants: <cuda_runtime.h> defines them for
// every compiler, on top of the functions below.
template <class T>
cudaError_t cudaOccupancyAvailableDynamicSMemPerBlock(size_t* bytes, T kernel, int blocks_per_sm, int block_size) {
    return cudaOccupancyAvailableDynamicSMemPerBlock(bytes, reinterpret_cast<const void*>(kernel), blocks_per_sm,
                                                     block_size);
}

#endif  // GPTCU_CUDASIM_RUNTIME_H

// ============================================================================
// Implementation (build/cpu/cudasim.o), included from the implementation half of dev/cudasim.h.
#if defined(GPTCU_CUDASIM_IMPLEMENTED) && !defined(GPTCU_CUDASIM_RUNTIME_IMPLEMENTED)
#define GPTCU_CUDASIM_RUNTIME_IMPLEMENTED
#include <memory>
#include <set>

namespace cudasim {

// ----------------------------------------------------------------------------
// The virtual device: an A100-SXM4-like part. Limits the emulator enforces (threads per block, dynamic
// shared memory) come from the constants at the top of the implementation; the rest are the A100's.
struct DeviceProfile {
    int sms = 108;            // multiprocessors
    int clock_khz = 1410000;  // boost clock
    int memory_clock_khz = 1215000;
    int bus_bits = 5120;
    int l2_bytes = 40 * 1024 * 1024;
    // L2 set-aside for persisting accesses (cudaLimitPersistingL2CacheSize) and the largest access policy window:
    // the A100's values. They are cache hints, recorded and read back; there is no L2 to steer here, and no result
    // depends on them.
    int persisting_l2_max = 30 * 1024 * 1024;
    int access_policy_window_max = 128 * 1024 * 1024 - 4096;
    int regs_per_sm = 65536, regs_per_block = 65536;
    int threads_per_sm = 2048, blocks_per_sm = 32;
    size_t shared_per_sm = 164 * 1024;
    size_t const_bytes = 64 * 1024;
    int regs_per_thread = 32;  // what cudaFuncGetAttributes reports for every kernel (no compiler to ask)
};
static const DeviceProfile device_profile;

// The value of every attribute this device has, from the profile; false for attributes it does not know.
static bool device_attribute(cudaDeviceAttr attr, int* value) {
    const DeviceProfile& d = device_profile;
    switch (attr) {
        case cudaDevAttrMaxThreadsPerBlock: *value = max_threads_per_block; return true;
        case cudaDevAttrMaxBlockDimX:
        case cudaDevAttrMaxBlockDimY: *value = 1024; return true;
        case cudaDevAttrMaxBlockDimZ: *value = 64; return true;
        case cudaDevAttrMaxGridDimX: *value = 2147483647; return true;
        case cudaDevAttrMaxGridDimY:
        case cudaDevAttrMaxGridDimZ: *value = 65535; return true;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(default_shared_bytes); return true;
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(max_shared_bytes_optin); return true;
        case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(d.shared_per_sm); return true;
        case cudaDevAttrReservedSharedMemoryPerBlock: *value = 1024; return true;
        case cudaDevAttrTotalConstantMemory: *value = static_cast<int>(d.const_bytes); return true;
        case cudaDevAttrWarpSize: *value = 32; return true;
        case cudaDevAttrMaxPitch: *value = 2147483647; return true;
        case cudaDevAttrMaxRegistersPerBlock: *value = d.regs_per_block; return true;
        case cudaDevAttrMaxRegistersPerMultiprocessor: *value = d.regs_per_sm; return true;
        case cudaDevAttrClockRate: *value = d.clock_khz; return true;
        case cudaDevAttrMemoryClockRate: *value = d.memory_clock_khz; return true;
        case cudaDevAttrGlobalMemoryBusWidth: *value = d.bus_bits; return true;
        case cudaDevAttrL2CacheSize: *value = d.l2_bytes; return true;
        case cudaDevAttrMultiProcessorCount: *value = d.sms; return true;
        case cudaDevAttrMaxThreadsPerMultiProcessor: *value = d.threads_per_sm; return true;
        case cudaDevAttrMaxBlocksPerMultiprocessor: *value = d.blocks_per_sm; return true;
        case cudaDevAttrComputeCapabilityMajor: *value = CUDASIM_CUDA_ARCH / 100; return true;
        case cudaDevAttrComputeCapabilityMinor: *value = CUDASIM_CUDA_ARCH % 100 / 10; return true;
        case cudaDevAttrComputeMode: *value = cudaComputeModeDefault; return true;
        case cudaDevAttrTextureAlignment: *value = 512; return true;
        case cudaDevAttrTexturePitchAlignment: *value = 32; return true;
        case cudaDevAttrSurfaceAlignment: *value = 512; return true;
        case cudaDevAttrGpuOverlap: *value = 1; return true;
        case cudaDevAttrAsyncEngineCount: *value = 2; return true;
        case cudaDevAttrConcurrentKernels: *value = 1; return true;
        case cudaDevAttrKernelExecTimeout: *value = 0; return true;
        case cudaDevAttrIntegrated: *value = 0; return true;
        case cudaDevAttrEccEnabled: *value = 0; return true;
        case cudaDevAttrTccDriver: *value = 0; return true;
        case cudaDevAttrPciBusId:
        case cudaDevAttrPciDeviceId:
        case cudaDevAttrPciDomainId: *value = 0; return true;
        case cudaDevAttrIsMultiGpuBoard:
        case cudaDevAttrMultiGpuBoardGroupID: *value = 0; return true;
        case cudaDevAttrStreamPrioritiesSupported: *value = 1; return true;
        case cudaDevAttrGlobalL1CacheSupported:
        case cudaDevAttrLocalL1CacheSupported: *value = 1; return true;
        case cudaDevAttrSingleToDoublePrecisionPerfRatio: *value = 2; return true;
        case cudaDevAttrComputePreemptionSupported: *value = 1; return true;
        // Device memory is host memory: mapped host memory, unified addressing, managed memory and
        // host-native atomics all hold, trivially.
        case cudaDevAttrCanMapHostMemory:
        case cudaDevAttrUnifiedAddressing:
        case cudaDevAttrManagedMemory:
        case cudaDevAttrHostNativeAtomicSupported:
        case cudaDevAttrConcurrentManagedAccess:
        case cudaDevAttrCanUseHostPointerForRegisteredMem:
        case cudaDevAttrDirectManagedMemAccessFromHost:
        case cudaDevAttrHostRegisterSupported:
        case cudaDevAttrHostRegisterReadOnlySupported:
        case cudaDevAttrMemoryPoolsSupported:
        case cudaDevAttrCanFlushRemoteWrites: *value = 1; return true;
        // But not pageable memory (plain malloc, the stack), as on an A100 in a system without HMM: the checked
        // build stops a kernel given such a pointer, the commonest bug it catches, so the device must not
        // advertise that kernels may use one (systemWideAtomics then takes its cudaMallocManaged path).
        case cudaDevAttrPageableMemoryAccess:
        case cudaDevAttrPageableMemoryAccessUsesHostPageTables: *value = 0; return true;
        case cudaDevAttrMemoryPoolSupportedHandleTypes: *value = cudaMemHandleTypeNone; return true;
        // Not emulated, so not offered: grid-wide sync (cooperative launch), clusters, RDMA, IPC events.
        case cudaDevAttrCooperativeLaunch:
        case cudaDevAttrClusterLaunch:
        case cudaDevAttrGPUDirectRDMASupported:
        case cudaDevAttrIpcEventSupport:
        case cudaDevAttrSparseCudaArraySupported:
        case cudaDevAttrTimelineSemaphoreInteropSupported:
        case cudaDevAttrDeferredMappingCudaArraySupported:
        case cudaDevAttrMpsEnabled: *value = 0; return true;
        case cudaDevAttrMaxPersistingL2CacheSize: *value = d.persisting_l2_max; return true;
        case cudaDevAttrMaxAccessPolicyWindowSize: *value = d.access_policy_window_max; return true;
        case cudaDevAttrNumaConfig: *value = cudaDeviceNumaConfigNone; return true;
        case cudaDevAttrNumaId:
        case cudaDevAttrHostNumaId: *value = -1; return true;
        default: return false;
    }
}

// ----------------------------------------------------------------------------
// Sticky errors: after a device assert or __trap the "context" is unusable, as on a GPU: every later
// launch is skipped and synchronisation, copies and cudaGetLastError return the error until the end.
std::atomic<int> g_sticky_error{cudaSuccess};
cudaError_t sticky_error() { return static_cast<cudaError_t>(g_sticky_error.load(std::memory_order_relaxed)); }

// A kernel thread stops for good: the block and the grid end, later API calls report `error`.
[[noreturn]] static void trap_thread(cudaError_t error) {
    int expected = cudaSuccess;
    g_sticky_error.compare_exchange_strong(expected, error);
    trap_current_thread();
}

// ----------------------------------------------------------------------------
// Kernels launchable through `void** args`.
struct RegisteredKernel {
    const char* name;
    KernelBinder binder;
};
static std::map<const void*, RegisteredKernel>& kernel_registry() {
    static std::map<const void*, RegisteredKernel> registry;
    return registry;
}
bool register_kernel_binder(const void* kernel, const char* name, KernelBinder binder) {
    std::lock_guard<std::mutex> lock(g_mutex);
    kernel_registry()[kernel] = RegisteredKernel{name, binder};
    return true;
}
static BoundLaunch bind_kernel(const char* api, const void* kernel, dim3 grid, dim3 block, void** args, size_t smem,
                               cudaStream_t stream) {
    RegisteredKernel k{};
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        auto it = kernel_registry().find(kernel);
        if (it == kernel_registry().end())
            fatal(
                "%s: the kernel %p was not seen by dev/cudasim_rewrite (a template kernel, or one defined in a file "
                "the rewrite did not process); launch it with kernel<<<grid, block, shared_bytes, stream>>>(args)",
                api, kernel);
        k = it->second;
    }
    return k.binder(kernel, LaunchConfig{k.name, kernel, grid, block, smem, stream}, args);
}

// ----------------------------------------------------------------------------
// Graphs. A graph is a list of nodes with dependencies; instantiating it fixes one topological order
// (creation order among independent nodes), and launching it runs the nodes one after the other,
// which is one of the orders a GPU may choose.
//
// Conditional nodes (IF, IF/ELSE, WHILE, SWITCH) own body graphs, filled after the node is made; instantiating
// fixes each body's steps too (bodies nest), and the node's step runs a body, or loops over one, by the value of
// its handle. A handle's value starts each run of the graph it was made for at its default
// (cudaGraphCondAssignDefault) or undefined; a kernel sets it with cudaGraphSetConditional.
struct Conditional {
    unsigned default_value = 0;
    bool assign_default = false;
    std::atomic<unsigned> value{0};
    std::atomic<bool> defined{false};  // set since its graph's run began (by the default or a kernel)
    void start() {
        value = default_value;
        defined = assign_default;
    }
    unsigned read() const {
        if (!defined)
            fatal("a conditional graph node reads handle %p, which has no default (cudaGraphCondAssignDefault) and "
                  "which no kernel has set (cudaGraphSetConditional) since its graph's run began: on a GPU its value "
                  "is undefined; give it a default or set it in a kernel upstream of the node",
                  static_cast<const void*>(this));
        return value;
    }
};
struct GraphNodeData {
    cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
    BoundLaunch work;  // what the node does (empty for empty nodes)
    std::vector<cudaGraphNode_t> deps;
    cudaKernelNodeParams kernel{};  // kernel nodes: for cudaGraphKernelNodeGetParams
    void* allocation = nullptr;     // memory allocation nodes (explicit or captured cudaMallocAsync): the address
};
}  // namespace cudasim

struct CUgraphNode_st : cudasim::GraphNodeData {
    cudaGraph_t graph = nullptr;
    // conditional nodes: the handle, the kind, and the body graphs (bodies: what phGraph_out points to)
    std::shared_ptr<cudasim::Conditional> condition;
    cudaGraphConditionalNodeType condition_type = cudaGraphCondTypeIf;
    std::vector<std::shared_ptr<CUgraph_st>> owned_bodies;
    std::vector<cudaGraph_t> bodies;
};
struct CUgraph_st {
    std::vector<std::unique_ptr<CUgraphNode_st>> nodes;
    std::vector<std::shared_ptr<cudasim::Conditional>> handles;  // made for this graph: they start when it runs
};
struct CUgraphExec_st {
    std::vector<cudasim::BoundLaunch> steps;
    std::vector<void*> allocations;  // the graph's memory allocation nodes
    bool auto_free = false;          // cudaGraphInstantiateFlagAutoFreeOnLaunch: a launch frees them first
    std::map<cudaGraphNode_t, size_t> step_of;  // a node of the source graph -> its step
};

namespace cudasim {

static cudaGraphNode_t add_node(cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps, cudaGraphNodeType type,
                                BoundLaunch work) {
    auto node = std::make_unique<CUgraphNode_st>();
    node->type = type;
    node->work = std::move(work);
    node->graph = graph;
    for (size_t i = 0; i < ndeps; i++) node->deps.push_back(deps[i]);
    graph->nodes.push_back(std::move(node));
    return graph->nodes.back().get();
}

// Stream capture state: the streams capturing into each graph (an event recorded in a capturing stream
// and waited for by another stream pulls that stream into the capture, as in CUDA's fork/join pattern),
// and the last node captured from each stream (the next one depends on it).
struct Capture {
    cudaGraph_t graph = nullptr;
    cudaStream_t origin = nullptr;
};
std::atomic<int> g_capturing_streams{0};
static std::map<cudaStream_t, Capture> g_captures;              // capturing stream -> its capture
static std::map<cudaStream_t, cudaGraphNode_t> g_capture_tail;  // capturing stream -> its last node
static std::map<cudaEvent_t, std::pair<cudaGraph_t, cudaGraphNode_t>> g_captured_events;
static std::mutex g_capture_mutex;

bool capture_launch_slow(const LaunchConfig& config, std::function<void()> later) {
    return capture_node_slow(config.stream, config.name, std::move(later));
}
bool capture_node_slow(cudaStream_t stream, const char* what, BoundLaunch work) {
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    auto it = g_captures.find(stream);
    if (it == g_captures.end()) {
        if (!stream && !g_captures.empty())
            fatal(
                "%s on the legacy default stream while a stream capture is under way: the GPU fails this with "
                "cudaErrorStreamCaptureImplicit; issue it to the capturing stream",
                what);
        return false;
    }
    cudaGraphNode_t tail = g_capture_tail.count(stream) ? g_capture_tail[stream] : nullptr;
    g_capture_tail[stream] =
        add_node(it->second.graph, tail ? &tail : nullptr, tail ? 1 : 0, cudaGraphNodeTypeKernel, std::move(work));
    return true;
}

static std::vector<size_t> topological_order(cudaGraph_t graph) {
    std::map<cudaGraphNode_t, size_t> index;
    for (size_t i = 0; i < graph->nodes.size(); i++) index[graph->nodes[i].get()] = i;
    std::vector<size_t> order, state(graph->nodes.size(), 0);  // 0 new, 1 visiting, 2 done
    std::function<void(size_t)> visit = [&](size_t i) {
        if (state[i] == 2) return;
        if (state[i] == 1) fatal("cudaGraphInstantiate: the graph has a cycle");
        state[i] = 1;
        for (cudaGraphNode_t d : graph->nodes[i]->deps) {
            auto it = index.find(d);
            if (it == index.end()) fatal("cudaGraphInstantiate: a node depends on a node of another graph");
            visit(it->second);
        }
        state[i] = 2;
        order.push_back(i);
    };
    for (size_t i = 0; i < graph->nodes.size(); i++) visit(i);
    return order;
}

// The steps that run `graph` once: its handles start, then its nodes in one topological order (step_of and
// allocations, when given, receive each node's step and the memory allocation nodes, for the executable graph).
static BoundLaunch node_step(const CUgraphNode_st& node);
static std::vector<BoundLaunch> graph_steps(cudaGraph_t graph, std::map<cudaGraphNode_t, size_t>* step_of = nullptr,
                                            std::vector<void*>* allocations = nullptr) {
    std::vector<BoundLaunch> steps;
    if (!graph->handles.empty())
        steps.push_back([handles = graph->handles] {
            for (const auto& h : handles) h->start();
        });
    for (size_t i : topological_order(graph)) {
        CUgraphNode_st& node = *graph->nodes[i];
        if (step_of) (*step_of)[&node] = steps.size();
        steps.push_back(node_step(node));
        if (allocations && node.allocation) allocations->push_back(node.allocation);
    }
    return steps;
}
// A node's step; a conditional node's is fixed here, from its bodies as they are now.
static BoundLaunch node_step(const CUgraphNode_st& node) {
    if (node.type != cudaGraphNodeTypeConditional) return node.work;
    std::vector<std::vector<BoundLaunch>> bodies;
    for (cudaGraph_t b : node.bodies) bodies.push_back(graph_steps(b));
    return [c = node.condition, type = node.condition_type, bodies] {
        auto run = [](const std::vector<BoundLaunch>& steps) {
            for (const auto& s : steps)
                if (s) s();
        };
        if (type == cudaGraphCondTypeWhile) {
            while (!sticky_error() && c->read()) run(bodies[0]);  // a trapped kernel ends the loop, as the grid
        } else if (unsigned v = c->read(); type == cudaGraphCondTypeIf) {
            if (v) run(bodies[0]);
            else if (bodies.size() == 2) run(bodies[1]);  // the ELSE body
        } else if (v < bodies.size()) {                   // SWITCH: no body for a value past the last
            run(bodies[v]);
        }
    };
}

// Conditional handles by value (a handle is the address of its Conditional), for cudaGraphSetConditional.
static std::map<cudaGraphConditionalHandle, std::weak_ptr<Conditional>> g_conditionals;
static std::mutex g_conditionals_mutex;
static std::shared_ptr<Conditional> find_conditional(cudaGraphConditionalHandle handle) {
    std::lock_guard<std::mutex> lock(g_conditionals_mutex);
    auto it = g_conditionals.find(handle);
    return it == g_conditionals.end() ? nullptr : it->second.lock();
}

// Deep copy (cudaGraphClone), bodies of conditional nodes included; the copy's nodes keep their handles.
static cudaGraph_t clone_graph(cudaGraph_t graph) {
    auto* g = new CUgraph_st{};
    g->handles = graph->handles;
    std::map<cudaGraphNode_t, cudaGraphNode_t> copy_of;
    for (const auto& n : graph->nodes) {
        g->nodes.push_back(std::make_unique<CUgraphNode_st>(*n));
        CUgraphNode_st& copy = *g->nodes.back();
        copy.graph = g;
        copy.owned_bodies.clear();
        for (cudaGraph_t& b : copy.bodies) {
            copy.owned_bodies.emplace_back(clone_graph(b));
            b = copy.owned_bodies.back().get();
        }
        copy_of[n.get()] = &copy;
    }
    for (auto& n : g->nodes)
        for (auto& d : n->deps) d = copy_of.at(d);
    return g;
}

// The node that a capturing stream's next node depends on: none, the one given, or an empty node joining several.
static cudaGraphNode_t join_nodes(cudaGraph_t graph, const std::vector<cudaGraphNode_t>& deps) {
    if (deps.size() <= 1) return deps.empty() ? nullptr : deps[0];
    return add_node(graph, deps.data(), deps.size(), cudaGraphNodeTypeEmpty, nullptr);
}

// ----------------------------------------------------------------------------
// Limits and flags the programs set and read back.
static std::map<cudaLimit, size_t> g_limits = {{cudaLimitStackSize, 1024},
                                               {cudaLimitPrintfFifoSize, 1 << 20},
                                               {cudaLimitMallocHeapSize, 8 << 20},
                                               {cudaLimitDevRuntimeSyncDepth, 2},
                                               {cudaLimitDevRuntimePendingLaunchCount, 2048},
                                               {cudaLimitMaxL2FetchGranularity, 64},
                                               {cudaLimitPersistingL2CacheSize, 0}};
static unsigned g_device_flags = 0;
static std::map<const void*, size_t> g_registered_host;  // cudaHostRegister: start -> bytes

int max_active_blocks_per_sm(const void*, int block_size, size_t dynamic_shared_bytes) {
    const DeviceProfile& d = device_profile;
    if (block_size <= 0 || block_size > max_threads_per_block) return 0;
    int warps = (block_size + 31) / 32;
    int by_threads = d.threads_per_sm / (warps * 32);
    int by_regs = d.regs_per_sm / (warps * 32 * d.regs_per_thread);
    size_t per_block = dynamic_shared_bytes + 1024;  // the 1 KB the hardware reserves per block
    int by_shared = static_cast<int>(d.shared_per_sm / per_block);
    return std::max(0, std::min({d.blocks_per_sm, by_threads, by_regs, by_shared}));
}

}  // namespace cudasim

// ----------------------------------------------------------------------------
// Device queries.
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties(%d): only device 0 exists", device);
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "CPU (emulated by cudasim)");
    auto attr = [](cudaDeviceAttr a) {
        int v = 0;
        cudasim::device_attribute(a, &v);
        return v;
    };
    prop->totalGlobalMem = cudasim::physical_memory();
    prop->sharedMemPerBlock = static_cast<size_t>(attr(cudaDevAttrMaxSharedMemoryPerBlock));
    prop->sharedMemPerBlockOptin = static_cast<size_t>(attr(cudaDevAttrMaxSharedMemoryPerBlockOptin));
    prop->sharedMemPerMultiprocessor = static_cast<size_t>(attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor));
    prop->reservedSharedMemPerBlock = static_cast<size_t>(attr(cudaDevAttrReservedSharedMemoryPerBlock));
    prop->regsPerBlock = attr(cudaDevAttrMaxRegistersPerBlock);
    prop->regsPerMultiprocessor = attr(cudaDevAttrMaxRegistersPerMultiprocessor);
    prop->warpSize = attr(cudaDevAttrWarpSize);
    prop->memPitch = static_cast<size_t>(attr(cudaDevAttrMaxPitch));
    prop->maxThreadsPerBlock = attr(cudaDevAttrMaxThreadsPerBlock);
    prop->maxThreadsDim[0] = attr(cudaDevAttrMaxBlockDimX);
    prop->maxThreadsDim[1] = attr(cudaDevAttrMaxBlockDimY);
    prop->maxThreadsDim[2] = attr(cudaDevAttrMaxBlockDimZ);
    prop->maxGridSize[0] = attr(cudaDevAttrMaxGridDimX);
    prop->maxGridSize[1] = attr(cudaDevAttrMaxGridDimY);
    prop->maxGridSize[2] = attr(cudaDevAttrMaxGridDimZ);
    prop->totalConstMem = static_cast<size_t>(attr(cudaDevAttrTotalConstantMemory));
    prop->major = attr(cudaDevAttrComputeCapabilityMajor);
    prop->minor = attr(cudaDevAttrComputeCapabilityMinor);
    prop->textureAlignment = static_cast<size_t>(attr(cudaDevAttrTextureAlignment));
    prop->texturePitchAlignment = static_cast<size_t>(attr(cudaDevAttrTexturePitchAlignment));
    prop->surfaceAlignment = static_cast<size_t>(attr(cudaDevAttrSurfaceAlignment));
    prop->multiProcessorCount = attr(cudaDevAttrMultiProcessorCount);
    prop->integrated = attr(cudaDevAttrIntegrated);
    prop->canMapHostMemory = attr(cudaDevAttrCanMapHostMemory);
    prop->concurrentKernels = attr(cudaDevAttrConcurrentKernels);
    prop->ECCEnabled = attr(cudaDevAttrEccEnabled);
    prop->asyncEngineCount = attr(cudaDevAttrAsyncEngineCount);
    prop->unifiedAddressing = attr(cudaDevAttrUnifiedAddressing);
    prop->memoryBusWidth = attr(cudaDevAttrGlobalMemoryBusWidth);
    prop->l2CacheSize = attr(cudaDevAttrL2CacheSize);
    prop->persistingL2CacheMaxSize = attr(cudaDevAttrMaxPersistingL2CacheSize);
    prop->accessPolicyMaxWindowSize = attr(cudaDevAttrMaxAccessPolicyWindowSize);
    prop->maxThreadsPerMultiProcessor = attr(cudaDevAttrMaxThreadsPerMultiProcessor);
    prop->maxBlocksPerMultiProcessor = attr(cudaDevAttrMaxBlocksPerMultiprocessor);
    prop->streamPrioritiesSupported = attr(cudaDevAttrStreamPrioritiesSupported);
    prop->globalL1CacheSupported = attr(cudaDevAttrGlobalL1CacheSupported);
    prop->localL1CacheSupported = attr(cudaDevAttrLocalL1CacheSupported);
    prop->managedMemory = attr(cudaDevAttrManagedMemory);
    prop->hostNativeAtomicSupported = attr(cudaDevAttrHostNativeAtomicSupported);
    prop->pageableMemoryAccess = attr(cudaDevAttrPageableMemoryAccess);
    prop->concurrentManagedAccess = attr(cudaDevAttrConcurrentManagedAccess);
    prop->computePreemptionSupported = attr(cudaDevAttrComputePreemptionSupported);
    prop->canUseHostPointerForRegisteredMem = attr(cudaDevAttrCanUseHostPointerForRegisteredMem);
    prop->cooperativeLaunch = attr(cudaDevAttrCooperativeLaunch);
    prop->pageableMemoryAccessUsesHostPageTables = attr(cudaDevAttrPageableMemoryAccessUsesHostPageTables);
    prop->directManagedMemAccessFromHost = attr(cudaDevAttrDirectManagedMemAccessFromHost);
    prop->hostRegisterSupported = attr(cudaDevAttrHostRegisterSupported);
    prop->hostRegisterReadOnlySupported = attr(cudaDevAttrHostRegisterReadOnlySupported);
    prop->memoryPoolsSupported = attr(cudaDevAttrMemoryPoolsSupported);
    prop->memoryPoolSupportedHandleTypes = static_cast<unsigned>(attr(cudaDevAttrMemoryPoolSupportedHandleTypes));
    prop->deviceNumaId = prop->hostNumaId = -1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
    if (device != 0)
        return fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: device %d (only device 0 exists)", device);
    if (!cudasim::device_attribute(attr, value))
        return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute %d is not known to the virtual device",
                    static_cast<int>(attr));
    return cudaSuccess;
}
cudaError_t cudaChooseDevice(int* device, const cudaDeviceProp*) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceCanAccessPeer(int* can, int, int) {
    *can = 0;
    return cudaSuccess;
}
// One device, so no peer: a GPU answers a device's access to itself with the same error. Multi-GPU samples (simpleP2P,
// streamOrderedAllocationP2P) count the devices first and waive themselves; these only have to link and refuse.
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned) {
    return fail(cudaErrorInvalidDevice, "cudaDeviceEnablePeerAccess: device %d is no peer of device 0 (the virtual "
                "device is the only one)", peer);
}
cudaError_t cudaDeviceDisablePeerAccess(int peer) {
    return fail(cudaErrorInvalidDevice, "cudaDeviceDisablePeerAccess: device %d is no peer of device 0 (the virtual "
                "device is the only one)", peer);
}
// Inter-process sharing: device memory here is the process's own heap, which another process cannot map.
static cudaError_t no_ipc(const char* call) {
    return fail(cudaErrorNotSupported, "%s: sharing device memory or events with another process is not emulated on "
                "the CPU (device memory is this process's heap)", call);
}
cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t*, void*) { return no_ipc("cudaIpcGetMemHandle"); }
cudaError_t cudaIpcOpenMemHandle(void**, cudaIpcMemHandle_t, unsigned) { return no_ipc("cudaIpcOpenMemHandle"); }
cudaError_t cudaIpcCloseMemHandle(void*) { return no_ipc("cudaIpcCloseMemHandle"); }
cudaError_t cudaIpcGetEventHandle(cudaIpcEventHandle_t*, cudaEvent_t) { return no_ipc("cudaIpcGetEventHandle"); }
cudaError_t cudaIpcOpenEventHandle(cudaEvent_t*, cudaIpcEventHandle_t) { return no_ipc("cudaIpcOpenEventHandle"); }
cudaError_t cudaMemPoolExportToShareableHandle(void*, cudaMemPool_t, cudaMemAllocationHandleType, unsigned) {
    return no_ipc("cudaMemPoolExportToShareableHandle");
}
cudaError_t cudaMemPoolImportFromShareableHandle(cudaMemPool_t*, void*, cudaMemAllocationHandleType, unsigned) {
    return no_ipc("cudaMemPoolImportFromShareableHandle");
}
cudaError_t cudaMemPoolExportPointer(cudaMemPoolPtrExportData*, void*) { return no_ipc("cudaMemPoolExportPointer"); }
cudaError_t cudaMemPoolImportPointer(void**, cudaMemPool_t, cudaMemPoolPtrExportData*) {
    return no_ipc("cudaMemPoolImportPointer");
}
cudaError_t cudaDriverGetVersion(int* v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaSetDeviceFlags(unsigned flags) {
    cudasim::g_device_flags = flags;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceFlags(unsigned* flags) {
    *flags = cudasim::g_device_flags;
    return cudaSuccess;
}
cudaError_t cudaDeviceSetLimit(cudaLimit limit, size_t value) {
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    if (!cudasim::g_limits.count(limit)) return fail(cudaErrorUnsupportedLimit, "cudaDeviceSetLimit: limit %d", limit);
    if (limit == cudaLimitMallocHeapSize && !cudasim::check::set_device_heap_size(value))
        return fail(cudaErrorInvalidValue, "cudaDeviceSetLimit(cudaLimitMallocHeapSize): a kernel has already "
                    "allocated from the device heap (malloc or new); set its size before the first such kernel");
    // "The driver is free to modify the requested value to meet h/w requirements (this could be clamping ...)":
    // the L2 set-aside is at most persistingL2CacheMaxSize, as cudaDeviceGetLimit then says
    if (limit == cudaLimitPersistingL2CacheSize)
        value = std::min(value, static_cast<size_t>(cudasim::device_profile.persisting_l2_max));
    cudasim::g_limits[limit] = value;  // recorded and read back; the CPU's own limits do not change
    return cudaSuccess;
}
cudaError_t cudaDeviceGetLimit(size_t* value, cudaLimit limit) {
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    if (!cudasim::g_limits.count(limit)) return fail(cudaErrorUnsupportedLimit, "cudaDeviceGetLimit: limit %d", limit);
    *value = cudasim::g_limits[limit];
    return cudaSuccess;
}
cudaError_t cudaDeviceSetCacheConfig(cudaFuncCache) { return cudaSuccess; }  // cache carve-out hints: nothing to do
cudaError_t cudaDeviceGetCacheConfig(cudaFuncCache* c) {
    *c = cudaFuncCachePreferNone;
    return cudaSuccess;
}
cudaError_t cudaFuncSetCacheConfig(const void*, cudaFuncCache) { return cudaSuccess; }
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return cudaSuccess;
}
cudaError_t cudaProfilerStart() { return cudaSuccess; }  // no profiler to switch on
cudaError_t cudaProfilerStop() { return cudaSuccess; }

// Kernel attributes: what the CPU build knows. No compiler reports registers or local memory, so
// every kernel is described as using 32 registers per thread (a full block of 1024 then fits).
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
    if (!attr || !func) return fail(cudaErrorInvalidDeviceFunction, "cudaFuncGetAttributes: no kernel given");
    std::memset(attr, 0, sizeof *attr);
    attr->maxThreadsPerBlock = cudasim::max_threads_per_block;
    attr->numRegs = cudasim::device_profile.regs_per_thread;
    attr->ptxVersion = attr->binaryVersion = 80;
    attr->preferredShmemCarveout = -1;
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    auto it = cudasim::g_max_dynamic_shared.find(func);
    attr->maxDynamicSharedSizeBytes =
        it == cudasim::g_max_dynamic_shared.end() ? static_cast<int>(cudasim::default_shared_bytes) : it->second;
    return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, const void* func, int block_size,
                                                                   size_t smem, unsigned) {
    *blocks = cudasim::max_active_blocks_per_sm(func, block_size, smem);
    return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func, int block_size, size_t smem) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, func, block_size, smem, 0);
}
cudaError_t cudaOccupancyAvailableDynamicSMemPerBlock(size_t* bytes, const void*, int blocks_per_sm, int) {
    if (blocks_per_sm <= 0)
        return fail(cudaErrorInvalidValue, "cudaOccupancyAvailableDynamicSMemPerBlock: %d blocks", blocks_per_sm);
    size_t per_block = cudasim::device_profile.shared_per_sm / static_cast<size_t>(blocks_per_sm);
    *bytes = std::min(per_block > 1024 ? per_block - 1024 : 0, cudasim::max_shared_bytes_optin);
    return cudaSuccess;
}

// ----------------------------------------------------------------------------
// Host memory: pinned, mapped (zero-copy) and registered. Device memory is host memory, so the device
// pointer of a host allocation is the host pointer itself.
cudaError_t cudaHostRegister(void* p, size_t bytes, unsigned) {
    if (!p || bytes == 0) return fail(cudaErrorInvalidValue, "cudaHostRegister(%p, %zu): empty range", p, bytes);
    {
        std::lock_guard<std::mutex> lock(cudasim::g_mutex);
        if (cudasim::g_registered_host.count(p))
            return fail(cudaErrorHostMemoryAlreadyRegistered, "cudaHostRegister(%p): already registered", p);
        cudasim::g_registered_host[p] = bytes;
    }
    cudasim::check::on_malloc_host(p, bytes, true);  // a kernel may read it (mapped), not a "host pointer"
    return cudaSuccess;
}
cudaError_t cudaHostUnregister(void* p) {
    {
        std::lock_guard<std::mutex> lock(cudasim::g_mutex);
        if (!cudasim::g_registered_host.erase(p))
            return fail(cudaErrorHostMemoryNotRegistered,
                        "cudaHostUnregister(%p): not registered with cudaHostRegister", p);
    }
    cudasim::check::on_malloc_host(p, 0, false);
    return cudaSuccess;
}
cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned flags) {
    if (flags != 0) return fail(cudaErrorInvalidValue, "cudaHostGetDevicePointer: flags must be 0 (got %u)", flags);
    *device = host;
    return cudaSuccess;
}
cudaError_t cudaHostGetFlags(unsigned* flags, void*) {
    *flags = cudaHostAllocMapped;
    return cudaSuccess;
}
cudaError_t cudaStreamAttachMemAsync(cudaStream_t, void*, size_t, unsigned) { return cudaSuccess; }
cudaError_t cudaMemPrefetchAsync(const void*, size_t, cudaMemLocation, unsigned, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaMemAdvise(const void*, size_t, cudaMemoryAdvise, cudaMemLocation) { return cudaSuccess; }
cudaError_t cudaMemcpyToSymbolAsync(const void* symbol, const void* src, size_t bytes, size_t offset,
                                    cudaMemcpyKind kind, cudaStream_t) {
    return cudaMemcpyToSymbol(symbol, src, bytes, offset, kind);
}
cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const void* symbol, size_t bytes, size_t offset, cudaMemcpyKind kind,
                                      cudaStream_t) {
    return cudaMemcpyFromSymbol(dst, symbol, bytes, offset, kind);
}
cudaError_t cudaGetSymbolAddress(void** address, const void* symbol) {
    *address = const_cast<void*>(symbol);
    return cudaSuccess;
}
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind) {
    if (width > dpitch || width > spitch)
        return fail(cudaErrorInvalidPitchValue, "cudaMemcpy2D: width %zu exceeds a pitch (%zu, %zu)", width, dpitch,
                    spitch);
    for (size_t r = 0; r < height; r++)
        std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t) {
    return cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind);
}
cudaError_t cudaMallocPitch(void** p, size_t* pitch, size_t width, size_t height) {
    *pitch = (width + 511) / 512 * 512;  // rows aligned as the texture alignment says
    return cudaMalloc(p, *pitch * height);
}

// ----------------------------------------------------------------------------
// Streams and events beyond create/record/synchronize: everything has completed when it returns.
cudaError_t cudaEventQuery(cudaEvent_t) { return cudasim::sticky_error(); }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudasim::sticky_error(); }
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned flags, int) {
    return cudaStreamCreateWithFlags(s, flags);
}
cudaError_t cudaStreamGetPriority(cudaStream_t, int* priority) {
    *priority = 0;
    return cudaSuccess;
}
// Stream attributes are scheduling and cache hints (the L2 access policy window, priority, synchronization policy,
// memory sync domains): checked as the CUDA documentation says, recorded per stream and read back (unset ones as
// zeros). They steer no cache and no scheduler here (every launch runs to completion), so no result depends on them.
namespace cudasim {
static std::map<int, cudaLaunchAttributeValue> g_default_stream_attributes;  // the default streams'
static cudaError_t stream_attributes(const char* call, cudaStream_t s, cudaStreamAttrID id,
                                     std::map<int, cudaLaunchAttributeValue>** out) {
    switch (id) {
        case cudaLaunchAttributeAccessPolicyWindow:
        case cudaLaunchAttributeSynchronizationPolicy:
        case cudaLaunchAttributePriority:
        case cudaLaunchAttributeMemSyncDomainMap:
        case cudaLaunchAttributeMemSyncDomain: break;
        default: return fail(cudaErrorInvalidValue, "%s: attribute %d is not one a stream has", call, id);
    }
    *out = s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread ? &g_default_stream_attributes
                                                                             : &s->attributes;
    return cudaSuccess;
}
}  // namespace cudasim
cudaError_t cudaStreamSetAttribute(cudaStream_t s, cudaStreamAttrID id, const cudaStreamAttrValue* value) {
    std::map<int, cudaLaunchAttributeValue>* attributes = nullptr;
    if (cudaError_t e = cudasim::stream_attributes("cudaStreamSetAttribute", s, id, &attributes)) return e;
    if (id == cudaLaunchAttributeAccessPolicyWindow) {
        const cudaAccessPolicyWindow& w = value->accessPolicyWindow;
        if (w.num_bytes > static_cast<size_t>(cudasim::device_profile.access_policy_window_max))
            return fail(cudaErrorInvalidValue,
                        "cudaStreamSetAttribute: an access policy window of %zu bytes (accessPolicyMaxWindowSize "
                        "is %d)", w.num_bytes, cudasim::device_profile.access_policy_window_max);
        if (!(w.hitRatio >= 0 && w.hitRatio <= 1))
            return fail(cudaErrorInvalidValue, "cudaStreamSetAttribute: hitRatio %g is not in [0, 1]", w.hitRatio);
        if (w.missProp != cudaAccessPropertyNormal && w.missProp != cudaAccessPropertyStreaming)
            return fail(cudaErrorInvalidValue,
                        "cudaStreamSetAttribute: missProp %d must be cudaAccessPropertyNormal or "
                        "cudaAccessPropertyStreaming", w.missProp);
    }
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    (*attributes)[id] = *value;
    return cudaSuccess;
}
cudaError_t cudaStreamGetAttribute(cudaStream_t s, cudaStreamAttrID id, cudaStreamAttrValue* value) {
    std::map<int, cudaLaunchAttributeValue>* attributes = nullptr;
    if (cudaError_t e = cudasim::stream_attributes("cudaStreamGetAttribute", s, id, &attributes)) return e;
    std::lock_guard<std::mutex> lock(cudasim::g_mutex);
    auto it = attributes->find(id);
    if (it != attributes->end()) *value = it->second;
    else std::memset(static_cast<void*>(value), 0, sizeof *value);
    return cudaSuccess;
}
cudaError_t cudaCtxResetPersistingL2Cache() { return cudaSuccess; }  // demotes persisting lines: none are kept here
cudaError_t cudaStreamGetFlags(cudaStream_t, unsigned* flags) {
    *flags = 0;
    return cudaSuccess;
}
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* data) {
    if (cudasim::capture_node(stream, "cudaLaunchHostFunc",
                              [&] { return cudasim::BoundLaunch([fn, data] { fn(data); }); }))
        return cudaSuccess;
    fn(data);
    return cudaSuccess;
}
cudaError_t cudaStreamAddCallback(cudaStream_t stream, cudaStreamCallback_t callback, void* data, unsigned) {
    callback(stream, cudasim::sticky_error(), data);
    return cudaSuccess;
}

// cudaLaunchKernel: a launch with `void** args`, for kernels dev/cudasim_rewrite registered.
cudaError_t cudaLaunchKernel(const void* kernel, dim3 grid, dim3 block, void** args, size_t smem, cudaStream_t stream) {
    cudasim::BoundLaunch run = cudasim::bind_kernel("cudaLaunchKernel", kernel, grid, block, args, smem, stream);
    if (cudasim::capture_node(stream, "cudaLaunchKernel", [&] { return run; })) return cudaSuccess;
    run();
    return cudaGetLastError();
}

// ----------------------------------------------------------------------------
// Graphs.
cudaError_t cudaGraphCreate(cudaGraph_t* graph, unsigned) {
    *graph = new CUgraph_st{};
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}
cudaError_t cudaGraphAddEmptyNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps) {
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeEmpty, nullptr);
    return cudaSuccess;
}
cudaError_t cudaGraphAddKernelNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps,
                                   const cudaKernelNodeParams* p) {
    if (p->extra)
        return fail(cudaErrorInvalidValue,
                    "cudaGraphAddKernelNode: `extra` arguments are not emulated; use kernelParams");
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeKernel,
                              cudasim::bind_kernel("cudaGraphAddKernelNode", p->func, p->gridDim, p->blockDim,
                                                   p->kernelParams, p->sharedMemBytes, nullptr));
    (*node)->kernel = *p;
    (*node)->kernel.kernelParams = nullptr;  // the arguments were copied into the node
    return cudaSuccess;
}
cudaError_t cudaGraphKernelNodeGetParams(cudaGraphNode_t node, cudaKernelNodeParams* p) {
    *p = node->kernel;
    return cudaSuccess;
}
cudaError_t cudaGraphKernelNodeSetParams(cudaGraphNode_t node, const cudaKernelNodeParams* p) {
    node->work = cudasim::bind_kernel("cudaGraphKernelNodeSetParams", p->func, p->gridDim, p->blockDim, p->kernelParams,
                                      p->sharedMemBytes, nullptr);
    node->kernel = *p;
    node->kernel.kernelParams = nullptr;
    return cudaSuccess;
}
cudaError_t cudaGraphExecKernelNodeSetParams(cudaGraphExec_t exec, cudaGraphNode_t node,
                                             const cudaKernelNodeParams* p) {
    auto it = exec->step_of.find(node);
    if (it == exec->step_of.end())
        return fail(cudaErrorInvalidValue, "cudaGraphExecKernelNodeSetParams: node not in the graph");
    exec->steps[it->second] = cudasim::bind_kernel("cudaGraphExecKernelNodeSetParams", p->func, p->gridDim, p->blockDim,
                                                   p->kernelParams, p->sharedMemBytes, nullptr);
    return cudaSuccess;
}
cudaError_t cudaGraphAddMemcpyNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps,
                                   const cudaMemcpy3DParms* p) {
    if (p->srcArray || p->dstArray)
        return fail(cudaErrorInvalidValue,
                    "cudaGraphAddMemcpyNode: CUDA arrays (textures) are not supported on the CPU");
    cudaMemcpy3DParms c = *p;
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeMemcpy, [c] {
        // rows of extent.width bytes, extent.height rows per slice, extent.depth slices (pitched pointers)
        for (size_t z = 0; z < c.extent.depth; z++)
            for (size_t y = 0; y < c.extent.height; y++) {
                size_t s_row = (z + c.srcPos.z) * c.srcPtr.ysize + y + c.srcPos.y;
                size_t d_row = (z + c.dstPos.z) * c.dstPtr.ysize + y + c.dstPos.y;
                std::memmove(static_cast<char*>(c.dstPtr.ptr) + d_row * c.dstPtr.pitch + c.dstPos.x,
                             static_cast<const char*>(c.srcPtr.ptr) + s_row * c.srcPtr.pitch + c.srcPos.x,
                             c.extent.width);
            }
    });
    return cudaSuccess;
}
cudaError_t cudaGraphAddMemcpyNode1D(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                                     size_t ndeps, void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeMemcpy, [=] { cudaMemcpy(dst, src, bytes, kind); });
    return cudaSuccess;
}
cudaError_t cudaGraphAddMemsetNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps,
                                   const cudaMemsetParams* p) {
    cudaMemsetParams m = *p;
    if (m.elementSize != 1 && m.elementSize != 2 && m.elementSize != 4)
        return fail(cudaErrorInvalidValue, "cudaGraphAddMemsetNode: elementSize %u (must be 1, 2 or 4)", m.elementSize);
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeMemset, [m] {
        for (size_t y = 0; y < std::max<size_t>(m.height, 1); y++)
            for (size_t x = 0; x < m.width; x++)
                std::memcpy(static_cast<char*>(m.dst) + y * m.pitch + x * m.elementSize, &m.value, m.elementSize);
    });
    return cudaSuccess;
}
cudaError_t cudaGraphAddHostNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps,
                                 const cudaHostNodeParams* p) {
    cudaHostFn_t fn = p->fn;
    void* data = p->userData;
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeHost, [fn, data] { fn(data); });
    return cudaSuccess;
}
cudaError_t cudaGraphAddChildGraphNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                                       size_t ndeps, cudaGraph_t child) {
    for (const auto& n : child->nodes)
        if (n->type == cudaGraphNodeTypeConditional)
            return fail(cudaErrorInvalidValue, "cudaGraphAddChildGraphNode: the child graph has a conditional node "
                        "(CUDA refuses that; add the conditional node to the parent graph)");
    std::vector<cudasim::BoundLaunch> steps = cudasim::graph_steps(child);
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeGraph, [steps] {
        for (const auto& s : steps)
            if (s) s();
    });
    return cudaSuccess;
}
// Conditional nodes (CUDA 12.3; IF/ELSE and SWITCH 12.8): handles, the node, and the device side.
cudaError_t cudaGraphConditionalHandleCreate(cudaGraphConditionalHandle* handle, cudaGraph_t graph,
                                             unsigned default_value, unsigned flags) {
    if (flags & ~static_cast<unsigned>(cudaGraphCondAssignDefault))
        return fail(cudaErrorInvalidValue, "cudaGraphConditionalHandleCreate: flags %#x (0 or "
                    "cudaGraphCondAssignDefault)", flags);
    auto c = std::make_shared<cudasim::Conditional>();
    c->default_value = default_value;
    c->assign_default = flags & cudaGraphCondAssignDefault;
    graph->handles.push_back(c);
    *handle = reinterpret_cast<uintptr_t>(c.get());
    std::lock_guard<std::mutex> lock(cudasim::g_conditionals_mutex);
    cudasim::g_conditionals[*handle] = c;
    return cudaSuccess;
}
void cudaGraphSetConditional(cudaGraphConditionalHandle handle, unsigned value) {
    std::shared_ptr<cudasim::Conditional> c = cudasim::find_conditional(handle);
    if (!c)
        cudasim::fatal("cudaGraphSetConditional: %#llx is not a live conditional handle "
                       "(cudaGraphConditionalHandleCreate)", handle);
    c->value = value;
    c->defined = true;
}
// cudaGraphAddNode: any node from its parameters (the V2 structs), as the typed cudaGraphAdd*Node calls do.
cudaError_t cudaGraphAddNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                             const cudaGraphEdgeData*, size_t ndeps, cudaGraphNodeParams* p) {
    switch (p->type) {
    case cudaGraphNodeTypeKernel: {
        const cudaKernelNodeParamsV2& k = p->kernel;
        cudaKernelNodeParams v1{k.func, k.gridDim, k.blockDim, k.sharedMemBytes, k.kernelParams, k.extra};
        return cudaGraphAddKernelNode(node, graph, deps, ndeps, &v1);
    }
    case cudaGraphNodeTypeMemcpy: return cudaGraphAddMemcpyNode(node, graph, deps, ndeps, &p->memcpy.copyParams);
    case cudaGraphNodeTypeMemset: {
        const cudaMemsetParamsV2& m = p->memset;
        cudaMemsetParams v1{m.dst, m.pitch, m.value, m.elementSize, m.width, m.height};
        return cudaGraphAddMemsetNode(node, graph, deps, ndeps, &v1);
    }
    case cudaGraphNodeTypeHost: {
        cudaHostNodeParams v1{p->host.fn, p->host.userData};
        return cudaGraphAddHostNode(node, graph, deps, ndeps, &v1);
    }
    case cudaGraphNodeTypeGraph: return cudaGraphAddChildGraphNode(node, graph, deps, ndeps, p->graph.graph);
    case cudaGraphNodeTypeEmpty: return cudaGraphAddEmptyNode(node, graph, deps, ndeps);
    case cudaGraphNodeTypeMemAlloc: {
        cudaMemAllocNodeParamsV2& a = p->alloc;
        cudaMemAllocNodeParams v1{a.poolProps, a.accessDescs, a.accessDescCount, a.bytesize, nullptr};
        cudaError_t e = cudaGraphAddMemAllocNode(node, graph, deps, ndeps, &v1);
        a.dptr = v1.dptr;
        return e;
    }
    case cudaGraphNodeTypeMemFree: return cudaGraphAddMemFreeNode(node, graph, deps, ndeps, p->free.dptr);
    case cudaGraphNodeTypeConditional: {
        cudaConditionalNodeParams& c = p->conditional;
        std::shared_ptr<cudasim::Conditional> condition = cudasim::find_conditional(c.handle);
        if (!condition)
            return fail(cudaErrorInvalidValue, "cudaGraphAddNode: conditional handle %#llx is not from "
                        "cudaGraphConditionalHandleCreate", c.handle);
        bool sized = c.type == cudaGraphCondTypeWhile ? c.size == 1
                     : c.type == cudaGraphCondTypeIf  ? c.size == 1 || c.size == 2
                                                      : c.type == cudaGraphCondTypeSwitch && c.size > 0;
        if (!sized)
            return fail(cudaErrorInvalidValue, "cudaGraphAddNode: conditional node of type %d with size %u (WHILE: 1, "
                        "IF: 1 or 2 with an ELSE body, SWITCH: at least 1)", static_cast<int>(c.type), c.size);
        *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeConditional, nullptr);
        (*node)->condition = condition;
        (*node)->condition_type = c.type;
        for (unsigned i = 0; i < c.size; i++) {
            (*node)->owned_bodies.push_back(std::make_shared<CUgraph_st>());
            (*node)->bodies.push_back((*node)->owned_bodies.back().get());
        }
        c.phGraph_out = (*node)->bodies.data();  // valid while the node lives, as CUDA's array
        return cudaSuccess;
    }
    default:
        return fail(cudaErrorNotSupported, "cudaGraphAddNode: node type %d is not emulated on the CPU (kernel, "
                    "memcpy, memset, host, child graph, empty, memory allocation and free, conditional are)",
                    static_cast<int>(p->type));
    }
}
cudaError_t cudaGraphAddDependencies(cudaGraph_t, const cudaGraphNode_t* from, const cudaGraphNode_t* to,
                                     const cudaGraphEdgeData*, size_t n) {
    for (size_t i = 0; i < n; i++) to[i]->deps.push_back(from[i]);
    return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
    if (nodes)
        for (size_t i = 0; i < std::min(*count, graph->nodes.size()); i++) nodes[i] = graph->nodes[i].get();
    *count = graph->nodes.size();
    return cudaSuccess;
}
cudaError_t cudaGraphNodeGetType(cudaGraphNode_t node, cudaGraphNodeType* type) {
    *type = node->type;
    return cudaSuccess;
}
cudaError_t cudaGraphClone(cudaGraph_t* clone, cudaGraph_t graph) {
    *clone = cudasim::clone_graph(graph);
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
    auto* e = new CUgraphExec_st{};
    e->auto_free = flags & cudaGraphInstantiateFlagAutoFreeOnLaunch;
    e->steps = cudasim::graph_steps(graph, &e->step_of, &e->allocations);
    *exec = e;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
    return cudaGraphInstantiate(exec, graph, flags);
}
cudaError_t cudaGraphUpload(cudaGraphExec_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    if (cudasim::capture_node(stream, "cudaGraphLaunch", [&] {
            auto steps = exec->steps;
            return cudasim::BoundLaunch([steps] {
                for (const auto& s : steps)
                    if (s) s();
            });
        }))
        return cudaSuccess;
    for (void* p : exec->allocations)
        if (exec->auto_free)
            cudasim::release_graph_memory(p);
        else if (cudasim::graph_memory_live(p))
            return fail(cudaErrorInvalidValue, "cudaGraphLaunch: the graph allocates %p again, but its allocation by "
                        "the previous launch is still live; free it first (a free node, cudaFree or cudaFreeAsync)", p);
    for (const auto& s : exec->steps)
        if (s) s();
    return cudasim::sticky_error();
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
// Graph memory (allocation nodes, and cudaMallocAsync in a captured stream), as on a GPU: the address is fixed when
// the node is made; the memory is live from the node's run (filled with NaN bytes, as new memory is) until a free
// node, cudaFree or cudaFreeAsync frees it, and a graph cannot be launched again while its allocation is live.
// While not live it is no device allocation: a kernel that touches it is out of bounds in the checked build.
namespace cudasim {
struct GraphMemory {
    size_t bytes = 0;
    bool live = false;
};
static std::map<void*, GraphMemory> g_graph_memory;  // guarded by g_mutex; the memory is never given back
static void* reserve_graph_memory(size_t bytes) {
    void* q = nullptr;
    if (bytes == 0 || posix_memalign(&q, 256, bytes) != 0) return nullptr;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_graph_memory[q] = GraphMemory{bytes, false};
    return q;
}
static void allocate_graph_memory(void* p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    GraphMemory& m = g_graph_memory.at(p);
    m.live = true;
    std::memset(p, 0xff, m.bytes);
    g_device_allocations[reinterpret_cast<uintptr_t>(p)] = m.bytes;
}
bool graph_memory_live(void* p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_graph_memory.find(p);
    return it != g_graph_memory.end() && it->second.live;
}
bool release_graph_memory(void* p) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_graph_memory.find(p);
    if (it == g_graph_memory.end() || !it->second.live) return false;
    it->second.live = false;
    g_device_allocations.erase(reinterpret_cast<uintptr_t>(p));
    return true;
}
bool capture_graph_malloc(void** p, size_t bytes, cudaStream_t stream) {
    if (g_capturing_streams.load(std::memory_order_relaxed) == 0) return false;
    void* q = reserve_graph_memory(bytes);
    if (!q) return false;  // cudaMalloc says why
    if (!capture_node(stream, "cudaMallocAsync", [q] { return BoundLaunch([q] { allocate_graph_memory(q); }); })) {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_graph_memory.erase(q);
        std::free(q);
        return false;
    }
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        g_capture_tail.at(stream)->allocation = q;
    }
    *p = q;
    return true;
}
}  // namespace cudasim
cudaError_t cudaGraphAddMemAllocNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                                     size_t ndeps, cudaMemAllocNodeParams* p) {
    void* q = cudasim::reserve_graph_memory(p->bytesize);
    if (!q) return fail(cudaErrorMemoryAllocation, "cudaGraphAddMemAllocNode of %zu bytes failed", p->bytesize);
    p->dptr = q;
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeMemAlloc,
                              [q] { cudasim::allocate_graph_memory(q); });
    (*node)->allocation = q;
    return cudaSuccess;
}
cudaError_t cudaGraphAddMemFreeNode(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps, size_t ndeps,
                                    void* p) {
    *node = cudasim::add_node(graph, deps, ndeps, cudaGraphNodeTypeMemFree, [p] {
        if (!cudasim::release_graph_memory(p))
            fail(cudaErrorInvalidValue, "a graph's free node: %p is not live graph memory", p);
    });
    return cudaSuccess;
}
cudaError_t cudaDeviceGetGraphMemAttribute(int, cudaGraphMemAttributeType, void* value) {
    *static_cast<unsigned long long*>(value) = 0;  // graph memory is ordinary memory here: none is reserved
    return cudaSuccess;
}
cudaError_t cudaDeviceSetGraphMemAttribute(int, cudaGraphMemAttributeType, void*) { return cudaSuccess; }

// Memory pools: one pool, the heap; allocations from it are cudaMalloc's.
struct CUmemPoolHandle_st {
    unsigned long long release_threshold = 0;
};
static CUmemPoolHandle_st g_default_pool;
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
    *pool = &g_default_pool;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetMemPool(cudaMemPool_t* pool, int) {
    *pool = &g_default_pool;
    return cudaSuccess;
}
cudaError_t cudaDeviceSetMemPool(int, cudaMemPool_t) { return cudaSuccess; }
cudaError_t cudaMemPoolCreate(cudaMemPool_t* pool, const cudaMemPoolProps*) {
    *pool = new CUmemPoolHandle_st{};
    return cudaSuccess;
}
cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
    if (pool != &g_default_pool) delete pool;
    return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
    if (attr == cudaMemPoolAttrReleaseThreshold) pool->release_threshold = *static_cast<unsigned long long*>(value);
    return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
    if (attr == cudaMemPoolAttrReleaseThreshold)
        *static_cast<unsigned long long*>(value) = pool->release_threshold;
    else if (attr == cudaMemPoolReuseFollowEventDependencies || attr == cudaMemPoolReuseAllowOpportunistic ||
             attr == cudaMemPoolReuseAllowInternalDependencies)
        *static_cast<int*>(value) = 1;
    else
        *static_cast<unsigned long long*>(value) = 0;
    return cudaSuccess;
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t) { return cudaSuccess; }
// A pool's own device always reads and writes it; no other device exists to be given access.
cudaError_t cudaMemPoolSetAccess(cudaMemPool_t, const cudaMemAccessDesc* descs, size_t count) {
    for (size_t i = 0; i < count; i++) {
        const cudaMemLocation& l = descs[i].location;
        if (l.type != cudaMemLocationTypeDevice || l.id != 0)
            return fail(cudaErrorInvalidDevice, "cudaMemPoolSetAccess: location (type %d, id %d): only device 0 "
                        "exists", static_cast<int>(l.type), l.id);
        if (descs[i].flags != cudaMemAccessFlagsProtReadWrite)
            return fail(cudaErrorInvalidValue, "cudaMemPoolSetAccess: the pool's own device always has read-write "
                        "access (flags %d)", static_cast<int>(descs[i].flags));
    }
    return cudaSuccess;
}
cudaError_t cudaMemPoolGetAccess(cudaMemAccessFlags* flags, cudaMemPool_t, cudaMemLocation* l) {
    if (l->type != cudaMemLocationTypeDevice || l->id != 0)
        return fail(cudaErrorInvalidDevice, "cudaMemPoolGetAccess: location (type %d, id %d): only device 0 exists",
                    static_cast<int>(l->type), l->id);
    *flags = cudaMemAccessFlagsProtReadWrite;
    return cudaSuccess;
}
cudaError_t cudaMallocFromPoolAsync(void** p, size_t bytes, cudaMemPool_t, cudaStream_t s) {
    return cudaMallocAsync(p, bytes, s);
}
cudaError_t cudaDeviceGraphMemTrim(int) { return cudaSuccess; }

// `stream` starts capturing into `graph` (nullptr: a new one) after the nodes `deps`.
static cudaError_t begin_capture(const char* api, cudaStream_t stream, cudaGraph_t graph, const cudaGraphNode_t* deps,
                                 size_t ndeps) {
    if (!stream) return fail(cudaErrorStreamCaptureUnsupported, "%s: the legacy default stream cannot capture", api);
    std::lock_guard<std::mutex> lock(cudasim::g_capture_mutex);
    if (cudasim::g_captures.count(stream))
        return fail(cudaErrorIllegalState, "%s: the stream is already capturing", api);
    if (!graph) graph = new CUgraph_st{};
    cudasim::g_captures[stream] = cudasim::Capture{graph, stream};
    if (ndeps)
        cudasim::g_capture_tail[stream] = cudasim::join_nodes(graph, std::vector<cudaGraphNode_t>(deps, deps + ndeps));
    cudasim::g_capturing_streams++;
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
    return begin_capture("cudaStreamBeginCapture", stream, nullptr, nullptr, 0);
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
    std::lock_guard<std::mutex> lock(cudasim::g_capture_mutex);
    auto it = cudasim::g_captures.find(stream);
    if (it == cudasim::g_captures.end() || it->second.origin != stream)
        return fail(cudaErrorIllegalState, "cudaStreamEndCapture: the stream did not begin a capture");
    cudaGraph_t captured = it->second.graph;
    if (graph) *graph = captured;  // may be null after cudaStreamBeginCaptureToGraph: the caller has the graph
    // The capture ends for every stream that joined it.
    for (auto c = cudasim::g_captures.begin(); c != cudasim::g_captures.end();) {
        if (c->second.graph == captured) {
            cudasim::g_capture_tail.erase(c->first);
            c = cudasim::g_captures.erase(c);
            cudasim::g_capturing_streams--;
        } else {
            ++c;
        }
    }
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
    std::lock_guard<std::mutex> lock(cudasim::g_capture_mutex);
    *status = cudasim::g_captures.count(stream) ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
// Capture into a graph that exists (a conditional node's body, typically), after the nodes `deps`.
cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t stream, cudaGraph_t graph, const cudaGraphNode_t* deps,
                                          const cudaGraphEdgeData*, size_t ndeps, cudaStreamCaptureMode) {
    return begin_capture("cudaStreamBeginCaptureToGraph", stream, graph, deps, ndeps);
}
// The graph being captured and the node the next one will depend on (one at most: several are joined by an empty
// node). The array stays valid until the stream's next capture call, as CUDA's does.
cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, cudaStreamCaptureStatus* status, unsigned long long* id,
                                     cudaGraph_t* graph, const cudaGraphNode_t** deps, const cudaGraphEdgeData** edges,
                                     size_t* ndeps) {
    std::lock_guard<std::mutex> lock(cudasim::g_capture_mutex);
    auto it = cudasim::g_captures.find(stream);
    bool active = it != cudasim::g_captures.end();
    *status = active ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    if (id) *id = active ? reinterpret_cast<uintptr_t>(it->second.graph) : 0;
    if (graph) *graph = active ? it->second.graph : nullptr;
    if (edges) *edges = nullptr;  // every edge is a default one
    cudaGraphNode_t* tail = active ? &cudasim::g_capture_tail[stream] : nullptr;
    if (deps) *deps = tail && *tail ? tail : nullptr;
    if (ndeps) *ndeps = tail && *tail ? 1 : 0;
    return cudaSuccess;
}
// Nodes added by hand while a stream captures (a conditional node) become what the stream's next node depends on.
cudaError_t cudaStreamUpdateCaptureDependencies(cudaStream_t stream, cudaGraphNode_t* deps, const cudaGraphEdgeData*,
                                                size_t ndeps, unsigned flags) {
    std::lock_guard<std::mutex> lock(cudasim::g_capture_mutex);
    auto it = cudasim::g_captures.find(stream);
    if (it == cudasim::g_captures.end())
        return fail(cudaErrorIllegalState, "cudaStreamUpdateCaptureDependencies: the stream is not capturing");
    std::vector<cudaGraphNode_t> set(deps, deps + ndeps);
    cudaGraphNode_t& tail = cudasim::g_capture_tail[stream];
    if (flags != cudaStreamAddCaptureDependencies && flags != cudaStreamSetCaptureDependencies)
        return fail(cudaErrorInvalidValue, "cudaStreamUpdateCaptureDependencies: flags %u", flags);
    if (flags == cudaStreamAddCaptureDependencies && tail) set.insert(set.begin(), tail);
    tail = cudasim::join_nodes(it->second.graph, set);
    return cudaSuccess;
}
namespace cudasim {
// An event recorded in a capturing stream marks a point of the graph; a stream that waits for it joins
// the capture, its next node depending on that point.
bool capture_event_record(cudaEvent_t e, cudaStream_t stream) {
    if (g_capturing_streams.load() == 0) return false;
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    auto it = g_captures.find(stream);
    if (it == g_captures.end()) return false;
    g_captured_events[e] = {it->second.graph, g_capture_tail.count(stream) ? g_capture_tail[stream] : nullptr};
    return true;
}
bool capture_stream_wait(cudaStream_t stream, cudaEvent_t e) {
    if (g_capturing_streams.load() == 0) return false;
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    auto ev = g_captured_events.find(e);
    if (ev == g_captured_events.end()) return false;
    auto [graph, point] = ev->second;
    auto it = g_captures.find(stream);
    if (it == g_captures.end()) {
        g_captures[stream] = Capture{graph, nullptr};
        g_capturing_streams++;
    }
    // join: an empty node that depends on this stream's tail and on the event's point
    std::vector<cudaGraphNode_t> deps;
    if (g_capture_tail.count(stream) && g_capture_tail[stream]) deps.push_back(g_capture_tail[stream]);
    if (point) deps.push_back(point);
    g_capture_tail[stream] = add_node(graph, deps.data(), deps.size(), cudaGraphNodeTypeEmpty, nullptr);
    return true;
}
}  // namespace cudasim

#endif  // GPTCU_CUDASIM_RUNTIME_IMPLEMENTED
