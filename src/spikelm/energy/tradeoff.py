"""Where a conversion could save energy: the sweep's PPL gap beside every energy of each setting.

:func:`energy_sweep` runs :func:`spikelm.evaluate.sweep.sweep` (PPL of the ANN and of each
conversion) and then counts each setting's energy on the first ``energy_tokens`` tokens: the same
conversion (converting is deterministic given the calibration batches), counted by hooks and
summarised by :func:`.summary.energy_summary` (full count with the sign-flag spikes, compute only
and with SRAM / DRAM memory, EE against the ANN at fp32 and against the equal-information
quantised ANN). The evaluate floor never imports energy; this module sits above it.
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
    """The energy columns of one sweep row from its summary (pJ per token; EE = baseline / network)."""
    ann = s.baselines[0]  # the ANN at fp32
    out: dict[str, Any] = {"e_compute_pj": s.snn.compute, "e_sram_pj": s.snn.sram, "e_dram_pj": s.snn.dram,
                           "ee_compute": s.ee(ann, "compute"), "ee_sram": s.ee(ann, "sram"), "ee_dram": s.ee(ann, "dram"),
                           "ee_eq5": s.eq5[0] / s.eq5[1] if s.eq5 and s.eq5[1] else None,
                           "quantised_bits": s.bits}
    q = next((b for b in s.baselines if b.name.startswith("quantised")), None)
    for col in ("compute", "sram", "dram"):
        out[f"ee_quantised_{col}"] = s.ee(q, col) if q is not None else None
    return out


def energy_sweep(model: nn.Module, tokens: Sequence[int], n_chars: int, calib,
                 settings: list[tuple[str, EncodingConfig | Prepared]],
                 energy_tokens: int = 512, table: str | EnergyTable = "45nm-fp32", batch: int = 1, chunk: int = 1024,
                 ctx: int = 0, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """The rows of :func:`~spikelm.evaluate.sweep.sweep` with :func:`energy_columns` added to each."""
    calib = list(calib)
    rows = sweep(model, tokens, n_chars, calib, settings, chunk=chunk, ctx=ctx, progress=progress)
    e_tokens = list(tokens[:energy_tokens])
    rows[0].update(energy_columns(energy_summary(model, count_model(model, e_tokens, chunk), table, batch=batch)))
    for row, (_, spec) in zip(rows[1:], settings):
        with variant(model, spec, calib) as m:
            row.update(energy_columns(energy_summary(m, count_model(m, e_tokens, chunk), table, batch=batch)))
    return rows


def format_energy_sweep(rows: list[dict[str, Any]], batch: int = 1) -> str:
    """PPL gap against every energy, one row per setting (Markdown)."""
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    body = [[r["model"], r.get("sites", "-"), f"{r['ppl']:.4f}", f"{r['ppl_gap_pct']:+.2f}%", f(r["e_compute_pj"], ",.0f"),
             f(r["e_sram_pj"], ",.0f"), f(r["e_dram_pj"], ",.0f"), f(r["ee_eq5"], ".2f"), f(r["ee_compute"], ".2f"),
             f(r["ee_sram"], ".2f"), f(r["ee_dram"], ".2f"), f(r["ee_quantised_compute"], ".2f"),
             f(r["ee_quantised_sram"], ".2f")] for r in rows]
    dram = f"DRAM B={batch}"
    return md_table(["Model", "sites", "PPL", "PPL gap", "compute pJ", "+SRAM pJ", f"+{dram} pJ", "EE eq.5",
                     "EE compute", "EE SRAM", f"EE {dram}", "EE vs quant. ANN", "EE vs quant. ANN +SRAM"],
                    body, "llrrrrrrrrrrr")
