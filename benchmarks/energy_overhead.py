"""Overhead of the energy counters: time spent inside their hooks / time of the model itself.

The counters read each encoder's integer levels at its observation point and count them outside
the model; this measures what that costs, median of --runs forward passes, in one run. A second
figure takes the whole forward pass: with the counter attached (attached once, outside the
timing) against without, the two alternated, median of --runs each. It also holds what the hook
timer cannot see: the hooks' dispatch and what they do to the caches the model uses.

    python benchmarks/energy_overhead.py [--width 512 --layers 4 --sites time_mix --preset SpikeRWKV-4L]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _timing import CLOCKS, add_clock_option


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sites", default="time_mix", help="time_mix, all, or ann (no conversion)")
    ap.add_argument("--preset", default="SpikeRWKV-4L")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    add_clock_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}, "
          f"{args.clock} time; one untimed forward with and without the counter first (the kernels' load, first calls)")
    clock = CLOCKS[args.clock]
    from spikelm.testing import make_rwkv6

    from spikelm.convert import convert, preset_config
    from spikelm.energy import EnergyCounter
    from spikelm.energy import counters as K

    g = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 257, (1, 128), generator=g) for _ in range(2)]
    model = make_rwkv6(n_layer=args.layers, n_embd=args.width, head_size=64, vocab_size=257)
    if args.sites != "ann":
        convert(model, preset_config(args.preset, args.sites), calib)
    x = torch.randint(0, 257, (1, args.tokens), generator=g)

    with torch.no_grad():  # one-off costs out of the timings
        model(x)
        with EnergyCounter(model):
            model(x)
    spent = [0.0]
    pre, post = K.EnergyCounter._pre, K.EnergyCounter._post

    def timed(fn):
        def wrapper(*a):
            t0 = clock()
            fn(*a)
            spent[0] += clock() - t0
        return wrapper

    K.EnergyCounter._pre = lambda self, mod, fn: pre(self, mod, timed(fn))
    K.EnergyCounter._post = lambda self, mod, fn: post(self, mod, timed(fn))
    ratios = []
    for _ in range(args.runs):
        spent[0] = 0.0
        t0 = clock()
        with torch.no_grad(), EnergyCounter(model):
            model(x)
        total = clock() - t0
        ratios.append(spent[0] / (total - spent[0]))
    K.EnergyCounter._pre, K.EnergyCounter._post = pre, post
    bare, counted = [], []
    ec = EnergyCounter(model)
    with torch.no_grad():
        for _ in range(args.runs):
            t0 = clock()
            model(x)
            bare.append(clock() - t0)
            ec.attach()
            t0 = clock()
            model(x)
            counted.append(clock() - t0)
            ec.detach()
    b, c = statistics.median(bare), statistics.median(counted)
    print(f"threads={torch.get_num_threads()} dtype=fp32 C={args.width} L={args.layers} sites={args.sites} "
          f"preset={args.preset} tokens={args.tokens}: "
          f"hook time / model time = {100 * statistics.median(ratios):.1f}% (median of {args.runs}); "
          f"whole forward {1e3 * c:.1f} ms counted vs {1e3 * b:.1f} ms bare = +{100 * (c / b - 1):.1f}% (medians, alternated)")


if __name__ == "__main__":
    main()
