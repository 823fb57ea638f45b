"""Cost of the spiking forward: closed form and simulation vs the dense (ANN) forward, one run.

The converted model computes the same linear layers on the decoded spike values, so its extra
cost is the encoding itself. Prints milliseconds per forward and the ratios to the dense model.
Each converted model is timed in alternation with the dense one (dense, spiking, dense, ...), the
best of --repeats each, so that a slow phase of a shared machine cannot favour either side.

    python benchmarks/spiking_forward.py [--layers 6 --width 512 --tokens 256 --threads 2]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _timing import CLOCKS, add_clock_option, best_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=257)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    add_clock_option(ap)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sim-tokens", type=int, default=32, help="tokens for the (slow) simulation timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}, "
          f"{args.clock} time")
    clock = CLOCKS[args.clock]
    from spikelm.testing import make_rwkv6

    from spikelm.convert import PRESETS, convert, preset_config, set_method

    ann = make_rwkv6(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, head_size=64, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=g)
    xs = x[:, : args.sim_tokens]
    calib = [torch.randint(0, args.vocab, (2, 64), generator=g) for _ in range(2)]

    print(f"RWKV-6 L={args.layers} C={args.width}, batch {args.batch} x {args.tokens} tokens, fp32, {args.threads} threads")
    print(f"{'model':28s} {'dense ms':>9s} {'spiking ms':>10s} {'x dense':>8s}   "
          f"{'sim: dense ms':>13s} {'sim ms':>8s} {'x dense':>8s}   (sim on {args.sim_tokens} tokens)")
    for name in PRESETS:
        for sites in ("time_mix", "all"):
            m = copy.deepcopy(ann)
            convert(m, preset_config(name, sites), calib)
            with torch.inference_mode():
                td, t = best_times(lambda: ann(x), lambda: m(x), repeats=args.repeats, clock=clock)
                set_method(m, "sim")
                tds, ts = best_times(lambda: ann(xs), lambda: m(xs), repeats=max(1, args.repeats // 2), clock=clock)
            print(f"{name + ' [' + sites + ']':28s} {td*1e3:9.1f} {t*1e3:10.1f} {t/td:8.2f}   "
                  f"{tds*1e3:13.1f} {ts*1e3:8.1f} {ts/tds:8.2f}")

if __name__ == "__main__":
    main()
