"""spikelm's RWKV-6 vs the `rwkv` pip package on the same random checkpoint, timed in one run.

Prefill: one call on a prompt of --prefill tokens returning the last token's logits.
Decode: --decode single-token steps with the recurrent state carried.
Both in fp32 on the CPU with --threads threads. Prints times and ratios (reference / spikelm).

    python benchmarks/rwkv6_vs_reference.py [--layers 6 --width 512 --vocab 65536 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-jit", type=int, default=1, help="RWKV_JIT_ON for the reference (its default is 1)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ["RWKV_JIT_ON"] = str(args.ref_jit)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_rwkv6  # random, non-trivial weights in the official layout

    import spikelm
    from spikelm.checkpoint import save_official

    model = make_rwkv6(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, head_size=64, seed=0)
    with tempfile.TemporaryDirectory() as d:
        path = save_official(model, Path(d) / "bench.pth")
        from rwkv.model import RWKV

        ref = RWKV(model=str(path), strategy="cpu fp32", verbose=False)
        ours = spikelm.load(path)

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prefill,), generator=g).tolist()
    x = torch.tensor([prompt])

    with torch.inference_mode():
        # correctness first: the two must agree
        a, _ = ours(x, last_only=True)
        b, _ = ref.forward(prompt, None)
        rel = ((a[0, -1] - b).abs().max() / b.abs().max()).item()

        t_ours_prefill = best_of(lambda: ours(x, last_only=True), args.repeats)
        t_ref_prefill = best_of(lambda: ref.forward(prompt, None), args.repeats)

        _, st = ours(x[:, :16])
        _, rst = ref.forward(prompt[:16], None)

        def dec_ours():
            s = [tuple(t.clone() for t in layer) for layer in st]
            for t in prompt[: args.decode]:
                _, s = ours(torch.tensor([[t]]), s, last_only=True)

        def dec_ref():
            s = [t.clone() for t in rst]
            for t in prompt[: args.decode]:
                _, s = ref.forward([t], s)

        t_ours_dec = best_of(dec_ours, args.repeats) / args.decode
        t_ref_dec = best_of(dec_ref, args.repeats) / args.decode

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"model: RWKV-6 L={args.layers} C={args.width} V={args.vocab} fp32; last-logit max rel. diff vs reference {rel:.2e}")
    print(f"prefill {args.prefill} tokens: spikelm {t_ours_prefill*1e3:8.1f} ms   rwkv package {t_ref_prefill*1e3:8.1f} ms   "
          f"speed-up {t_ref_prefill / t_ours_prefill:5.2f}x")
    print(f"decode per token:   spikelm {t_ours_dec*1e3:8.2f} ms   rwkv package {t_ref_dec*1e3:8.2f} ms   "
          f"speed-up {t_ref_dec / t_ours_dec:5.2f}x")


if __name__ == "__main__":
    main()
