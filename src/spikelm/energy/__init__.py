"""Energy of (spiking) language models: operation counters attached by hooks, energy tables with
their sources, and reports (SpikeRWKV's eq. 5 beside a full count of every operation).

    from spikelm.energy import EnergyCounter
    with EnergyCounter(model) as ec:
        model(idx)
    rep = full_report(ec.counts, "45nm-fp32")  # FullReport: rep.to_markdown(), rep.to_dict()
"""

from .constants import HOROWITZ_2014, OP_KINDS, TABLES, EnergyTable, energy_table
from .counters import Counts, EnergyCounter, Row, is_binary
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
]
