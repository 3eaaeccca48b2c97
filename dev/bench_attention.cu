// bench_attention — naive (materialised T×T, cuBLAS) vs fused (FlashAttention-2 style, fp32) vs fused on tensor
// cores (bf16 wmma, AttentionBackend::wmma) causal attention, forward and backward: median time, TFLOP/s with the
// causal FLOP count, the floor, and the extra memory each path needs beyond its inputs and outputs.
//
//   build/cpu/dev/bench_attention            small shapes (the CPU build: seconds)
//   build/gpu/dev/bench_attention --full     B=4, T 256..4096, hs 64 (NH 12) and hs 128 (NH 6)
//
// FLOPs (causal, what the work is worth, not what a kernel happens to do): forward 4·B·NH·T²·hs / 2
// (two matmuls over the lower triangle), backward 2.5× that (five matmuls). The naive path computes
// the full T×T products, so its real FLOPs are about twice these: the table shows useful work per second.
// Floor: for naive and fused, the GPU's fp32 FMA peak (SMs × fp32 lanes per SM × 2 × clock): they run in fp32 on
// CUDA cores (no TF32, no tensor cores). For the wmma rows, the dense bf16 tensor-core peak with fp32 accumulation
// (SMs × bf16 FLOP per SM per clock × clock: 2048 on sm_80, A100's 312 TFLOP/s at 1.41 GHz; 4096 on sm_90,
// H100 SXM's 989 TFLOP/s at 1.83 GHz; other GPUs "n/a"). On the emulator there is no meaningful floor ("n/a").
#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "attention.cuh"
#include "dev/bench_util.h"

namespace {

struct Device {
    std::string name;
    bool emulated = false;
    double peak_fp32_tflops = 0;  // 0: unknown
    double peak_bf16_tflops = 0;  // dense bf16 tensor cores, fp32 accumulate; 0: unknown
    size_t l2_bytes = 0;
};

Device describe_device() {
    cudaDeviceProp p;
    cuda_check(cudaGetDeviceProperties(&p, 0));
    Device d;
    d.name = p.name;
    d.l2_bytes = p.l2CacheSize;
    std::string name;
    d.emulated = !have_real_gpu(name);  // the CPU build's virtual device (an A100's numbers, not this CPU's)
    if (d.emulated) d.l2_bytes = 0;     // no L2 to flush
    if (!d.emulated) {
        int clock_khz = 0;
        cuda_check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
        int lanes = (p.major == 8 && p.minor == 0) ? 64 : 128;  // fp32 lanes per SM: A100 64; sm_86/89/90 128
        d.peak_fp32_tflops = 2.0 * p.multiProcessorCount * lanes * clock_khz * 1e3 / 1e12;
        int tensor_flop = p.major == 8 && p.minor == 0 ? 2048 : p.major == 9 ? 4096 : 0;  // per SM per clock
        d.peak_bf16_tflops = static_cast<double>(p.multiProcessorCount) * tensor_flop * clock_khz * 1e3 / 1e12;
    }
    return d;
}


struct Shape {
    int B, NH, T, hs;
};

}  // namespace

int main(int argc, char** argv) {
    bool full = false;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--full") == 0) full = true;
        else {
            std::fprintf(stderr,
                         "usage: %s [--full]\n  --full  GPU shapes (B=4, T 256..4096, hs 64 and 128); default: small "
                         "shapes for the CPU build\n",
                         argv[0]);
            return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    try {
        Device dev = describe_device();
        std::vector<Shape> shapes;
        if (full) {
            for (int hs : {64, 128})
                for (int T : {256, 512, 1024, 2048, 4096}) shapes.push_back({4, hs == 64 ? 12 : 6, T, hs});
        } else {
            for (int hs : {64, 128})
                for (int T : {64, 256, 1024}) shapes.push_back({1, 2, T, hs});
        }
        int warmup = full ? 3 : 1, repeats = full ? 20 : 3;
        DeviceBuffer<unsigned char> flush(dev.l2_bytes * 2);

        std::printf("attention benchmark on %s%s\n", dev.name.c_str(),
                    full ? "" : " (small shapes; --full for GPU sizes)");
        if (dev.peak_fp32_tflops > 0) std::printf("fp32 floor: %.1f TFLOP/s (CUDA cores, FMA)\n", dev.peak_fp32_tflops);
        if (dev.peak_bf16_tflops > 0)
            std::printf("bf16 floor (wmma rows): %.1f TFLOP/s (tensor cores, dense, fp32 accumulate)\n",
                        dev.peak_bf16_tflops);
        std::printf("%-8s %-5s %-26s %10s %9s %8s %14s\n", "op", "path", "shape", "time ms", "TFLOP/s", "% floor",
                    "extra mem MiB");
        Rng rng(4);
        for (const Shape& s : shapes) {
            int NKV = s.NH, W = (s.NH + 2 * NKV) * s.hs;
            size_t n_qkv = static_cast<size_t>(s.B) * s.T * W, n_out = static_cast<size_t>(s.B) * s.T * s.NH * s.hs;
            size_t n_att = static_cast<size_t>(s.B) * s.NH * s.T * s.T;
            std::vector<float> host(n_qkv);
            for (auto& x : host) x = rng.uniform(-1.0f, 1.0f);
            DeviceBuffer<float> qkv(n_qkv), dqkv(n_qkv), out(n_out), dout(n_out);
            DeviceBuffer<float> lse(static_cast<size_t>(s.B) * s.NH * s.T);
            std::vector<float> hx(host.begin(), host.end());
            qkv.upload(hx);
            dout.upload(std::vector<float>(hx.begin(), hx.begin() + static_cast<long>(n_out)));
            cuda_check(cudaMemset(dqkv, 0, dqkv.bytes()));
            double fwd_flop = 4.0 * s.B * s.NH * static_cast<double>(s.T) * s.T * s.hs / 2, bwd_flop = 2.5 * fwd_flop;
            char shape[64];
            std::snprintf(shape, sizeof shape, "B%d NH%d T%d hs%d", s.B, s.NH, s.T, s.hs);
            auto row = [&](const char* op, const char* path, double ms, double flop, double mib) {
                double tflops = flop / (ms * 1e-3) / 1e12;
                double peak = std::strcmp(path, "wmma") == 0 ? dev.peak_bf16_tflops : dev.peak_fp32_tflops;
                char pct[16] = "n/a";
                if (peak > 0) std::snprintf(pct, sizeof pct, "%.1f", 100 * tflops / peak);
                std::printf("%-8s %-5s %-26s %10.3f %9.4f %8s %14.1f\n", op, path, shape, ms, tflops, pct, mib);
            };
            const double MiB = 1024.0 * 1024.0;
            {  // naive: the caller's att and datt (B, NH, T, T), plus its workspace
                attention_workspace_release();
                DeviceBuffer<float> att(n_att), datt(n_att);
                double f = median_ms(
                    [&] { attention_forward_naive(out.ptr, att.ptr, qkv.ptr, s.B, s.T, s.NH, NKV, s.hs, nullptr); },
                    warmup, repeats, flush);
                double b = median_ms(
                    [&] {
                        attention_backward_naive(dqkv.ptr, datt.ptr, dout.ptr, att.ptr, qkv.ptr, s.B, s.T, s.NH, NKV,
                                                 s.hs, nullptr);
                    },
                    warmup, repeats, flush);
                double mem = (att.bytes() + datt.bytes() + attention_workspace_bytes()) / MiB;
                row("forward", "naive", f, fwd_flop, mem);
                row("backward", "naive", b, bwd_flop, mem);
            }
            {  // fused: lse (B, NH, T) plus its workspace (D and partial dQ)
                attention_workspace_release();
                double f =
                    median_ms([&] { attention_forward(out.ptr, lse.ptr, qkv.ptr, s.B, s.T, s.NH, NKV, s.hs, nullptr); },
                              warmup, repeats, flush);
                double b = median_ms(
                    [&] {
                        attention_backward(dqkv.ptr, dout.ptr, out.ptr, lse.ptr, qkv.ptr, s.B, s.T, s.NH, NKV, s.hs,
                                           nullptr);
                    },
                    warmup, repeats, flush);
                double mem = (lse.bytes() + attention_workspace_bytes()) / MiB;
                row("forward", "fused", f, fwd_flop, mem);
                row("backward", "fused", b, bwd_flop, mem);
            }
            {  // fused on tensor cores: the same lse and workspace
                attention_workspace_release();
                set_attention_backend(AttentionBackend::wmma);
                double f =
                    median_ms([&] { attention_forward(out.ptr, lse.ptr, qkv.ptr, s.B, s.T, s.NH, NKV, s.hs, nullptr); },
                              warmup, repeats, flush);
                double b = median_ms(
                    [&] {
                        attention_backward(dqkv.ptr, dout.ptr, out.ptr, lse.ptr, qkv.ptr, s.B, s.T, s.NH, NKV, s.hs,
                                           nullptr);
                    },
                    warmup, repeats, flush);
                set_attention_backend(AttentionBackend::flash);
                double mem = (lse.bytes() + attention_workspace_bytes()) / MiB;
                row("forward", "wmma", f, fwd_flop, mem);
                row("backward", "wmma", b, bwd_flop, mem);
            }
        }
        attention_workspace_release();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_attention: %s\n", e.what());
        return 1;
    }
    return 0;
}
