"""torch.compile (inductor) against spikelm's C++ kernels on the CPU, each path timed in one run.

For the RWKV-6 block (one block of the rwkv6_vs_reference shape: C=512, 8 heads of 64, F=1792)
in fp32 and bf16, one decoding step and a --prefill-token prefill, batch 1, no gradient:

  torch            the tensor operations (WKV: wkv6_step for one token, the chunked form else)
  compile          torch.compile of the block on those tensor operations
  compile+kernels  torch.compile of the block, with the C++ WKV recurrence and one-row products
                   as custom ops inside the graph (their fake implementations let it trace)
  cpp              the C++ paths (backend "cpp"): the block step (decode); the C++ WKV recurrence
                   between the tensor operations (prefill)
  cpp-ops          decode only: the C++ ops without the block step (the modules' forward)

then each op on its own against its tensor operations, eager and compiled: the WKV6 recurrence
(wkv6.cpp), the one-row products (products.cpp), spike decoding over T > 1 steps (no C++ kernel
since the comparison recorded in docs/results.md) and the level histogram (spikes.cpp). Every contender of a row runs in alternation with the others (best of --repeats,
after one untimed call); compile times (the first call, wall time) are printed apart and never
included.

    python benchmarks/cpu_paths.py [--threads 1 --clock cpu --repeats 20 --prefill 512 --only block|ops]

On a machine shared with other work, one thread and the CPU-time clock (the default) measure what
each path costs without the time spent waiting for a core; on a quiet machine, ``--threads 2
--clock wall`` measures what a user waits.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _timing import CLOCKS, add_clock_option, best_times

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _compiled(fn, label, compile_times):
    """fn (which runs something under torch.compile), its first call timed apart."""
    t0 = time.perf_counter()
    fn()
    compile_times[label] = time.perf_counter() - t0
    return fn


CLOCK = CLOCKS["cpu"]


def _row(name, contenders, repeats):
    names = list(contenders)
    times = best_times(*contenders.values(), repeats=repeats, warmup=True, clock=CLOCK)
    base = dict(zip(names, times))
    ref = base.get("torch", times[0])
    cells = "  ".join(f"{n} {t * 1e3:8.3f}" for n, t in zip(names, times))
    best = min(base, key=base.get)
    print(f"{name:<34} {cells}   (ms; best: {best}; torch/best {ref / base[best]:.2f}x)", flush=True)
    return base


# The block's contenders: the backend of each op (spikelm.ops.backend), "*" for the others.
BLOCK_PATHS = {
    "torch": "torch",
    "compile": {"rwkv6_block": "compile", "*": "torch"},
    "compile+kernels": {"rwkv6_block": "compile", "wkv6": "cpp", "gemv": "cpp", "*": "torch"},
    "cpp": "cpp",
    "cpp-ops": {"rwkv6_block": "torch", "*": "cpp"},
}


def block_rows(args, compile_times):
    from spikelm.ops import set_backend
    from spikelm.testing import make_rwkv6

    results = {}
    for dname, dtype in DTYPES.items():
        model = make_rwkv6(n_layer=1, n_embd=args.width, vocab_size=256, head_size=64, seed=0).to(dtype)
        g = torch.Generator().manual_seed(0)
        C = args.width
        for shape, T in (("decode", 1), (f"prefill {args.prefill}", args.prefill)):
            x = torch.randn(1, T, C, generator=g).to(dtype)
            state = [t.clone() for t in model.initial_state(1)[0]]
            state[0] = torch.randn(1, C, generator=g).to(dtype)
            state[2] = torch.randn(1, C, generator=g).to(dtype)
            state = tuple(state)
            names = [n for n in BLOCK_PATHS if T == 1 or n != "cpp-ops"]
            cont = {}
            for name in names:
                blk = set_backend(copy.deepcopy(model.blocks[0]), BLOCK_PATHS[name])

                def fwd(blk=blk):
                    with torch.no_grad():
                        return blk(x, state)

                cont[name] = _compiled(fwd, f"block {dname} {shape} {name}", compile_times) if "compile" in name else fwd
            # the paths agree (within float rounding of the block's arithmetic)
            ref = cont["torch"]()[0].float()
            for n, f in cont.items():
                err = ((f()[0].float() - ref).abs().max() / ref.abs().max()).item()
                assert err < (5e-2 if dtype == torch.bfloat16 else 1e-4), (n, err)
            results[(dname, shape)] = _row(f"block {dname} {shape}", cont, args.repeats)
            torch._dynamo.reset()
    return results


def _by_backend(f, label, compile_times, backends=("torch", "compile", "cpp")):
    """{backend: f(backend)} for the op's backends, the compiled one's first call timed apart."""
    return {b: (_compiled(lambda b=b: f(b), f"{label} compile", compile_times) if b == "compile" else (lambda b=b: f(b)))
            for b in backends}


def op_rows(args, compile_times):
    from spikelm.ops import kernels
    from spikelm.ops.linear import baddbmm, linear
    from spikelm.ops.spikes import decode_steps, level_histogram
    from spikelm.ops.wkv6 import wkv6
    from spikelm.spiking.encoding import mhse_a_max

    lib = kernels.library()
    g = torch.Generator().manual_seed(1)
    H, N = args.width // 64, 64
    results = {}
    # --- WKV6 (wkv6.cpp): the recurrence against the step (decode) and the chunked form (prefill)
    for T in (1, args.prefill):
        r, k, v = (torch.randn(1, T, H, N, generator=g) for _ in range(3))
        logw = -torch.exp(torch.rand(1, T, H, N, generator=g) * 7 - 6)
        u, s0 = torch.randn(H, N, generator=g) * 0.5, torch.randn(1, H, N, N, generator=g)
        with torch.no_grad():
            cont = _by_backend(lambda b, r=r, k=k, v=v, logw=logw, s0=s0: wkv6(r, k, v, logw, u, s0, backend=b),
                               f"wkv6 T={T}", compile_times)
            results[("wkv6", T)] = _row(f"wkv6 fp32 T={T} H={H} N={N}", cont, args.repeats)
        torch._dynamo.reset()
    # --- one-row products (products.cpp): x @ W.T in the model's shapes (the head last), and the LoRA's x @ B
    C, Fh = args.width, int(3.5 * args.width) // 32 * 32
    for dname, dtype in DTYPES.items():
        for O, I in ((C, C), (Fh, C), (C, Fh), (65536, C)):
            x, w = torch.randn(1, I, generator=g).to(dtype), (torch.randn(O, I, generator=g) / I**0.5).to(dtype)
            cont = _by_backend(lambda b, x=x, w=w: linear(x, w, backend=b), f"gemv {dname} {O}x{I}", compile_times,
                               ("torch", "cpp"))
            cont["compile"] = _compiled(torch.compile(lambda x=x, w=w: torch.nn.functional.linear(x, w)),
                                        f"gemv {dname} {O}x{I} compile", compile_times)
            if dtype == torch.float32:  # linear keeps torch's product in float32: the kernel called directly
                cont["cpp"] = lambda x=x, w=w: lib.gemv(x.view(-1), w)
            results[("gemv", dname, O, I)] = _row(f"one row {dname} x @ W.T W {O}x{I}", cont, args.repeats)
            torch._dynamo.reset()
        Dm = 32
        for G, I, O in ((1, C, 5 * Dm), (5, Dm, C), (1, C, 64), (1, 64, C)):
            x, b_ = torch.randn(G, 1, I, generator=g).to(dtype), torch.randn(G, I, O, generator=g).to(dtype) * 0.1
            cont = _by_backend(lambda b, x=x, b_=b_: baddbmm(None, x, b_, backend=b), f"gemv_t {dname} {G}x{I}x{O}",
                               compile_times, ("torch", "cpp"))
            cont["compile"] = _compiled(torch.compile(lambda x=x, b_=b_: torch.bmm(x, b_)),
                                        f"gemv_t {dname} {G}x{I}x{O} compile", compile_times)
            if dtype == torch.float32:
                cont["cpp"] = lambda x=x, b_=b_: lib.gemv_t(x.view(-1), b_)
            results[("gemv_t", dname, G, I, O)] = _row(f"one row {dname} x @ B  B {G}x{I}x{O}", cont, args.repeats)
            torch._dynamo.reset()
    # --- spike decoding over T > 1 steps (spikes.cpp, mhse_decode): the general path's tensor operations
    rows, C = args.prefill, args.width
    for dname, dtype in DTYPES.items():
        x = (torch.randn(rows, C, generator=g) * 2).to(dtype)
        scale = torch.rand(C, generator=g) + 0.5
        s64 = scale.double()
        for T, layers in ((4, 1), (4, 4)):
            a_max = mhse_a_max(layers, 2.0, 1)
            cont = _by_backend(lambda b, x=x, T=T, layers=layers, a_max=a_max:
                               decode_steps(x, scale, s64, T, layers, 1, False, a_max, backend=b),
                               f"mhse_decode {dname} T={T} l={layers}", compile_times, ("torch", "compile"))
            results[("mhse", dname, T, layers)] = _row(f"mhse_decode {dname} {rows}x{C} T={T} l={layers}", cont,
                                                        args.repeats)
            torch._dynamo.reset()
    # --- the level histogram (spikes.cpp, level_histogram) against the counter's tensor operations
    layers = 4
    x = torch.randn(rows, C, generator=g) * 2
    unit = torch.tensor([0.15])
    q = (x.abs() / unit).clamp(max=2**layers - 1).floor()

    def hist_twin():
        code = (q + 2**layers * (x < 0)).to(torch.int64).view(-1)
        counts = torch.bincount(code, minlength=2 ** (layers + 1))
        clipped = ((q == 2**layers - 1) & (x.abs() / unit > 2**layers - 1)).sum()
        return counts, clipped

    cont = {"torch": hist_twin, "compile": _compiled(torch.compile(hist_twin), "level_histogram compile", compile_times),
            "cpp": lambda: level_histogram(q, x, unit, layers, backend="cpp")}
    results[("hist",)] = _row(f"level_histogram fp32 {rows}x{C} l={layers}", cont, args.repeats)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    add_clock_option(ap, default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--only", choices=("block", "ops"), default=None)
    args = ap.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    import spikelm.ops.spikes  # noqa: F401 (every module the rows use, loaded before the first row)
    import spikelm.spiking.encoding  # noqa: F401
    from spikelm.ops import kernels
    from spikelm.ops.linear import native_low_precision

    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtypes fp32 and bf16, batch 1, "
          f"C={args.width}, prefill {args.prefill} tokens; best of {args.repeats} ({args.clock} time), contenders alternating")
    files = sorted(kernels.CSRC.glob("*.[ch]*"))
    lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)
    print(f"C++ kernels: {'built' if kernels.library() is not None else 'NOT AVAILABLE'}, {lines} lines in "
          f"{len(files)} files ({', '.join(f.name for f in files)}); "
          f"native bf16 GEMMs (oneDNN): {native_low_precision(torch.bfloat16)}")
    if kernels.library() is None:
        raise SystemExit("the C++ kernels could not be built here (see the logged warning): nothing to compare")
    compile_times: dict[str, float] = {}
    if args.only in (None, "block"):
        block_rows(args, compile_times)
    if args.only in (None, "ops"):
        op_rows(args, compile_times)
    print("torch.compile's first call (tracing + inductor, not in the times above): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in compile_times.items()))


if __name__ == "__main__":
    main()
