"""SpikeGPT generation speed: spikelm vs the public SpikeGPT run code, one random release checkpoint.

    python benchmarks/spikegpt_release_speed.py /path/to/SpikeGPT [--layers 12 --width 512 --vocab 77
                                                                   --prompt 64 --decode 64 --threads 1]

``/path/to/SpikeGPT`` is a work tree of https://github.com/ridgerchu/SpikeGPT; its
``src/model_run.py`` (``RWKV_RNN``, what its ``run.py`` runs) is imported from there unchanged,
with ``FLOAT_MODE = "fp32"`` and ``RUN_DEVICE = "cpu"``. spikelm loads the same ``.pth`` with
:func:`~spikelm.checkpoints.spikegpt.load_spikegpt` (the run code's rules: binary embedding
for V = 77 only, rescaling every 6 blocks), so both compute the same logits (checked first).

Measured in one run, the contenders alternating (``_timing.best_times``), best of --repeats:

* prompt: the run code feeds a prompt one token at a time (it has no parallel form); spikelm
  reads it in one call.
* generation: --decode single-token steps with the state carried (the tokens are fixed, not
  sampled, so both do identical work); tokens/s.

Prints the threads and dtype used. Never imports tests/ (its conftest pins torch to one thread).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import sys
import tempfile
import types
from pathlib import Path

import torch
from _timing import best_times

from spikelm.checkpoints.spikegpt import load_spikegpt


def random_release_state_dict(V: int, L: int, C: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights in SpikeGPT's release layout; output projections with gain 8 so that the
    LIF neurons fire (the timing of a silent network would flatter nobody, but be less realistic)."""
    g = torch.Generator().manual_seed(seed)

    def mat(rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * gain / math.sqrt(cols)

    sd = {"emb.weight": torch.randn(V, C, generator=g)}
    lns = ["blocks.0.ln0"] + [f"blocks.{i}.{n}" for i in range(L) for n in ("ln1", "ln2")] + ["ln_out"]
    for name in lns:
        sd[name + ".weight"], sd[name + ".bias"] = 1 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g)
    for i in range(L):
        b = f"blocks.{i}."
        sd[b + "att.time_decay"] = torch.rand(C, generator=g) * 4 - 3
        sd[b + "att.time_first"] = 0.5 * torch.randn(C, generator=g)
        for m in ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k", "ffn.time_mix_r"):
            sd[b + m] = torch.rand(1, 1, C, generator=g)
        for m in ("att.key", "att.value", "att.receptance", "ffn.receptance"):
            sd[b + m + ".weight"] = mat(C, C)
        sd[b + "att.output.weight"] = mat(C, C, gain=8.0)
        sd[b + "ffn.key.weight"] = mat(4 * C, C)
        sd[b + "ffn.value.weight"] = mat(C, 4 * C, gain=8.0)
    sd["head.weight"] = mat(V, C)
    return sd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spikegpt", help="path of a SpikeGPT work tree (ridgerchu/SpikeGPT)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=77, help="77: the binary-embedding branch; any other: real-valued")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtype = torch.float32  # the run code's FLOAT_MODE "fp32", the one it recommends on a CPU
    os.environ.setdefault("RWKV_JIT_ON", "0")  # model_run.py reads (prints) it at import; its JIT is commented out
    os.environ.setdefault("RWKV_RUN_DEVICE", "cpu")
    sys.path.insert(0, str(Path(args.spikegpt).resolve()))
    with contextlib.redirect_stdout(io.StringIO()):
        from src import model_run  # their package is named "src"

    V, L, C = args.vocab, args.layers, args.width
    sd = random_release_state_dict(V, L, C)
    with tempfile.TemporaryDirectory() as d:
        torch.save(sd, Path(d) / "bench.pth")
        run_args = types.SimpleNamespace(MODEL_NAME=str(Path(d) / "bench"), FLOAT_MODE="fp32", RUN_DEVICE="cpu",
                                         n_layer=L, n_embd=C, ctx_len=1024, vocab_size=V)
        with contextlib.redirect_stdout(io.StringIO()):
            ref = model_run.RWKV_RNN(run_args)
        ours = load_spikegpt(Path(d) / "bench.pth", dtype=dtype)

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (args.prompt + args.decode,), generator=g).tolist()
    prompt, gen = tokens[: args.prompt], tokens[args.prompt :]

    def ref_prompt():
        state = mem1 = mem2 = out = None
        for i in range(len(prompt)):
            out, state, mem1, mem2 = ref.forward(prompt[: i + 1], state, mem1, mem2)
        return out, state, mem1, mem2

    def ours_prompt():
        return ours(torch.tensor([prompt]), last_only=True)

    with torch.inference_mode():
        ref_out, ref_state, mem1, mem2 = ref_prompt()
        our_logits, our_state = ours_prompt()
        rel = float((our_logits[0, -1] - ref_out).abs().max() / ref_out.abs().max())

        def ref_gen():
            # Continues from the prompt's state (mutated in place by the run code; the work per
            # token does not depend on its values).
            s, m1, m2, ctx = ref_state, mem1, mem2, list(prompt)
            for t in gen:
                ctx.append(t)
                _, s, m1, m2 = ref.forward(ctx, s, m1, m2)

        def ours_gen():
            s = our_state
            for t in gen:
                _, s = ours(torch.tensor([[t]]), s, last_only=True)

        t_ref_p, t_ours_p = best_times(ref_prompt, ours_prompt, repeats=args.repeats, warmup=False)
        t_ref_g, t_ours_g = best_times(ref_gen, ours_gen, repeats=args.repeats)

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, dtype {str(dtype).replace('torch.', '')} (both)")
    print(f"model: SpikeGPT release layout L={L} C={C} V={V}, binary embedding {ours.cfg.binary_embedding}, "
          f"rescale every {ours.cfg.rescale_every}; prompt last-logit max rel. diff vs run code {rel:.2e}")
    print(f"prompt {len(prompt)} tokens:    run code {len(prompt) / t_ref_p:9.1f} tok/s (token by token)   "
          f"spikelm {len(prompt) / t_ours_p:9.1f} tok/s (one call)   spikelm speed-up {t_ref_p / t_ours_p:5.2f}x")
    print(f"generation {len(gen)} tokens: run code {len(gen) / t_ref_g:9.1f} tok/s   "
          f"spikelm {len(gen) / t_ours_g:9.1f} tok/s   spikelm speed-up {t_ref_g / t_ours_g:5.2f}x")


if __name__ == "__main__":
    main()
