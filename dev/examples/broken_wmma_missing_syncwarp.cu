// broken_wmma_missing_syncwarp.cu — a tensor-core tile whose lanes read each other's results too early. One
// warp computes D = A·B for a 16×16 tile with wmma, stores the accumulator to shared memory with
// store_matrix_sync, and then every lane reads a whole row of D from there to add a bias. But a fragment's
// layout is unspecified: the row a lane reads was stored by other lanes, and store_matrix_sync is no barrier
// between lanes. Without a __syncwarp() after the store, a lane may read before the others have written: on a
// GPU that usually works (the warp's stores happen together), and breaks when the compiler moves a load ahead.
// The CPU build runs each lane on to its next collective, so lane 0 reads the NaN-poisoned shared memory lane 1
// has not written yet, and the race check names both lines (the store's is inside <mma.h>):
//
//   dev/cudarun dev/examples/broken_wmma_missing_syncwarp.cu               # FAIL (NaN)
//   dev/cudarun --racecheck dev/examples/broken_wmma_missing_syncwarp.cu
//   cudasim: race (write after read) on shared memory in kernel 'tile_bias_kernel' block (0,0,0): thread (1,0,0)
//   writes `stage` at byte offset 32 at dev/shadow/mma.h:NN, and thread (0,0,0) read it at
//   dev/examples/broken_wmma_missing_syncwarp.cu:43, with no __syncthreads between them (nor a __syncwarp ...
//
// The fix is the __syncwarp() the comment in the kernel shows (-DFIXED adds it).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <vector>

using namespace nvcuda;

// d = A·B + bias (row-major 16×16 everything, A and B bf16; one warp).
__global__ void tile_bias_kernel(float* d, const __nv_bfloat16* a, const __nv_bfloat16* b, const float* bias) {
    __shared__ __align__(32) float stage[16 * 16];
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(stage, acc, 16, wmma::mem_row_major);
#ifdef FIXED
    __syncwarp();  // the fix: every lane's stores are done before any lane reads
#endif
    int lane = threadIdx.x;
    if (lane < 16)  // lane r adds the bias to row r
        for (int c = 0; c < 16; c++) d[lane * 16 + c] = stage[lane * 16 + c] + bias[c];
}

int main() {
    std::vector<__nv_bfloat16> a(256), b(256);
    std::vector<float> bias(16), d(256);
    for (int i = 0; i < 256; i++)
        a[i] = __float2bfloat16(static_cast<float>(i % 5) - 2), b[i] = __float2bfloat16(i / 16 == i % 16 ? 1.0f : 0.0f);
    for (int c = 0; c < 16; c++) bias[c] = 0.5f * c;
    __nv_bfloat16 *d_a, *d_b;
    float *d_bias, *d_d;
    cudaMalloc(&d_a, 256 * sizeof(__nv_bfloat16));
    cudaMalloc(&d_b, 256 * sizeof(__nv_bfloat16));
    cudaMalloc(&d_bias, 16 * sizeof(float));
    cudaMalloc(&d_d, 256 * sizeof(float));
    cudaMemcpy(d_a, a.data(), 256 * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice);
    cudaMemcpy(d_b, b.data(), 256 * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice);
    cudaMemcpy(d_bias, bias.data(), 16 * sizeof(float), cudaMemcpyHostToDevice);
    tile_bias_kernel<<<1, 32>>>(d_d, d_a, d_b, d_bias);
    cudaMemcpy(d.data(), d_d, 256 * sizeof(float), cudaMemcpyDeviceToHost);
    int wrong = 0;
    for (int i = 0; i < 256; i++) {  // B is the identity: D = A + bias
        float want = static_cast<float>(i % 5) - 2 + bias[i % 16];
        if (!(d[i] == want)) wrong++;
    }
    if (wrong) std::printf("tile_bias: %d of 256 elements wrong (a lane read the tile before it was stored)\n", wrong);
    std::printf("broken_wmma_missing_syncwarp: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
