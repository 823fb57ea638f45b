"""Which spike sites cost the most perplexity: a converted model with one group of sites encoded at
a time (the others dense), each scored against the ANN on the same tokens.

A group is a site's leaf name across all blocks (e.g. every ``att.key``), so that its cost is
read off directly; all groups together are the full conversion. Works for RWKV-6 and RWKV-7.

    python benchmarks/site_gaps.py runs/rwkv7-4x128-cmp/final --preset spikelm-4L --sites time_mix --max-chars 20000
"""

from __future__ import annotations

import argparse
import copy

import torch

from spikelm import load
from spikelm.convert import convert, preset_config, site_names
from spikelm.data.text import calibration_batches, split_tokens
from spikelm.evaluate.perplexity import evaluate_lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--preset", default="spikelm-4L")
    ap.add_argument("--sites", default="time_mix")
    ap.add_argument("--data", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-chars", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ann = load(args.checkpoint).eval()
    text = split_tokens(args.data, args.split, ann.tokenizer_name, max_chars=args.max_chars)
    calib = calibration_batches("default", ann.tokenizer_name)
    enc = preset_config(args.preset, args.sites)
    all_names = site_names(ann, args.sites)
    groups: dict[str, list[str]] = {}
    for n in all_names:
        groups.setdefault(n.split(".", 2)[-1], []).append(n)  # "att.key", "att.w1_in", ...

    base = evaluate_lm(ann, text.tokens, text.n_units)
    print(f"{args.checkpoint}: {args.preset} at {args.sites}, {text.n_units:,} test bytes, {torch.get_num_threads()} threads, fp32")
    print(f"ANN ppl {base['ppl']:.4f}")
    print("| sites encoded | n | PPL | PPL gap to ANN |")
    print("|---|---:|---:|---:|")
    for label, names in [*groups.items(), ("all of them", all_names)]:
        m = copy.deepcopy(ann)
        m.spike_sites = lambda sites, names=names: list(names)  # restrict the conversion to this group
        m = convert(m, enc, calib)
        r = evaluate_lm(m, text.tokens, text.n_units)
        print(f"| {label} | {len(names)} | {r['ppl']:.4f} | {100 * (r['ppl'] / base['ppl'] - 1):+.2f}% |")


if __name__ == "__main__":
    main()
