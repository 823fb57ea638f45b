"""Memory, baselines and op tables: each term equals a number computed by hand on a tiny network,
and the cross-checks of issue 15 (FlopCounterMode, rows sum to totals, ANN weight bytes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_rwkv6
from spikelm.config import EncodingConfig, RWKV7Config
from spikelm.convert import convert
from spikelm.energy import EnergyCounter
from spikelm.energy.constants import quantised_table
from spikelm.energy.memory import MemoryModel, memory_report
from spikelm.energy.report import count_model
from spikelm.energy.summary import PARTS, code_bits, energy_summary, quantised_activations
from spikelm.errors import SpikelmError
from spikelm.models.rwkv7 import RWKV7


def _tiny_binary():
    """One 4 -> 3 linear layer fed 2 binary tokens with 2 spikes among 8 inputs (p = 1/4)."""
    net = nn.Sequential(nn.Linear(4, 3, bias=False))
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad(), EnergyCounter(net) as ec:
        net(x)
    return net, ec.counts


def test_memory_of_a_spike_driven_layer_equals_the_hand_count():
    net, counts = _tiny_binary()
    assert counts.tokens == 2 and counts.rows["0"].active == 2
    # batch 1: 12 weights x 4 bytes, only the columns of spiking inputs (1/4 of them) are read
    sram = memory_report(net, counts, "sram").layers[0]
    assert sram.ann_weight_bytes == 48.0 and sram.weight_bytes == 12.0
    # activations: input 4 spike bits (0.5 B) + 3 fp32 outputs (12 B); the ANN reads 4 and writes 3 fp32
    assert sram.act_bytes == 12.5 and sram.ann_act_bytes == 28.0 and sram.state_bytes == 0.0
    # a 48-byte array: 10 pJ per 64-bit word = 1.25 pJ per byte
    assert sram.e_snn == pytest.approx((12.0 + 12.5) * 1.25)
    assert sram.e_ann == pytest.approx((48.0 + 28.0) * 1.25)
    # DRAM, batch 1: weights at 1300 pJ / 8 B, activations stay in SRAM
    dram = memory_report(net, counts, "dram").layers[0]
    assert dram.e_snn == pytest.approx(12.0 * 1300 / 8 + 12.5 * 1.25)
    # batch 2: a column is fetched if either token uses it, 1 - (3/4)^2 = 7/16, once per 2 tokens
    b2 = memory_report(net, counts, MemoryModel("dram", 2)).layers[0]
    assert b2.weight_bytes == pytest.approx(48.0 * 7 / 16 / 2) and b2.ann_weight_bytes == 24.0
    assert memory_report(net, counts, "none").layers[0].e_snn == 0.0
    with pytest.raises(SpikelmError, match="--memory"):
        MemoryModel("hbm")


def test_state_bytes_and_ann_weight_bytes_equal_parameter_bytes():
    m = make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=3)
    counts = count_model(m, list(range(1, 12)), chunk=4)
    rep = memory_report(m, counts, "sram")
    # cross-check: at batch 1 the ANN reads every parameter once per token (the embedding: one row)
    params = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("emb."))
    assert rep.total("ann_weight_bytes") == pytest.approx(4 * (params + 32))
    assert rep.total("weight_bytes") == rep.total("ann_weight_bytes")  # no spikes: nothing saved
    # state per layer: WKV 2 heads x 16 x 16 fp32 + two token-shift vectors of 32, read and written
    per_layer = 2 * 4 * (2 * 16 * 16 + 2 * 32)
    assert {le.layer: le.state_bytes for le in rep.layers if le.state_bytes} == {"blocks.0": per_layer, "blocks.1": per_layer}
    # the layers sum to the total that is priced
    assert rep.e_snn == pytest.approx(sum(le.e_snn for le in rep.layers))


def test_linear_macs_equal_flop_counter_mode():
    m = make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=3)
    x = torch.randint(0, 257, (1, 7))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    with torch.no_grad(), EnergyCounter(m) as ec:
        m(x)
    flops = fc.get_flop_counts()
    rows = ec.counts.rows
    for name, mod in m.named_modules():
        if isinstance(mod, nn.Linear):
            assert rows[name].ann_ops["mac"] * 2 == sum(flops[f"RWKV6.{name}"].values()), name
    # every plain matmul (aten.mm) of the forward: the Linear layers and the LoRA `@`s (time_maa_w2 is a bmm)
    macs = sum(r.ann_ops["mac"] for n, r in rows.items() if r.kind == "linear" and not n.endswith("time_maa_w2"))
    assert 2 * macs == flops["Global"][torch.ops.aten.mm]


def _tiny_rwkv7():
    cfg = RWKV7Config(vocab_size=11, n_layer=2, n_embd=8, head_size=4, dim_ffn=16, decay_lora_dim=2,
                      a_lora_dim=3, v_lora_dim=2, gate_lora_dim=5)
    return RWKV7(cfg).init_weights(seed=0)


def test_rwkv7_op_table_equals_the_hand_count():
    m = _tiny_rwkv7()
    counts = count_model(m, [1, 2, 3], chunk=3)
    assert counts.uncounted == [] and counts.tokens == 3
    per_tok = {n: {k: v // 3 for k, v in r.ops.items() if v} for n, r in counts.rows.items()}
    # C = 8, H = 2 heads of N = 4: a^T S and r S 2 x 2 x 16 = 64 MAC; diag(w) S, b (a^T S), k^T v
    # 3 x 32 = 96 mul + kk * a 8 mul; two outer-product adds 64; exp(logw) 8 special
    assert per_tok["blocks.1.att.wkv"] == {"mac": 64, "mul": 104, "add": 64, "special": 8}
    assert per_tok["blocks.0.att.mix"] == {"add": 7 * 8, "mul": 6 * 8}
    assert per_tok["blocks.0.att.w1"] == {"mac": 8 * 2} and per_tok["blocks.0.att.g2"] == {"mac": 5 * 8}
    assert per_tok["blocks.0.att.decay"] == {"add": 8, "mul": 8, "special": 2 + 8}
    assert per_tok["blocks.0.att.kk"] == {"mul": 16, "mac": 8, "add": 2, "special": 2}
    assert per_tok["blocks.0.att.bonus"] == {"mul": 24, "add": 14}
    assert "blocks.0.att.v_mix" not in per_tok and per_tok["blocks.1.att.v_mix"] == {"add": 24, "mul": 8, "special": 8}
    assert per_tok["blocks.1.att.v1"] == {"mac": 16}
    assert per_tok["blocks.1.ffn.act"] == {"add": 16, "mul": 16}
    assert per_tok["blocks.1.residual"] == {"add": 16}
    assert per_tok["blocks.1.ffn.key"] == {"mac": 8 * 16}


def test_rwkv7_encoded_lora_inputs_become_accumulates():
    m = _tiny_rwkv7()
    g = torch.Generator().manual_seed(0)
    convert(m, EncodingConfig(encoding="mhse", T=1, layers=4, sites="all"), [torch.randint(0, 11, (2, 8), generator=g)])
    counts = count_model(m, [1, 2, 3, 4], chunk=4)
    w1 = counts.rows["blocks.1.att.w1"]
    assert w1.ops["mac"] == 0 and w1.ann_ops["mac"] == 4 * 8 * 2
    assert w1.ops["ac"] == w1.spikes.layer_spikes * 2 and w1.encoded and 0 < w1.active <= 4 * 8


@pytest.mark.parametrize("T,layers", [(1, 1), (1, 3), (1, 4), (2, 2)])
def test_quantised_ann_activations_have_the_stated_levels(T, layers):
    bits = code_bits(T, layers)
    assert code_bits(1, layers) == layers + 1
    x = torch.linspace(-4, 4, 20001)
    q = quantised_activations(x, torch.tensor(1.0), T, layers)
    levels = torch.unique(q).numel()
    assert levels == 2 * T * (2**layers - 1) + 1  # every magnitude with both signs, and 0
    assert 2 ** (bits - 1) < levels <= 2**bits
    assert quantised_table(4).e_mult == pytest.approx(0.1) and quantised_table(4).e_add == 0.03


def test_summary_parts_sum_to_totals_and_baselines_are_priced_by_hand():
    m = make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=3)
    convert(m, EncodingConfig(encoding="mhse", T=1, layers=3, sites="all"), [torch.randint(0, 257, (2, 16))])
    counts = count_model(m, list(range(1, 17)), chunk=8)
    s = energy_summary(m, counts, batch=4, weight_bits=8)  # an fp32 model priced as if 8-bit, for the arithmetic
    assert s.bits == 4 and [b.name for b in s.baselines] == [
        "ANN W8A8 (dense)", "equal-information ANN W8A4 (dense)", "equal-information ANN W8A4 (zero-skipping)"]
    for net in (s.snn, *s.baselines):
        assert sum(net.parts_sram[p] for p in PARTS) == pytest.approx(net.sram)
        assert sum(net.parts_dram[p] for p in PARTS) == pytest.approx(net.dram)
    tok = counts.tokens
    dense = {k: sum(r.ann_ops[k] for r in counts.rows.values()) / tok for k in ("mac", "mul", "add", "special")}
    sites = [r for r in counts.rows.values() if r.kind == "linear" and r.spikes is not None]
    inputs = sum(r.ann_ops["mac"] / r.c_out for r in sites) / tok  # values quantised at the spike sites
    int8 = s.baselines[0]
    # the W8A8 ANN: 0.23 pJ per MAC, 0.2 per mul, 0.03 per add, from the same dense counts, and an
    # activation quantiser (1 mul + 2 add) per value at the spike sites
    assert int8.compute == pytest.approx(dense["mac"] * 0.23 + dense["mul"] * 0.2 + dense["add"] * 0.03
                                         + dense["special"] * 0.23 + inputs * (0.2 + 2 * 0.03))
    assert s.convention.eq5 is not None and s.convention.eq5_c_in == 32
    md = s.to_markdown()
    assert "paper's convention" in md and "EE DRAM B=4" in md and "Like for like" in md


def test_worked_example_of_docs_energy_md():
    from spikelm.energy import full_report
    net, counts = _tiny_binary()
    rep = full_report(counts)
    assert rep.total_ann == pytest.approx(55.2) and rep.total_snn == pytest.approx(2.7)
    sram, dram = (memory_report(net, counts, m) for m in ("sram", "dram"))
    assert (sram.e_ann, sram.e_snn) == (pytest.approx(95.0), pytest.approx(30.625))
    assert (dram.e_ann, dram.e_snn) == (pytest.approx(7835.0), pytest.approx(1965.625))
    assert (rep.total_ann + sram.e_ann) / (rep.total_snn + sram.e_snn) == pytest.approx(4.507, abs=1e-3)
    assert (rep.total_ann + dram.e_ann) / (rep.total_snn + dram.e_snn) == pytest.approx(4.009, abs=1e-3)


@pytest.mark.parametrize("T,layers,init_half", [(1, 4, False), (1, 3, True), (3, 1, False), (4, 1, True), (2, 3, False),
                                                (70, 1, False)])
def test_active_inputs_of_the_fast_path_equal_the_reference(T, layers, init_half):
    from spikelm.energy.spike_counts import active_inputs, encoder_counts
    g = torch.Generator().manual_seed(T * 10 + layers)
    scale = torch.tensor(0.5)
    unit = 0.5 * 2.0 ** (1 - layers)
    c = 0.5 if init_half else 0.0
    edge = torch.tensor([(1 - c) * unit / T, (1 - c) * unit / T * (1 - 1e-6), 0.0, -unit])  # at and below the threshold
    x = torch.cat([torch.randn(2000, generator=g) * unit * 2, edge]).float()
    st, active = encoder_counts(x, scale, T, layers, init_half=init_half)
    assert active == active_inputs(x, scale, T, layers, init_half=init_half)
    assert 0 < active < x.numel() and active <= st.layer_spikes
