"""Where a conversion could save energy: the sweep's PPL gap beside every energy of each setting.

:func:`energy_sweep` runs :func:`spikelm.evaluate.sweep.sweep` (PPL of the ANN and of each
conversion, at the weight precision the model is stored at) and then counts each setting's energy
on the first ``energy_tokens`` tokens: the same conversion (converting is deterministic given the
calibration batches), counted by hooks and summarised by :func:`.summary.energy_summary`, like for
like (the spiking network and its ANN twins at the same weight precision: compute only, + SRAM,
+ DRAM; EE against the dense ANN, the equal-information ANN and its zero-skipping twin; the
break-even firing rate), then the paper's convention (eq. 5 and both sides at fp32). The evaluate
floor never imports energy; this module sits above it.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..config import EncodingConfig
from ..evaluate.sweep import Prepared, sweep, variant
from ..markdown import md_table
from ..progress import ProgressFn
from .constants import EnergyTable
from .report import count_model
from .summary import EnergySummary, energy_summary

__all__ = ["energy_sweep", "format_energy_sweep", "energy_columns"]


def energy_columns(s: EnergySummary) -> dict[str, Any]:
    """The energy columns of one sweep row from its summary (pJ per token; EE = baseline / network;
    ``break_even_*``: the overall break-even firing rate against the dense ANN, None where never cheaper)."""
    out: dict[str, Any] = {"weight_bits": s.weight_bits, "table": s.table, "e_compute_pj": s.snn.compute,
                           "e_sram_pj": s.snn.sram, "e_dram_pj": s.snn.dram, "quantised_bits": s.bits, "firing_rate": s.fr}
    be = {b.baseline: b for b in s.break_even}
    for key, kind in (("dense", "dense"), ("equal", "equal"), ("zero_skip", "zero")):
        b = s.baseline(kind)
        for col in ("compute", "sram", "dram"):
            out[f"ee_{key}_{col}"] = s.ee(b, col) if b is not None else None
            x = be.get(b.name).overall[col] if b is not None and b.name in be else None
            out[f"break_even_{key}_{col}"] = "inf" if x == float("inf") else x
    c = s.convention
    out.update({"ee_eq5": c.eq5[0] / c.eq5[1] if c.eq5 and c.eq5[1] else None, "ee_fp32_compute": c.ee("compute"),
                "ee_fp32_sram": c.ee("sram"), "ee_fp32_dram": c.ee("dram")})
    return out


def energy_sweep(model: nn.Module, tokens: Sequence[int], n_chars: int, calib,
                 settings: list[tuple[str, EncodingConfig | Prepared]],
                 energy_tokens: int = 512, table: str | EnergyTable | None = None, batch: int = 1, chunk: int = 1024,
                 ctx: int = 0, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """The rows of :func:`~spikelm.evaluate.sweep.sweep` with :func:`energy_columns` added to each.

    ``table``: the spiking network's table (None: that of the model's weight precision)."""
    calib = list(calib)
    rows = sweep(model, tokens, n_chars, calib, settings, chunk=chunk, ctx=ctx, progress=progress)
    e_tokens = list(tokens[:energy_tokens])
    rows[0].update(energy_columns(energy_summary(model, count_model(model, e_tokens, chunk), table, batch=batch)))
    for row, (_, spec) in zip(rows[1:], settings):
        with variant(model, spec, calib) as m:
            row.update(energy_columns(energy_summary(m, count_model(m, e_tokens, chunk), table, batch=batch)))
    return rows


def _f(x: Any, fmt: str) -> str:
    if x is None:
        return "-"
    return x if isinstance(x, str) else format(x, fmt)


def format_energy_sweep(rows: list[dict[str, Any]], batch: int = 1) -> str:
    """PPL gap against every energy, one row per setting (Markdown): like for like first (the
    spiking network and its ANN twins at the same weight precision), then the paper's convention."""
    body = [[r["model"], f"{r['ppl']:.4f}", f"{r['ppl_gap_pct']:+.2f}%", _f(r["quantised_bits"], "d"), _f(r["e_compute_pj"], ",.0f"),
             _f(r["e_sram_pj"], ",.0f"), _f(r["ee_dense_compute"], ".2f"), _f(r["ee_dense_sram"], ".2f"),
             _f(r["ee_dense_dram"], ".2f"), _f(r["ee_equal_compute"], ".2f"), _f(r["ee_equal_sram"], ".2f"),
             _f(r["ee_zero_skip_compute"], ".2f"), _f(r["ee_zero_skip_sram"], ".2f"), _f(r["firing_rate"], ".3f"),
             _f(r["break_even_dense_sram"], ".3f"), _f(r["break_even_zero_skip_sram"], ".3f"),
             _f(r["ee_eq5"], ".2f"), _f(r["ee_fp32_compute"], ".2f")] for r in rows]
    wb = rows[0].get("weight_bits") if rows else None
    dram = f"DRAM B={batch}"
    head = ["Model", "PPL", "PPL gap", "k", "compute pJ", "+SRAM pJ", f"EE vs W{wb}A{wb} compute", f"EE vs W{wb}A{wb} SRAM",
            f"EE vs W{wb}A{wb} {dram}", f"EE vs W{wb}Ak compute", f"EE vs W{wb}Ak SRAM", f"EE vs W{wb}Ak zero-skip compute",
            f"EE vs W{wb}Ak zero-skip SRAM", "fr", f"break-even fr vs W{wb}A{wb} SRAM", "break-even fr vs zero-skip SRAM",
            "EE eq.5 (paper)", "EE fp32 compute (paper)"]
    return md_table(head, body, "lrr" + "r" * 15)
