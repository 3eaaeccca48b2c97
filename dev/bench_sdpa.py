"""PyTorch's scaled_dot_product_attention at the shapes of `bench_attention --full` (B=4, T 256..4096, head
size 64 with 12 heads and 128 with 6), causal, forward and forward+backward: the reference the attention
kernels of attention.cuh are compared with (docs/benchmarks.md). Run by dev/gpu_check.sh (make gpu-check).

FLOPs as bench_attention counts them (what the work is worth): forward 4·B·NH·T²·hs / 2 (causal),
backward 2.5× forward. fp32 runs whatever backend PyTorch picks for fp32 (not flash); bf16 runs the
flash backend, the one a real training run would use.

usage: python3 dev/bench_sdpa.py [--repeats N]
"""
import argparse

import torch
import torch.nn.functional as F


def median_ms(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row (median reported)")
    args = parser.parse_args()
    shapes = [(4, 12 if hs == 64 else 6, T, hs) for hs in (64, 128) for T in (256, 512, 1024, 2048, 4096)]
    print(f"PyTorch {torch.__version__} SDPA on {torch.cuda.get_device_name()}")
    print(f"{'op':<8} {'dtype':<9} {'shape':<26} {'time ms':>10} {'TFLOP/s':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        for B, NH, T, hs in shapes:
            q, k, v = (torch.randn(B, NH, T, hs, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
            dout = torch.randn(B, NH, T, hs, device="cuda", dtype=dtype)
            fwd_flop = 4.0 * B * NH * T * T * hs / 2
            shape = f"B{B} NH{NH} T{T} hs{hs}"

            def forward():
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def forward_backward():
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out.backward(dout)

            f = median_ms(forward, 3, args.repeats)
            fb = median_ms(forward_backward, 3, args.repeats)
            name = str(dtype).replace("torch.", "")
            print(f"{'forward':<8} {name:<9} {shape:<26} {f:>10.3f} {fwd_flop / f / 1e9:>9.2f}")
            print(f"{'fwd+bwd':<8} {name:<9} {shape:<26} {fb:>10.3f} {3.5 * fwd_flop / fb / 1e9:>9.2f}")
            del q, k, v, dout
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
