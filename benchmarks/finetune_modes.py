"""Spiking-aware fine-tuning: what each --train mode and rate penalty buys, and the Pareto front of
perplexity gap against energy per token.

    python benchmarks/finetune_modes.py MODEL --preset SpikeRWKV-4L --sites all --steps 100 \\
        --modes scales,norms,lora,all --penalties 0,0.05,0.2 --out runs/ft-modes

For each mode (at penalty 0) and each penalty (with --penalty-mode), it fine-tunes MODEL's
conversion with `spikelm.train.finetune` (every run into OUT/<mode>-<penalty>; a finished run is
reused), scores the result on the first --max-chars characters of --data's --split (the ANN and the
untuned conversion too), and counts its energy per token on the first --energy-tokens of them
(:func:`spikelm.energy.summary.energy_summary`: the spiking network's compute + SRAM energy at
the table's precision, and its firing rate over every encoded input). Then it prints the table, the
Pareto front (no other point has both a smaller gap and a smaller energy) and the cheapest point
within --goal percent of the ANN's perplexity.

Timing: each run's wall time is the fine-tune's own training time (summary.json), measured on this
machine with the threads printed below.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

import spikelm
from spikelm.convert import convert, preset_config
from spikelm.data.text import calibration_batches, split_tokens
from spikelm.energy.constants import BITS_TABLES
from spikelm.energy.report import count_model
from spikelm.energy.summary import energy_summary
from spikelm.evaluate.perplexity import evaluate_lm
from spikelm.markdown import md_table
from spikelm.models.quantized import quantize_weights
from spikelm.train.finetune import FinetuneArgs, finetune


def firing_rate(counts) -> float:
    """Layer spikes per neuron per time step over every spike-encoded input (flags excluded)."""
    st = [r.spikes for r in counts.spiking_rows() if r.spikes is not None]
    slots = sum(s.numel * s.T * s.layers for s in st)
    return sum(s.layer_spikes for s in st) / slots if slots else 0.0


def measure(model, tokens, n_units, e_tokens, table: str) -> dict:
    r = evaluate_lm(model, tokens, n_units, chunk=1024)
    counts = count_model(model, e_tokens)
    s = energy_summary(model, counts, table)
    return {"ppl": r["ppl"], "bpc": r["bpc"], "firing_rate": firing_rate(counts), "e_compute_pj": s.snn.compute,
            "e_sram_pj": s.snn.sram}


def pareto(points: list[dict]) -> list[dict]:
    """Points no other point beats on both the gap and the SRAM energy."""
    return [p for p in points if not any(q is not p and q["gap_pct"] <= p["gap_pct"] and q["e_sram_pj"] <= p["e_sram_pj"]
                                         and (q["gap_pct"] < p["gap_pct"] or q["e_sram_pj"] < p["e_sram_pj"]) for q in points)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the ANN checkpoint")
    ap.add_argument("--preset", default="SpikeRWKV-4L")
    ap.add_argument("--sites", default="all")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--modes", default="scales,norms,lora,all")
    ap.add_argument("--penalties", default="0", help="rate penalties, run with --penalty-mode")
    ap.add_argument("--penalty-mode", default="all")
    ap.add_argument("--data", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-chars", type=int, default=30000)
    ap.add_argument("--energy-tokens", type=int, default=512)
    ap.add_argument("--weight-bits", type=int, default=8, help="every model's weights (like for like): the ANN and the "
                    "untuned conversion quantised before conversion, each fine-tune's final/ after fine-tuning")
    ap.add_argument("--table", default="auto", help="the energy table (auto: the one of --weight-bits)")
    ap.add_argument("--goal", type=float, default=1.0, help="the gap (percent) the cheapest point must stay within")
    ap.add_argument("--out", default="runs/ft-modes")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another FinetuneArgs key for every run")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, threads used: {torch.get_num_threads()}, dtype fp32")

    if a.table == "auto":
        a.table = BITS_TABLES[a.weight_bits]
    ann = quantize_weights(spikelm.load(a.model), a.weight_bits)
    text = split_tokens(a.data, a.split, ann.tokenizer_name, max_chars=a.max_chars)
    e_tokens = list(text.tokens[: a.energy_tokens])
    base = measure(ann, text.tokens, text.n_units, e_tokens, a.table)
    rows = []
    for calibration in ("max", "mse"):  # the papers' calibration, and the fine-tunes' start
        conv = quantize_weights(spikelm.load(a.model), a.weight_bits)
        convert(conv, preset_config(a.preset, a.sites).replace(calibration=calibration),
                calibration_batches(a.data, ann.tokenizer_name))
        rows.append({"run": f"converted, {calibration} calibration (no fine-tuning)", "mode": "-", "penalty": "-",
                     "tokens": 0, "seconds": 0.0, **measure(conv, text.tokens, text.n_units, e_tokens, a.table)})
    extra = dict(kv.split("=", 1) for kv in a.set)
    runs = [(m, 0.0) for m in a.modes.split(",") if m] + [(a.penalty_mode, float(p)) for p in a.penalties.split(",")
                                                           if p and float(p) > 0]
    for mode, pen in runs:
        out = Path(a.out) / f"{mode}-{pen:g}"
        args = FinetuneArgs.from_dict({"checkpoint": a.model, "preset": a.preset, "sites": a.sites, "data": a.data,
                                       "calib_data": a.data, "max_steps": a.steps, "train": mode, "rate_penalty": pen,
                                       "out_dir": str(out), "weight_bits": a.weight_bits, **extra})
        res = finetune(args, resume=True)
        summary = json.loads((out / "summary.json").read_text())
        rows.append({"run": str(out), "mode": mode, "penalty": pen, "tokens": res.tokens, "seconds": summary["elapsed_s"],
                     **measure(spikelm.load(res.final_path), text.tokens, text.n_units, e_tokens, a.table)})
    for r in rows:
        r["gap_pct"] = 100.0 * (r["ppl"] / base["ppl"] - 1.0)

    print(f"{a.model}: {a.preset} at {a.sites} sites; {text.description}, {len(text.tokens):,} tokens; ANN PPL "
          f"{base['ppl']:.4f}; {a.weight_bits}-bit weights everywhere; energy on {len(e_tokens)} tokens at {a.table} (spiking network; +SRAM: weights read "
          f"from on-chip SRAM); ANN {base['e_compute_pj']:,.0f} pJ compute, {base['e_sram_pj']:,.0f} pJ +SRAM\n")
    front = pareto(rows)
    body = [[r["run"], r["mode"], r["penalty"], f"{r['tokens']:,}", f"{r['seconds']:.0f}", f"{r['ppl']:.4f}", f"{r['gap_pct']:+.2f}%",
             f"{r['firing_rate']:.4f}", f"{r['e_compute_pj']:,.0f}", f"{r['e_sram_pj']:,.0f}", "yes" if r in front else ""]
            for r in rows]
    print(md_table(["run", "train", "rate penalty", "tokens", "wall s", "PPL", "PPL gap", "firing rate", "compute pJ",
                    "+SRAM pJ", "Pareto"], body, "lllrrrrrrrl"))
    ok = [r for r in rows if r["gap_pct"] <= a.goal]
    if ok:
        best = min(ok, key=lambda r: r["e_sram_pj"])
        print(f"\ncheapest point within {a.goal:g}% of the ANN: {best['run']} ({best['gap_pct']:+.2f}%, "
              f"{best['e_sram_pj']:,.0f} pJ/token +SRAM, firing rate {best['firing_rate']:.4f})")
    else:
        print(f"\nno point within {a.goal:g}% of the ANN")
    return 0


if __name__ == "__main__":
    sys.exit(main())
