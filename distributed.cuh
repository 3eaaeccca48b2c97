// distributed.cuh — data-parallel training over N processes ("ranks"): one communication layer (Comm) and the
// ZeRO stages 0–3 on GPT<Ops>'s flat buffers (DataParallel). docs/distributed.md explains the algorithms.
//
//   mpirun -np N ./train_gpt_cpu --zero-stage S ...     N processes on this machine (CPU build: MPI)
//   mpirun -np G ./train_gpt --zero-stage S ...         one process per GPU (GPU build: NCCL, ids over MPI)
//
// Comm: all-reduce, reduce-scatter, all-gather, broadcast and barrier on one contiguous float buffer. Host memory
// (the CPU build, and --device cpu in any build) goes through MPI; GPU memory in the GPU build through NCCL,
// whose unique id rank 0 makes and broadcasts over MPI. A program started without mpirun is rank 0 of 1 and
// never calls MPI. Errors are fatal: MPI_ERRORS_ARE_FATAL, NCCL errors abort, and the programs call
// Comm::abort on any exception, so a rank that fails ends the job instead of leaving the others in a collective.
//
// DataParallel<Ops>: with Ψ parameters split in N shards of S = ceil(Ψ/N) (rounded up to 64 floats, so shards
// start 256-byte aligned; the buffers that are gathered or scattered whole are padded to N·S with zeros):
//   stage 0 (DDP):  every rank holds everything; gradients all-reduced in buckets after the last micro-batch
//   stage 1:        AdamW's m, v sharded; gradients reduce-scattered after the last micro-batch, AdamW on this
//                   rank's shard, parameters all-gathered
//   stage 2:        gradients sharded too: reduce-scattered after every micro-batch's backward into the shard's
//                   accumulator (the full gradient buffer is the scratch of one backward)
//   stage 3:        parameters sharded too: all-gathered whole before a step's first forward, freed with the full
//                   gradient buffer after its last backward (whole model at a time, not per layer)
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
    double seconds = 0;  // wall time inside collectives (each waits for its result)
#if GPTCU_NCCL
    ncclComm_t nccl = nullptr;
    cudaStream_t stream = 0;
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

    // ---- collectives on floats; `on_device`: the buffer is the kernels' memory (GPU, or cudasim's in the CPU build)
    // buf (n): every rank's buf becomes the elementwise sum over ranks.
    void all_reduce(float* buf, size_t n, bool on_device) {
        sent.all_reduce += 2.0 * (size - 1) / size * 4.0 * n;
        Timed t(*this, on_device);
#if GPTCU_NCCL
        if (on_device) return nccl_check(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, nccl, stream), "ncclAllReduce");
#endif
        if (size == 1) return;
        for (size_t done = 0; done < n;) {  // MPI counts are int
            int count = static_cast<int>(std::min<size_t>(n - done, size_t(1) << 30));
            MPI_Allreduce(MPI_IN_PLACE, buf + done, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            done += count;
        }
    }
    // full (N·S) on every rank → shard (S): this rank's S elements of the elementwise sum over ranks.
    void reduce_scatter(float* shard, const float* full, size_t S, bool on_device) {
        sent.reduce_scatter += (size - 1) * 4.0 * S;
        Timed t(*this, on_device);
#if GPTCU_NCCL
        if (on_device)
            return nccl_check(ncclReduceScatter(full, shard, S, ncclFloat, ncclSum, nccl, stream), "ncclReduceScatter");
#endif
        if (size == 1) return copy(shard, full, S, on_device);
        MPI_Reduce_scatter_block(full, shard, checked_int(S), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    // shard (S) of every rank → full (N·S): rank r's shard lands at full + r·S. shard may be full + rank·S.
    void all_gather(float* full, const float* shard, size_t S, bool on_device) {
        sent.all_gather += (size - 1) * 4.0 * S;
        Timed t(*this, on_device);
#if GPTCU_NCCL
        if (on_device) return nccl_check(ncclAllGather(shard, full, S, ncclFloat, nccl, stream), "ncclAllGather");
#endif
        if (size == 1) return copy(full, shard, S, on_device);
        const void* send = shard == full + rank * S ? MPI_IN_PLACE : shard;  // MPI forbids aliasing otherwise
        MPI_Allgather(send, checked_int(S), MPI_FLOAT, full, checked_int(S), MPI_FLOAT, MPI_COMM_WORLD);
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
    // Times one collective. The kernels that wrote the buffer must have finished before MPI reads it (cudasim's
    // memory in the CPU build), and a timed NCCL call is waited for; NCCL is stream-ordered, so that wait only
    // makes the time visible.
    struct Timed {
        Comm& c;
        bool on_device;
        std::chrono::steady_clock::time_point start;
        Timed(Comm& comm, bool dev) : c(comm), on_device(dev) {
            if (on_device) cuda_check(cudaDeviceSynchronize());
            start = std::chrono::steady_clock::now();
        }
        ~Timed() {
            if (on_device) cuda_check(cudaDeviceSynchronize());
            c.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
    };
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
// The ZeRO stages on one GPT<Ops, FloatX>. Built after the model has its parameters (and, on --resume, its AdamW
// state): it takes them over and keeps of them what the stage keeps. Everything communicated and sharded is fp32
// (master weights, gradients, moments); in bf16 the model's bf16 copy of the weights is refreshed from the master
// after each update (stages 0–2) or each gather (stage 3).
template <class Ops, class FloatX = float>
struct DataParallel {
    static constexpr bool mixed = GPT<Ops, FloatX>::mixed;
    Comm& comm;
    GPT<Ops, FloatX>& model;
    int stage;
    size_t P = 0, S = 0, padded = 0, lo = 0;  // parameters Ψ, shard size, N·S, first element of this rank's shard
    size_t bucket_elems = size_t(1) << 22;    // stage 0 all-reduces the gradients in buckets of 16 MiB
    float* grad_shard = nullptr;              // (S) stages 1–3: the summed gradients of this rank's shard
    float* grad_scratch = nullptr;            // (S) stages 2–3: one micro-batch's reduce-scatter, added to grad_shard
    float* m_shard = nullptr;                 // (S) stages 1–3: AdamW first moment of the shard
    float* v_shard = nullptr;                 // (S)             and second moment
    float* param_shard = nullptr;             // (S) stage 3: the parameters between steps
    float* gathered_m = nullptr;              // (N·S) only while a checkpoint is written (stages 1–3)
    float* gathered_v = nullptr;

    DataParallel(Comm& c, GPT<Ops, FloatX>& m, int zero_stage) : comm(c), model(m), stage(zero_stage) {
        if (stage < 0 || stage > 3)
            throw std::runtime_error("--zero-stage must be 0, 1, 2 or 3 (got " + std::to_string(stage) + ")");
        P = model.num_parameters;
        S = (P + comm.size - 1) / comm.size;
        S = (S + 63) / 64 * 64;
        padded = S * comm.size;
        lo = S * comm.rank;
        if (Ops::on_device) comm.init_nccl();
        if (stage == 0) return;
        // the buffers gathered into or scattered from whole: N·S long, the padding zero and never written by the model
        float* p = alloc_zero(padded);
        Ops::copy(p, model.params_memory, P * sizeof(float));
        Ops::release(model.params_memory);
        model.params_memory = p;
        if (!mixed) {  // fp32: the master weights are the ones the ops read
            model.params_X = reinterpret_cast<FloatX*>(p);
            model.params = point_parameters(model.params_X, model.sizes);
        }
        if (model.grads_memory) Ops::release(model.grads_memory);
        model.grads_memory = nullptr;
        ensure_grads();
        grad_shard = alloc_zero(S);
        if (stage >= 2) grad_scratch = alloc_zero(S);
        m_shard = alloc_zero(S);
        v_shard = alloc_zero(S);
        if (model.m_memory) {  // resumed: keep this rank's part of the checkpoint's moments
            size_t n = lo < P ? std::min(S, P - lo) : 0;
            Ops::copy(m_shard, model.m_memory + lo, n * sizeof(float));
            Ops::copy(v_shard, model.v_memory + lo, n * sizeof(float));
            Ops::release(model.m_memory);
            Ops::release(model.v_memory);
            model.m_memory = model.v_memory = nullptr;
        }
        if (stage == 3) {
            param_shard = alloc_zero(S);
            Ops::copy(param_shard, model.params_memory + lo, S * sizeof(float));
            release_full_buffers();
        }
    }
    DataParallel(const DataParallel&) = delete;
    DataParallel& operator=(const DataParallel&) = delete;
    ~DataParallel() {
        for (void* p : {static_cast<void*>(grad_shard), static_cast<void*>(grad_scratch), static_cast<void*>(m_shard),
                        static_cast<void*>(v_shard), static_cast<void*>(param_shard)})
            if (p) Ops::release(p);
        release_checkpoint_buffers();
    }

    // Stage 3: the full parameters, all-gathered from the shards, before anything runs the model (a step's
    // forward, validation, samples, a checkpoint). Other stages always hold them.
    void ensure_params() {
        if (stage != 3 || model.params_memory) return;
        model.params_memory = static_cast<float*>(Ops::alloc(padded * sizeof(float)));
        comm.all_gather(model.params_memory, param_shard, S, Ops::on_device);
        if constexpr (mixed) model.params_X = static_cast<FloatX*>(Ops::alloc(P * sizeof(FloatX)));
        else model.params_X = model.params_memory;
        model.params = point_parameters(model.params_X, model.sizes);
        model.refresh_params_X();
    }

    // Before a step's first micro-batch: gradients to zero (the shard's accumulator too).
    void begin_step() {
        ensure_params();
        ensure_grads();
        model.zero_grad();
        if (stage >= 1) zero_memory(model.exec, grad_shard, S * sizeof(float));
    }
    // After each micro-batch's backward. Stages 2–3: this micro-batch's gradients, summed over ranks, are added
    // to the shard and the full buffer is zeroed for the next backward.
    void after_backward() {
        if (stage < 2) return;
        comm.reduce_scatter(grad_scratch, model.grads_memory, S, Ops::on_device);
        residual_forward(model.exec, grad_shard, grad_shard, grad_scratch, static_cast<int>(S));
        model.zero_grad();
    }
    // After the last micro-batch of a step: stage 0 all-reduces, stage 1 reduce-scatters; stage 3 frees the full
    // parameters and gradients (the step's update works on the shard).
    void finish_gradients() {
        if (stage == 0)
            for (size_t at = 0; at < P; at += bucket_elems)
                comm.all_reduce(model.grads_memory + at, std::min(bucket_elems, P - at), Ops::on_device);
        if (stage == 1) comm.reduce_scatter(grad_shard, model.grads_memory, S, Ops::on_device);
        if (stage == 3) release_full_buffers();
    }
    // ‖g‖₂ of the whole model's summed gradient: each rank's shard's ‖g‖², summed over ranks (the padding is zero).
    float grad_norm() {
        if (stage == 0) return model.grad_norm();
        double squared = global_norm_squared(model.exec, grad_shard, S);
        return static_cast<float>(std::sqrt(comm.sum(squared)));
    }
    // AdamW with the model's rule (decay where param_decays), stages 1–3 on this rank's shard only: the part of
    // each tensor that lies in [lo, lo + S). Then stages 1–2 all-gather the parameters.
    void update(float lr, float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
        if (stage == 0) return model.update(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
        float* p = stage == 3 ? param_shard : model.params_memory + lo;
        size_t offset = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            size_t a = std::max(offset, lo), b = std::min(offset + model.sizes[i], lo + S);
            if (a < b)
                adamw_update(model.exec, p + (a - lo), grad_shard + (a - lo), m_shard + (a - lo), v_shard + (a - lo),
                             b - a, lr, beta1, beta2, eps, param_decays(i) ? weight_decay : 0.0f, step, grad_scale);
            offset += model.sizes[i];
        }
        if (stage <= 2) {
            comm.all_gather(model.params_memory, model.params_memory + lo, S, Ops::on_device);
            model.refresh_params_X();
        }
    }

    // The whole model for a checkpoint: every rank takes part (stages 1–3 gather AdamW's moments), rank 0 writes.
    CheckpointArrays checkpoint_arrays() {
        ensure_params();
        if (stage == 0) return {P, model.params_memory, model.m_memory, model.v_memory, Ops::to_host};
        gathered_m = static_cast<float*>(Ops::alloc(padded * sizeof(float)));
        gathered_v = static_cast<float*>(Ops::alloc(padded * sizeof(float)));
        comm.all_gather(gathered_m, m_shard, S, Ops::on_device);
        comm.all_gather(gathered_v, v_shard, S, Ops::on_device);
        return {P, model.params_memory, gathered_m, gathered_v, Ops::to_host};
    }
    void release_checkpoint_buffers() {
        for (float** p : {&gathered_m, &gathered_v})
            if (*p) { Ops::release(*p); *p = nullptr; }
    }

    // Per rank, in bytes, what the stage keeps between steps (persistent) and what exists only within a step.
    struct Memory {
        double params = 0, grads = 0, optimizer = 0;  // persistent model state
        double transient_params = 0, transient_grads = 0;  // full copies alive only during forward/backward
        double activations = 0, comm_buffers = 0;
        double state() const { return params + grads + optimizer; }
    };
    Memory memory(int B, int T) const {
        Memory m;
        const double full = 4.0 * (stage == 0 ? P : padded), shard = 4.0 * S;
        const double copy = mixed ? static_cast<double>(sizeof(FloatX)) * P : 0;  // the bf16 weights the ops read
        m.params = stage == 3 ? shard : full + copy;
        m.transient_params = stage == 3 ? full + copy : 0;
        m.grads = stage <= 1 ? full : shard;
        m.transient_grads = stage >= 2 ? full : 0;
        m.optimizer = stage == 0 ? 8.0 * P : 2 * shard;
        std::array<size_t, NUM_ACT_TENSORS> acts = activation_sizes(model.config, B, T);
        for (int i = 0; i < NUM_ACT_TENSORS; i++)
            m.activations += static_cast<double>(activation_is_fp32(i) ? sizeof(float) : sizeof(FloatX)) * acts[i];
        m.comm_buffers = stage >= 2 ? shard : 0;  // grad_scratch (checkpoints add 2 full buffers while written)
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
    // Bytes one rank sends per optimizer step by the formula, for A micro-batches per rank (Ψ fp32 elements, padded
    // to N·S for the sharded stages): stage 0 all-reduces once, 2(N−1)/N·4Ψ; stage 1 reduce-scatters and
    // all-gathers once, the same; stages 2 and 3 reduce-scatter after every micro-batch, (A + 1)(N−1)/N·4Ψ. Stage 3
    // here gathers the whole model once per step and keeps it through the backward, so it moves what stage 2
    // moves; FSDP's per-layer stage 3 frees each layer after its forward and gathers it again for the backward,
    // which is the paper's 3Ψ against DDP's 2Ψ (1.5×).
    double formula_step_bytes(int A) const {
        const double N = comm.size, part = (N - 1) / N * 4.0 * static_cast<double>(padded);
        if (stage == 0) return 2 * (N - 1) / N * 4.0 * static_cast<double>(P);
        if (stage == 1) return 2 * part;
        return (A + 1) * part;
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
             (m.transient_params ? " (+ " + mib(m.transient_params) + " gathered during forward/backward)" : "") + "\n";
        s += "  gradients  " + mib(m.grads) +
             (m.transient_grads ? " (+ " + mib(m.transient_grads) + " full buffer during backward)" : "") + "\n";
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
    // The model's gradient buffer, N·S long for stages 1–3 (the padding stays zero: backward never writes it).
    void ensure_grads() {
        if (model.grads_memory || stage == 0) return;
        model.grads_memory = alloc_zero(padded);
        model.grads = point_parameters(model.grads_memory, model.sizes);
    }
    void release_full_buffers() {
        if (mixed && model.params_X) Ops::release(model.params_X);
        model.params_X = nullptr;
        for (float** p : {&model.params_memory, &model.grads_memory})
            if (*p) { Ops::release(*p); *p = nullptr; }
        model.params = ParameterTensors<FloatX>{};
        model.grads = ParameterTensors<float>{};
    }
};
