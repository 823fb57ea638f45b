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
    """PPL gap against every energy, one row per setting (Markdown), in two tables: like for like
    (EE against each ANN twin at the same weight precision, compute / + SRAM / + DRAM), then the
    energies, the firing rate and the break-even rates, and the paper's convention."""
    wb = rows[0].get("weight_bits") if rows else None
    dram = f"DRAM B={batch}"
    cols = ("compute", "sram", "dram")
    body = [[r["model"], f"{r['ppl']:.4f}", f"{r['ppl_gap_pct']:+.2f}%", _f(r["quantised_bits"], "d"),
             *(_f(r[f"ee_{k}_{c}"], ".2f") for k in ("dense", "equal", "zero_skip") for c in cols)] for r in rows]
    head = ["Model", "PPL", "PPL gap", "k"] + [f"EE vs {who} {c}" for who in (f"W{wb}A{wb}", f"W{wb}Ak", f"W{wb}Ak zero-skip")
                                               for c in ("compute", "SRAM", dram)]
    first = md_table(head, body, "lrrr" + "r" * 9)
    body = [[r["model"], _f(r["e_compute_pj"], ",.0f"), _f(r["e_sram_pj"], ",.0f"), _f(r["e_dram_pj"], ",.0f"),
             _f(r["firing_rate"], ".3f"), *(_f(r[f"break_even_{k}_{c}"], ".3f") for k in ("dense", "zero_skip") for c in cols),
             _f(r["ee_eq5"], ".2f"), _f(r["ee_fp32_compute"], ".2f"), _f(r["ee_fp32_sram"], ".2f")] for r in rows]
    head = (["Model", "compute pJ", "+SRAM pJ", f"+{dram} pJ", "fr"]
            + [f"break-even fr vs {who} {c}" for who in (f"W{wb}A{wb}", "zero-skip") for c in ("compute", "SRAM", dram)]
            + ["EE eq.5 (paper)", "EE fp32 compute (paper)", "EE fp32 +SRAM (paper)"])
    second = md_table(head, body, "l" + "r" * 13)
    return (first + "\n\nEnergies per token of the spiking network; break-even fr: the firing rate at which it would "
            "cost what the baseline costs ('-': not cheaper even silent; 'inf': cheaper at any rate); the paper's "
            "convention (eq. 5, and both sides at 45 nm fp32):\n\n" + second)
