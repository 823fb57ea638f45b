"""The WKV ops on CUDA, every implementation in one run: time of the forward and of the forward +
backward, and errors against the float64 loop; then the logit error of whole models.

Implementations (``impl`` of spikelm.ops.wkv6 / wkv7 / wkv4):

* WKV6: ``chunked_fp32`` (spikelm's float32 chunked form in PyTorch ops, the reference and the
  old CUDA path), ``fla_chunk`` and ``fla_recurrent`` (flash-linear-attention's kernels);
* WKV7: ``chunked`` (the reference and old path), ``fla_chunk``, ``fla_recurrent``;
* WKV4 (SpikeGPT, RWKV-4): ``parallel`` (the old path), ``triton`` (spikelm's fused kernels).

fla's recurrent kernels are forward-only (they serve scoring; see spikelm.ops.wkv_fla). Inputs
are made as the models make them (log-decays spread as a trained model's), in two dtypes: fp32
(what spikelm's models pass: the bf16 products' values, widened) and bf16 (what fla's own
benchmarks pass). Errors: max |x - x_ref| / max |x_ref| of the output, the final state and the
gradients of the per-sequence inputs (of a random loss of both outputs) on the first sequence,
against the float64 loop. Times: CUDA events, median of ``--repeats``, implementations alternating.

The model section: a random RWKV-6 and RWKV-7 (4 x 512, byte vocabulary), plain and converted
(spikelm-4L), scored in fp32 and in bf16 with each implementation; logit error against the same
model in float64 (the loop), relative to the largest logit, max and RMS, and how often the top
token agrees. A converted model's logits jump where rounding flips a spike, whichever
implementation rounds: compare its rows across implementations, not with the plain model's.

    python benchmarks/wkv_cuda.py [--batch 8 --ctx 2048 --heads 12 --repeats 10] [--sections ops,models]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from _gpu import pick_device, version

IMPLS = {"wkv6": ("chunked_fp32", "fla_chunk", "fla_recurrent"), "wkv7": ("chunked", "fla_chunk", "fla_recurrent"),
         "wkv4": ("parallel", "triton")}
FORWARD_ONLY = {"fla_recurrent"}



def timed(fn, dev: torch.device) -> float:
    """Seconds of one call: CUDA events on a GPU, the wall clock elsewhere (a smoke run)."""
    if dev.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3


def make_inputs(op: str, B: int, T: int, H: int, N: int, dtype: torch.dtype, dev: torch.device, seed: int = 0):
    """(per-sequence inputs, shared inputs, initial state) as the models make them."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, device=dev)  # noqa: E731
    if op == "wkv4":
        C = H * N
        w = -torch.exp(torch.rand(C, generator=g, device=dev) * 9 - 6)
        u = rnd(C) * 0.5
        k, v = rnd(B, T, C) * 3, rnd(B, T, C)
        return [k.to(dtype), v.to(dtype)], [w, u], None
    r, k, v = rnd(B, T, H, N), rnd(B, T, H, N), rnd(B, T, H, N)
    state = rnd(B, H, N, N) * 0.3
    if op == "wkv6":
        logw = -torch.exp(torch.rand(B, T, H, N, generator=g, device=dev) * 7 - 6)
        return [r.to(dtype), k.to(dtype), v.to(dtype), logw], [rnd(H, N) * 0.5], state
    logw = -0.6065 * torch.rand(B, T, H, N, generator=g, device=dev)
    kk = F.normalize(rnd(B, T, H, N), dim=-1)
    alpha = torch.rand(B, T, H, N, generator=g, device=dev)
    return [r.to(dtype), logw, k.to(dtype), v.to(dtype), -kk, kk * alpha], [], state


def call(op: str, impl: str, per: list, shared: list, state):
    from spikelm.ops.wkv4 import wkv4, wkv4_naive
    from spikelm.ops.wkv6 import wkv6, wkv6_naive
    from spikelm.ops.wkv7 import wkv7, wkv7_naive

    if op == "wkv4":  # from the empty state (the op's state is a triple, not a matrix)
        (k, v), (w, u) = per, shared
        return wkv4_naive(w, u, k, v) if impl == "naive" else wkv4(w, u, k, v, impl=impl)
    if op == "wkv6":
        r, k, v, logw = per
        fn = wkv6_naive if impl == "naive" else (lambda *a: wkv6(*a, impl=impl))
        return fn(r, k, v, logw, shared[0], state)
    r, logw, k, v, a, b = per
    fn = wkv7_naive if impl == "naive" else (lambda *a: wkv7(*a, impl=impl))
    return fn(r, k, v, logw, a, b, state)


def _parts(s) -> list[torch.Tensor]:
    """A state as a list of tensors (WKV4's is the triple aa, bb, pp; the others one matrix)."""
    return list(s) if isinstance(s, (tuple, list)) else [s]


def _first(s) -> list[torch.Tensor]:
    return [t[:1] for t in _parts(s)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def ops_section(args: argparse.Namespace, dev: torch.device) -> None:
    B, T, H, N = args.batch, args.ctx, args.heads, args.head_size
    for op in ("wkv6", "wkv7", "wkv4"):
        T_op = args.ctx4 if op == "wkv4" else T
        for dname in args.dtypes.split(","):
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
            per, shared, state = make_inputs(op, B, T_op, H, N, dtype, dev)
            shape = f"B={B} T={T_op} C={H * N}" if op == "wkv4" else f"B={B} T={T_op} H={H} N={N}"
            print(f"\n{op.upper()} {shape}, inputs {dname} (log-decays, a, b fp32), initial state "
                  f"{'none' if state is None else 'random'}")
            # the float64 reference on the first sequence: output, state, gradients of its inputs
            ref_in = [t[:1].double().detach().requires_grad_() for t in per]
            ref_sh = [t.double() for t in shared]
            ref_state = state[:1].double() if state is not None else None
            y0, s0 = call(op, "naive", ref_in, ref_sh, ref_state)
            s0 = _parts(s0)
            g = torch.Generator(device=dev).manual_seed(1)
            wy = torch.randn(y0.shape, generator=g, device=dev, dtype=torch.float64)
            ws = [torch.randn(t.shape, generator=g, device=dev, dtype=torch.float64) for t in s0]

            def loss_of(y, s):  # a random loss of both outputs (the state's weight small: WKV4's pp is an exponent)
                return (y.double() * wy).sum() + 1e-3 * sum((t.double() * w).sum() for t, w in zip(s, ws))

            grads0 = torch.autograd.grad(loss_of(y0, s0), ref_in)
            runs = {}
            for impl in IMPLS[op]:
                try:
                    with torch.no_grad():
                        y, s = call(op, impl, per, shared, state)
                    ey, es = rel(y[:1], y0), max(rel(a, b) for a, b in zip(_first(s), s0))
                    eg = None
                    if impl not in FORWARD_ONLY:
                        leaves = [t.detach().requires_grad_() for t in per]
                        y, s = call(op, impl, leaves, shared, state)
                        gr = torch.autograd.grad(loss_of(y[:1], _first(s)), leaves)
                        eg = max(rel(a[:1], b) for a, b in zip(gr, grads0))
                except Exception as e:  # an fla version whose API differs, a kernel that fails here: say so, go on
                    print(f"  {impl:14s} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    continue
                runs[impl] = {"ey": ey, "es": es, "eg": eg, "fwd": [], "both": [], "dtype": str(y.dtype).split(".")[-1]}
            if not runs:
                continue
            leaves = {impl: [t.detach().requires_grad_() for t in per] for impl in runs}
            dys = {}

            def fwd(impl):
                with torch.no_grad():
                    call(op, impl, per, shared, state)

            def both(impl):
                y, _ = call(op, impl, leaves[impl], shared, state)
                if impl not in dys:
                    dys[impl] = torch.randn_like(y)
                y.backward(dys[impl])

            for impl in runs:  # warm-up: compile and autotune every kernel first
                fwd(impl)
                if impl not in FORWARD_ONLY:
                    both(impl)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            for _ in range(args.repeats):
                for impl in runs:
                    runs[impl]["fwd"].append(timed(lambda: fwd(impl), dev))
                    if impl not in FORWARD_ONLY:
                        runs[impl]["both"].append(timed(lambda: both(impl), dev))
            base = IMPLS[op][0]
            for impl, r in runs.items():
                f = statistics.median(r["fwd"])
                b = statistics.median(r["both"]) if r["both"] else None
                eg = "   (forward only)  " if r["eg"] is None else f"grads {r['eg']:.2e}"
                line = (f"  {impl:14s} error vs float64: output {r['ey']:.2e}, final state {r['es']:.2e}, {eg}   "
                        f"forward {1e3 * f:8.2f} ms")
                line += f"   forward+backward {1e3 * b:8.2f} ms" if b is not None else ""
                if impl != base and base in runs:
                    fb = statistics.median(runs[base]["fwd"])
                    line += f"   speed-up vs {base}: forward {fb / f:5.1f}x"
                    if b is not None and runs[base]["both"]:
                        line += f", forward+backward {statistics.median(runs[base]['both']) / b:5.1f}x"
                print(line, flush=True)


def models_section(args: argparse.Namespace, dev: torch.device) -> None:
    from spikelm.checkpoints import build_model
    from spikelm.convert import convert, preset_config
    from spikelm.testing import randomize_rwkv6

    print(f"\nModels: random {args.model_layers} x {args.model_embd}, byte vocabulary, {args.model_ctx} tokens; "
          "logit error against the same model in float64 (the loop), relative to the largest |logit|")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 257, (1, args.model_ctx), generator=g)
    calib = [torch.randint(0, 257, (2, 64), generator=g) for _ in range(2)]
    for kind in ("rwkv6", "rwkv7"):
        cfg = {"kind": kind, "vocab_size": 257, "n_layer": args.model_layers, "n_embd": args.model_embd,
               "tokenizer": "bytes", "head_size": 64}
        base = build_model(cfg).init_weights(0)
        with torch.no_grad():
            if kind == "rwkv6":
                randomize_rwkv6(base, 0)
            else:  # the scratch init zeros the output projections: every WKV must reach the logits
                for p in base.parameters():
                    if p.abs().max() == 0:
                        p.normal_(0.0, 0.05, generator=g)
        for variant in ("plain", "converted"):
            m = build_model(cfg)
            m.load_state_dict(base.state_dict())
            if variant == "converted":
                convert(m, preset_config("spikelm-4L"), calib)
            m = m.eval()
            ref_impl = "chunked_fp32" if kind == "rwkv6" else "chunked"
            with torch.no_grad():
                m.double().to(dev)
                m.wkv_impl = "naive"
                ref, _ = m(x.to(dev))
                ref = ref.double()
                for dname, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    m.to(dt)
                    errs = []
                    for impl in (ref_impl, "fla_chunk", "fla_recurrent"):
                        m.wkv_impl = impl
                        try:
                            out, _ = m(x.to(dev))
                        except Exception as e:
                            errs.append(f"{impl} failed ({type(e).__name__})")
                            continue
                        d = out.double() - ref
                        top1 = float((out.argmax(-1) == ref.argmax(-1)).double().mean())
                        errs.append(f"{impl} {float(d.abs().max() / ref.abs().max()):.2e} / "
                                    f"{float(d.square().mean().sqrt() / ref.abs().max()):.2e} / {100 * top1:.1f}%")
                    print(f"  {kind} {variant:9s} {dname}: logit error (max / rms / top-1 agreement): " + ";  ".join(errs),
                          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=2048, help="T of WKV6 and WKV7")
    ap.add_argument("--ctx4", type=int, default=1024, help="T of WKV4 (SpikeGPT's context)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sections", default="ops,models")
    ap.add_argument("--model-layers", type=int, default=4)
    ap.add_argument("--model-embd", type=int, default=512)
    ap.add_argument("--model-ctx", type=int, default=512)
    ap.add_argument("--device", default="cuda", help="cuda (the point of this benchmark) or cpu (a smoke run of the script)")
    args = ap.parse_args()
    dev, where = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the errors are fp32's, not TF32's
    print(f"{where}, torch {torch.__version__}, triton {version('triton')}, fla-core {version('fla-core')}; "
          f"TF32 matmuls off; median of {args.repeats}, implementations alternating")
    sections = args.sections.split(",")
    if "ops" in sections:
        ops_section(args, dev)
    if "models" in sections:
        models_section(args, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
