"""The break-even firing rate: where a spiking network stops being cheaper than an ANN baseline.

Dampfhoffer et al. (IEEE TETCI 2023) and Yan et al. (arXiv 2409.08290, 2024) compare a spiking
layer with its ANN twin as a function of the firing rate: the spiking side's cost grows with its
spikes, the ANN's does not, and the two meet at the break-even rate. Here, for one spiking layer (a
spike-driven linear layer with the encoder that feeds it) and for the whole network:

* the spiking network's cost at ``alpha`` times the measured spikes: the spike-proportional work
  (accumulates, flag accumulates where charged, the encoders' reset subtractions; counted apart by
  the counters as ``Row.spike_ops``) scaled by ``alpha``, every other operation held; memory with
  the fraction of active inputs scaled by ``alpha`` (the weight columns fetched:
  :func:`~.memory.fetched_fraction`), the activations and state held (their spike bits are read
  whether or not they are set);
* the baseline's cost held as measured (the zero-skipping ANN's too: it is the twin of the
  measured sparsity);
* the break-even rate is ``alpha * fr`` where the two costs meet (bisection; the cost is linear
  in ``alpha`` compute only and at batch 1, and monotone otherwise). ``None``: not cheaper even
  with no spike at all (the fixed costs alone exceed the baseline's); ``inf``: cheaper at any
  rate. A rate above 1 (spikes per value per step per layer cannot exceed 1) means cheaper at
  every rate the code can reach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .counters import Counts
from .memory import MemoryReport
from .report import FullReport

__all__ = ["RowBreakEven", "BreakEven", "break_even", "solve_rate", "COLUMNS"]

COLUMNS = ("compute", "sram", "dram")


def solve_rate(cost: Callable[[float], float], target: float, fr: float) -> float | None:
    """The firing rate ``alpha * fr`` at which ``cost(alpha)`` (non-decreasing) reaches ``target``.

    None when ``cost(0) >= target`` (never cheaper); ``inf`` when it stays below at any ``alpha``.
    """
    if cost(0.0) >= target:
        return None
    hi = 1.0
    for _ in range(200):
        if cost(hi) >= target:
            break
        hi *= 2.0
    else:
        return math.inf
    lo = 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if cost(mid) >= target:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi) * fr


def _json(x: float | None) -> float | str | None:
    return "inf" if x is not None and math.isinf(x) else x


@dataclass
class RowBreakEven:
    """One spiking layer: its measured firing rate and the break-even rate per column."""

    name: str
    fr: float
    compute: float | None
    sram: float | None
    dram: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fr": self.fr, **{c: _json(getattr(self, c)) for c in COLUMNS}}


@dataclass
class BreakEven:
    """Break-even rates against one baseline: overall (pooled firing rate) and per spiking layer."""

    baseline: str
    fr: float
    overall: dict[str, float | None]
    rows: list[RowBreakEven] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "fr": self.fr, "overall": {c: _json(v) for c, v in self.overall.items()},
                "rows": [r.to_dict() for r in self.rows]}


def break_even(counts: Counts, rep: FullReport, snn_mem: Sequence[MemoryReport], base_mem: Sequence[MemoryReport],
               base_site_pj: Sequence[float], base: Any, sites: Sequence[Any], batch: int, fr: float | None) -> BreakEven:
    """Break-even rates of the spiking network ``rep`` (memory ``snn_mem`` = [SRAM, DRAM at ``batch``])
    against the baseline network ``base`` (its totals ``compute``/``sram``/``dram``, its memory
    ``base_mem``, and ``base_site_pj``: its compute at each of ``sites``, in order)."""
    t, tok, flags = rep.table, counts.tokens, rep.flag_acs
    fr = fr or 0.0
    var_total = sum(t.energy(r.spike_ops, flags) for r in counts.rows.values()) / tok
    batches = {"sram": 1, "dram": batch}

    def mem_rows(m: MemoryReport) -> dict[str, Any]:
        return {r.name: r for r in m.rows}

    snn_rows = {c: mem_rows(m) for c, m in zip(("sram", "dram"), snn_mem)}
    base_rows = {c: mem_rows(m) for c, m in zip(("sram", "dram"), base_mem)}

    def total(col: str) -> Callable[[float], float]:
        def cost(alpha: float) -> float:
            c = rep.total_snn + (alpha - 1.0) * var_total
            if col == "compute":
                return c
            m = snn_mem[0 if col == "sram" else 1]
            extra = sum(r.snn_pj(batches[col], alpha) - r.snn_pj(batches[col]) for r in m.rows)
            return c + m.e_snn + extra
        return cost

    overall = {c: solve_rate(total(c), getattr(base, c), fr) for c in COLUMNS}
    rows = []
    for s, base_pj in zip(sites, base_site_pj):
        r = s.row
        parts = [r] + ([counts.rows[r.encode_row]] if r.encode_row in counts.rows else [])
        fixed = sum(t.energy({k: p.ops[k] - p.spike_ops[k] for k in p.ops}, flags) for p in parts) / tok
        var = sum(t.energy(p.spike_ops, flags) for p in parts) / tok
        out = {}
        for col in COLUMNS:
            def cost(alpha: float, col: str = col) -> float:
                c = fixed + alpha * var
                rm = snn_rows.get(col, {}).get(r.name)
                return c if rm is None else c + rm.snn_pj(batches[col], alpha)
            bm = base_rows.get(col, {}).get(r.name)
            target = base_pj + (0.0 if col == "compute" or bm is None else bm.ann_pj)
            out[col] = solve_rate(cost, target, r.spikes.firing_rate)
        rows.append(RowBreakEven(r.name, r.spikes.firing_rate, out["compute"], out["sram"], out["dram"]))
    return BreakEven(base.name, fr, overall, rows)
