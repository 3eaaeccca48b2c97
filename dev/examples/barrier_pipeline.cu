// barrier_pipeline.cu — libcu++'s asynchronous-copy building blocks, as the CUDA samples'
// globalToShmemAsyncCopy uses them: a block-scope cuda::barrier (split arrive / wait) completing
// cuda::memcpy_async copies into shared memory, a per-thread cuda::pipeline with two stages in flight,
// and a block-scope pipeline whose producer threads fill stages that consumer threads read.
// Each kernel computes row sums of a matrix; checked against the host. Self-checking: prints PASS or
// FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/barrier_pipeline.cu
//   on a GPU:    nvcc -O2 -arch=sm_80 -o barrier_pipeline dev/examples/barrier_pipeline.cu && ./barrier_pipeline
#include <cooperative_groups.h>
#include <cuda/barrier>
#include <cuda/pipeline>
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

constexpr int cols = 128, block = 128;  // one row per block; one column per thread

// sums[row] = Σ x[row][·]: each thread copies its element into shared memory with memcpy_async on the
// barrier, arrives, and (after unrelated work) waits; then thread 0 adds the row.
__global__ void barrier_rows_kernel(float* sums, const float* x) {
    __shared__ float row[cols];
    __shared__ cuda::barrier<cuda::thread_scope_block> bar;
    cg::thread_block b = cg::this_thread_block();
    if (b.thread_rank() == 0) init(&bar, b.size());
    b.sync();
    int t = threadIdx.x;
    cuda::memcpy_async(&row[t], &x[blockIdx.x * cols + t], sizeof(float), bar);
    cuda::barrier<cuda::thread_scope_block>::arrival_token token = bar.arrive();
    bar.wait(std::move(token));  // every thread's copy is in `row` now
    if (t == 0) {
        float s = 0.0f;
        for (int c = 0; c < cols; c++) s += row[c];
        sums[blockIdx.x] = s;
    }
}

// sums[r] = Σ x[r][·] for the rows r of this thread, streamed through a two-stage per-thread pipeline:
// the copy of row k+1 is issued before row k is summed.
__global__ void thread_pipeline_kernel(float* sums, const float* x, int rows) {
    constexpr int stages = 2;
    float buffer[stages][cols];
    int r0 = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
    cuda::pipeline<cuda::thread_scope_thread> pipe = cuda::make_pipeline();
    auto issue = [&](int r, int stage) {
        pipe.producer_acquire();
        if (r < rows) cuda::memcpy_async(buffer[stage], &x[r * cols], sizeof(float) * cols, pipe);
        pipe.producer_commit();
    };
    issue(r0, 0);
    for (int r = r0, k = 0; r < rows; r += stride, k++) {
        issue(r + stride, (k + 1) % stages);
        cuda::pipeline_consumer_wait_prior<1>(pipe);  // all but the newest copy have landed
        float s = 0.0f;
        for (int c = 0; c < cols; c++) s += buffer[k % stages][c];
        sums[r] = s;
        pipe.consumer_release();
    }
}

// sums[row] for `rows_per_block` rows per block: the first warp produces (copies each row into a stage),
// the others consume (each consumer sums a slice of the row; one atomicAdd per consumer and row).
__global__ void block_pipeline_kernel(float* sums, const float* x, int rows_per_block) {
    constexpr int stages = 2;
    __shared__ float stage_data[stages][cols];
    __shared__ cuda::pipeline_shared_state<cuda::thread_scope_block, stages> state;
    cg::thread_block b = cg::this_thread_block();
    bool producer = threadIdx.x < 32;
    cuda::pipeline<cuda::thread_scope_block> pipe =
        cuda::make_pipeline(b, &state, producer ? cuda::pipeline_role::producer : cuda::pipeline_role::consumer);
    int consumers = blockDim.x - 32, me = threadIdx.x - 32;
    for (int k = 0; k < rows_per_block; k++) {
        int row = blockIdx.x * rows_per_block + k, s = k % stages;
        if (producer) {
            pipe.producer_acquire();
            for (int c = threadIdx.x; c < cols; c += 32)
                cuda::memcpy_async(&stage_data[s][c], &x[row * cols + c], sizeof(float), pipe);
            pipe.producer_commit();
        } else {
            pipe.consumer_wait();
            float part = 0.0f;
            for (int c = me; c < cols; c += consumers) part += stage_data[s][c];
            atomicAdd(&sums[row], part);
            pipe.consumer_release();
        }
    }
}

int main() {
    const int rows = 64;
    std::vector<float> x(rows * cols), want(rows, 0.0f);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            x[r * cols + c] = static_cast<float>((r * 31 + c * 17) % 9) - 4.0f;  // small integers: sums are exact
            want[r] += x[r * cols + c];
        }
    float *d_x, *d_sums;
    CHECK(cudaMalloc(&d_x, x.size() * sizeof(float)));
    CHECK(cudaMalloc(&d_sums, rows * sizeof(float)));
    CHECK(cudaMemcpy(d_x, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
    int wrong = 0;
    auto check = [&](const char* what) {
        CHECK(cudaGetLastError());
        std::vector<float> got(rows);
        CHECK(cudaMemcpy(got.data(), d_sums, rows * sizeof(float), cudaMemcpyDeviceToHost));
        for (int r = 0; r < rows; r++)
            if (got[r] != want[r] && wrong++ < 5)
                std::printf("%s: row %d sums to %g, expected %g\n", what, r, got[r], want[r]);
    };
    CHECK(cudaMemset(d_sums, 0, rows * sizeof(float)));
    barrier_rows_kernel<<<rows, block>>>(d_sums, d_x);
    check("cuda::barrier + memcpy_async");
    CHECK(cudaMemset(d_sums, 0, rows * sizeof(float)));
    thread_pipeline_kernel<<<2, 8>>>(d_sums, d_x, rows);
    check("thread-scope cuda::pipeline");
    CHECK(cudaMemset(d_sums, 0, rows * sizeof(float)));
    block_pipeline_kernel<<<rows / 8, block>>>(d_sums, d_x, 8);
    check("block-scope cuda::pipeline, producers and consumers");
    CHECK(cudaFree(d_x));
    CHECK(cudaFree(d_sums));
    std::printf("barrier_pipeline: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
