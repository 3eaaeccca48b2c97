// device_query.cu — picking and describing a device the way the CUDA samples do (their helper_cuda.h's
// findCudaDevice / gpuGetMaxGflopsDeviceId): the compute mode, compute capability, multiprocessor count
// and clock rate from cudaDeviceGetAttribute, the cores per SM from the architecture, and the same
// properties again from cudaGetDeviceProperties, which must agree; then peer access and the default memory
// pool's access, as multi-GPU samples query them. Self-checking: prints PASS or FAIL, exits 1 on failure.
//
//   on the CPU:  dev/cudarun dev/examples/device_query.cu
//   on a GPU:    nvcc -O2 -o device_query dev/examples/device_query.cu && ./device_query
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

// fp32 cores per SM of each architecture (the samples' _ConvertSMVer2Cores, for the ones in use)
static int cores_per_sm(int major, int minor) {
    if (major == 7) return 64;
    if (major == 8) return minor == 0 ? 64 : 128;
    if (major == 9 || major >= 10) return 128;
    return 64;
}

// The device with the most fp32 GFLOP/s among those not prohibited, as findCudaDevice chooses.
static int find_cuda_device() {
    int count = 0, best = -1;
    double best_rate = -1;
    CHECK(cudaGetDeviceCount(&count));
    for (int d = 0; d < count; d++) {
        int mode, major, minor, sms, khz;
        CHECK(cudaDeviceGetAttribute(&mode, cudaDevAttrComputeMode, d));
        CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d));
        CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d));
        CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d));
        CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, d));
        if (mode == cudaComputeModeProhibited) continue;
        double rate = 2.0 * sms * cores_per_sm(major, minor) * khz * 1e-6;  // GFLOP/s: an FMA is 2 FLOP
        std::printf("device %d: compute capability %d.%d, %d SMs at %.0f MHz: %.0f GFLOP/s fp32\n", d, major, minor,
                    sms, khz / 1e3, rate);
        if (rate > best_rate) {
            best_rate = rate;
            best = d;
        }
    }
    if (best < 0) {
        std::printf("no usable device\n");
        std::exit(1);
    }
    CHECK(cudaSetDevice(best));
    return best;
}

int main() {
    int dev = find_cuda_device();
    cudaDeviceProp p;
    CHECK(cudaGetDeviceProperties(&p, dev));
    std::printf("using device %d: %s, %.1f GB, %d KB L2, %zu KB shared memory per block (%zu KB opt-in)\n", dev, p.name,
                p.totalGlobalMem / 1e9, p.l2CacheSize / 1024, p.sharedMemPerBlock / 1024,
                p.sharedMemPerBlockOptin / 1024);
    struct {
        cudaDeviceAttr attr;
        long long from_props;
        const char* name;
    } same[] = {
        {cudaDevAttrComputeCapabilityMajor, p.major, "major"},
        {cudaDevAttrComputeCapabilityMinor, p.minor, "minor"},
        {cudaDevAttrMultiProcessorCount, p.multiProcessorCount, "multiProcessorCount"},
        {cudaDevAttrMaxThreadsPerBlock, p.maxThreadsPerBlock, "maxThreadsPerBlock"},
        {cudaDevAttrMaxThreadsPerMultiProcessor, p.maxThreadsPerMultiProcessor, "maxThreadsPerMultiProcessor"},
        {cudaDevAttrMaxBlocksPerMultiprocessor, p.maxBlocksPerMultiProcessor, "maxBlocksPerMultiProcessor"},
        {cudaDevAttrWarpSize, p.warpSize, "warpSize"},
        {cudaDevAttrMaxSharedMemoryPerBlock, static_cast<long long>(p.sharedMemPerBlock), "sharedMemPerBlock"},
        {cudaDevAttrMaxSharedMemoryPerBlockOptin, static_cast<long long>(p.sharedMemPerBlockOptin),
         "sharedMemPerBlockOptin"},
        {cudaDevAttrMaxSharedMemoryPerMultiprocessor, static_cast<long long>(p.sharedMemPerMultiprocessor),
         "sharedMemPerMultiprocessor"},
        {cudaDevAttrMaxRegistersPerBlock, p.regsPerBlock, "regsPerBlock"},
        {cudaDevAttrL2CacheSize, p.l2CacheSize, "l2CacheSize"},
        {cudaDevAttrGlobalMemoryBusWidth, p.memoryBusWidth, "memoryBusWidth"},
        {cudaDevAttrMaxBlockDimZ, p.maxThreadsDim[2], "maxThreadsDim[2]"},
        {cudaDevAttrMaxGridDimX, p.maxGridSize[0], "maxGridSize[0]"},
        {cudaDevAttrCanMapHostMemory, p.canMapHostMemory, "canMapHostMemory"},
        {cudaDevAttrManagedMemory, p.managedMemory, "managedMemory"},
        {cudaDevAttrCooperativeLaunch, p.cooperativeLaunch, "cooperativeLaunch"},
    };
    int wrong = 0;
    for (const auto& s : same) {
        int v = 0;
        CHECK(cudaDeviceGetAttribute(&v, s.attr, dev));
        if (v != s.from_props) {
            std::printf("cudaDeviceGetAttribute says %s = %d, cudaGetDeviceProperties says %lld\n", s.name, v,
                        s.from_props);
            wrong++;
        }
    }
    // Peer access to itself is refused on every GPU (a multi-GPU program must pick another device); the device's
    // own memory pool is read-write for it, and stays so.
    if (cudaDeviceEnablePeerAccess(dev, 0) != cudaErrorInvalidDevice) {
        std::printf("cudaDeviceEnablePeerAccess to the device itself did not fail with cudaErrorInvalidDevice\n");
        wrong++;
    }
    (void)cudaGetLastError();  // the error above is expected: clear it
    cudaMemPool_t pool;
    CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    cudaMemLocation own = {};
    own.type = cudaMemLocationTypeDevice;
    own.id = dev;
    cudaMemAccessDesc rw = {};
    rw.location = own;
    rw.flags = cudaMemAccessFlagsProtReadWrite;
    CHECK(cudaMemPoolSetAccess(pool, &rw, 1));
    cudaMemAccessFlags flags;
    CHECK(cudaMemPoolGetAccess(&flags, pool, &own));
    if (flags != cudaMemAccessFlagsProtReadWrite) {
        std::printf("the default pool is not read-write for its own device\n");
        wrong++;
    }
    if (p.sharedMemPerBlockOptin < p.sharedMemPerBlock || p.maxThreadsPerMultiProcessor < p.maxThreadsPerBlock) {
        std::printf("inconsistent limits\n");
        wrong++;
    }
    std::printf("device_query: %s\n", wrong ? "FAIL" : "PASS");
    return wrong ? 1 : 0;
}
