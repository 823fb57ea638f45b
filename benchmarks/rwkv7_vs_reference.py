"""spikelm's RWKV-7 vs the `rwkv` pip package's RWKV-7 on the same random x070 checkpoint, timed
in one run.

Prefill: one call on a prompt of --prefill tokens returning the last token's logits.
Decode: --decode single-token steps with the recurrent state carried.
On the CPU with --threads threads, in each --dtypes (fp32: strategy "cpu fp32"; bf16: "cpu bf16"
against spikelm loaded in bf16); the runs of the two alternate; prints the best time of each and
the ratio (reference / spikelm). --chunks times spikelm's prefill with other WKV7 chunk sizes.

The package picks its RWKV generation when it is first imported: RWKV_V7_ON=1 is set here before
the import, so run this script in its own interpreter (not after anything imported rwkv in RWKV-6
mode).

    python benchmarks/rwkv7_vs_reference.py [--layers 6 --width 512 --vocab 65536 --threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
from _timing import best_times

os.environ["RWKV_V7_ON"] = "1"  # before any import of rwkv
os.environ["RWKV_CUDA_ON"] = "0"

import spikelm  # noqa: E402
import spikelm.models.rwkv7 as rwkv7_module  # noqa: E402
from spikelm.config import RWKV7Config  # noqa: E402
from spikelm.models.rwkv7 import RWKV7  # noqa: E402
from spikelm.ops.wkv7 import wkv7  # noqa: E402


def random_rwkv7(n_layer: int, n_embd: int, vocab: int, seed: int = 0) -> RWKV7:
    """Random, non-trivial weights (the scratch init zeros several tensors), every exponent sane."""
    model = RWKV7(RWKV7Config(n_layer=n_layer, n_embd=n_embd, head_size=64, vocab_size=vocab))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1] if not name.endswith(".weight") else name.rsplit(".", 2)[-2]
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif leaf.startswith("ln") or leaf == "ln_x":
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            elif leaf.startswith("x_") or leaf in ("k_k", "k_a"):
                p.copy_(torch.rand(p.shape, generator=g))
            elif leaf == "w0":
                p.copy_(torch.rand(p.shape, generator=g) * 8 - 4)
            elif leaf in ("a0", "v0"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif leaf in ("w1", "a1", "v1", "g1"):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[0] ** -0.5)
            elif leaf in ("w2", "a2", "v2", "g2"):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[0] ** -0.5)
            elif leaf == "r_k":
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif leaf == "emb":
                p.copy_(torch.randn(p.shape, generator=g))
            else:  # the linear layers and the head
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return model.eval()


def set_chunk(chunk: int) -> None:
    """spikelm's model calls wkv7 with the default chunk size; route it through another one."""
    rwkv7_module.wkv7 = functools.partial(wkv7, chunk_size=chunk)


def run(args, path: Path, dtype: str) -> None:
    from rwkv.model import RWKV  # RWKV_V7_ON=1 is already set (top of this file)

    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    ref = RWKV(model=str(path.with_suffix("")), strategy=f"cpu {dtype}")
    ours = spikelm.load(path, dtype=tdt)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prefill,), generator=g).tolist()
    x = torch.tensor([prompt])
    with torch.inference_mode():
        a, _ = ours(x, last_only=True)  # correctness first: the two must agree
        b, _ = ref.forward(prompt, None)
        a, b = a[0, -1].float(), b.float()
        rel = ((a - b).abs().max() / b.abs().max()).item()
        t_ours, t_ref = best_times(lambda: ours(x, last_only=True), lambda: ref.forward(prompt, None),
                                   repeats=args.repeats, warmup=False)

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

        t_ours_dec, t_ref_dec = (t / args.decode for t in best_times(dec_ours, dec_ref, repeats=args.repeats, warmup=False))
        chunk_times = {}
        if args.chunks:
            fns = []
            for c in args.chunks:
                def f(c=c):
                    set_chunk(c)
                    ours(x, last_only=True)
                fns.append(f)
            chunk_times = dict(zip(args.chunks, best_times(*fns, repeats=args.repeats, warmup=False)))
            set_chunk(8)
    print(f"{dtype}: last-logit max rel. diff vs reference {rel:.2e}")
    print(f"  prefill {args.prefill} tokens: spikelm {t_ours*1e3:8.1f} ms   rwkv package {t_ref*1e3:8.1f} ms   "
          f"speed-up {t_ref / t_ours:5.2f}x")
    print(f"  decode per token:   spikelm {t_ours_dec*1e3:8.2f} ms   rwkv package {t_ref_dec*1e3:8.2f} ms   "
          f"speed-up {t_ref_dec / t_ours_dec:5.2f}x")
    if chunk_times:
        print("  spikelm prefill by WKV7 chunk size: " + ", ".join(f"L={c}: {t*1e3:.1f} ms" for c, t in chunk_times.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--chunks", default="", help="comma-separated WKV7 chunk sizes to time spikelm's prefill with")
    ap.add_argument("--ref-jit", type=int, default=1, help="RWKV_JIT_ON for the reference (its default is 1)")
    args = ap.parse_args()
    args.chunks = [int(c) for c in args.chunks.split(",") if c]
    if "rwkv" in sys.modules or "rwkv.model" in sys.modules:
        raise SystemExit("rwkv was imported before RWKV_V7_ON was set; run this script in a fresh interpreter")
    os.environ["RWKV_JIT_ON"] = str(args.ref_jit)
    torch.set_num_threads(args.threads)

    model = random_rwkv7(args.layers, args.width, args.vocab)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"model: RWKV-7 L={args.layers} C={args.width} V={args.vocab} (head size 64); WKV7 chunk size 8 unless stated")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.pth"
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        for dtype in args.dtypes.split(","):
            run(args, path, dtype)


if __name__ == "__main__":
    main()
