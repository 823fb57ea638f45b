"""The perplexity gap against fine-tuning tokens, read from `spikelm finetune` runs.

    python benchmarks/finetune_curve.py RUN_DIR [RUN_DIR ...] [--plot docs/finetune_curve.png] [--ann-tokens N]

Each RUN_DIR is a fine-tune's out_dir: its summary.json gives the converted model's gap before any
step (tokens 0) and log.jsonl the validation gap (`val_gap_pct`: the perplexity gap to the teacher
on the fixed validation windows) at every evaluation. With --ann-tokens (the tokens the ANN itself
was trained on) each point also says what share of them the fine-tune had used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spikelm.markdown import md_table


def curve(run: Path) -> tuple[str, list[tuple[int, float]]]:
    summary = json.loads((run / "summary.json").read_text())
    points = []
    if summary.get("converted_gap_pct") is not None:
        points.append((0, summary["converted_gap_pct"]))
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("val_gap_pct") is not None:
            points.append((int(row["tokens"]), float(row["val_gap_pct"])))
    args = json.loads((run / "train_args.json").read_text())
    label = f"{args.get('preset') or Path(args['checkpoint']).name} ({args.get('sites')} sites, --train {args.get('train')})"
    return label, points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--plot", default="", help="also draw the curves into this PNG")
    ap.add_argument("--ann-tokens", type=int, default=0, help="tokens the ANN was trained on (for the share column)")
    a = ap.parse_args()
    curves = [curve(r) for r in a.runs]
    for (label, points), run in zip(curves, a.runs):
        print(f"\n{label}: {run}\n")
        head = ["tokens", "share of the ANN's tokens", "validation PPL gap"] if a.ann_tokens else ["tokens", "validation PPL gap"]
        body = [[f"{t:,}", *([f"{100 * t / a.ann_tokens:.1f}%"] if a.ann_tokens else []), f"{g:+.2f}%"] for t, g in points]
        print(md_table(head, body))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, points in curves:
            ax.plot([t / 1e3 for t, _ in points], [max(g, 1e-2) for _, g in points], "o-", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning tokens (thousands)")
        ax.set_ylabel("validation perplexity gap to the ANN (%)")
        if a.ann_tokens:
            ax.axvline(0.25 * a.ann_tokens / 1e3, color="grey", ls=":", label="25% of the ANN's tokens")
        for goal in (0.3, 1.0, 3.0):
            ax.axhline(goal, color="grey", lw=0.5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
        ax.set_title("Spiking-aware fine-tuning: gap against tokens")
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)
        print(f"\nplot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
