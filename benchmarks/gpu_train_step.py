"""Training step speed on a GPU: RWKV-6 and SpikeGPT, and SpikeGPT's LIF scan as the PyTorch loop
against the fused Triton kernels, measured in one run.

Each model runs the same step as the trainer (``spikelm.train``): forward under bf16 autocast
(``--dtype``), the blockwise fp32 cross-entropy (``spikelm.ops.cross_entropy``), backward, gradient
clipping and AdamW, on random byte-level tokens. Timed with CUDA events after ``--warmup`` steps,
median of ``--steps``. Printed: tokens/s, milliseconds per step and peak allocated memory, and the
ratio of the two SpikeGPT scan backends.

    python benchmarks/gpu_train_step.py [--layers 12 --embd 768 --ctx 1024 --batch 8]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def build(kind: str, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if kind == "rwkv6":
        from spikelm.config import RWKV6Config
        from spikelm.models.rwkv6 import RWKV6

        cfg = RWKV6Config(vocab_size=257, n_layer=args.layers, n_embd=args.embd, head_size=64, tokenizer="bytes")
        return RWKV6(cfg).init_weights(0).to(device)
    from spikelm.models.spikegpt import SpikeGPT, SpikeGPTConfig

    cfg = SpikeGPTConfig(vocab_size=257, n_layer=args.layers, n_embd=args.embd, ctx_len=args.ctx)
    return SpikeGPT(cfg).init_weights(0).to(device)


def time_steps(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    from spikelm.ops.cross_entropy import cross_entropy_fp32

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 257, (args.batch, args.ctx + 1), generator=g).to(device)
    amp = DTYPES[args.dtype]
    times = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits, _ = model(x[:, :-1])
        loss = cross_entropy_fp32(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            end.record()
            end.synchronize()
        if i >= args.warmup:
            times.append(start.elapsed_time(end) / 1e3 if cuda else time.perf_counter() - t0)
    return statistics.median(times), torch.cuda.max_memory_allocated(device) if cuda else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--models", default="rwkv6,spikegpt:auto,spikegpt:torch",
                    help="comma-separated: rwkv6, spikegpt:auto (Triton scan where available), spikegpt:torch (PyTorch loop)")
    ap.add_argument("--device", default="cuda", help="cuda (the point of this benchmark) or cpu (a smoke run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu for a smoke run)", file=sys.stderr)
        return 2
    from spikelm.spiking.neurons import set_scan_backend

    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "absent"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}, triton {triton}, autocast {args.dtype}, "
          f"TF32 matmuls {torch.backends.cuda.matmul.allow_tf32}")
    print(f"{args.layers} layers x C={args.embd}, byte-level, batch {args.batch} x ctx {args.ctx} "
          f"({args.batch * args.ctx:,} tokens per step), median of {args.steps} steps after {args.warmup}")
    tokens = args.batch * args.ctx
    seconds = {}
    for spec in args.models.split(","):
        kind, _, backend = spec.partition(":")
        model = build(kind, args, device)
        if backend:
            set_scan_backend(model, backend)
        n = sum(p.numel() for p in model.parameters())
        s, peak = time_steps(model, args, device)
        seconds[spec] = s
        print(f"{spec:16s} {n / 1e6:7.1f}M params  {1e3 * s:9.1f} ms/step  {tokens / s:12,.0f} tokens/s  "
              f"peak {peak / 2**30:6.2f} GiB", flush=True)
        del model
        torch.cuda.empty_cache()
    if "spikegpt:auto" in seconds and "spikegpt:torch" in seconds:
        print(f"SpikeGPT step, Triton scan vs PyTorch loop: {seconds['spikegpt:torch'] / seconds['spikegpt:auto']:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
