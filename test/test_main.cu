// The one doctest main for every test binary, in both builds. In the GPU build a machine without a
// usable device skips (exit 0): CI compiles and links the GPU tests but cannot run them.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <cstdio>

int main(int argc, char** argv) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        cudaGetLastError();
        std::printf("skipped: no CUDA device\n");
        return 0;
    }
    doctest::Context context(argc, argv);
    return context.run();
}
