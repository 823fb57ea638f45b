"""Energy of (spiking) language models: operation counters attached by hooks, energy tables with
their sources, and reports (SpikeRWKV's eq. 5 beside a full count of every operation).

    from spikelm.energy import EnergyCounter
    with EnergyCounter(model) as ec:
        model(idx)
    rep = full_report(ec.counts, "45nm-fp32")  # FullReport: rep.to_markdown(), rep.to_dict()
    summary = energy_summary(model, ec.counts, batch=1)  # like for like: + memory, ANN twins, break-even (docs/energy.md)
"""

from .constants import HOROWITZ_2014, OP_KINDS, TABLES, EnergyTable, energy_table
from .counters import Counts, EnergyCounter, Row, is_binary
from .memory import MemoryModel, MemoryReport, memory_report
from .report import (
    FullReport,
    PaperEntry,
    PaperTable,
    count_model,
    eq5,
    full_report,
    implied_firing_rate,
    paper_entry,
    paper_table,
)
from .breakeven import BreakEven
from .summary import EnergySummary, code_bits, energy_summary, headline, quantised_activations

__all__ = [
    "HOROWITZ_2014",
    "OP_KINDS",
    "TABLES",
    "EnergyTable",
    "energy_table",
    "Counts",
    "EnergyCounter",
    "Row",
    "is_binary",
    "FullReport",
    "PaperEntry",
    "PaperTable",
    "count_model",
    "eq5",
    "full_report",
    "implied_firing_rate",
    "paper_entry",
    "paper_table",
    "MemoryModel",
    "MemoryReport",
    "memory_report",
    "EnergySummary",
    "BreakEven",
    "code_bits",
    "energy_summary",
    "headline",
    "quantised_activations",
]
