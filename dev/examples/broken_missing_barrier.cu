// broken_missing_barrier.cu — a kernel with a race: a __syncthreads() is missing between writing a
// shared-memory tile and reading a neighbour's element of it. Run it twice:
//
//   dev/cudarun dev/examples/broken_missing_barrier.cu                   # PASS: the bug hides
//   dev/cudarun --order reverse dev/examples/broken_missing_barrier.cu   # FAIL: NaN from unwritten shared memory
//
// Under the default (forward) order, cudasim runs thread t-1 before thread t, so the element thread t
// reads is already written, just as it usually is on a GPU within a warp. Under --order reverse,
// thread t runs first and reads shared memory nobody has written yet, which cudasim fills with NaN at
// the start of every block: the result is NaN. (The fix is the commented-out barrier.) This is why
// gpt.cu's tests run every kernel under both orders (for_each_thread_order in test/test_util.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

constexpr int block_size = 256;

// Adjacent difference: out[i] = in[i] - in[i-1] (in[-1] taken as 0). Each input is loaded into shared
// memory once; thread t reads its own element tile[t+1] and its left neighbour tile[t], which thread
// t-1 loaded (thread 0 also loads the element left of the block into tile[0]).
__global__ void adjacent_difference_kernel(float* out, const float* in, int n) {  // out, in: (n)
    __shared__ float tile[block_size + 1];
    int t = threadIdx.x, i = blockIdx.x * block_size + t;
    if (i < n) tile[t + 1] = in[i];
    if (t == 0) tile[0] = i > 0 ? in[i - 1] : 0.0f;
    // __syncthreads();   <- missing: tile[t] is written by another thread
    if (i < n) out[i] = tile[t + 1] - tile[t];
}

int main() {
    const int n = 10000;
    std::vector<float> in(n), out(n);
    for (int i = 0; i < n; i++) in[i] = static_cast<float>(i % 97) * 0.25f;
    float *d_in, *d_out;
    cudaMalloc(&d_in, n * sizeof(float));
    cudaMalloc(&d_out, n * sizeof(float));
    cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    adjacent_difference_kernel<<<(n + block_size - 1) / block_size, block_size>>>(d_out, d_in, n);
    cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost);
    int wrong = 0, first = -1;
    for (int i = 0; i < n; i++) {
        float want = in[i] - (i > 0 ? in[i - 1] : 0.0f);
        if (!(out[i] == want) && wrong++ == 0) first = i;  // !(==) so that NaN counts as wrong
    }
    if (wrong)
        std::printf("broken_missing_barrier: %d of %d wrong, first out[%d] = %g: FAIL\n", wrong, n, first, out[first]);
    else std::printf("broken_missing_barrier: PASS\n");
    return wrong ? 1 : 0;
}
