"""SpikeGPT vs the RWKV-6 ANN, side by side: same shape, same data, same token budget.

Both models are trained by spikelm's trainer on the embedded corpus (Brown, bytes) with the same
layers, width, context, batch, number of steps, learning-rate schedule and seed, so they see the
same tokens in the same order. Then, on the held-out split: bits per byte and perplexity (the
common evaluator, the text read as one stream with the state carried), and firing rates measured
by the energy counters (SpikeGPT: its binary embedding and the LIF outputs that feed the residual
stream; the ANN has no spikes). Prints one table and writes the two loss curves to ``--plot``.

    python benchmarks/spikegpt_vs_rwkv6.py [--layers 4 --width 128 --ctx 128 --batch 16 --steps 600]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch


def train_one(kind: str, a: argparse.Namespace, out: Path) -> dict:
    from spikelm.runargs import TrainArgs
    from spikelm.train import train

    model = {"kind": kind, "n_layer": a.layers, "n_embd": a.width}
    model.update({"head_size": min(a.head_size, a.width)} if kind == "rwkv6" else {"ctx_len": a.ctx})
    args = TrainArgs(
        model=model, data="default", tokenizer="bytes", ctx_len=a.ctx, batch_size=a.batch, max_steps=a.steps,
        lr=a.lr, min_lr=a.lr / 10, warmup_steps=50, eval_every=100, eval_batches=8, save_every=0,
        log_every=10, out_dir=str(out / kind), seed=0, device="cpu", precision="fp32",
    )
    res = train(args, progress=False)
    return {"result": res, "tokens_per_s": res.tokens / max(res.elapsed_s, 1e-9)}


def firing_rates(model, tokens) -> tuple[dict[str, float], float]:
    """Firing rate of every spiking neuron group (kind "neuron": the LIF outputs and the binary
    embedding) and the share of the full-count energy that is spike-driven."""
    from spikelm.energy.report import count_model, full_report

    rep = full_report(count_model(model, tokens))
    return {s.name: s.firing_rate for s in rep.sites if s.kind == "neuron"}, rep.spike_share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--head-size", type=int, default=32, help="RWKV-6 head size (SpikeGPT's RWKV-4 mixing has no heads)")
    ap.add_argument("--ctx", type=int, default=128, help="training context (tokens)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps: the token budget is steps x batch x ctx")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-chars", type=int, default=100_000, help="bytes of the test split to score")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default="docs/spikegpt_vs_rwkv6.png", help="loss curves PNG ('' for none)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype {str(torch.get_default_dtype()).replace('torch.', '')}")

    from spikelm.checkpoints import load
    from spikelm.data.text import split_tokens
    from spikelm.evaluate.perplexity import evaluate_lm

    _t = split_tokens("default", a.split, "bytes", max_chars=a.eval_chars)
    tokens, n_chars = _t.tokens, _t.n_units
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as d:
        for kind, label in (("rwkv6", "RWKV-6 (ANN)"), ("spikegpt", "SpikeGPT")):
            t0 = time.perf_counter()
            tr = train_one(kind, a, Path(d))
            res = tr["result"]
            model = load(res.final_path)
            ev = evaluate_lm(model, tokens, n_chars, progress=False)
            rates, share = firing_rates(model, [int(t) for t in tokens[:2048]])
            curves[label] = [(h["tokens"], h["loss"] / math.log(2)) for h in res.history if h.get("loss") is not None]
            rows.append({
                "model": label, "params": sum(p.numel() for p in model.parameters()), "steps": res.steps,
                "tokens": res.tokens, "train_tokens_per_s": tr["tokens_per_s"],
                "val_bits_per_byte": res.val_bits, "test_bpc": ev["bpc"], "test_ppl": ev["ppl"],
                "mean_firing_rate": (sum(rates.values()) / len(rates)) if rates else None,
                "firing_rates": rates, "spike_share": share, "seconds": time.perf_counter() - t0,
            })

    print(f"{a.layers} layers x {a.width} wide, context {a.ctx}, batch {a.batch}, {a.steps} steps, lr {a.lr} "
          f"(cosine to lr/10), fp32, {a.threads} threads; {a.split} split: first {n_chars:,} bytes of Brown")
    print(f"{'model':14s} {'params':>10s} {'tokens':>10s} {'tok/s':>7s} {'val bits/B':>10s} "
          f"{a.split + ' BPC':>9s} {a.split + ' PPL':>9s} {'mean fr':>8s} {'time s':>7s}")
    for r in rows:
        fr = "-" if r["mean_firing_rate"] is None else f"{r['mean_firing_rate']:.3f}"
        print(f"{r['model']:14s} {r['params']:10,d} {r['tokens']:10,d} {r['train_tokens_per_s']:7.0f} "
              f"{r['val_bits_per_byte']:10.4f} {r['test_bpc']:9.4f} {r['test_ppl']:9.3f} {fr:>8s} {r['seconds']:7.0f}")
    ann, sg = rows
    print(f"SpikeGPT - ANN: {sg['test_bpc'] - ann['test_bpc']:+.4f} bits per byte "
          f"({100 * (sg['test_bpc'] / ann['test_bpc'] - 1):+.1f}%)")
    print("SpikeGPT firing rates (spikes per neuron per token):")
    for name, r in sg["firing_rates"].items():
        print(f"  {name:28s} {r:.4f}")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for label, pts in curves.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training loss (bits per byte)")
        ax.set_title(f"Brown, {a.layers}x{a.width}, same tokens for both")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=120)
        print(f"loss curves: {a.plot}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
