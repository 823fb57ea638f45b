"""Side by side: training runs' summaries, and their training loss at one common step.

Runs with the same max_steps have the same learning-rate schedule, so their logged training loss
at one step compares them on equal tokens even when a time budget stopped one of them early.

    python benchmarks/compare_runs.py runs/rwkv6-4x128-cmp runs/rwkv7-4x128-cmp --step 150
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training out_dirs (with summary.json and log.csv)")
    ap.add_argument("--step", type=int, required=True, help="a logged step every run reached")
    args = ap.parse_args()
    print(f"| run | kind | parameters | steps | tokens | stopped by | wall s | train loss at step {args.step} (nats) "
          "| final validation (bits/byte) |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for run in map(Path, args.runs):
        s = json.loads((run / "summary.json").read_text())
        kind = json.loads((run / "final" / "config.json").read_text()).get("kind", "?")
        with open(run / "log.csv") as f:
            loss = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
        at = f"{loss[args.step]:.4f}" if args.step in loss else "-"
        print(f"| {run} | {kind} | {s['parameters']:,} | {s['steps']} | {s['tokens']:,} | {s['stopped_by']} | "
              f"{s['elapsed_s']:.0f} | {at} | {s['val_bits_per_token']:.4f} |")
    print(f"(training loss: the mean over the log_every steps up to step {args.step})")


if __name__ == "__main__":
    main()
