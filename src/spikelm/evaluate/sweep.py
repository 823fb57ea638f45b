"""Sweep spike encodings over one pretrained RWKV-6: the paper's Table 1 (PPL and BPC per setting).

Every setting is converted from the same ANN, calibrated on the same batches of the corpus's
*train* split, and scored on the same held-out tokens, so the rows differ only in the encoding.
A setting may also be a :class:`Prepared` model (a fine-tuned conversion, ``sweep
--finetune-steps``): it is made by its own function and scored on the same tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..config import EncodingConfig
from ..convert import PRESETS, check_convertible, converted, preset_config
from ..errors import SpikelmError
from ..markdown import md_table
from ..progress import Progress, ProgressFn, report
from .perplexity import evaluate_lm

log = logging.getLogger(__name__)

__all__ = ["sweep", "settings", "format_table1", "Prepared", "variant"]


@dataclass
class Prepared:
    """A sweep row whose model is made by ``make()`` (e.g. fine-tuned from the ANN) rather than
    converted in place; ``enc`` is its encoding, ``info()`` extra fields of its row."""

    enc: EncodingConfig
    make: Callable[[], nn.Module]
    info: Callable[[], dict[str, Any]] = field(default=lambda: {})


@contextmanager
def variant(model: nn.Module, spec: EncodingConfig | Prepared, calib) -> Iterator[nn.Module]:
    """The model of one sweep row: ``model`` converted in place with ``spec`` (restored after), or
    the :class:`Prepared` model ``spec`` makes (dropped after)."""
    if isinstance(spec, Prepared):
        yield spec.make()
        return
    with converted(model, spec, calib) as m:  # in place, restored after: no second copy of the model
        yield m


def settings(presets: list[str], grid_T: list[int], grid_l: list[int], sites: str) -> list[tuple[str, EncodingConfig]]:
    """(row name, encoding) for each named preset (``all``: every preset) and each (T, l) of an MHSE grid."""
    if presets == ["all"]:
        presets = list(PRESETS)
    if not presets and not (grid_T and grid_l):
        raise SpikelmError("nothing to sweep: give --presets and/or --grid-T with --grid-l")
    out = [(name, preset_config(name, sites)) for name in presets]
    for T in grid_T:
        for layers in grid_l:
            out.append((f"MHSE T={T} l={layers}", EncodingConfig(encoding="mhse", T=T, layers=layers, sites=sites)))
    return out


def sweep(model: nn.Module, tokens, n_chars: int, calib, settings: list[tuple[str, EncodingConfig | Prepared]],
          chunk: int = 1024, ctx: int = 0, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Evaluate the ANN and each (name, encoding) on ``tokens``; one dict per row, ANN first."""
    if any(isinstance(enc, EncodingConfig) and enc.encoding != "none" for _, enc in settings):
        check_convertible(model)  # before the ANN is scored: a SpikeGPT must not cost a full evaluation first
    rows = []
    t0 = time.perf_counter()
    n_rows = 1 + len(settings)
    ann = evaluate_lm(model, tokens, n_chars, chunk=chunk, ctx=ctx, progress=_whole_sweep(progress, 0, n_rows))
    rows.append({"model": "RWKV (ANN)", "encoding": "none", "T": None, "l": None, **ann, "ppl_gap_pct": 0.0,
                 "bpc_gap_pct": 0.0})
    log.info("ANN: ppl %.4f bpc %.4f (%.1f s)", ann["ppl"], ann["bpc"], time.perf_counter() - t0)
    for i, (name, spec) in enumerate(settings, start=1):
        enc = spec.enc if isinstance(spec, Prepared) else spec
        with variant(model, spec, calib) as m:
            r = evaluate_lm(m, tokens, n_chars, chunk=chunk, ctx=ctx, progress=_whole_sweep(progress, i, n_rows))
        rows.append({"model": name, "encoding": enc.encoding, "T": enc.T, "l": enc.layers, "sites": enc.sites, **r,
                     "ppl_gap_pct": 100.0 * (r["ppl"] / ann["ppl"] - 1.0),
                     "bpc_gap_pct": 100.0 * (r["bpc"] / ann["bpc"] - 1.0),
                     **(spec.info() if isinstance(spec, Prepared) else {})})
        log.info("%s: ppl %.4f bpc %.4f", name, r["ppl"], r["bpc"])
    return rows


def _whole_sweep(progress: ProgressFn | None, row: int, n_rows: int) -> ProgressFn | None:
    """Pass row ``row``'s evaluation events on, and report the whole sweep as one more task
    ("sweep", in tokens over every row) so that its bar shows the time left for all the rows."""
    if not callable(progress):
        return progress

    def relay(ev: Progress) -> None:
        progress(ev)
        if ev.desc == "eval" and ev.total:
            last = row == n_rows - 1 and ev.finished
            report(progress, "sweep", row * ev.total + ev.done, n_rows * ev.total, unit="tok", finished=last,
                   row=f"{row + 1}/{n_rows}")

    return relay


def format_table1(rows: list[dict[str, Any]], unit: str = "BPC") -> str:
    """Markdown in the layout of the paper's Table 1: model, T, l, PPL, BPC and the gaps to the ANN."""
    body = [[r["model"], "-" if r["T"] is None else r["T"], "-" if r["l"] is None else r["l"], f"{r['ppl']:.4f}",
             f"{r['bpc']:.4f}", f"{r['ppl_gap_pct']:+.2f}%", f"{r['bpc_gap_pct']:+.2f}%"] for r in rows]
    return md_table(["Model", "T", "l", "PPL", unit, "PPL gap to ANN", f"{unit} gap to ANN"], body, align="lrrrrrr")
