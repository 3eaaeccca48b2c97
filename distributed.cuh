// distributed.cuh — data-parallel training over N processes ("ranks"): one communication layer (Comm) and the
// ZeRO stages 0–3 on GPT<Ops>'s flat buffers (DataParallel). docs/distributed.md explains the algorithms.
//
//   mpirun -np N ./train_gpt_cpu --zero-stage S ...     N processes on this machine (CPU build: MPI)
//   mpirun -np G ./train_gpt --zero-stage S ...         one process per GPU (GPU build: NCCL, ids over MPI)
//
// Comm: all-reduce, reduce-scatter and all-gather (each started, then waited for, so that it can overlap the
// kernels in between), broadcast and barrier on one contiguous float buffer. Host memory
// (the CPU build, and --device cpu in any build) goes through MPI; GPU memory in the GPU build through NCCL,
// whose unique id rank 0 makes and broadcasts over MPI. A program started without mpirun is rank 0 of 1 and
// never calls MPI. Errors are fatal: MPI_ERRORS_ARE_FATAL, NCCL errors abort, and the programs call
// Comm::abort on any exception, so a rank that fails ends the job instead of leaving the others in a collective.
//
// DataParallel<Ops, FloatX>: the model's parameters cut in units (each layer, and the rest: wte, wpe, lnf,
// lm_head), each unit split in N shards (Units). The model asks it for each unit's weights and gradients as it
// runs (gpt.cuh's ParameterHome), so it can gather and send them unit by unit:
//   stage 0 (DDP):  every rank holds everything; each unit's gradients all-reduced as soon as its backward in the
//                   step's last micro-batch is done, while the layers below compute (NCCL: a second stream)
//   stage 1:        AdamW's m, v sharded; each unit's gradients reduce-scattered likewise, AdamW on this rank's
//                   shard, parameters all-gathered
//   stage 2:        gradients sharded too: each unit's reduce-scattered after its backward in every micro-batch
//                   and added into the shard's accumulator; no rank ever holds the whole gradient
//   stage 3:        parameters sharded too (FSDP): a unit all-gathered just before its forward, freed after it,
//                   gathered again before its backward, the next layer's gather running while a layer computes
// Rank r of N takes micro-batches r, r+N, r+2N, ... of the one-rank order (train_gpt.cu), and every rank scales
// its loss by 1/(global tokens per step), so the summed gradient is the one-rank gradient.
#pragma once
#define OMPI_SKIP_MPICXX 1  // the C API only: MPI's deprecated C++ bindings are not used
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#if !defined(CUDASIM)
#include <nccl.h>
#define GPTCU_NCCL 1
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint.h"
#include "gpt.cuh"

// ----------------------------------------------------------------------------
// Comm: the communication layer.
//   Per rank, a ring implementation sends (buffer of n floats, N ranks):
//     all-reduce      2(N−1)/N · 4n bytes  (a reduce-scatter then an all-gather, each (N−1)/N of the buffer)
//     reduce-scatter   (N−1)/N · 4n bytes  (n = N·S: the full buffer in, one shard of S out)
//     all-gather       (N−1)/N · 4n bytes  (one shard in, the full buffer out)
//   `sent` adds these up call by call from the sizes actually passed, the number benchmarks compare with the
//   ZeRO formulas. It is what the algorithm moves, counted by the layer: not a measurement of the wire
//   (MPI and NCCL pick their own algorithm per size).
struct CommTraffic {
    double all_reduce = 0, reduce_scatter = 0, all_gather = 0;  // bytes sent by this rank
    double total() const { return all_reduce + reduce_scatter + all_gather; }
};

#if GPTCU_NCCL
inline void nccl_check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) {
        std::fprintf(stderr, "NCCL error in %s: %s\n", what, ncclGetErrorString(r));
        std::abort();
    }
}
#endif

struct Comm {
    int rank = 0, size = 1;
    int local_rank = 0;  // rank among the processes of this machine: picks the GPU
    bool mpi = false;    // started by mpirun (or another MPI launcher): MPI_Init was called
    CommTraffic sent;
    double seconds = 0;  // wall time the host spends starting and waiting for collectives
#if GPTCU_NCCL
    ncclComm_t nccl = nullptr;
    cudaStream_t stream = nullptr;  // the communication stream (non-blocking), made at the first collective
#endif

    // OpenMPI sets OMPI_COMM_WORLD_SIZE, MPICH and Slurm's PMI set PMI_SIZE, PMIx launchers PMIX_RANK.
    static bool launched_by_mpi() {
        return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
    }
    void init(int* argc, char*** argv) {
        if (!launched_by_mpi()) return;
        MPI_Init(argc, argv);
        mpi = true;
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        MPI_Comm node;  // the ranks that share this machine's memory
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
        MPI_Comm_rank(node, &local_rank);
        MPI_Comm_free(&node);
#if GPTCU_NCCL
        int devices = 0;  // one process per GPU: local rank l takes GPU l (before anything allocates on a GPU)
        if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) cuda_check(cudaSetDevice(local_rank % devices));
#endif
    }
    void finalize() {
#if GPTCU_NCCL
        if (nccl) ncclCommDestroy(nccl);
        nccl = nullptr;
#endif
        if (mpi) MPI_Finalize();
        mpi = false;
    }
    // Ends every rank of the job: the others may be waiting in a collective for this one.
    [[noreturn]] void abort(int code) {
        std::fflush(stdout);
        if (mpi && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
        std::exit(code);
    }

    // GPU memory goes through NCCL, which needs a communicator: rank 0 makes the unique id, MPI carries it.
    void init_nccl() {
#if GPTCU_NCCL
        if (nccl) return;
        ncclUniqueId id;
        if (rank == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
        if (mpi) MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
        nccl_check(ncclCommInitRank(&nccl, size, id, rank), "ncclCommInitRank");
#endif
    }

    // ---- collectives on floats; `on_device`: the buffer is the kernels' memory (GPU, or cudasim's in the CPU build).
    // Each is started, then finished by wait(): between the two the caller goes on (the backward of the next
    // layer), and the blocking forms below are start + wait. A Request is one collective in flight:
    //   NCCL: queued on the communication stream after the work queued so far on `after` (the model's stream);
    //         wait() makes `after` wait for it, so the host never blocks and the collective overlaps the kernels.
    //   MPI:  the kernels that wrote the buffer finish first (cudasim's memory), then a nonblocking MPI call;
    //         wait() blocks in MPI_Wait (MPI moves the data inside its calls: on the CPU the overlap is small).
    struct Request {
        MPI_Request mpi = MPI_REQUEST_NULL;
#if GPTCU_NCCL
        cudaEvent_t done = nullptr;
        cudaStream_t after = 0;
#endif
        bool active = false;
    };
    // buf (n): every rank's buf becomes the elementwise sum over ranks.
    Request start_all_reduce(float* buf, size_t n, bool on_device, cudaStream_t after = 0) {
        sent.all_reduce += 2.0 * (size - 1) / size * 4.0 * n;
        return start(on_device, after, [&](Request& r, [[maybe_unused]] cudaStream_t s) {
#if GPTCU_NCCL
            if (on_device) return nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, nccl, s), "ncclAllReduce");
#endif
            if (size > 1)
                MPI_Iallreduce(MPI_IN_PLACE, buf, checked_int(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r.mpi);
        });
    }
    // full (N·S) on every rank → shard (S): this rank's S elements of the elementwise sum over ranks.
    Request start_reduce_scatter(float* shard, const float* full, size_t S, bool on_device, cudaStream_t after = 0) {
        sent.reduce_scatter += (size - 1) * 4.0 * S;
        return start(on_device, after, [&](Request& r, [[maybe_unused]] cudaStream_t s) {
#if GPTCU_NCCL
            if (on_device)
                return nccl_check(ncclReduceScatter(full, shard, S, ncclFloat, ncclSum, nccl, s), "ncclReduceScatter");
#endif
            if (size == 1) return copy(shard, full, S, on_device);
            MPI_Ireduce_scatter_block(full, shard, checked_int(S), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r.mpi);
        });
    }
    // shard (S) of every rank → full (N·S): rank r's shard lands at full + r·S. shard may be full + rank·S.
    Request start_all_gather(float* full, const float* shard, size_t S, bool on_device, cudaStream_t after = 0) {
        sent.all_gather += (size - 1) * 4.0 * S;
        return start(on_device, after, [&](Request& r, [[maybe_unused]] cudaStream_t s) {
#if GPTCU_NCCL
            if (on_device) return nccl_check(ncclAllGather(shard, full, S, ncclFloat, nccl, s), "ncclAllGather");
#endif
            if (size == 1) return copy(full, shard, S, on_device);
            const void* send = shard == full + rank * S ? MPI_IN_PLACE : shard;  // MPI forbids aliasing otherwise
            MPI_Iallgather(send, checked_int(S), MPI_FLOAT, full, checked_int(S), MPI_FLOAT, MPI_COMM_WORLD, &r.mpi);
        });
    }
    // Finishes a started collective (nothing to do for an inactive Request). `block_host`: NCCL's too, so the
    // time is seen (the blocking forms, and `seconds`); otherwise only the model's stream waits.
    void wait(Request& r, bool block_host = false) {
        if (!r.active) return;
        auto t0 = std::chrono::steady_clock::now();
        if (r.mpi != MPI_REQUEST_NULL) MPI_Wait(&r.mpi, MPI_STATUS_IGNORE);
#if GPTCU_NCCL
        if (r.done) {
            if (block_host) cuda_check(cudaEventSynchronize(r.done));
            cuda_check(cudaStreamWaitEvent(r.after, r.done, 0));
            cuda_check(cudaEventDestroy(r.done));
        }
#endif
        (void)block_host;
        r = Request{};
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    void all_reduce(float* buf, size_t n, bool on_device) {
        Request r = start_all_reduce(buf, n, on_device);
        wait(r, true);
    }
    void reduce_scatter(float* shard, const float* full, size_t S, bool on_device) {
        Request r = start_reduce_scatter(shard, full, S, on_device);
        wait(r, true);
    }
    void all_gather(float* full, const float* shard, size_t S, bool on_device) {
        Request r = start_all_gather(full, shard, S, on_device);
        wait(r, true);
    }
    // Host bytes from rank `root` to every rank (set-up: configs, ids; not counted in `sent`).
    void broadcast(void* buf, size_t bytes, int root = 0) {
        if (size > 1) MPI_Bcast(buf, checked_int(bytes), MPI_BYTE, root, MPI_COMM_WORLD);
    }
    void barrier() {
        if (size > 1) MPI_Barrier(MPI_COMM_WORLD);
    }
    // A host scalar summed over ranks (losses, squared norms, flags).
    double sum(double x) {
        if (size > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        return x;
    }

  private:
    static int checked_int(size_t n) {
        if (n > static_cast<size_t>(INT32_MAX))
            throw std::runtime_error("a collective of " + std::to_string(n) + " elements exceeds MPI's int count");
        return static_cast<int>(n);
    }
    static void copy(float* dst, const float* src, size_t n, bool on_device) {
        if (dst == src) return;
        if (on_device) cuda_check(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice));
        else std::memcpy(dst, src, n * sizeof(float));
    }
    // Starts one collective: `issue(request, stream)` makes the NCCL or MPI call. Time spent here (waiting for the
    // kernels that wrote an MPI buffer) counts in `seconds`, as wait()'s does.
    template <class Issue>
    Request start(bool on_device, [[maybe_unused]] cudaStream_t after, Issue issue) {
        auto t0 = std::chrono::steady_clock::now();
        Request r;
        r.active = true;
#if GPTCU_NCCL
        if (on_device) {
            if (!stream) cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
            cudaEvent_t ready;
            cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
            cuda_check(cudaEventRecord(ready, after));
            cuda_check(cudaStreamWaitEvent(stream, ready, 0));
            cuda_check(cudaEventDestroy(ready));
            issue(r, stream);
            cuda_check(cudaEventCreateWithFlags(&r.done, cudaEventDisableTiming));
            cuda_check(cudaEventRecord(r.done, stream));
            r.after = after;
            seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            return r;
        }
#endif
        if (on_device) cuda_check(cudaDeviceSynchronize());  // MPI reads what the kernels wrote
        issue(r, cudaStream_t{});
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return r;
    }
};

// ----------------------------------------------------------------------------
// Ranks that were started differently must not train together: rank 0 broadcasts `what` (the resolved options
// and the data files with their sizes), every rank compares it with its own and names each key that differs;
// then all refuse to start if any rank saw a difference.
inline void require_same_on_every_rank(Comm& comm, const nlohmann::json& what) {
    if (comm.size == 1) return;
    std::string mine = what.dump(), root = mine;
    uint64_t n = root.size();
    comm.broadcast(&n, sizeof n);
    root.resize(n);
    comm.broadcast(root.data(), n);
    nlohmann::json theirs = nlohmann::json::parse(root);
    int differ = 0;
    for (auto it = what.begin(); it != what.end(); ++it)
        if (!theirs.contains(it.key()) || theirs.at(it.key()) != it.value()) {
            std::fprintf(stderr, "rank %d: %s is %s here but %s on rank 0\n", comm.rank, it.key().c_str(),
                         it.value().dump().c_str(),
                         theirs.contains(it.key()) ? theirs.at(it.key()).dump().c_str() : "absent");
            differ = 1;
        }
    if (comm.sum(differ) > 0)
        throw std::runtime_error(
            "the ranks were started with different options or see different data (the lines above name "
            "each difference); start every rank with the same flags and the same files");
}

// ----------------------------------------------------------------------------
// Units: how the ZeRO stages cut the Ψ parameters to communicate them. Unit l < L is layer l (its slices of the
// twelve (L, ...) tensors, tensor after tensor), unit L the rest (wte, wpe, lnfw, lnfb, lm_head), as
// GPT::weights(u) numbers them. A unit of n floats is padded to N·s, s = ceil(n/N) rounded up to 64 floats (so
// shards start 256-byte aligned), and sits at `at` of the "unit layout": the padded units one after another
// (`padded` floats). Rank r keeps [r·s, (r+1)·s) of every unit, one after another in its shard (S = Σ s), at
// `shard_at`. A Segment is a run of parameters contiguous in both layouts: the model's (tensor after tensor,
// checkpoints) and the unit layout.
struct Units {
    struct Unit {
        size_t n = 0, s = 0, at = 0, shard_at = 0;
    };
    struct Segment {
        int tensor;
        size_t tensor_at, unit_at, n;
    };
    std::vector<Unit> units;        // (L + 1)
    std::vector<Segment> segments;  // every parameter once, in unit-layout order
    size_t padded = 0, S = 0;
    Units(const GPTConfig& c, int N) {
        const std::array<size_t, NUM_PARAM_TENSORS> sizes = param_sizes(c);
        std::array<size_t, NUM_PARAM_TENSORS> offset{};
        for (int i = 1; i < NUM_PARAM_TENSORS; i++) offset[i] = offset[i - 1] + sizes[i - 1];
        const size_t L = c.n_layer;
        for (size_t u = 0; u <= L; u++) {
            Unit unit;
            unit.at = padded;
            unit.shard_at = S;
            auto add = [&](int i, size_t from, size_t n) {
                if (n) segments.push_back({i, from, padded + unit.n, n});
                unit.n += n;
            };
            if (u < L)
                for (int i = LN1W; i <= FCPROJB; i++) add(i, offset[i] + u * (sizes[i] / L), sizes[i] / L);
            else
                for (int i : {WTE, WPE, LNFW, LNFB, LMHEAD}) add(i, offset[i], sizes[i]);
            unit.s = ((unit.n + N - 1) / N + 63) / 64 * 64;
            units.push_back(unit);
            padded += N * unit.s;
            S += unit.s;
        }
    }
    // Unit u's tensors in a buffer that holds the unit alone (unit-layout order); the other tensors nullptr.
    template <class T>
    ParameterTensors<T> view(T* unit_buffer, int u) const {
        ParameterTensors<T> p;
        for (const Segment& g : segments)
            if (g.unit_at >= units[u].at && g.unit_at < units[u].at + units[u].n)
                p.t[g.tensor] = unit_buffer + (g.unit_at - units[u].at);
        return p;
    }
    // f(segment, first, n) for each part [first, first + n) of a segment inside [lo, hi) of the unit layout
    template <class F>
    void for_each_in(size_t lo, size_t hi, F f) const {
        for (const Segment& g : segments) {
            size_t a = std::max(lo, g.unit_at), b = std::min(hi, g.unit_at + g.n);
            if (a < b) f(g, a, b - a);
        }
    }
};

// ----------------------------------------------------------------------------
// The ZeRO stages on one GPT<Ops, FloatX>, as its ParameterHome (gpt.cuh): the model asks it for each unit's
// weights and gradients as it runs. Built after the model has its parameters (and, on --resume, its AdamW
// state): it takes them over and keeps of them what the stage keeps. Everything communicated and sharded is fp32
// (master weights, gradients, moments); in bf16 the weights the ops read are converted after each gather.
//   gradients   stages 0–1: one unit-layout buffer, summed over a step's micro-batches, each unit sent as soon as
//               its backward in the last micro-batch is done (overlapping the layers below it); stages 2–3: a unit's
//               gradients live only from its backward to its reduce-scatter (two layer buffers used in turn, and
//               one for the rest unit), summed into the shard after every micro-batch
//   weights     stage 0: the model's own; stages 1–2: one unit-layout buffer, all-gathered after each update;
//               stage 3: only the shard, a unit gathered just before its forward, freed after it, gathered again
//               before its backward (FSDP)
template <class Ops, class FloatX = float>
struct DataParallel : ParameterHome<FloatX> {
    static constexpr bool mixed = GPT<Ops, FloatX>::mixed;
    Comm& comm;
    GPT<Ops, FloatX>& model;
    int stage;
    Units U;
    size_t P = 0, S = 0, padded = 0;  // Ψ; shard and unit-layout lengths (Units)
    float* grad_full = nullptr;       // (padded) stages 0–1: the gradients, unit layout
    float* grad_shard = nullptr;      // (S) stages 1–3: the summed gradients of this rank's shard
    float* m_shard = nullptr;         // (S) stages 1–3: AdamW first moment of the shard
    float* v_shard = nullptr;         // (S)             and second moment
    float* param_full = nullptr;      // (padded) stages 1–2: the fp32 master weights, unit layout
    FloatX* param_full_X = nullptr;   // (padded) stages 1–2 in bf16: the copy the ops read
    float* param_shard = nullptr;     // (S) stage 3: the shard's master weights
    // stage 3: gathered weights. [0], [1]: the layers in turn (layer l runs from one while the next layer's gather
    // fills the other: l + 1 in the forward, l − 1 in the backward); [2]: the rest unit, allocated while it runs
    // (the whole forward, and the whole backward)
    struct Gathered {
        float* fp32 = nullptr;  // (N·s)
        FloatX* X = nullptr;    // (N·s) the bf16 copy, in bf16
        int unit = -1;          // the unit gathered or being gathered into it, or -1
        bool ready = false;     // the gather is finished (and converted)
        Comm::Request request;
    } gathered[3];
    // stages 2–3: a unit's gradients, from its backward until its reduce-scatter is summed into grad_shard. [0], [1]:
    // the layers in turn (the reduce-scatter of layer l runs during the backward of layer l − 1); [2]: the rest
    // unit (allocated while the backward runs).
    struct Slot {
        float* grads = nullptr;  // (N·s)
        float* sum = nullptr;    // (s) this rank's part of the sum over ranks
        int unit = -1;           // the unit whose reduce-scatter is in flight, or -1
        Comm::Request request;
    } slots[3];
    std::vector<Comm::Request> pending;  // stages 0–1: the units sent during the last micro-batch's backward
    bool last_micro_batch = true;
    float* checkpoint_buffers[3] = {};  // (Ψ each) stages 1–3, only while a checkpoint is written

    DataParallel(Comm& c, GPT<Ops, FloatX>& m, int zero_stage)
        : comm(c), model(m), stage(zero_stage), U(m.config, c.size) {
        if (stage < 0 || stage > 3)
            throw std::runtime_error("--zero-stage must be 0, 1, 2 or 3 (got " + std::to_string(stage) + ")");
        P = model.num_parameters;
        S = U.S;
        padded = U.padded;
        if (Ops::on_device) comm.init_nccl();
        model.home = this;
        if (model.grads_memory) Ops::release(model.grads_memory);
        model.grads_memory = nullptr;
        model.grads = ParameterTensors<float>{};
        if (stage <= 1) grad_full = alloc_zero(padded);
        if (stage == 0) return;
        grad_shard = alloc_zero(S);
        m_shard = alloc_zero(S);
        v_shard = alloc_zero(S);
        if (model.m_memory) {  // resumed: keep this rank's part of the checkpoint's moments
            to_shard(m_shard, model.m_memory);
            to_shard(v_shard, model.v_memory);
            Ops::release(model.m_memory);
            Ops::release(model.v_memory);
            model.m_memory = model.v_memory = nullptr;
        }
        if (stage <= 2) {
            param_full = alloc_zero(padded);
            for (const Units::Segment& g : U.segments)
                Ops::copy(param_full + g.unit_at, model.params_memory + g.tensor_at, g.n * sizeof(float));
            if constexpr (mixed) param_full_X = static_cast<FloatX*>(Ops::alloc(padded * sizeof(FloatX)));
            refresh_full_X();
        } else {
            param_shard = alloc_zero(S);
            to_shard(param_shard, model.params_memory);
        }
        // the model's own weights are no longer read: this object hands out each unit's
        if (mixed) Ops::release(model.params_X);
        Ops::release(model.params_memory);
        model.params_X = nullptr;
        model.params_memory = nullptr;
        model.params = ParameterTensors<FloatX>{};
    }
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;
    ~DataParallel() {
        model.home = nullptr;
        for (void* p : {static_cast<void*>(grad_full), static_cast<void*>(grad_shard), static_cast<void*>(m_shard),
                        static_cast<void*>(v_shard), static_cast<void*>(param_full), static_cast<void*>(param_full_X),
                        static_cast<void*>(param_shard)})
            if (p) Ops::release(p);
        for (Gathered& g : gathered) release_gathered(g);
        for (Slot& k : slots) release_slot(k);
        release_checkpoint_buffers();
    }

    // ---- ParameterHome: the model asks for unit u's weights and gradients as it runs (gpt.cuh)
    ParameterTensors<FloatX> weights(int u, int next) override {
        if (stage == 0) return model.own_weights(u);
        if (stage <= 2) {
            if constexpr (mixed) return U.view(param_full_X + U.units[u].at, u);
            else return U.view(param_full + U.units[u].at, u);
        }
        Gathered& g = buffer(u);
        if (g.unit != u) start_gather(u, g);
        finish_gather(g);
        if (next >= 0 && buffer(next).unit != next) start_gather(next, buffer(next));  // prefetch: FSDP's overlap
        if constexpr (mixed) return U.view(g.X, u);
        else return U.view(g.fp32, u);
    }
    ParameterTensors<float> gradients(int u) override {
        const Units::Unit& unit = U.units[u];
        if (stage <= 1) return U.view(grad_full + unit.at, u);
        Slot& k = slot(u);
        finish(k);  // the unit that used this slot before: its sum into grad_shard
        if (!k.grads) {
            k.grads = static_cast<float*>(Ops::alloc(comm.size * unit.s * sizeof(float)));
            k.sum = static_cast<float*>(Ops::alloc(unit.s * sizeof(float)));
        }
        zero_memory(model.exec, k.grads, comm.size * unit.s * sizeof(float));
        return U.view(k.grads, u);
    }
    // After a unit's forward, stage 3 drops its weights; after its backward, its gradients go to the other ranks:
    // stages 0–1 in the step's last micro-batch only (the gradients add up over micro-batches first), stages 2–3
    // in every micro-batch (no rank keeps the whole gradient).
    void done(int u, bool backward) override {
        const Units::Unit& unit = U.units[u];
        if (stage == 3) {
            Gathered& g = buffer(u);
            g.unit = -1;
            if (u == model.config.n_layer) release_gathered(g);
        }
        if (!backward) return;
        cudaStream_t s = model.exec.stream;
        if (stage == 0 && last_micro_batch)
            pending.push_back(comm.start_all_reduce(grad_full + unit.at, unit.n, Ops::on_device, s));
        if (stage == 1 && last_micro_batch)
            pending.push_back(
                comm.start_reduce_scatter(grad_shard + unit.shard_at, grad_full + unit.at, unit.s, Ops::on_device, s));
        if (stage >= 2) {
            Slot& k = slot(u);
            k.unit = u;
            k.request = comm.start_reduce_scatter(k.sum, k.grads, unit.s, Ops::on_device, s);
        }
    }

    // ---- the training step (train_gpt.cu): begin_step, then per micro-batch begin_micro_batch, forward and
    // backward, then finish_gradients, grad_norm, update.
    void begin_step() {
        if (stage <= 1) zero_memory(model.exec, grad_full, padded * sizeof(float));
        if (stage >= 1) zero_memory(model.exec, grad_shard, S * sizeof(float));
    }
    void begin_micro_batch(bool last) { last_micro_batch = last; }
    // After the last micro-batch: every unit's gradients summed over ranks (stage 0: in grad_full; 1–3: this rank's
    // shard in grad_shard).
    void finish_gradients() {
        for (Comm::Request& r : pending) comm.wait(r);
        pending.clear();
        for (Slot& k : slots) finish(k);
        release_slot(slots[2]);  // the rest unit's gradient buffer lives during the backward only
    }
    // ‖g‖₂ of the whole model's summed gradient; stages 1–3: each rank's shard's ‖g‖², summed over ranks (the
    // padding is zero).
    float grad_norm() {
        if (stage == 0) return std::sqrt(global_norm_squared(model.exec, grad_full, padded));
        double squared = global_norm_squared(model.exec, grad_shard, S);
        return static_cast<float>(std::sqrt(comm.sum(squared)));
    }
    // AdamW with the model's rule (decay where param_decays). Stage 0 on everything (the weights and moments in
    // the model's layout, the gradients in the unit layout); stages 1–3 on this rank's shard of each unit, then
    // stages 1–2 all-gather the weights.
    void update(float lr, float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
        auto adamw = [&](float* p, const float* g, float* m, float* v, const Units::Segment& seg, size_t n) {
            adamw_update(model.exec, p, g, m, v, n, lr, beta1, beta2, eps, param_decays(seg.tensor) ? weight_decay : 0,
                         step, grad_scale);
        };
        if (stage == 0) {
            model.ensure_optimizer_state();
            for (const Units::Segment& g : U.segments)
                adamw(model.params_memory + g.tensor_at, grad_full + g.unit_at, model.m_memory + g.tensor_at,
                      model.v_memory + g.tensor_at, g, g.n);
            return model.refresh_params_X();
        }
        for_my_shard([&](const Units::Segment& g, size_t first, size_t n, size_t k) {
            float* p = stage == 3 ? param_shard + k : param_full + first;
            adamw(p, grad_shard + k, m_shard + k, v_shard + k, g, n);
        });
        if (stage == 3) return;
        for (const Units::Unit& u : U.units)
            comm.all_gather(param_full + u.at, param_full + u.at + comm.rank * u.s, u.s, Ops::on_device);
        refresh_full_X();
    }

    // The whole model for a checkpoint, in the model's layout: every rank takes part (stages 1–3 gather the shards
    // and reorder them), rank 0 writes.
    CheckpointArrays checkpoint_arrays() {
        if (stage == 0) return {P, model.params_memory, model.m_memory, model.v_memory, Ops::to_host};
        const float* shards[3] = {param_shard, m_shard, v_shard};  // stages 1–2 hold the weights whole already
        float* unit_layout = static_cast<float*>(Ops::alloc(padded * sizeof(float)));
        for (int a = 0; a < 3; a++) {
            const float* whole = a == 0 && stage <= 2 ? param_full : unit_layout;
            if (whole == unit_layout)
                for (const Units::Unit& u : U.units)
                    comm.all_gather(unit_layout + u.at, shards[a] + u.shard_at, u.s, Ops::on_device);
            checkpoint_buffers[a] = static_cast<float*>(Ops::alloc(P * sizeof(float)));
            for (const Units::Segment& g : U.segments)
                Ops::copy(checkpoint_buffers[a] + g.tensor_at, whole + g.unit_at, g.n * sizeof(float));
        }
        Ops::release(unit_layout);
        return {P, checkpoint_buffers[0], checkpoint_buffers[1], checkpoint_buffers[2], Ops::to_host};
    }
    void release_checkpoint_buffers() {
        for (float*& p : checkpoint_buffers)
            if (p) { Ops::release(p); p = nullptr; }
    }

    // Per rank, in bytes: what the stage keeps between steps (persistent), and what exists only while a unit runs.
    struct Memory {
        double params = 0, grads = 0, optimizer = 0;       // persistent model state
        double transient_params = 0, transient_grads = 0;  // stage 3's gathered weights; stages 2–3's unit gradients
        double activations = 0, comm_buffers = 0;
        double state() const { return params + grads + optimizer; }
    };
    Memory memory(int B, int T) const {
        Memory m;
        const double x = mixed ? sizeof(FloatX) : 0;  // the bf16 weight copy the ops read, per weight
        const Units::Unit &layer = U.units[0], &rest = U.units.back();
        const double N = comm.size, layer_full = N * layer.s, rest_full = N * rest.s;
        m.params = stage == 0 ? (4 + x) * P : stage <= 2 ? (4 + x) * padded : 4.0 * S;
        m.transient_params = stage == 3 ? (4 + x) * (2 * layer_full + rest_full) : 0;
        m.grads = stage <= 1 ? 4.0 * padded : 4.0 * S;
        m.transient_grads = stage >= 2 ? 4.0 * (2 * layer_full + rest_full) : 0;
        m.optimizer = stage == 0 ? 8.0 * P : 8.0 * S;
        m.comm_buffers = stage >= 2 ? 4.0 * (2 * layer.s + rest.s) : 0;  // the slots' sums
        std::array<size_t, NUM_ACT_TENSORS> acts = activation_sizes(model.config, B, T);
        for (int i = 0; i < NUM_ACT_TENSORS; i++)
            m.activations += static_cast<double>(activation_is_fp32(i) ? sizeof(float) : sizeof(FloatX)) * acts[i];
        return m;
    }
    // The ZeRO paper's model state per rank for this stage, all fp32 (4 bytes each of parameters and gradients,
    // 8 of AdamW moments: 16Ψ in all): 16Ψ, 8Ψ + 8Ψ/N, 4Ψ + 12Ψ/N, 16Ψ/N.
    double formula_bytes() const {
        const double psi = static_cast<double>(P), N = comm.size;
        switch (stage) {
        case 0: return 16 * psi;
        case 1: return 8 * psi + 8 * psi / N;
        case 2: return 4 * psi + 12 * psi / N;
        default: return 16 * psi / N;
        }
    }
    // Bytes one rank sends per optimizer step, for A micro-batches per rank. With the shard S padded per unit, one
    // reduce-scatter or all-gather of every unit sends part = (N−1)·4S. Stage 0 all-reduces each unit once,
    // 2(N−1)/N·4Ψ; stage 1 reduce-scatters once and all-gathers once, 2·part; stage 2 reduce-scatters after every
    // micro-batch, (A + 1)·part; stage 3 gathers every unit for each forward and again for each backward and
    // reduce-scatters, 3A·part: the ZeRO paper's 3Ψ against DDP's 2Ψ (1.5×) at A = 1.
    double formula_step_bytes(int A) const {
        const double N = comm.size, part = (N - 1) * 4.0 * static_cast<double>(S);
        const double by_stage[] = {2 * (N - 1) / N * 4.0 * static_cast<double>(P), 2 * part, (A + 1) * part,
                                   3 * A * part};
        return by_stage[stage];
    }
    std::string memory_report(int B, int T) const {
        Memory m = memory(B, T);
        auto mib = [](double b) {
            char s[32];
            std::snprintf(s, sizeof s, "%.2f MiB", b / (1 << 20));
            return std::string(s);
        };
        const char* held[] = {"DDP: all replicated", "optimizer state sharded", "gradients + optimizer state sharded",
                              "parameters + gradients + optimizer state sharded"};
        std::string s = "memory per rank (ZeRO stage " + std::to_string(stage) + ": " + held[stage] + "; " +
                        std::to_string(comm.size) + " rank" + (comm.size > 1 ? "s" : "") +
                        ", Ψ = " + std::to_string(P) + " fp32 parameters, shard " + std::to_string(S) + ")\n";
        s += "  parameters " + mib(m.params) +
             (m.transient_params ? " (+ at most " + mib(m.transient_params) +
                                       " gathered while they run: two layers, and wte/wpe/lnf/lm_head)"
                                 : "") +
             (mixed ? " (incl. the bf16 weight copy the ops read: the formula counts fp32 state only)" : "") + "\n";
        s += "  gradients  " + mib(m.grads) +
             (m.transient_grads ? " (+ at most " + mib(m.transient_grads) +
                                      " from a unit's backward to its reduce-scatter: two layers and the rest)"
                                : "") +
             "\n";
        s += "  AdamW m, v " + mib(m.optimizer) + "\n";
        s += "  activations " + mib(m.activations) + ", communication buffers " + mib(m.comm_buffers) + "\n";
        const char* formula[] = {"16Ψ", "8Ψ + 8Ψ/N", "4Ψ + 12Ψ/N", "16Ψ/N"};
        s += "  model state kept " + mib(m.state()) + "; ZeRO formula " + formula[stage] + " = " +
             mib(formula_bytes()) + " (one rank, no ZeRO: " + mib(16.0 * P) + ")";
        return s;
    }

  private:
    float* alloc_zero(size_t n) {
        float* p = static_cast<float*>(Ops::alloc(n * sizeof(float)));
        zero_memory(model.exec, p, n * sizeof(float));
        return p;
    }
    // f(segment, first, n, k) for each run of this rank's shard: [first, first + n) of the unit layout, at k of
    // the shard.
    template <class F>
    void for_my_shard(F f) const {
        for (const Units::Unit& u : U.units) {
            const size_t lo = u.at + comm.rank * u.s;
            U.for_each_in(lo, lo + u.s, [&](const Units::Segment& g, size_t first, size_t n) {
                f(g, first, n, u.shard_at + (first - lo));
            });
        }
    }
    // This rank's shard of a buffer in the model's layout (the padding stays as it was: zero).
    void to_shard(float* shard, const float* model_layout) {
        for_my_shard([&](const Units::Segment& g, size_t first, size_t n, size_t k) {
            Ops::copy(shard + k, model_layout + g.tensor_at + (first - g.unit_at), n * sizeof(float));
        });
    }
    void refresh_full_X() {
        if constexpr (mixed) convert(model.exec, param_full_X, static_cast<const float*>(param_full), padded);
    }
    // stage 3: unit u's weights from every rank's shard into g: started, then finished (and converted to bf16)
    Gathered& buffer(int u) { return gathered[u == model.config.n_layer ? 2 : u % 2]; }
    void start_gather(int u, Gathered& g) {
        const Units::Unit& unit = U.units[u];
        const size_t n = comm.size * unit.s;
        if (!g.fp32) {
            g.fp32 = static_cast<float*>(Ops::alloc(n * sizeof(float)));
            if constexpr (mixed) g.X = static_cast<FloatX*>(Ops::alloc(n * sizeof(FloatX)));
        }
        comm.wait(g.request);  // a gather into g never consumed (none in a normal step)
        g.request = comm.start_all_gather(g.fp32, param_shard + unit.shard_at, unit.s, Ops::on_device,
                                          model.exec.stream);
        g.unit = u;
        g.ready = false;
    }
    void finish_gather(Gathered& g) {
        if (g.ready) return;
        comm.wait(g.request);
        if constexpr (mixed) convert(model.exec, g.X, static_cast<const float*>(g.fp32), U.units[g.unit].n);
        g.ready = true;
    }
    void release_gathered(Gathered& g) {
        comm.wait(g.request);
        for (void* p : {static_cast<void*>(g.fp32), static_cast<void*>(g.X)})
            if (p) Ops::release(p);
        g = Gathered{};
    }
    Slot& slot(int u) { return u == model.config.n_layer ? slots[2] : slots[u % 2]; }
    // A slot's reduce-scatter, if one is in flight: waited for, and its sum added into this rank's shard.
    void finish(Slot& k) {
        if (k.unit < 0) return;
        comm.wait(k.request);
        const Units::Unit& unit = U.units[k.unit];
        float* shard = grad_shard + unit.shard_at;
        residual_forward(model.exec, shard, shard, k.sum, static_cast<int>(unit.s));
        k.unit = -1;
    }
    void release_slot(Slot& k) {
        comm.wait(k.request);  // MPI may still read the buffer (only when a step was cut short)
        if (k.grads) Ops::release(k.grads);
        if (k.sum) Ops::release(k.sum);
        k.grads = k.sum = nullptr;
    }
};
