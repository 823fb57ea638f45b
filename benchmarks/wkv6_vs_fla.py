"""spikelm's WKV6 on CUDA against flash-linear-attention's Triton kernels (``fla.ops.rwkv6``),
same inputs, one run: accuracy against a float64 reference, and time of the forward and of the
forward + backward.

spikelm's CUDA path is ``wkv6`` (the float32 chunked form in PyTorch ops, autograd backward);
fla's is ``chunk_rwkv6`` (fused Triton kernels). Inputs as in bf16 training: r, k, v in bf16,
log-decays in float32. Accuracy: max |y - y_ref| / max |y_ref| of each against
``wkv6_naive`` in float64 on the first sequence. Times: CUDA events, median of --repeats after
warm-up. fla is optional (``pip install flash-linear-attention``); without it only spikelm runs.

    python benchmarks/wkv6_vs_fla.py [--batch 8 --ctx 2048 --heads 12]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys

import torch


def cuda_time(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from spikelm.ops.wkv6 import wkv6, wkv6_naive

    try:
        from fla.ops.rwkv6 import chunk_rwkv6

        fla = importlib.metadata.version("fla-core")
    except ImportError:
        chunk_rwkv6, fla = None, "absent"
    B, T, H, N = args.batch, args.ctx, args.heads, args.head_size
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, flash-linear-attention (fla-core) {fla}")
    print(f"B={B} T={T} H={H} N={N}: r, k, v bf16, log-decays float32, state float32")
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    r, k, v = (torch.randn(B, T, H, N, generator=g, device=dev).bfloat16().requires_grad_() for _ in range(3))
    # log-decays -exp(d) with d as a trained RWKV-6 spreads them: from about -e^-6 to -e^1
    logw = (-torch.exp(torch.rand(B, T, H, N, generator=g, device=dev) * 7 - 6)).requires_grad_()
    u = (torch.randn(H, N, generator=g, device=dev) * 0.5).requires_grad_()

    impls = {"spikelm wkv6": lambda: wkv6(r, k, v, logw, u)}
    if chunk_rwkv6 is not None:
        impls["fla chunk_rwkv6"] = lambda: chunk_rwkv6(r, k, v, logw, u, scale=1.0, output_final_state=True)

    with torch.no_grad():
        ref, ref_s = wkv6_naive(*(t[:1].double() for t in (r, k, v, logw)), u.double())
        for name, fn in list(impls.items()):
            try:
                y, s = fn()
            except Exception as e:  # an fla version whose API or dtype rules differ: say so, go on
                print(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}")
                del impls[name]
                continue
            ey = ((y[:1].double() - ref).abs().max() / ref.abs().max()).item()
            es = ((s[:1].double() - ref_s).abs().max() / ref_s.abs().max()).item()
            print(f"{name:16s} error vs float64: output {ey:.2e}, final state {es:.2e} (output dtype {y.dtype})")
    dy = torch.randn(B, T, H, N, generator=g, device=dev)
    times = {}
    for name, fn in impls.items():
        with torch.no_grad():
            fwd = cuda_time(fn, args.repeats)

        def step(fn=fn):
            y, _ = fn()
            y.backward(dy.to(y.dtype))

        both = cuda_time(step, args.repeats)
        times[name] = (fwd, both)
        print(f"{name:16s} forward {1e3 * fwd:8.2f} ms   forward+backward {1e3 * both:8.2f} ms", flush=True)
    if len(times) == 2:
        (f0, b0), (f1, b1) = times.values()
        print(f"fla / spikelm time: forward {f1 / f0:.2f}, forward+backward {b1 / b0:.2f} (below 1: fla is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
