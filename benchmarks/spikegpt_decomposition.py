"""Where SpikeGPT's quality gap comes from, and the attempts to close it: one trainer, one budget.

Every row is trained by spikelm's trainer on the embedded corpus (Brown, bytes) with the same
layers, width, context, batch, steps, learning-rate schedule and seed, so every model sees the
same tokens in the same order; then scored on the held-out split (bits per byte with the state
carried, the common evaluator). The decomposition rows (the default ``--rows``):

    rwkv6        RWKV-6 ANN
    rwkv4        RWKV-4 ANN (SpikeGPT's architecture without spikes, learned token shift)
    lif_only     SpikeGPT, LIF neurons, real-valued embedding (binary_embedding false)
    binemb_only  SpikeGPT, binary embedding, LIFs replaced by the identity (lif false: an ablation)
    spikegpt     SpikeGPT as in the paper (configs/spikegpt-tiny.yaml's constants)

``--rows attempts`` runs the numbered attempts at closing the gap (A1, A2, ...; see ``ROWS``), and
any comma list of names mixes them. Each finished row is written to ``--out`` as JSON at once, so a
long run that stops keeps its rows; ``--table-only`` prints the table (and draws the PNG) from the
rows already there. The learning curves of the rows listed go to ``--plot``.

    python benchmarks/spikegpt_decomposition.py --threads 1
    python benchmarks/spikegpt_decomposition.py --threads 1 --rows attempts --plot ''
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

# name -> (label, model kind, model-config overrides, train-argument overrides)
ROWS: dict[str, tuple[str, str, dict, dict]] = {
    "rwkv6": ("RWKV-6 ANN", "rwkv6", {}, {}),
    "rwkv4": ("RWKV-4 ANN", "rwkv4", {}, {}),
    "lif_only": ("SpikeGPT, LIF only (real embedding)", "spikegpt", {"binary_embedding": False}, {}),
    "binemb_only": ("SpikeGPT, binary embedding only (no LIF)", "spikegpt", {"lif": False}, {}),
    "spikegpt": ("SpikeGPT (paper)", "spikegpt", {}, {}),
    # Attempts at closing the gap (full SpikeGPT: binary embedding and LIF neurons in every row).
    "A0": ("A0 neither spike (paper token shift)", "spikegpt", {"lif": False, "binary_embedding": False}, {}),
    "A1": ("A1 code token shift, learned", "spikegpt", {"token_shift_init": "official", "learnable_shift": True}, {}),
    "A2": ("A2 surrogate alpha 4 (narrower)", "spikegpt", {"surrogate_alpha": 4.0}, {}),
    "A3": ("A3 surrogate alpha 1 (wider)", "spikegpt", {"surrogate_alpha": 1.0}, {}),
    "A4": ("A4 LIF threshold 0.5", "spikegpt", {"lif_threshold": 0.5}, {}),
    "A5": ("A5 LIF beta 1 (no leak)", "spikegpt", {"lif_beta": 1.0}, {}),
    "A6": ("A6 lr 2e-3", "spikegpt", {}, {"lr": 2e-3}),
    "A7": ("A7 LIF before the projections", "spikegpt", {"lif_site": "pre_proj"}, {}),
    "A8": ("A8 A7 + learned code token shift", "spikegpt",
           {"lif_site": "pre_proj", "token_shift_init": "official", "learnable_shift": True}, {}),
    "A9": ("A9 A8 + LIF threshold 0.5", "spikegpt",
           {"lif_site": "pre_proj", "token_shift_init": "official", "learnable_shift": True, "lif_threshold": 0.5}, {}),
    "A10": ("A10 A8 + lr 2e-3", "spikegpt",
            {"lif_site": "pre_proj", "token_shift_init": "official", "learnable_shift": True}, {"lr": 2e-3}),
    "A11": ("A11 A9 + lr 2e-3", "spikegpt",
            {"lif_site": "pre_proj", "token_shift_init": "official", "learnable_shift": True, "lif_threshold": 0.5},
            {"lr": 2e-3}),
    # Control for A6/A10: does the ANN gain as much from the larger learning rate?
    "rwkv4_lr2e-3": ("RWKV-4 ANN, lr 2e-3 (control)", "rwkv4", {}, {"lr": 2e-3}),
}
DECOMPOSITION = ["rwkv6", "rwkv4", "lif_only", "binemb_only", "spikegpt"]
ATTEMPTS = [k for k in ROWS if k.startswith("A")]


def train_one(name: str, a: argparse.Namespace, out: Path):
    from spikelm.runargs import TrainArgs
    from spikelm.train import train

    _, kind, model_over, train_over = ROWS[name]
    model = {"kind": kind, "n_layer": a.layers, "n_embd": a.width}
    model.update({"head_size": min(a.head_size, a.width)} if kind == "rwkv6" else {})
    model.update({"ctx_len": a.ctx} if kind == "spikegpt" else {})
    model.update(model_over)
    lr = train_over.get("lr", a.lr)
    args = TrainArgs(
        model=model, data="default", tokenizer="bytes", ctx_len=a.ctx, batch_size=a.batch, max_steps=a.steps,
        lr=lr, min_lr=lr / 10, warmup_steps=train_over.get("warmup_steps", a.warmup), eval_every=0, eval_batches=8,
        save_every=0, log_every=10, out_dir=str(out / name), seed=0, device="cpu", precision="fp32",
    )
    return train(args, progress=False), args


def run_row(name: str, a: argparse.Namespace, tokens, n_chars: int) -> dict:
    from spikelm.checkpoints import load
    from spikelm.energy.report import count_model, full_report
    from spikelm.evaluate.perplexity import evaluate_lm

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res, args = train_one(name, a, Path(d))
        model = load(res.final_path)
        ev = evaluate_lm(model, tokens, n_chars, progress=False)
        rep = full_report(count_model(model, [int(t) for t in tokens[:1024]]))
    rates = {s.name: s.firing_rate for s in rep.sites if s.kind == "neuron"}
    return {
        "name": name, "label": ROWS[name][0], "model": args.model, "lr": args.lr, "warmup_steps": args.warmup_steps,
        "params": sum(p.numel() for p in model.parameters()), "steps": res.steps, "tokens": res.tokens,
        "train_tokens_per_s": res.tokens / max(res.elapsed_s, 1e-9), "val_bits_per_byte": res.val_bits,
        "test_bpc": ev["bpc"], "mean_firing_rate": (sum(rates.values()) / len(rates)) if rates else None,
        "curve": [(h["tokens"], h["loss"] / math.log(2)) for h in res.history if h.get("loss") is not None],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="decomposition", help="decomposition | attempts | a comma list of row names")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--head-size", type=int, default=32, help="RWKV-6 head size")
    ap.add_argument("--ctx", type=int, default=128, help="training context (tokens)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps: the token budget is steps x batch x ctx")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak lr (cosine to lr/10) unless a row sets its own")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--eval-chars", type=int, default=20_000, help="bytes of the test split to score")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/spikegpt_decomposition", help="folder for one JSON per finished row")
    ap.add_argument("--table-only", action="store_true", help="print the table from the rows already in --out")
    ap.add_argument("--plot", default="docs/spikegpt_decomposition.png", help="learning curves PNG ('' for none)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = {"decomposition": DECOMPOSITION, "attempts": ATTEMPTS}.get(a.rows) or a.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; known: {', '.join(ROWS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = f"{a.layers}x{a.width} ctx{a.ctx} b{a.batch} s{a.steps} w{a.warmup} e{a.eval_chars} {a.split}"

    print(f"{a.layers} layers x {a.width} wide, context {a.ctx}, batch {a.batch}, {a.steps} steps "
          f"({a.steps * a.batch * a.ctx:,} tokens), lr {a.lr} unless the row says (cosine to lr/10, warm-up "
          f"{a.warmup}), fp32, {torch.get_num_threads()} threads; {a.split} split: first {a.eval_chars:,} bytes of Brown",
          flush=True)
    if not a.table_only:
        from spikelm.data.text import split_tokens

        t = split_tokens("default", a.split, "bytes", max_chars=a.eval_chars)
        for name in names:
            row = run_row(name, a, t.tokens, t.n_units)
            row["budget"] = budget
            (out / f"{name}.json").write_text(json.dumps(row, indent=1))
            print(f"  done {name}: test BPC {row['test_bpc']:.4f} in {row['seconds']:.0f} s", flush=True)

    rows = [json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").exists()]
    rows = [r for r in rows if r.get("budget") == budget]  # never mix budgets in one table
    # The RWKV-4 ANN rows of this budget (plain shape, any lr): "vs RWKV-4" is against the lr-1e-3
    # row (the shared schedule), "vs same lr" against the ANN trained with the row's own lr.
    anns = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    anns = [r for r in anns if r.get("budget") == budget and r["model"].get("kind") == "rwkv4"
            and set(r["model"]) <= {"kind", "n_layer", "n_embd", "tokenizer", "vocab_size"}]
    ref = next((r for r in anns if r["lr"] == a.lr), None)

    def gap(r: dict, base: dict | None) -> str:
        return f"{100 * (r['test_bpc'] / base['test_bpc'] - 1):+.1f}%" if base else "-"

    print(f"{'row':12s} {'model':44s} {'params':>9s} {'tokens':>9s} {'tok/s':>6s} {'test BPC':>8s} "
          f"{'vs RWKV-4':>9s} {'vs same lr':>10s} {'mean fr':>7s}")
    for r in rows:
        fr = "-" if r["mean_firing_rate"] is None else f"{r['mean_firing_rate']:.3f}"
        same = next((x for x in anns if x["lr"] == r["lr"]), None)
        print(f"{r['name']:12s} {r['label']:44s} {r['params']:9,d} {r['tokens']:9,d} {r['train_tokens_per_s']:6.0f} "
              f"{r['test_bpc']:8.4f} {gap(r, ref):>9s} {gap(r, same):>10s} {fr:>7s}")
    spiking = [r for r in rows if r["model"].get("kind") == "spikegpt" and r["model"].get("lif", True)
               and r["model"].get("binary_embedding", True)]
    if spiking and ref:
        best = min(spiking, key=lambda r: r["test_bpc"])
        same = next((x for x in anns if x["lr"] == best["lr"]), None)
        print(f"best full SpikeGPT (binary embedding and LIFs) here: {best['name']}, test BPC {best['test_bpc']:.4f}: "
              f"{gap(best, ref)} vs the RWKV-4 ANN at lr {a.lr:g}, {gap(best, same)} vs the RWKV-4 ANN at its lr {best['lr']:g}")
    if a.plot and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.2, 4.4))
        for r in rows:
            ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], label=r["label"], lw=1.2)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training loss (bits per byte)")
        ax.set_title(f"Brown, {a.layers}x{a.width}, same tokens, order and schedule for every row")
        ax.set_ylim(top=min(4.5, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=120)
        print(f"learning curves: {a.plot}")


if __name__ == "__main__":
    main()
