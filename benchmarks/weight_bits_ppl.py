"""Perplexity with the weights stored at 32, 16 and 8 bits (``spikelm.models.quantized``).

For each checkpoint: the test split's first --max-chars bytes scored with float32 weights, fp16
weights, int8 weights (a scale per output channel, every matrix: the default of ``--weight-bits 8``)
and int8 with the LM head and the embedding kept float32 (the ablation behind the default, see
docs/energy.md), each with its change against float32.

    python benchmarks/weight_bits_ppl.py CHECKPOINT [CHECKPOINT ...] [--max-chars 30000]
"""

from __future__ import annotations

import argparse
import copy

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--max-chars", type=int, default=30000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from spikelm.checkpoints import load
    from spikelm.data.text import split_tokens
    from spikelm.evaluate.perplexity import evaluate_lm
    from spikelm.models.quantized import quantize_weights

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32 activations")
    print()
    print("| checkpoint | weights | PPL | BPC | PPL change vs float32 |")
    print("|---|---|---:|---:|---:|")
    for ckpt in args.checkpoints:
        model = load(ckpt)
        text = split_tokens("default", "test", model.tokenizer_name, max_chars=args.max_chars)
        variants = [("float32", lambda m: m), ("fp16", lambda m: quantize_weights(m, 16)),
                    ("int8, every matrix (default)", lambda m: quantize_weights(m, 8)),
                    ("int8, head and embedding float32", lambda m: quantize_weights(m, 8, head=False, embedding=False))]
        ref = None
        for label, make in variants:
            r = evaluate_lm(make(copy.deepcopy(model)), text.tokens, text.n_units)
            ref = ref or r["ppl"]
            print(f"| {ckpt} | {label} | {r['ppl']:.4f} | {r['bpc']:.4f} | {100 * (r['ppl'] / ref - 1):+.3f}% |")
    print()
    print(f"(first {args.max_chars:,} characters of the Brown test split)")


if __name__ == "__main__":
    main()
