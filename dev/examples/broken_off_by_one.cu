// broken_off_by_one.cu — a kernel whose bounds check is off by one (`i <= n`), so the thread with
// i == n writes one float past the end of the output allocation. Nothing visible happens on a GPU
// (usually), nor in the CPU build without checks; dev/cudarun checks every kernel access and stops:
//
//   dev/cudarun dev/examples/broken_off_by_one.cu
//   cudasim: out of bounds: kernel 'scale_kernel' block (3,0,0) thread (232,0,0) writes 4 bytes at 0x...,
//   0 bytes past the end of a 4000-byte cudaMalloc allocation [...); at dev/examples/broken_off_by_one.cu:NN
//
// and so does AddressSanitizer, with the CUDA thread:
//
//   dev/cudarun --asan dev/examples/broken_off_by_one.cu
//   cudasim: the access below was made by kernel 'scale_kernel', block (3,0,0), thread (232,0,0)
//   ==...==ERROR: AddressSanitizer: heap-buffer-overflow on address ... WRITE of size 4 ...
//       #0 ... in scale_kernel(float*, float const*, float, int) dev/examples/broken_off_by_one.cu:NN
//
// (On a GPU, compute-sanitizer finds the same write: compute-sanitizer ./broken_off_by_one.)
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

// out[i] = a · in[i], one thread per element.
__global__ void scale_kernel(float* out, const float* in, float a, int n) {  // out, in: (n)
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = a * in[i < n ? i : n - 1];  // the bug: `i <= n` should be `i < n`
}

int main() {
    const int n = 1000, block = 256;  // 4 blocks of 256 threads: threads i = 1000..1023 exist
    std::vector<float> in(n, 2.0f), out(n);
    float *d_in, *d_out;
    cudaMalloc(&d_in, n * sizeof(float));
    cudaMalloc(&d_out, n * sizeof(float));
    cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    scale_kernel<<<(n + block - 1) / block, block>>>(d_out, d_in, 3.0f, n);
    cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost);
    bool pass = true;
    for (int i = 0; i < n; i++) pass = pass && out[i] == 6.0f;
    std::printf("broken_off_by_one: %s\n", pass ? "PASS" : "FAIL");
    cudaFree(d_in);
    cudaFree(d_out);
    return pass ? 0 : 1;
}
