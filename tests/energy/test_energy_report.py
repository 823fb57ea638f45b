"""Reports: SpikeRWKV's eq. (5) reproduces the paper's Table 3 from its own numbers; the full
count's rows and layers add up to its total; JSON round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_rwkv6
from spikelm.config import EncodingConfig
from spikelm.convert import convert
from spikelm.energy import full_report, EnergyCounter, PaperEntry, energy_table, implied_firing_rate, paper_entry, paper_table

# SpikeRWKV (papers/spikerwkv.txt), Table 3, "Energy consumption on NLU tasks measured in Picojoule
# (pJ)", 32-bit float at 45 nm, E_MAC = 4.6 pJ, E_AC = 0.9 pJ. Columns: ANN, SNN-RWKV-3,
# SNN-RWKV-4, SpikeRWKV-3L E and EE, SpikeRWKV-4L E and EE, SpikeRWKV-5L E and EE; printed digits.
TABLE3 = """
ARC_test    11776 11165.8 11202.3 2472.4 4.76 4536.2 2.59 6612.6 1.78
ARC_train   11776  9133.3 10786.3 2411.2 4.88 4474.6 2.63 6550.2 1.79
XCOPA_test  11776  7935.2 11200.2 2401.0 4.90 4465.7 2.63 6540.5 1.80
XCOPA_val   11776 10150.0 11018.2 2386.6 4.93 4451.0 2.64 6525.7 1.80
PIQA_train  11776 10209.7 11068.1 2385.5 4.93 4452.5 2.64 6527.8 1.80
PIQA_valid  11776  9991.4  9957.0 2376.0 4.95 4437.9 2.65 6512.5 1.80
Wino_dev    11776 10685.0 11127.4 2429.5 4.84 4493.1 2.62 6567.6 1.79
Wino_train  11776 10786.3 11494.2 2436.5 4.83 4501.4 2.61 6576.5 1.79
Avg         11776 10007.0 10981   2412.3 4.88 4476.5 2.63 6551.6 1.79
"""
# (method, column of E, column of EE or None, T, l); SpikeRWKV uses T = 1 with l spike layers
# (the presets of spikelm.convert; the product T * l is what eq. 5 sees).
METHODS = [("SNN-RWKV-3", 2, None, 3, 1), ("SNN-RWKV-4", 3, None, 4, 1), ("SpikeRWKV-3L", 4, 5, 1, 3),
           ("SpikeRWKV-4L", 6, 7, 1, 4), ("SpikeRWKV-5L", 8, 9, 1, 5)]
C_IN = 2560  # RWKV-6 3B: 11776 pJ / 4.6 pJ


def _rows():
    return [line.split() for line in TABLE3.strip().splitlines()]


def _published(method_col: int) -> dict[str, str]:
    return {r[0]: r[method_col] for r in _rows()}


def _trunc(x: float, d: int) -> float:
    return math.floor(x * 10**d + 1e-6) / 10**d


def _entries():
    t = energy_table("45nm-fp32")
    out = []
    for name, col, _, T, l in METHODS:
        for task, e in _published(col).items():
            if task != "Avg":
                out.append(PaperEntry(task, name, implied_firing_rate(float(e), C_IN, T, l, t.e_ac), T, l))
    return out


def test_table3_is_reproduced_from_its_implied_firing_rates():
    tab = paper_table(_entries(), C_IN, "45nm-fp32")
    assert tab.e_ann == pytest.approx(11776)
    md = tab.to_markdown(rounding="truncate", show_fr=False)
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in md.splitlines() if ln.startswith("| ")]
    lines = {c[0]: c[1:] for c in cells}
    for task, *published in _rows():
        printed = lines[task]
        assert printed[0] == "11776"
        for k, (name, col, ee_col, _, _) in enumerate(METHODS):
            e_pub = published[col - 1]
            decimals = len(e_pub.split(".")[1]) if "." in e_pub else 0
            assert _trunc(float(printed[1 + 2 * k]), decimals) == pytest.approx(float(e_pub)), (task, name)
            if ee_col is not None:
                assert printed[2 + 2 * k] == published[ee_col - 1], (task, name)
    # the averages are the mean of the per-task energies, EE of the mean energy
    avg = tab.average("SpikeRWKV-4L")
    assert _trunc(avg.e_snn, 1) == 4476.5 and _trunc(avg.ee, 2) == 2.63
    assert avg.fr == pytest.approx(4476.55 / (C_IN * 4 * 0.9))


def test_table3_truncates_and_its_baseline_columns_imply_rates_above_one():
    tab = paper_table(_entries(), C_IN)
    rounded_off = 0
    for task, *published in _rows():
        for name, _, ee_col, _, _ in METHODS:
            if ee_col is None:
                continue
            cell = tab.average(name) if task == "Avg" else tab.cells[(task, name)]
            assert f"{_trunc(cell.ee, 2):.2f}" == published[ee_col - 1]
            rounded_off += f"{cell.ee:.2f}" != published[ee_col - 1]
    assert rounded_off == 10  # rounding instead of truncation would misprint 10 of the 27 EE cells
    averages = {name: tab.average(name).e_snn for name, *_ in METHODS}
    published = dict(zip([m[0] for m in METHODS], [_rows()[-1][m[1]] for m in METHODS]))
    assert sum(f"{averages[n]:.{len(p.split('.')[1]) if '.' in p else 0}f}" != p for n, p in published.items()) == 4
    fr = {name: [c.fr for (t, m), c in tab.cells.items() if m == name] for name, *_ in METHODS}
    assert min(fr["SNN-RWKV-3"]) > 1.1 and max(fr["SNN-RWKV-3"]) == pytest.approx(11165.8 / (C_IN * 3 * 0.9))
    assert min(fr["SNN-RWKV-4"]) > 1.0  # neither baseline column is reachable with fr <= 1
    assert all(0.3 < f < 0.6 for name in ("SpikeRWKV-3L", "SpikeRWKV-4L", "SpikeRWKV-5L") for f in fr[name])
    assert "(>1: not a rate)" in tab.to_markdown()


def test_eq5_on_a_converted_model():
    enc = EncodingConfig(encoding="mhse", T=1, layers=4, sites="time_mix")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 257, (2, 24), generator=g) for _ in range(2)]
    m = convert(make_rwkv6(n_layer=2, n_embd=32, head_size=16), enc, batches)
    with torch.no_grad(), EnergyCounter(m) as ec:
        m(batches[0])
    e = paper_entry(ec.counts, "rand", "SpikeRWKV-4L")
    sites = [r.spikes for r in ec.counts.rows.values() if r.kind == "linear" and r.spikes is not None]
    assert len(sites) == 8  # receptance, key, value, gate in two blocks
    assert e.fr == pytest.approx(sum(s.layer_spikes for s in sites) / sum(s.numel * 4 for s in sites))
    assert (e.T, e.layers) == (1, 4)
    tab = paper_table([e], 32)
    assert tab.cells[("rand", "SpikeRWKV-4L")].e_snn == pytest.approx(32 * e.fr * 4 * 0.9)
    d = json.loads(json.dumps(tab.to_dict()))
    assert d["e_ann_pj"] == pytest.approx(32 * 4.6) and d["tasks"]["rand"]["SpikeRWKV-4L"]["fr"] == e.fr
    assert paper_entry(type(ec.counts)(), "x", "ANN") is None


@pytest.mark.parametrize("flag_acs", [False, True])
def test_full_report_rows_and_layers_sum_to_the_total(flag_acs):
    enc = EncodingConfig(encoding="mhse", T=1, layers=3, sites="all")
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 257, (2, 24), generator=g) for _ in range(2)]
    m = convert(make_rwkv6(n_layer=2, n_embd=32, head_size=16), enc, batches)
    with torch.no_grad(), EnergyCounter(m) as ec:
        m(batches[1])
    rep = full_report(ec.counts, "45nm-fp16", flag_acs=flag_acs)
    assert sum(r.e_snn for r in rep.rows) == pytest.approx(rep.total_snn, rel=1e-12)
    assert sum(r.e_ann for r in rep.rows) == pytest.approx(rep.total_ann, rel=1e-12)
    assert sum(r.e_spike for r in rep.rows) == pytest.approx(rep.total_spike, rel=1e-12)
    assert sum(le.e_snn for le in rep.layers()) == pytest.approx(rep.total_snn, rel=1e-12)
    assert [le.layer for le in rep.layers()] == ["emb", "blocks.0", "blocks.1", "ln_out", "head"]
    flags = rep.ops_total["flag_ac"] * 0.4
    other = energy_table("45nm-fp16").energy(rep.ops_total)
    assert rep.total_snn == pytest.approx(other + (flags if flag_acs else 0.0))
    assert 0 < rep.spike_share < 1 and rep.total_snn < rep.total_ann
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["total"]["e_snn_pj"] == pytest.approx(sum(r["e_snn_pj"] for r in d["rows"]))
    assert len(d["rows"]) == len(rep.rows) and d["sites"] and d["table"]["name"] == "45nm-fp16"
    md = rep.to_markdown()
    assert "blocks.1.att.wkv" in md and "**total**" in md and "Firing rates" in md
