"""Operation counters: outputs untouched, hooks removed, counts equal to hand-computed numbers and
to a literal spike simulation, and the fast spike statistics equal to the closed form's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_rwkv6
from spikelm.config import EncodingConfig
from spikelm.convert import convert, encoders
from spikelm.spiking.layers import SpikingLinear
from spikelm.energy import full_report, EnergyCounter, energy_table
from spikelm.energy.spike_counts import encoder_stats
from spikelm.spiking.encoding import mhse_closed_form, mhse_simulate, mhse_weights


def _batches(n=2, B=2, T=24, V=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (B, T), generator=g) for _ in range(n)]


def _run(model, x):
    with torch.no_grad(), EnergyCounter(model) as ec:
        out, _ = model(x)
    return out, ec


@pytest.mark.parametrize("enc", [
    None,
    EncodingConfig(encoding="mhse", T=1, layers=4, sites="all"),
    EncodingConfig(encoding="rate", T=3, layers=1, sites="time_mix"),
    EncodingConfig(encoding="mhse", T=2, layers=3, sites="all", init_half=True, granularity="channel"),
])
def test_outputs_are_bit_identical_and_hooks_are_removed(enc):
    m = make_rwkv6(n_layer=2, n_embd=32, head_size=16, seed=3)
    if enc is not None:
        convert(m, enc, _batches())
    x = _batches(1, seed=9)[0]
    with torch.no_grad():
        ref, ref_state = m(x)
    out, ec = _run(m, x)
    assert torch.equal(out, ref)
    assert ec.counts.tokens == x.numel() and not ec.counts.uncounted
    hooked = [n for n, mod in m.named_modules() if mod._forward_hooks or mod._forward_pre_hooks]
    assert hooked == []
    with torch.no_grad():
        again, _ = m(x)  # and nothing is counted after the block
    assert torch.equal(again, ref) and ec.counts.tokens == x.numel()


def test_spikegpt_outputs_identical_and_lif_spikes_counted():
    from spikelm.models.spikegpt import SPIKEGPT_PRESETS, SpikeGPT, SpikeGPTConfig

    m = SpikeGPT(SpikeGPTConfig(**SPIKEGPT_PRESETS["tiny"])).init_weights(0).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x = _batches(1, B=1, T=12)[0]
    with torch.no_grad():
        ref, _ = m(x)
    out, ec = _run(m, x)
    assert torch.equal(out, ref) and not ec.counts.uncounted
    rows = ec.counts.rows
    with torch.no_grad():  # recompute the LIF spikes of block 0 by hand through the model's modules
        h = m.blocks[0].ln0(m.emb_spike(m.emb(x)))
        st = m.initial_state(1)[0]
        y, _, _ = m.blocks[0].att(m.blocks[0].ln1(h), st.att_shift, (st.aa, st.bb, st.pp))
        s1, _ = m.blocks[0].lif1(y, st.att_v)
    assert rows["blocks.0.lif1"].spikes.layer_spikes == int(s1.sum())
    assert 0 < rows["blocks.0.lif1"].spikes.firing_rate < 1
    # each LIF spike is one accumulate into the residual stream
    lif_spikes = rows["blocks.0.lif1"].spikes.layer_spikes + rows["blocks.0.lif2"].spikes.layer_spikes
    assert rows["blocks.0.residual"].ops["ac"] == lif_spikes
    # SpikeGPT's linear layers read LayerNorm outputs, not spikes: all dense
    assert all(r.ops["ac"] == 0 for r in rows.values() if r.kind == "linear")


def test_single_spiking_linear_hand_counted():
    # 4 inputs -> 3 outputs, MHSE T=1, l=2 (weights 1 and 1/2), scale 1:
    #   x = 0.75 -> 1.5 units -> emits 1 (binary 01): layer 2 fires
    #   x = -0.5 -> 1 unit   -> 01, flag spike
    #   x = 0.25 -> 0.5 unit -> 00
    #   x = 2.0  -> clipped at A_max = 1.5 -> 3 units -> 11: both layers
    # layer spikes: layer 1: 1, layer 2: 3 -> 4 spikes -> 4 * 3 = 12 ACs, flag ACs 1 * 3 = 3
    lin = SpikingLinear(4, 3, EncodingConfig(encoding="mhse", T=1, layers=2))
    with torch.no_grad():
        lin.weight.copy_(torch.arange(12.0).view(3, 4))
    x = torch.tensor([[0.75, -0.5, 0.25, 2.0]])
    with torch.no_grad(), EnergyCounter(lin) as ec:
        y = lin(x)
    assert torch.equal(y, F.linear(torch.tensor([[0.5, -0.5, 0.0, 1.5]]), lin.weight))
    row = ec.counts.rows[""]  # the root module is the layer
    assert ec.counts.tokens == 1
    assert row.ops["ac"] == 12 and row.ops["flag_ac"] == 3 and row.ops["mac"] == 0 and row.ann_ops["mac"] == 12
    st = row.spikes
    assert st.spikes_per_layer_step.tolist() == [[1, 3]] and st.flag_spikes == 1 and st.clipped == 1
    assert st.firing_rate == 0.5
    enc = ec.counts.rows[".encode"]
    # per value: sign test + clip (2) + one charge (T) + two threshold tests (T*l) = 5 adds; + 4 resets
    assert enc.ops["add"] == 4 * 5 + 4
    rep = full_report(ec.counts, "45nm-fp32")
    assert rep.total_ann == pytest.approx(12 * 4.6)
    assert rep.total_snn == pytest.approx(12 * 0.9 + 24 * 0.9)
    assert full_report(ec.counts, "45nm-fp32", flag_acs=True).total_snn == pytest.approx((12 + 3 + 24) * 0.9)
    assert rep.spike_share == pytest.approx(12 / 36)


def test_one_layer_rwkv6_hand_counted():
    # C = A = 4, one head of N = 4, F = 8, Dm = 1, Dd = 2, V = 5; per token (dense, as an ANN):
    #   LayerNorm (ln0, ln1, ln2, ln_out) and GroupNorm ln_x, each: add 2*4+1, MAC 2*4, mul 4+2, special 1
    #   linear: r,k,v,g,output 5*16, ffn key 32 + receptance 16 + value 32, head 20, LoRA 20+20+8+8 -> 236 MAC
    #   ddlerp add 12C=48 mul 6C=24 special 5Dm=5; decay add 2A=8 special Dd+A=6
    #   wkv MAC N^2+N=20 mul 2N^2+2N=40 add N^2+N=20 special N=4; gate_act special 4 mul 8
    #   residual add 8; ffn mix add 12 mul 8; ffn act add F=8 mul F+C=12 special C=4
    m = make_rwkv6(n_layer=1, n_embd=4, vocab_size=5, head_size=4, dim_ffn=8, time_mix_extra_dim=1, time_decay_extra_dim=2)
    x = torch.tensor([[1, 2, 3], [4, 0, 1]])
    _, ec = _run(m, x)
    rep = full_report(ec.counts, "45nm-fp32")
    assert rep.tokens == 6
    ops = rep.ops_total
    assert (ops["mac"], ops["add"], ops["mul"], ops["special"], ops["ac"]) == (5 * 8 + 236 + 20, 149, 122, 28, 0)
    assert rep.ann_ops_total == ops
    assert rep.total_ann == pytest.approx(296 * 4.6 + 149 * 0.9 + 122 * 3.7 + 28 * 4.6)
    rows = ec.counts.rows
    assert rows["blocks.0.att.wkv"].ops["mac"] == 20 * 6 and rows["blocks.0.att.time_maa_w1"].ann_ops["mac"] == 20 * 6
    assert rows["head"].c_in == 4 and rows["head"].c_out == 5


def test_accumulates_equal_a_literal_spike_simulation():
    """Every spike of layer i at step j on channel c drives C_out accumulates of w_i-scaled weights:
    summing those accumulates (sign from the flag, scale s/T) rebuilds each spiking layer's output,
    and the number of them is what the counter reports."""
    enc = EncodingConfig(encoding="mhse", T=2, layers=3, sites="all", init_half=True, granularity="channel")
    m = convert(make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=5), enc, _batches())
    x = _batches(1, seed=11)[0]
    captured = {}
    hooks = [e.register_forward_pre_hook(lambda mod, a, n=name: captured.__setitem__(n, a[0].detach().clone()))
             for name, e in encoders(m)]
    try:
        _, ec = _run(m, x)
    finally:
        for h in hooks:
            h.remove()
    w = mhse_weights(3)
    for name, e in encoders(m):
        xin = captured[name]
        _, _, spikes, flags = mhse_simulate(xin, e.scale, T=2, layers=3, init_half=True)  # (T, l, *shape)
        lin = m.get_submodule(name) if isinstance(m.get_submodule(name), SpikingLinear) else None
        target = name if lin is not None else name.replace("maa_in", "time_maa_w1").replace("decay_in", "time_decay_w1")
        row = ec.counts.rows[target]
        c_out = row.c_out
        assert row.ops["ac"] == int(spikes.sum()) * c_out
        assert row.ops["flag_ac"] == int(flags.sum()) * c_out
        if lin is not None:
            sign = 1.0 - 2.0 * flags.double()
            acc = sum(w[i] * (spikes[j, i].double() * sign) for j in range(2) for i in range(3)) * e.scale.double() / 2
            torch.testing.assert_close(F.linear(acc, lin.weight.double()).float(), lin(xin), rtol=1e-5, atol=1e-5)


def test_binary_inputs_of_a_plain_linear_are_spike_driven():
    lin = torch.nn.Linear(8, 5, bias=True)
    spikes = (torch.rand(3, 8, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    spikes[0, :] = 1.0  # the binary check must not be fooled by a first row of ones
    with torch.no_grad(), EnergyCounter(lin) as ec:
        lin(spikes)
        lin(spikes * 0.5)  # not binary: dense
    row = ec.counts.rows[""]
    nnz = int(spikes.count_nonzero())
    assert row.ops["ac"] == nnz * 5 and row.ops["mac"] == 3 * 8 * 5 and row.ops["add"] == 2 * 3 * 5
    assert row.spikes.firing_rate == pytest.approx(nnz / 24)
    assert row.ann_ops["mac"] == 2 * 3 * 8 * 5


def test_counts_add_up_over_calls_with_carried_state():
    m = convert(make_rwkv6(n_layer=1, n_embd=32, head_size=16, seed=2),
                EncodingConfig(encoding="mhse", T=1, layers=4, sites="all"), _batches())
    x = _batches(1, B=1, T=20, seed=4)[0]
    _, whole = _run(m, x)
    with torch.no_grad(), EnergyCounter(m) as parts:
        _, s = m(x[:, :7])
        m(x[:, 7:], s)
    a, b = whole.counts.rows, parts.counts.rows
    assert list(a) == list(b)
    for name in a:
        assert a[name].ops == b[name].ops and a[name].ann_ops == b[name].ann_ops, name
    assert full_report(whole.counts).total_snn == pytest.approx(full_report(parts.counts).total_snn)


def _edge_values(scale: float, layers: int, n_int: int, T: int) -> torch.Tensor:
    """Values at, just above and just below every emission threshold: grid points of the smallest
    weight, and for several steps the fractions (k - c) / j of it (rate coding's thresholds)."""
    unit = scale * 2.0 ** (n_int - layers)
    grid = [float(k) for k in range(0, 2**layers + 2)]
    grid += [(k - c) / j for j in range(1, min(T, 8) + 1) for k in range(1, 2 * j + 1) for c in (0.0, 0.5)]
    e = (torch.tensor(grid, dtype=torch.float64) * unit).float()
    v = torch.cat([e, torch.nextafter(e, torch.tensor(1e9)), torch.nextafter(e, torch.tensor(-1e9)).clamp(min=0),
                   (e.double() + unit / 2).float(), torch.tensor([1e30, 0.0, -0.0])])
    return torch.cat([v, -v])


@pytest.mark.parametrize("T, layers", [(1, 1), (1, 3), (1, 4), (1, 5), (1, 9), (3, 1), (4, 1), (65, 1), (2, 4)])
@pytest.mark.parametrize("init_half", [False, True])
def test_encoder_stats_equal_the_closed_form(T, layers, init_half):
    g = torch.Generator().manual_seed(T * 100 + layers)
    for n_int in (1, 2):
        for scale in (torch.tensor(0.7), torch.tensor(1 / 3), torch.rand(16, generator=g) + 0.05):
            x = torch.randn(3, 5, 16, generator=g) * 2
            if scale.dim() == 0:
                edges = _edge_values(float(scale), layers, n_int, T)
                x = torch.cat([x.reshape(-1), edges])
            for xx in (x, x.bfloat16()):
                ref = mhse_closed_form(xx, scale, T, layers, n_int=n_int, init_half=init_half, stats=True)[1]
                got = encoder_stats(xx, scale, T, layers, n_int=n_int, init_half=init_half)
                assert torch.equal(got.spikes_per_layer_step, ref.spikes_per_layer_step), (n_int, scale, xx.dtype)
                assert (got.flag_spikes, got.clipped, got.numel) == (ref.flag_spikes, ref.clipped, ref.numel)


@pytest.mark.parametrize("layers, n", [(4, 1000), (9, 40_000)])  # 40,000 x 2**9 > 2**24: float64 sums
def test_encoder_counts_with_a_dirty_reused_scratch(layers, n):
    """The counter reuses one scratch buffer: leftovers of an earlier, larger call change nothing."""
    from spikelm.energy.spike_counts import active_inputs, encoder_counts

    g = torch.Generator().manual_seed(layers)
    scratch = torch.full((2 * n + 7,), float("nan"))
    scale = torch.tensor(0.37)
    for x in (torch.randn(n, generator=g) * 3, torch.randn(n // 2, generator=g).bfloat16()):
        ref = mhse_closed_form(x, scale, 1, layers, stats=True)[1]
        got, active = encoder_counts(x, scale, 1, layers, scratch=scratch)
        assert torch.equal(got.spikes_per_layer_step, ref.spikes_per_layer_step)
        assert (got.flag_spikes, got.clipped, got.numel) == (ref.flag_spikes, ref.clipped, ref.numel)
        assert active == active_inputs(x, scale, 1, layers)


@pytest.mark.parametrize("encoding, layers", [("rate", 1), ("mhse", 1), ("mhse", 4), ("mhse", 6), ("mhse", 7),
                                              ("mhse", 9), ("mhse", 15)])
@pytest.mark.parametrize("init_half", [False, True])
@pytest.mark.parametrize("compiled", [True, False])
def test_counts_read_at_the_observation_point_equal_the_closed_form(monkeypatch, encoding, layers, init_half, compiled):
    """One-step encoders are counted from the integer levels they show at ``SpikeEncoder.levels``,
    by the compiled histogram (``compiled``) or by tensor operations (int8 codes up to 6 layers,
    int16 up to 14, int32 beyond): the counts, flags, clipped values and weight fetches equal the
    closed form's, at and next to every threshold, for -0.0 inputs, per-channel scales and
    bf16/fp16 inputs; the recount from the input is not called."""
    from spikelm.energy import spike_counts
    from spikelm.energy.spike_counts import active_inputs
    from spikelm.ops.kernels import library

    if compiled and library() is None:
        pytest.skip("no C++ compiler / ninja to build the kernels")
    if not compiled:
        monkeypatch.setattr(spike_counts, "level_histogram", lambda *a: None)

    def no_recount(*a, **k):
        raise AssertionError("the observation point was not used")

    monkeypatch.setattr(spike_counts, "encoder_counts", no_recount)
    g = torch.Generator().manual_seed(layers * 10 + init_half)
    C = 16
    for n_int, granularity in ((1, "tensor"), (2, "tensor"), (1, "channel")):
        cfg = EncodingConfig(encoding=encoding, T=1, layers=layers, n_int=n_int if encoding == "mhse" else 1,
                             init_half=init_half, granularity=granularity)
        lin = SpikingLinear(C, 8, cfg)
        scale = torch.rand(C, generator=g) + 0.05 if granularity == "channel" else torch.tensor(0.37)
        lin.encoder.scale.copy_(scale)
        x = torch.randn(7, C, generator=g) * 2 ** min(layers, 6)
        x[0, :4] = torch.tensor([-0.0, 0.0, -1e-30, 1e30])
        if granularity == "tensor":
            args = lin.encoder.encode_args()
            edges = _edge_values(0.37, args["layers"], args["n_int"], 1)
            x = torch.cat([x.reshape(-1), edges])[: (x.numel() + edges.numel()) // C * C].reshape(-1, C)
        for xx in (x, x.bfloat16(), x.half()):
            with torch.no_grad(), EnergyCounter(lin) as ec:
                lin(xx)
            row = ec.counts.rows[""]
            args = lin.encoder.encode_args()
            del args["base"]
            ref = mhse_closed_form(xx, scale, **args, stats=True)[1]
            got = row.spikes
            assert torch.equal(got.spikes_per_layer_step, ref.spikes_per_layer_step), (n_int, granularity, xx.dtype)
            assert (got.flag_spikes, got.clipped, got.numel) == (ref.flag_spikes, ref.clipped, ref.numel)
            assert row.active == active_inputs(xx, scale, **args)


def test_observation_point_falls_back_to_the_reference():
    """Paths that show no levels (more steps, the simulation) and NaN inputs are recounted from
    the input, as before: equal counts, and the reference's own error for a NaN."""
    lin = SpikingLinear(16, 8, EncodingConfig(encoding="mhse", T=2, layers=3))
    lin.encoder.scale.fill_(0.5)
    x = torch.randn(5, 16)
    for method in ("closed", "sim"):
        lin.encoder.method = method
        with torch.no_grad(), EnergyCounter(lin) as ec:
            lin(x)
        ref = mhse_closed_form(x, lin.encoder.scale, 2, 3, stats=True)[1]
        assert torch.equal(ec.counts.rows[""].spikes.spikes_per_layer_step, ref.spikes_per_layer_step)
    one = SpikingLinear(16, 8, EncodingConfig(encoding="mhse", T=1, layers=4))
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"), torch.no_grad(), EnergyCounter(one):
        one(x)


def test_report_prices_with_a_custom_table():
    m = make_rwkv6(n_layer=1, n_embd=16, head_size=8)
    _, ec = _run(m, _batches(1)[0])
    t = energy_table("45nm-int8", e_mac=1.0, e_ac=0.5)
    rep = full_report(ec.counts, t)
    ops = rep.ops_total
    assert rep.total_snn == pytest.approx(ops["mac"] * 1.0 + ops["add"] * 0.5 + ops["mul"] * 0.5 + ops["special"] * 1.0)
