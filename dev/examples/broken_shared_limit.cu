// broken_shared_limit.cu — a kernel that asks for more shared memory than a block may have without
// opting in: 32 KB of static `__shared__` memory plus 32 KB of dynamic (extern __shared__) memory is
// over the 48 KB default. nvcc compiles it (each part alone is legal); on a GPU the launch fails with
// cudaErrorInvalidValue, and a program that does not check the error computes nothing. cudasim counts
// both kinds and stops:
//
//   dev/cudarun dev/examples/broken_shared_limit.cu
//   cudasim: kernel 'two_buffer_kernel' uses 32768 bytes of static __shared__ memory + 32768 bytes of dynamic:
//   over the 49152 bytes a block may have without cudaFuncSetAttribute(...) ...
//
// The fix: cudaFuncSetAttribute(two_buffer_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 32768)
// before the launch (allowed up to 227 KB in all on sm_80/sm_90), or smaller tiles.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

constexpr int block_size = 256, tile = 8192;  // floats: 32 KB

// out[i] = in[i] + in[n-1-i], staged through a static and a dynamic shared buffer.
__global__ void two_buffer_kernel(float* out, const float* in, int n) {  // out, in: (n)
    __shared__ float forward[tile];
    extern __shared__ float backward[];  // tile floats, sized at the launch
    for (int j = threadIdx.x; j < tile; j += blockDim.x) {
        forward[j] = j < n ? in[j] : 0.0f;
        backward[j] = j < n ? in[n - 1 - j] : 0.0f;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n && j < tile; j += blockDim.x) out[j] = forward[j] + backward[j];
}

int main() {
    const int n = 1000;
    std::vector<float> in(n), out(n);
    for (int i = 0; i < n; i++) in[i] = static_cast<float>(i);
    float *d_in, *d_out;
    cudaMalloc(&d_in, n * sizeof(float));
    cudaMalloc(&d_out, n * sizeof(float));
    cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    two_buffer_kernel<<<1, block_size, tile * sizeof(float)>>>(d_out, d_in, n);  // the bug: no opt-in
    cudaError_t err = cudaGetLastError();
    cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost);
    bool pass = err == cudaSuccess;
    for (int i = 0; i < n; i++) pass = pass && out[i] == static_cast<float>(n - 1);
    std::printf("broken_shared_limit: %s (%s)\n", pass ? "PASS" : "FAIL", cudaGetErrorString(err));
    cudaFree(d_in);
    cudaFree(d_out);
    return pass ? 0 : 1;
}
