"""Energy like for like (issue 26): the same weight precision on both sides, the zero-skipping twin,
elementwise work priced alike, sign flags, and the break-even firing rate, against hand counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_rwkv6
from spikelm.config import EncodingConfig
from spikelm.convert import convert
from spikelm.energy import EnergyCounter, full_report
from spikelm.energy.breakeven import solve_rate
from spikelm.energy.constants import quantised_table
from spikelm.energy.report import count_model
from spikelm.energy.summary import energy_summary
from spikelm.models.quantized import quantize_weights
from spikelm.spiking.layers import SpikingLinear

DOC = Path(__file__).resolve().parents[2] / "docs" / "energy.md"


def _doc_example():
    """docs/energy.md's like-for-like example: one 4 -> 3 spiking linear layer (MHSE, T = 1, l = 2,
    scale 1), int8 weights, two tokens."""
    net = nn.Sequential(SpikingLinear(4, 3, EncodingConfig(encoding="mhse", T=1, layers=2)))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(12.0).view(3, 4) / 10 - 0.5)
    quantize_weights(net, 8)
    x = torch.tensor([[1.5, -0.5, 0.0, 0.2], [0.0, 1.0, 0.0, -0.3]])
    with torch.no_grad(), EnergyCounter(net) as ec:
        net(x)
    return net, ec.counts


def test_like_for_like_worked_example_of_docs_energy_md():
    net, counts = _doc_example()
    row = counts.rows["0"]
    # levels 3, 1, 0, 0 and 0, 2, 0, 0: 4 layer spikes (fr = 4 / 16), 2 flag spikes, 3 inputs active of 8
    assert row.spikes.layer_spikes == 4 and row.spikes.flag_spikes == 2 and row.active == 3
    s = energy_summary(net, counts)
    assert (s.weight_bits, s.table, s.bits, s.fr) == (8, "45nm-int8", 3, 0.25)
    dense, equal, zero = s.baselines
    assert quantised_table(3).e_mac == pytest.approx(0.105)
    got = {
        "snn compute": s.snn.compute, "dense compute": dense.compute, "equal compute": equal.compute,
        "zero compute": zero.compute, "snn sram": s.snn.sram, "dense sram": dense.sram, "equal sram": equal.sram,
        "zero sram": zero.sram, "flag": s.flag_pj,
    }
    want = {"snn compute": 0.84, "dense compute": 3.80, "equal compute": 2.30, "zero compute": 1.6325, "snn sram": 12.09,
            "dense sram": 27.55, "equal sram": 22.925, "zero sram": 12.8825, "flag": 0.09}
    assert got == pytest.approx(want)
    ee = {k: round(s.ee(b, c), 2) for b, k0 in zip((dense, equal, zero), ("dense", "equal", "zero"))
          for c in ("compute", "sram") for k in [f"{k0} {c}"]}
    assert ee == {"dense compute": 4.52, "dense sram": 2.28, "equal compute": 2.74, "equal sram": 1.9,
                  "zero compute": 1.94, "zero sram": 1.07}
    be = {b.baseline: b.overall for b in s.break_even}
    assert be[dense.name]["compute"] == pytest.approx(10 / 3)  # 0.60 + 0.24 a = 3.80 at a = 13.33, fr = 0.25 a
    assert be[zero.name]["compute"] == pytest.approx(0.25 * (1.6325 - 0.60) / 0.24)
    assert be[zero.name]["sram"] == pytest.approx(0.25 * (12.8825 - 6.225) / 5.865)
    # the doc states these numbers (so the doc and the library cannot drift apart)
    doc = DOC.read_text()
    for text in ("**0.84 pJ**", "**3.80 pJ**", "**2.30 pJ**", "**1.6325 pJ**", "**4.52**", "**2.74**", "**1.94**",
                 "**12.09 pJ**", "**27.55 pJ**", "**12.8825 pJ**", "**2.28**", "**1.07**", "**3.33**", "**1.076**",
                 "**0.284**", "0.09 pJ"):
        assert text in doc, text


def test_solve_rate_finds_where_a_linear_cost_meets_the_target():
    assert solve_rate(lambda a: 1.0 + 2.0 * a, 5.0, 0.1) == pytest.approx(0.2)
    assert solve_rate(lambda a: 6.0 + a, 5.0, 0.1) is None  # dearer even silent
    assert solve_rate(lambda a: 1.0, 5.0, 0.1) == float("inf")  # no spike-proportional cost


@pytest.fixture(scope="module")
def converted_8bit():
    m = quantize_weights(make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=3), 8)
    convert(m, EncodingConfig(encoding="mhse", T=1, layers=4, sites="all"), [torch.randint(0, 257, (2, 32))])
    return m, count_model(m, list(range(1, 65)), chunk=32)


def test_elementwise_work_and_wkv_are_priced_alike_on_both_sides(converted_8bit):
    m, counts = converted_8bit
    s = energy_summary(m, counts)
    dense, equal, zero = s.baselines
    tok = counts.tokens
    sites = [r for r in counts.rows.values() if r.kind == "linear" and r.spikes is not None]
    site_macs = sum(r.ann_ops["mac"] for r in sites) / tok
    # the two dense twins differ only in the price of the spike sites' MACs (W8A5 against W8A8)
    assert dense.compute - equal.compute == pytest.approx(site_macs * (0.23 - quantised_table(5).e_mac))
    # the spiking network's dense part (everything but the sites and the encoders) is what the twins pay there
    assert s.snn.parts_sram["dense compute"] == pytest.approx(equal.parts_sram["dense compute"] - site_macs * quantised_table(5).e_mac)
    # the zero-skipping twin multiplies only nonzero inputs: one MAC per active input and output
    active_macs = sum(r.active * r.c_out for r in sites) / tok
    assert zero.parts_sram["event-driven compute"] == pytest.approx(active_macs * quantised_table(5).e_mac)
    assert zero.compute < equal.compute and zero.sram < equal.sram
    assert all(n.weight_bits == 8 for n in (s.snn, *s.baselines))
    assert {b["weight_bits"] for b in s.to_dict()["baselines"]} == {8} and s.to_dict()["snn"]["weight_bits"] == 8


def test_flags_cost_no_accumulate_and_one_total_is_reported(converted_8bit):
    m, counts = converted_8bit
    s = energy_summary(m, counts)
    rep = full_report(counts, "45nm-int8")
    assert s.snn.compute == pytest.approx(rep.total_snn)  # the full count's total is the summary's
    flags = sum(r.ops["flag_ac"] for r in counts.rows.values()) / counts.tokens
    assert flags > 0 and s.flag_pj == pytest.approx(flags * 0.03)
    charged = energy_summary(m, counts, flag_acs=True)
    assert charged.snn.compute == pytest.approx(s.snn.compute + s.flag_pj)
    assert "upper bound" in s.to_markdown()


def test_break_even_rate_is_where_the_costs_meet(converted_8bit):
    m, counts = converted_8bit
    s = energy_summary(m, counts, batch=4)
    t = full_report(counts, s.table)
    var = sum(t.table.energy(r.spike_ops) for r in counts.rows.values()) / counts.tokens
    for b, be in zip(s.baselines, s.break_even):
        fr = be.overall["compute"]
        assert fr is not None and fr > 0
        # at the break-even rate the spiking compute (spike-proportional work scaled) equals the baseline's
        assert t.total_snn + (fr / s.fr - 1) * var == pytest.approx(b.compute, rel=1e-6)
        assert len(be.rows) == len([r for r in counts.rows.values() if r.kind == "linear" and r.spikes is not None])
    # the spiking network is cheaper than the dense twin at the measured rate, so it breaks even above it
    dense_be = s.break_even[0].overall
    assert s.ee(s.baselines[0], "compute") > 1 and dense_be["compute"] > s.fr
    for col in ("sram", "dram"):
        x = dense_be[col]
        assert x is None or x == float("inf") or (x > s.fr) == (s.ee(s.baselines[0], col) > 1)


def test_the_summary_prices_the_model_at_its_weight_precision():
    m = make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=1)
    convert(m, EncodingConfig(encoding="mhse", T=1, layers=3, sites="time_mix"), [torch.randint(0, 257, (2, 16))])
    counts = count_model(m, list(range(1, 17)), chunk=16)
    s32 = energy_summary(m, counts)
    assert s32.weight_bits == 32 and s32.table == "45nm-fp32" and s32.baselines[0].name == "ANN W32A32 (dense)"
    assert re.search(r"ANN W32A4", s32.baselines[1].name)
    # like for like at fp32 equals the paper's convention's compute (both sides fp32)
    assert s32.snn.compute == pytest.approx(s32.convention.snn.compute)
    quantize_weights(m, 8)
    s8 = energy_summary(m, count_model(m, list(range(1, 17)), chunk=16))
    assert s8.weight_bits == 8 and s8.table == "45nm-int8" and s8.baselines[0].precision == "W8A8"
