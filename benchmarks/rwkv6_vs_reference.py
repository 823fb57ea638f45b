"""spikelm's RWKV-6 vs the `rwkv` pip package on the same random checkpoint, timed in one run.

Prefill: one call on a prompt of --prefill tokens returning the last token's logits.
Decode: --decode single-token steps with the recurrent state carried.
On the CPU with --threads threads, the runs of the two alternating; prints the best time of
each and the ratio (reference / spikelm). ``--dtype fp32`` compares with the package's
``cpu fp32`` strategy; ``--dtype bf16`` loads ours with ``spikelm.load(..., dtype=torch.bfloat16)``
and compares with the package's ``cpu bf16``, and prints each one's bf16 last-logit error against
its own fp32 model on --error-prompts prompts. The checkpoint file is written in --file-dtype
(default: --dtype, so a bf16 comparison loads a bf16 file, as the released RWKV-6 files are). From
an fp32 file the package computes ``ln0`` of the embedding in fp32 once at load time and stores
the result in bf16, where spikelm stores the embedding in bf16 and normalises it at run time, so
there the package's first layer sees one rounding fewer.

    python benchmarks/rwkv6_vs_reference.py [--layers 6 --width 512 --vocab 65536 --threads 2 --dtype fp32]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch
from _timing import CLOCKS, add_clock_option, best_times

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _rows(name: str, T: int, last: int) -> int:
    """Rows of a product in a forward that asks for the last token's logits: the head sees one; the
    last block computes its gate and output projection on two positions and its channel mix on
    one (RWKV6's ``last_only``); everything else sees all T."""
    if name == "head" or name.startswith(f"blocks.{last}.ffn."):
        return 1
    if name in (f"blocks.{last}.att.gate", f"blocks.{last}.att.output"):
        return min(T, 2)
    return T


def matmul_floor(model, T: int, repeats: int, clock=CLOCKS["wall"]) -> float:
    """Time of the model's own matrix products alone on T tokens: every nn.Linear (on the rows a
    last-logit forward needs, see ``_rows``) and the two LoRAs. With T = 1 this is the decode
    step's products, which are bound by memory bandwidth (each weight is read once per token), timed
    as one sequence; for a prefill each product is timed on its own with its input in cache, as in
    the model (timing the whole list at once read every input from memory and overstated the floor
    by 15-30%).

    Any implementation must do these products (the package does more: its last block runs on
    every position), so reference_time / floor bounds the speed-up that any implementation of the
    rest could reach. They run as the model runs them: a prefill's through spikelm.ops.linear.linear
    (in fp32 F.linear; in bf16 on a CPU without native bf16 GEMMs the fp32 product of the bf16
    values, where the package runs oneDNN's emulated bf16 GEMM, so in bf16 the floor bounds only
    spikelm's own remaining time); a decoding step's through the compiled one-row products of its
    block step (spikelm.ops.kernels), the head through linear.
    """
    from spikelm.ops.linear import linear

    work = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            rows = _rows(name, T, len(model.blocks) - 1)
            work.append((torch.randn(rows, mod.in_features, dtype=mod.weight.dtype), mod.weight))
    for blk in model.blocks:
        att = blk.att
        dt = att.time_maa_w1.dtype
        for w1 in (att.time_maa_w1, att.time_decay_w1):
            work.append((torch.randn(T, w1.shape[0], dtype=dt), w1.t()))
        for w2 in att.time_maa_w2:  # (5, Dm, C): one product per ddlerp target
            work.append((torch.randn(T, w2.shape[0], dtype=dt), w2.t()))
        work.append((torch.randn(T, att.time_decay_w2.shape[0], dtype=dt), att.time_decay_w2.t()))
    # the head keeps the model's own memory order (the model lays it out for its matrix-vector product)
    work = [(x, w if w is model.head.weight else w.contiguous()) for x, w in work]
    if T == 1:  # decoding reads each weight once from memory: the products one after the other, as in a step
        from spikelm.ops.kernels import op

        # the blocks' products as spikelm's compiled decoding step does them (where it can be built)
        gemv = op("gemv")
        one = [(lambda x=x, w=w: gemv(x.view(-1), w)) if gemv is not None and w is not model.head.weight
               else (lambda x=x, w=w: linear(x, w)) for x, w in work]
        return best_times(lambda: [f() for f in one], repeats=repeats, warmup=False, clock=clock)[0]
    # a prefill's products are bound by arithmetic, their input just written by the operation before
    # (in cache): each timed on its own, repeated, and summed
    return sum(best_times(lambda x=x, w=w: linear(x, w), repeats=repeats, clock=clock)[0] for x, w in work)


def _errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |a - ref| / max |ref|, RMS(a - ref) / RMS(ref))."""
    d = (a - ref).double()
    r = ref.double()
    return (d.abs().max() / r.abs().max()).item(), (d.pow(2).mean().sqrt() / r.pow(2).mean().sqrt()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    add_clock_option(ap)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-jit", type=int, default=1, help="RWKV_JIT_ON for the reference (its default is 1)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                    help="weights and activations of both (the package's 'cpu fp32' or 'cpu bf16' strategy)")
    ap.add_argument("--file-dtype", choices=sorted(DTYPES), default=None,
                    help="dtype of the checkpoint file both load (default: --dtype; released RWKV-6 files are bf16)")
    ap.add_argument("--error-prompts", type=int, default=4,
                    help="prompts (of --prefill random tokens) the low-precision logit errors are measured on")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    file_dtype = DTYPES[args.file_dtype or args.dtype]

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {args.dtype}, {args.clock} time")
    clock = CLOCKS[args.clock]
    os.environ["RWKV_CUDA_ON"] = "0"
    os.environ["RWKV_JIT_ON"] = str(args.ref_jit)
    from spikelm.testing import make_rwkv6  # random, non-trivial weights in the official layout

    import spikelm
    from spikelm.checkpoints import save_official

    model = make_rwkv6(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, head_size=64, seed=0)
    with tempfile.TemporaryDirectory() as d:
        path = save_official(model, Path(d) / "bench.pth", dtype=file_dtype)
        from rwkv.model import RWKV

        ref = RWKV(model=str(path), strategy=f"cpu {args.dtype}", verbose=False)
        ours = spikelm.load(path, dtype=dtype)
        if dtype != torch.float32:  # the fp32 models the bf16 errors are measured against
            ref32 = RWKV(model=str(path), strategy="cpu fp32", verbose=False)
            ours32 = spikelm.load(path)

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prefill,), generator=g).tolist()
    x = torch.tensor([prompt])

    with torch.inference_mode():
        # correctness first: the two must agree
        a, _ = ours(x, last_only=True)
        b, _ = ref.forward(prompt, None)
        a, b = a[0, -1].float(), b.float()
        rel = ((a - b).abs().max() / b.abs().max()).item()
        if dtype != torch.float32:
            # each one's low-precision last logits against its own fp32 model, on several prompts:
            # the largest difference relative to the largest logit, and the relative RMS difference
            errs = []
            for i in range(args.error_prompts):
                p_i = prompt if i == 0 else torch.randint(0, args.vocab, (args.prefill,), generator=g).tolist()
                a_i = ours(torch.tensor([p_i]), last_only=True)[0][0, -1].float()
                a32 = ours32(torch.tensor([p_i]), last_only=True)[0][0, -1]
                b_i = ref.forward(p_i, None)[0].float()
                b32 = ref32.forward(p_i, None)[0].float()
                errs.append([_errors(a_i, a32), _errors(b_i, b32)])
            del ours32, ref32

        # both already ran once above (the correctness check): no separate warm-up
        t_ours_prefill, t_ref_prefill = best_times(
            lambda: ours(x, last_only=True), lambda: ref.forward(prompt, None), repeats=args.repeats, warmup=False, clock=clock)
        t_floor = matmul_floor(ours, args.prefill, args.repeats, clock)

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

        t_ours_dec, t_ref_dec = (t / args.decode for t in best_times(dec_ours, dec_ref, repeats=args.repeats, warmup=False,
                                                                          clock=clock))
        t_floor_dec = matmul_floor(ours, 1, args.repeats * 8, clock)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    from spikelm.ops.backend import default_backend
    from spikelm.ops.kernels import library

    print(f"spikelm's C++ kernels: {'built' if library() is not None else 'not available (tensor operations)'}; "
          f"backend {default_backend()}")
    from spikelm.ops.linear import native_low_precision

    if dtype != torch.float32:
        print(f"native {args.dtype} GEMMs on this CPU (oneDNN): {native_low_precision(dtype)}")
    if dtype != torch.float32 and not native_low_precision(dtype):
        print(f"(in {args.dtype} the floor is spikelm's own products: on a CPU without native {args.dtype} GEMMs spikelm "
              f"multiplies many rows in fp32 and the package in emulated {args.dtype}, so its 'cannot exceed' holds for fp32 only)")
    print(f"model: RWKV-6 L={args.layers} C={args.width} V={args.vocab} {args.dtype}; last-logit max rel. diff vs reference {rel:.2e}")
    if dtype != torch.float32:
        print(f"checkpoint file: {args.file_dtype or args.dtype}; {args.dtype} last-logit error against the same "
              f"implementation in fp32, on {len(errs)} prompts of {args.prefill} tokens (max |diff| / max |logit|, "
              f"RMS diff / RMS logit):")
        for i, ((om, orms), (rm, rrms)) in enumerate(errs):
            print(f"  prompt {i}: spikelm max {om:.2e} rms {orms:.2e}   rwkv package max {rm:.2e} rms {rrms:.2e}")
        mean = [sum(e[j][k] for e in errs) / len(errs) for j in (0, 1) for k in (0, 1)]
        print(f"  mean:     spikelm max {mean[0]:.2e} rms {mean[1]:.2e}   rwkv package max {mean[2]:.2e} rms {mean[3]:.2e}")
    print(f"prefill {args.prefill} tokens: spikelm {t_ours_prefill*1e3:8.1f} ms   rwkv package {t_ref_prefill*1e3:8.1f} ms   "
          f"speed-up {t_ref_prefill / t_ours_prefill:5.2f}x")
    print(f"prefill matmul floor (the model's matrix products alone): {t_floor*1e3:8.1f} ms = "
          f"{t_floor / t_ours_prefill:.0%} of spikelm's prefill; no implementation can exceed "
          f"{t_ref_prefill / t_floor:4.2f}x the rwkv package here")
    print(f"decode per token:   spikelm {t_ours_dec*1e3:8.2f} ms   rwkv package {t_ref_dec*1e3:8.2f} ms   "
          f"speed-up {t_ref_dec / t_ours_dec:5.2f}x")
    print(f"decode matmul floor (the same products for one token):  {t_floor_dec*1e3:8.2f} ms = "
          f"{t_floor_dec / t_ours_dec:.0%} of spikelm's step; no implementation can exceed "
          f"{t_ref_dec / t_floor_dec:4.2f}x the rwkv package here")


if __name__ == "__main__":
    main()
