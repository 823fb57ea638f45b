"""Plots of an energy report (matplotlib, an optional dependency imported inside each function).

* :func:`plot_firing_rates`: firing rate per layer, one line per site (e.g. ``att.key``), so the
  sites can be compared across depth;
* :func:`plot_energy_per_layer`: pJ per token per layer, ANN beside the spiking network, with the
  spike-driven part of the latter marked;
* :func:`plot_energy_parts`: stacked bars per network (the spiking one and its baselines): dense
  compute, spike-driven compute, neuron updates, memory; SRAM and DRAM side by side;
* :func:`plot_tradeoff`: perplexity against energy per token for a list of configurations (a
  sweep), with the Pareto front (no other point is both cheaper and better) drawn through them.

Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never ``pyplot``, so no
global state or display backend is touched. Each function writes a PNG and returns its path.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import SpikelmError
from ..io import atomic_write
from .report import FullReport
from .summary import PARTS, EnergySummary

__all__ = ["plot_firing_rates", "plot_energy_per_layer", "plot_energy_parts", "plot_tradeoff", "pareto_front"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SpikelmError("plots need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` in memory, then write it atomically: a full disk never leaves half a PNG."""
    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=p.suffix.lstrip(".") or "png")
    return atomic_write(p, buf.getvalue())


def plot_firing_rates(report: FullReport, path: str | Path) -> Path:
    """Firing rate per layer (x) and site (one line each); sites outside blocks as single points."""
    if not report.sites:
        raise SpikelmError("the report has no spiking sites to plot")
    series: dict[str, dict[int, float]] = {}
    others: list[tuple[str, float]] = []
    for s in report.sites:
        m = _BLOCK.match(s.name)
        if m:
            series.setdefault(m.group(2), {})[int(m.group(1))] = s.firing_rate
        else:
            others.append((s.name, s.firing_rate))
    fig, ax = _figure(8, 4.5)
    for site, pts in series.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", ms=3, label=site)
    for i, (name, fr) in enumerate(others):
        ax.scatter([-1 - i], [fr], marker="s", label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (block index; other sites left of 0)")
    ax.set_ylabel("firing rate (spikes / value / step / spike layer)")
    ax.set_title(f"Firing rates: {report.model}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_energy_per_layer(report: FullReport, path: str | Path) -> Path:
    """Grouped bars per layer: ANN pJ/token and spiking pJ/token (spike-driven part hatched)."""
    layers = report.layers()
    names = [le.layer for le in layers]
    xs = list(range(len(layers)))
    w = 0.4
    fig, ax = _figure(max(6.0, 0.45 * len(layers) + 2), 4.5)
    t = report.table.name
    ax.bar([x - w / 2 for x in xs], [le.e_ann for le in layers], w, label=f"ANN (dense activations), {t}", color="tab:gray")
    dense = [le.e_snn - le.e_spike for le in layers]
    ax.bar([x + w / 2 for x in xs], dense, w, label=f"spiking: dense part, {t}", color="tab:blue")
    ax.bar([x + w / 2 for x in xs], [le.e_spike for le in layers], w, bottom=dense,
           label="spiking: spike-driven ACs", color="tab:orange", hatch="//")
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel(f"energy per token (pJ, {report.table.name})")
    ax.set_title(f"Energy per token and layer\nANN {report.total_ann:,.0f} pJ, spiking {report.total_snn:,.0f} pJ "
                 f"({100 * report.spike_share:.1f}% spike-driven)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Points ``(name, ppl, energy)`` that no other point beats on both (lower is better), by energy."""
    front = []
    for p in sorted(points, key=lambda p: (p[2], p[1])):
        if not front or p[1] < front[-1][1]:
            front.append(p)
    return front


def plot_tradeoff(points: Sequence[tuple[str, float, float]], path: str | Path, log_energy: bool = False,
                  title: str = "Perplexity vs energy per token") -> Path:
    """Scatter of ``(name, perplexity, energy pJ/token)`` points, annotated, with the Pareto front."""
    if not points:
        raise SpikelmError("plot_tradeoff needs at least one (name, ppl, energy) point")
    fig, ax = _figure(7, 4.5)
    ax.scatter([p[2] for p in points], [p[1] for p in points], zorder=3)
    # Labels go above right of their point, or below right when an earlier label is close by
    # (in axis fractions), so that nearly coinciding points stay readable.
    tx = (lambda v: math.log(v)) if log_energy else (lambda v: v)  # noqa: E731
    xs, ys = [tx(p[2]) for p in points], [p[1] for p in points]
    x0, y0 = min(xs), min(ys)
    span_x, span_y = (max(xs) - x0) or 1.0, (max(ys) - y0) or 1.0
    placed: list[tuple[float, float]] = []
    for (name, ppl, e), x, y in sorted(zip(points, xs, ys), key=lambda t: t[1]):
        fx, fy = (x - x0) / span_x, (y - y0) / span_y
        crowded = any(abs(fx - px) < 0.12 and abs(fy - py) < 0.06 for px, py in placed)
        ax.annotate(name, (e, ppl), textcoords="offset points", xytext=(4, -11 if crowded else 4), fontsize="small")
        placed.append((fx, fy))
    front = pareto_front(points)
    ax.plot([p[2] for p in front], [p[1] for p in front], "--", color="tab:red", label="Pareto front", zorder=2)
    if log_energy:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the labels
    ax.set_xlabel("energy per token (pJ)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_energy_parts(summary: EnergySummary | dict, path: str | Path, title: str = "") -> Path:
    """Stacked bars of pJ per token, like for like: the spiking network and each baseline at the same
    weight precision, memory as SRAM and as DRAM; and, where the network has spiking layers, a third
    panel with each layer's firing rate beside its break-even rate against the dense ANN and the
    zero-skipping ANN (SRAM), the overall break-even rates in its title.

    ``summary``: an :class:`EnergySummary` or its ``to_dict()`` (as cached by the demo).
    """
    d = summary.to_dict() if isinstance(summary, EnergySummary) else summary
    nets = [d["snn"], *d["baselines"]]
    be = [b["break_even"] for b in d["baselines"] if b.get("break_even") and b["break_even"]["rows"]]
    panels = 3 if be else 2
    fig, _ = _figure(max(8.0, 1.6 * len(nets) * 2) + (5 if be else 0), 5.5)
    fig.clear()
    axes = fig.subplots(1, panels, sharey=False)
    colors = ("#4c72b0", "#dd8452", "#55a868", "#8172b3")
    labels = [n["name"] for n in nets]  # each name carries its precision (W8A8, W8 + spikes ...)
    for ax, which, label in ((axes[0], "parts_sram", "SRAM"), (axes[1], "parts_dram", f"DRAM B={d['batch']}")):
        bottom = [0.0] * len(nets)
        for part, color in zip(PARTS, colors):
            vals = [n[which].get(part, 0.0) for n in nets]
            ax.bar(range(len(nets)), vals, bottom=bottom, color=color, label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(nets)))
        ax.set_xticklabels([lab.replace(" (", "\n(") for lab in labels], rotation=30, ha="right", fontsize=6)
        ax.set_ylabel("pJ per token")
        ax.set_title(f"compute + memory ({label})")
    axes[0].legend(fontsize=7)
    if be:
        _break_even_panel(axes[2], be)
    wb = d.get("weight_bits")
    head = (f"like for like: {wb}-bit weights on both sides, spiking network at {d.get('table')}" if wb else "")
    fig.suptitle((title or f"Energy per token: {d['model']}") + (f"\n{head}" if head else ""), fontsize=10)
    return _save(fig, path)


def _break_even_panel(ax: Any, be: list[dict]) -> None:
    """Each spiking layer's firing rate and its break-even rates (SRAM) against the first and last baseline."""
    rows = be[0]["rows"]
    xs = list(range(len(rows)))
    ax.bar(xs, [r["fr"] for r in rows], color="#999999", label="measured firing rate")

    def val(x: Any) -> float:
        return math.nan if x is None else (2.0 if x == "inf" else min(float(x), 2.0))

    marks = (("o", "tab:red"), ("s", "tab:green"), ("^", "tab:purple"))
    for b, (m, c) in zip([be[0], be[-1]] if len(be) > 1 else be, marks):
        ax.scatter(xs, [val(r["sram"]) for r in b["rows"]], marker=m, color=c, s=14, zorder=3,
                   label=f"break-even vs {b['baseline']}")
    ax.axhline(1.0, color="black", lw=0.6, ls=":")
    ax.set_xticks(xs, [r["name"].replace("blocks.", "b").replace(".att.", ".a.").replace(".ffn.", ".f.") for r in rows],
                  rotation=90, fontsize=5)
    ax.set_ylabel("firing rate (+SRAM; capped at 2)")
    short = lambda n: n.replace("equal-information ANN ", "eq.-info ").replace("ANN ", "")  # noqa: E731
    overall = "; ".join(f"{short(b['baseline'])} {_rate(b['overall']['sram'])}" for b in be)
    ax.set_title(f"firing rate and break-even rate per spiking layer (+SRAM)\noverall break-even: {overall}", fontsize=7)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6)


def _rate(x: Any) -> str:
    return "never" if x is None else ("any" if x == "inf" else f"{float(x):.3f}")
