// broken_host_pointer.cu — a launch that passes the host vector's pointer instead of the device copy.
// In the CPU build both are ordinary memory, so the kernel would read the right numbers; on a GPU the
// kernel reads an address that is not device memory (an illegal-address error, or garbage). cudasim
// refuses such an argument at the launch:
//
//   dev/cudarun dev/examples/broken_host_pointer.cu
//   cudasim: kernel 'scale_kernel' argument 2 is 0x..., a host pointer (stack, malloc or std::vector memory,
//   not from cudaMalloc): a GPU kernel cannot read it ...
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

// out[i] = a · in[i], one thread per element.
__global__ void scale_kernel(float* out, const float* in, float a, int n) {  // out, in: (n)
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * in[i];
}

int main() {
    const int n = 1000, block = 256;
    std::vector<float> in(n, 2.0f), out(n);
    float *d_in, *d_out;
    cudaMalloc(&d_in, n * sizeof(float));
    cudaMalloc(&d_out, n * sizeof(float));
    cudaMemcpy(d_in, in.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    scale_kernel<<<(n + block - 1) / block, block>>>(d_out, in.data(), 3.0f, n);  // the bug: d_in
    cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost);
    bool pass = true;
    for (int i = 0; i < n; i++) pass = pass && out[i] == 6.0f;
    std::printf("broken_host_pointer: %s\n", pass ? "PASS" : "FAIL");
    cudaFree(d_in);
    cudaFree(d_out);
    return pass ? 0 : 1;
}
