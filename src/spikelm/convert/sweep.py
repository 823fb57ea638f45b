"""Sweep spike encodings over one pretrained RWKV-6: the paper's Table 1 (PPL and BPC per setting).

Every setting is converted from the same ANN, calibrated on the same batches of the corpus's
*train* split, and scored on the same held-out tokens, so the rows differ only in the encoding.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

from torch import nn

from ..config import EncodingConfig
from ..errors import SpikelmError
from .to_spiking import PRESETS, calibration_batches, convert, preset_config

log = logging.getLogger(__name__)

__all__ = ["sweep", "format_table1", "cli_sweep"]


def _settings(presets: list[str], grid_T: list[int], grid_l: list[int], sites: str) -> list[tuple[str, EncodingConfig]]:
    out = [(name, preset_config(name, sites)) for name in presets]
    for T in grid_T:
        for layers in grid_l:
            out.append((f"MHSE T={T} l={layers}", EncodingConfig(encoding="mhse", T=T, layers=layers, sites=sites)))
    return out


def sweep(model: nn.Module, tokens, n_chars: int, calib, settings: list[tuple[str, EncodingConfig]],
          chunk: int = 1024, ctx: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate the ANN and each (name, encoding) on ``tokens``; one dict per row, ANN first."""
    from ..evaluate.perplexity import evaluate_lm

    rows = []
    t0 = time.perf_counter()
    ann = evaluate_lm(model, tokens, n_chars, chunk=chunk, ctx=ctx, progress=progress)
    rows.append({"model": "RWKV (ANN)", "encoding": "none", "T": None, "l": None, **ann, "ppl_gap_pct": 0.0,
                 "bpc_gap_pct": 0.0})
    log.info("ANN: ppl %.4f bpc %.4f (%.1f s)", ann["ppl"], ann["bpc"], time.perf_counter() - t0)
    for name, enc in settings:
        m = convert(copy.deepcopy(model), enc, calib)
        r = evaluate_lm(m, tokens, n_chars, chunk=chunk, ctx=ctx, progress=progress)
        rows.append({"model": name, "encoding": enc.encoding, "T": enc.T, "l": enc.layers, "sites": enc.sites, **r,
                     "ppl_gap_pct": 100.0 * (r["ppl"] / ann["ppl"] - 1.0),
                     "bpc_gap_pct": 100.0 * (r["bpc"] / ann["bpc"] - 1.0)})
        log.info("%s: ppl %.4f bpc %.4f", name, r["ppl"], r["bpc"])
        del m
    return rows


def format_table1(rows: list[dict[str, Any]], unit: str = "BPC") -> str:
    """Markdown in the layout of the paper's Table 1: model, T, l, PPL, BPC and the gaps to the ANN."""
    lines = [f"| Model | T | l | PPL | {unit} | PPL gap to ANN | {unit} gap to ANN |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        T = "-" if r["T"] is None else r["T"]
        lv = "-" if r["l"] is None else r["l"]
        lines.append(f"| {r['model']} | {T} | {lv} | {r['ppl']:.4f} | {r['bpc']:.4f} | {r['ppl_gap_pct']:+.2f}% | {r['bpc_gap_pct']:+.2f}% |")
    return "\n".join(lines)


def cli_sweep(checkpoint: str, data: str = "default", split: str = "test", presets: str = "all", grid_T: str = "",
              grid_l: str = "", sites: str = "time_mix", calib_data: str = "", max_chars: int = 0, chunk: int = 1024,
              ctx: int = 0, json_: bool = False, device: str = "cpu") -> int:
    """Evaluate the ANN and spiking conversions of it side by side (the paper's Table 1 layout).

    Args:
        checkpoint: the ANN (official RWKV-6 file, Hugging Face folder or spikelm folder).
        data: corpus to score: a corpus name (default = Brown) or a text file.
        split: split of the corpus to score: valid or test.
        presets: comma-separated preset names, "all" (every preset), or "none".
        grid_T: comma-separated T values for an extra MHSE grid (with --grid-l), e.g. 1,2.
        grid_l: comma-separated spike-layer counts for the MHSE grid, e.g. 3,4,5,6.
        sites: time_mix (the paper) or all.
        calib_data: calibration corpus (default: the same corpus as --data, train split).
        max_chars: score only the first N characters of the split (0: all).
        chunk: tokens per forward call (state carried between calls).
        ctx: 0 for one stream with carried state; N for independent windows of N tokens.
        json_: print the rows as JSON instead of the table.
        device: torch device.
    """
    from ..checkpoint import load
    from ..evaluate.perplexity import load_eval_text  # the text loading of `spikelm eval`

    if presets == "all":
        names = list(PRESETS)
    elif presets in ("", "none"):
        names = []
    else:
        names = [p.strip() for p in presets.split(",") if p.strip()]
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]  # noqa: E731
    settings = _settings(names, ints(grid_T), ints(grid_l), sites)
    if not settings:
        raise SpikelmError("nothing to sweep: give --presets and/or --grid-T with --grid-l")

    model = load(checkpoint, device=device)
    from ..data.tokenizers import get_tokenizer

    tok = get_tokenizer(model.tokenizer_name)
    tokens, unit, n_chars, desc = load_eval_text(data, split, tok, model.tokenizer_name, max_chars)
    calib = calibration_batches(calib_data or data, model.tokenizer_name)
    rows = sweep(model, tokens, n_chars, calib, settings, chunk=chunk, ctx=ctx, progress=not json_)
    if json_:
        print(json.dumps(rows, indent=2, default=float))
    else:
        print(f"{checkpoint} on {desc}: {len(tokens):,} tokens; BPC = bits per {unit}")
        print(format_table1(rows, "BPC"))
    return 0
