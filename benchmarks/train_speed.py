"""Training speed on CPU: tokens/s of spikelm's trainer for a 6-layer, C=256 byte-level RWKV-6.

Run: ``python benchmarks/train_speed.py [--threads 2] [--steps 6]``. It runs the real training
loop (:func:`spikelm.train.train`: AdamW, clipping, fp32 on CPU) on a synthetic text in a
temporary cache, so it needs no prepared corpus; the token content does not affect speed. Each
step is timed by the trainer (``log_every=1``; the first step, which warms up allocators, is left
out). Reported: the best step (the one least disturbed by other load on the machine) and the
median, and, measured in the same run, the tokens/s of a forward pass without gradients at the
same batch shape, so the ratio training / inference is a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_text(n_bytes: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "of", "and", "a", "to", "in", "is", "was", "that", "for", "river", "model", "spike", "time"]
    out, size = [], 0
    while size < n_bytes:
        w = words[rng.integers(len(words))]
        out.append(w + ("\n" if rng.random() < 0.05 else " "))
        size += len(w) + 1
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (plus one warm-up step)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}")

    from spikelm.runargs import TrainArgs
    from spikelm.train import train

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "synthetic.txt"
        text.write_text(synthetic_text(2_000_000))
        os.environ["SPIKELM_CACHE"] = str(Path(tmp) / "cache")
        targs = TrainArgs(
            model={"kind": "rwkv6", "n_layer": args.layers, "n_embd": args.embd, "head_size": args.head_size},
            data=f"text:{text}", tokenizer="bytes", ctx_len=args.ctx, batch_size=args.batch,
            max_steps=args.steps + 1, warmup_steps=1, eval_every=0, eval_batches=1, log_every=1,
            device="cpu", precision="fp32", out_dir=str(Path(tmp) / "run"),
        )
        result = train(targs, progress=False)
        rates = [r["tokens_per_s"] for r in result.history[1:]]

        from spikelm.checkpoints import load, n_params

        model = load(result.final_path)
        x = torch.randint(0, 256, (args.batch, args.ctx))
        times = []
        with torch.no_grad():
            model(x)
            for _ in range(3):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        infer = args.batch * args.ctx / min(times)

    best, median = max(rates), statistics.median(rates)
    print(f"RWKV-6 {args.layers} x {args.embd} (head size {args.head_size}, {n_params(model) / 1e6:.2f}M parameters), "
          f"byte-level, batch {args.batch} x ctx {args.ctx}, fp32, {args.threads} CPU threads, torch {torch.__version__}")
    print(f"training:  {best:8,.0f} tokens/s best step, {median:8,.0f} median over {len(rates)} steps "
          f"({args.batch * args.ctx / best:.2f} s per step of {args.batch * args.ctx:,} tokens)")
    print(f"inference: {infer:8,.0f} tokens/s (forward only, no gradients, same batch shape)")
    print(f"training costs {infer / best:.1f}x the time of inference per token")


if __name__ == "__main__":
    main()
